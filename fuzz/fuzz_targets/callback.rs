//! Fuzz target: arbitrary bytes through the whole callback path (query, envelope, signature, base64,
//! AES, unpadding, length field, receive_id, event JSON). Any panic is a bug.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    relay::verify::fuzzing::callback_path(data);
});
