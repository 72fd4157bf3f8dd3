//! AES-256-CBC envelope of Weiling callbacks (WeCom scheme, PKCS#7 padding to 32-byte blocks).
//!
//! Plaintext layout: 16 random bytes ‖ u32 big-endian message length ‖ message ‖ receive_id,
//! padded to a multiple of 32 bytes. The IV is the first 16 bytes of the key, so the random
//! prefix is what keeps equal messages from producing equal ciphertexts.
//!
//! CBC without a MAC is malleable and the padding check below is not constant-time: callers
//! must verify `msg_signature` (which covers the ciphertext) *before* calling
//! [`AesKey::decrypt`], so an attacker never gets to probe it as a padding oracle.

use std::fmt;

use aes::Aes256;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use cbc::cipher::array::Array;
use cbc::cipher::consts::U16;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, Iv, Key, KeyIvInit};

type Encryptor = cbc::Encryptor<Aes256>;
type Decryptor = cbc::Decryptor<Aes256>;

const ENCODING_AES_KEY_LEN: usize = 43;
const RANDOM_LEN: usize = 16;
const LEN_FIELD_LEN: usize = 4;
const HEADER_LEN: usize = RANDOM_LEN + LEN_FIELD_LEN;
const AES_BLOCK_LEN: usize = 16;
/// WeCom pads to 32 bytes, twice the AES block size, which is why `cbc`'s `Pkcs7` (1..=16)
/// cannot be used.
const PAD_BLOCK_LEN: usize = 32;
/// Real callbacks are a few KiB; the cap bounds the allocation an unauthenticated body can cause.
const MAX_CIPHERTEXT_LEN: usize = 1 << 20;
const MAX_ENCODED_LEN: usize = MAX_CIPHERTEXT_LEN.div_ceil(3) * 4;

/// WeCom's SDKs (like Python's `b64decode`) ignore the two spare bits of the 43rd character,
/// and real keys — including the one in WeCom's documentation — have them set, so the
/// strict default engine would reject valid keys.
const KEY_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// The 32-byte AES key derived from an `EncodingAESKey`.
#[derive(Clone)]
pub struct AesKey {
    key: [u8; 32],
}

impl fmt::Debug for AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AesKey(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("EncodingAESKey must be exactly 43 characters")]
    Length,
    #[error("EncodingAESKey is not valid base64")]
    Base64,
    #[error("an app needs at least one Token and one EncodingAESKey")]
    Missing,
}

/// A decrypted callback body. `receive_id` is the CorpID / suite id the sender addressed;
/// callers should compare it with the expected one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decrypted {
    pub message: Vec<u8>,
    pub receive_id: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum DecryptError {
    #[error("encrypted message is not valid base64")]
    Base64,
    #[error("ciphertext is empty, too large, or not a multiple of the AES block size")]
    BlockLength,
    #[error("ciphertext padding is invalid (wrong key or corrupted message)")]
    Padding,
    #[error("decrypted payload is shorter than its 20-byte header")]
    Truncated,
    #[error("message length field exceeds the decrypted payload")]
    LengthField,
}

impl DecryptError {
    /// A fixed description for the dead-letter `x-detail` header.
    pub fn label(self) -> &'static str {
        match self {
            Self::Base64 => "encrypt_msg is not valid base64",
            Self::BlockLength => "ciphertext length is not a positive multiple of 16",
            Self::Padding => "padding is invalid (wrong EncodingAESKey?)",
            Self::Truncated => "plaintext is shorter than its header",
            Self::LengthField => "length field exceeds the plaintext (wrong EncodingAESKey?)",
        }
    }
}

impl AesKey {
    pub fn from_encoding_aes_key(encoding_aes_key: &str) -> Result<Self, KeyError> {
        if encoding_aes_key.len() != ENCODING_AES_KEY_LEN {
            return Err(KeyError::Length);
        }
        let bytes = KEY_ENGINE
            .decode(format!("{encoding_aes_key}="))
            .map_err(|_| KeyError::Base64)?;
        // An '=' inside the 43 characters still decodes, just to fewer than 32 bytes.
        let key = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Base64)?;
        Ok(Self { key })
    }

    /// Encrypts with 16 fresh random bytes (`rand`'s thread-local CSPRNG).
    pub fn encrypt(&self, msg: &[u8], receive_id: &str) -> String {
        self.encrypt_with_random(rand::random(), msg, receive_id)
    }

    /// Deterministic variant of [`Self::encrypt`], for known-answer tests.
    ///
    /// The format's length field is a `u32`; a message over 4 GiB is cut to that length, since
    /// this signature has no error path and mislabelling the length would corrupt `receive_id`.
    pub fn encrypt_with_random(&self, random: [u8; 16], msg: &[u8], receive_id: &str) -> String {
        let msg_len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
        let msg = usize::try_from(msg_len)
            .ok()
            .and_then(|n| msg.get(..n))
            .unwrap_or(msg);

        let unpadded = HEADER_LEN + msg.len() + receive_id.len();
        let pad = PAD_BLOCK_LEN - unpadded % PAD_BLOCK_LEN;
        let mut buf = Vec::with_capacity(unpadded + pad);
        buf.extend_from_slice(&random);
        buf.extend_from_slice(&msg_len.to_be_bytes());
        buf.extend_from_slice(msg);
        buf.extend_from_slice(receive_id.as_bytes());
        // `pad` is in 1..=32, so the cast is lossless.
        buf.resize(unpadded + pad, pad as u8);

        let (key, iv) = self.key_iv();
        let (blocks, _tail) = Array::slice_as_chunks_mut(&mut buf);
        Encryptor::new(&key, &iv).encrypt_blocks(blocks);
        STANDARD.encode(&buf)
    }

    /// Decrypts `encrypt_msg`. Verify the signature first (see the module docs).
    pub fn decrypt(&self, encrypt_msg: &str) -> Result<Decrypted, DecryptError> {
        if encrypt_msg.len() > MAX_ENCODED_LEN {
            return Err(DecryptError::BlockLength);
        }
        let mut buf = STANDARD
            .decode(encrypt_msg)
            .map_err(|_| DecryptError::Base64)?;
        if buf.is_empty() || buf.len() % AES_BLOCK_LEN != 0 {
            return Err(DecryptError::BlockLength);
        }

        let (key, iv) = self.key_iv();
        let (blocks, _tail) = Array::slice_as_chunks_mut(&mut buf);
        Decryptor::new(&key, &iv).decrypt_blocks(blocks);

        let plain = unpad(&buf)?;
        let (_random, rest) = plain
            .split_first_chunk::<RANDOM_LEN>()
            .ok_or(DecryptError::Truncated)?;
        let (len_field, rest) = rest
            .split_first_chunk::<LEN_FIELD_LEN>()
            .ok_or(DecryptError::Truncated)?;
        let msg_len = usize::try_from(u32::from_be_bytes(*len_field))
            .map_err(|_| DecryptError::LengthField)?;
        let (message, receive_id) = rest
            .split_at_checked(msg_len)
            .ok_or(DecryptError::LengthField)?;
        Ok(Decrypted {
            message: message.to_vec(),
            receive_id: receive_id.to_vec(),
        })
    }

    fn key_iv(&self) -> (Key<Encryptor>, Iv<Encryptor>) {
        let key = Array::from(self.key);
        let (iv, _) = key.split::<U16>();
        (key, iv)
    }
}

/// Strips PKCS#7 padding with pad values 1..=32.
fn unpad(buf: &[u8]) -> Result<&[u8], DecryptError> {
    let &pad = buf.last().ok_or(DecryptError::Padding)?;
    let pad_len = usize::from(pad);
    if !(1..=PAD_BLOCK_LEN).contains(&pad_len) {
        return Err(DecryptError::Padding);
    }
    let body_len = buf
        .len()
        .checked_sub(pad_len)
        .ok_or(DecryptError::Padding)?;
    let (body, padding) = buf
        .split_at_checked(body_len)
        .ok_or(DecryptError::Padding)?;
    if padding.iter().any(|&b| b != pad) {
        return Err(DecryptError::Padding);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The sample key from WeCom's documentation; its last character has non-zero spare bits.
    const DOC_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
    const OTHER_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFE";
    const RECEIVE_ID: &str = "wwa1b2c3d4e5f6a7b8";

    fn key(s: &str) -> AesKey {
        AesKey::from_encoding_aes_key(s).unwrap()
    }

    /// Encrypts an arbitrary (already padded or deliberately malformed) plaintext, so the
    /// decrypt error paths can be reached with a valid CBC ciphertext.
    fn encrypt_raw(key: &AesKey, plain: &[u8]) -> String {
        assert_eq!(plain.len() % AES_BLOCK_LEN, 0);
        let mut buf = plain.to_vec();
        let (k, iv) = key.key_iv();
        let (blocks, _) = Array::slice_as_chunks_mut(&mut buf);
        Encryptor::new(&k, &iv).encrypt_blocks(blocks);
        STANDARD.encode(&buf)
    }

    fn plaintext(msg_len_field: u32, body: &[u8], pad: u8, pad_len: usize) -> Vec<u8> {
        let mut p = vec![0xA5; RANDOM_LEN];
        p.extend_from_slice(&msg_len_field.to_be_bytes());
        p.extend_from_slice(body);
        p.extend(std::iter::repeat_n(pad, pad_len));
        p
    }

    #[test]
    fn key_accepts_nonzero_trailing_bits() {
        assert!(AesKey::from_encoding_aes_key(DOC_KEY).is_ok());
        assert!(AesKey::from_encoding_aes_key(OTHER_KEY).is_ok());
    }

    #[test]
    fn key_rejects_bad_input() {
        use KeyError::*;
        let short = &DOC_KEY[..42];
        let long = format!("{DOC_KEY}A");
        let bad_char = format!("{}!", &DOC_KEY[..42]);
        let inner_pad = format!("{}=", &DOC_KEY[..42]);
        let non_ascii = format!("{}é", &DOC_KEY[..41]); // 43 bytes
        assert_eq!(AesKey::from_encoding_aes_key("").unwrap_err(), Length);
        assert_eq!(AesKey::from_encoding_aes_key(short).unwrap_err(), Length);
        assert_eq!(AesKey::from_encoding_aes_key(&long).unwrap_err(), Length);
        assert_eq!(
            AesKey::from_encoding_aes_key(&bad_char).unwrap_err(),
            Base64
        );
        assert_eq!(
            AesKey::from_encoding_aes_key(&inner_pad).unwrap_err(),
            Base64
        );
        assert_eq!(
            AesKey::from_encoding_aes_key(&non_ascii).unwrap_err(),
            Base64
        );
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", key(DOC_KEY)), "AesKey(<redacted>)");
    }

    #[test]
    fn round_trip_every_length_0_to_600() {
        let k = key(DOC_KEY);
        for receive_id in [RECEIVE_ID, ""] {
            for len in 0..=600 {
                let msg: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
                let ct = k.encrypt(&msg, receive_id);
                let raw_len = STANDARD.decode(&ct).unwrap().len();
                assert_eq!(raw_len % PAD_BLOCK_LEN, 0, "len {len}");
                assert!(raw_len > HEADER_LEN + len + receive_id.len(), "len {len}");
                let d = k.decrypt(&ct).unwrap();
                assert_eq!(d.message, msg, "len {len}");
                assert_eq!(d.receive_id, receive_id.as_bytes(), "len {len}");
            }
        }
    }

    #[test]
    fn encrypt_uses_fresh_randomness() {
        let k = key(DOC_KEY);
        assert_ne!(
            k.encrypt(b"same", RECEIVE_ID),
            k.encrypt(b"same", RECEIVE_ID)
        );
    }

    #[derive(serde::Deserialize)]
    struct Vector {
        encoding_aes_key: String,
        token: String,
        timestamp: String,
        nonce: String,
        receive_id: String,
        random_hex: String,
        message: String,
        encrypt_msg: String,
        msg_signature: String,
        pad: u8,
    }

    /// Vectors from `scripts/gen-crypto-vectors.py` (Python `cryptography`, independent of this code).
    #[test]
    fn known_answer_vectors_from_python() {
        let vectors: Vec<Vector> = serde_json::from_str(include_str!(
            "../../../../tests/fixtures/crypto_vectors.json"
        ))
        .unwrap();
        let mut pads_seen = [false; PAD_BLOCK_LEN + 1];
        for v in &vectors {
            let k = key(&v.encoding_aes_key);
            let d = k.decrypt(&v.encrypt_msg).unwrap();
            assert_eq!(d.message, v.message.as_bytes(), "{}", v.encrypt_msg);
            assert_eq!(d.receive_id, v.receive_id.as_bytes(), "{}", v.encrypt_msg);

            let random: [u8; 16] = hex::decode(&v.random_hex).unwrap().try_into().unwrap();
            let ct = k.encrypt_with_random(random, v.message.as_bytes(), &v.receive_id);
            assert_eq!(ct, v.encrypt_msg);

            let raw = STANDARD.decode(&v.encrypt_msg).unwrap();
            let expected_pad = PAD_BLOCK_LEN - (raw.len() - usize::from(v.pad)) % PAD_BLOCK_LEN;
            assert_eq!(usize::from(v.pad), expected_pad);
            pads_seen[usize::from(v.pad)] = true;

            let sig =
                crate::callback::signature::sign(&v.token, &v.timestamp, &v.nonce, &v.encrypt_msg);
            assert_eq!(sig, v.msg_signature);
        }
        assert!(
            pads_seen[1..].iter().all(|&s| s),
            "pad values 1..=32 all covered"
        );
        assert!(vectors.iter().any(|v| v.message.contains("卫瓴")));
    }

    #[test]
    fn wrong_key_never_yields_original_message() {
        let (right, wrong) = (key(DOC_KEY), key(OTHER_KEY));
        for len in [0, 1, 12, 31, 32, 100, 257] {
            let msg = vec![b'x'; len];
            let ct = right.encrypt(&msg, RECEIVE_ID);
            if let Ok(d) = wrong.decrypt(&ct) {
                assert_ne!(d.message, msg);
                assert_ne!(d.receive_id, RECEIVE_ID.as_bytes());
            }
        }
    }

    #[test]
    fn rejects_bad_base64() {
        let k = key(DOC_KEY);
        assert_eq!(k.decrypt("not base64!!"), Err(DecryptError::Base64));
        assert_eq!(k.decrypt("abc"), Err(DecryptError::Base64));
        // Valid standard base64 minus its padding.
        let ct = k.encrypt(b"hi", RECEIVE_ID);
        let unpadded = ct.trim_end_matches('=');
        assert_ne!(ct, unpadded);
        assert_eq!(k.decrypt(unpadded), Err(DecryptError::Base64));
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(key(DOC_KEY).decrypt(""), Err(DecryptError::BlockLength));
    }

    #[test]
    fn rejects_length_not_multiple_of_16() {
        let k = key(DOC_KEY);
        for len in [1, 15, 17, 31, 33] {
            let ct = STANDARD.encode(vec![0u8; len]);
            assert_eq!(k.decrypt(&ct), Err(DecryptError::BlockLength), "len {len}");
        }
    }

    #[test]
    fn rejects_oversized_before_decoding() {
        // Not valid base64 either, so BlockLength proves the size check ran first.
        let huge = "!".repeat(MAX_ENCODED_LEN + 1);
        assert_eq!(key(DOC_KEY).decrypt(&huge), Err(DecryptError::BlockLength));
    }

    #[test]
    fn rejects_pad_0() {
        let k = key(DOC_KEY);
        let p = plaintext(0, &[0; 11], 0, 1);
        assert_eq!(k.decrypt(&encrypt_raw(&k, &p)), Err(DecryptError::Padding));
    }

    #[test]
    fn rejects_pad_33() {
        let k = key(DOC_KEY);
        let p = plaintext(0, &[0; 11], 33, 33);
        assert_eq!(p.len(), 64);
        assert_eq!(k.decrypt(&encrypt_raw(&k, &p)), Err(DecryptError::Padding));
    }

    #[test]
    fn rejects_pad_longer_than_plaintext() {
        let k = key(DOC_KEY);
        assert_eq!(
            k.decrypt(&encrypt_raw(&k, &[20; 16])),
            Err(DecryptError::Padding)
        );
    }

    #[test]
    fn rejects_inconsistent_pad() {
        let k = key(DOC_KEY);
        let mut p = plaintext(0, &[0; 8], 4, 4);
        let i = p.len() - 3;
        p[i] = 3;
        assert_eq!(k.decrypt(&encrypt_raw(&k, &p)), Err(DecryptError::Padding));
    }

    #[test]
    fn rejects_truncated() {
        let k = key(DOC_KEY);
        // 19 bytes of content: one short of the header.
        let mut p = vec![0xA5; 19];
        p.extend([13; 13]);
        assert_eq!(
            k.decrypt(&encrypt_raw(&k, &p)),
            Err(DecryptError::Truncated)
        );
        // A block that is nothing but padding.
        assert_eq!(
            k.decrypt(&encrypt_raw(&k, &[32; 32])),
            Err(DecryptError::Truncated)
        );
    }

    #[test]
    fn rejects_msg_len_too_large() {
        let k = key(DOC_KEY);
        for len_field in [5, 1000, u32::MAX] {
            let p = plaintext(len_field, b"abcd", 8, 8);
            assert_eq!(
                k.decrypt(&encrypt_raw(&k, &p)),
                Err(DecryptError::LengthField),
                "{len_field}"
            );
        }
        // Exactly the remaining bytes is fine: empty receive_id.
        let p = plaintext(4, b"abcd", 8, 8);
        let d = k.decrypt(&encrypt_raw(&k, &p)).unwrap();
        assert_eq!(
            (d.message.as_slice(), d.receive_id.as_slice()),
            (&b"abcd"[..], &b""[..])
        );
    }

    #[test]
    fn error_messages_contain_no_secrets() {
        let all = [
            DecryptError::Base64,
            DecryptError::BlockLength,
            DecryptError::Padding,
            DecryptError::Truncated,
            DecryptError::LengthField,
        ];
        for e in all {
            let s = e.to_string();
            assert!(!s.is_empty() && !s.contains(DOC_KEY));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn decrypt_arbitrary_string_never_panics(s in ".*") {
            let _ = key(DOC_KEY).decrypt(&s);
        }

        #[test]
        fn decrypt_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = key(DOC_KEY).decrypt(&STANDARD.encode(&bytes));
        }

        /// Whole blocks get past the length checks, so this exercises unpad and the header parser.
        #[test]
        fn decrypt_arbitrary_blocks_never_panics(blocks in prop::collection::vec(any::<[u8; 16]>(), 1..8)) {
            let _ = key(DOC_KEY).decrypt(&STANDARD.encode(blocks.concat()));
        }
    }
}
