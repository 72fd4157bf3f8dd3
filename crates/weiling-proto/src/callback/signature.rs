//! Callback signature: SHA-1 over the sorted token, timestamp, nonce and payload.

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// Computes `msg_signature` as 40 lowercase hex characters.
///
/// `payload` is `encrypt_msg` for POST callbacks and `echostr` for the GET URL check.
pub fn sign(token: &str, timestamp: &str, nonce: &str, payload: &str) -> String {
    let mut parts = [token, timestamp, nonce, payload];
    // WeCom sorts the raw strings bytewise (`str`'s `Ord`), not numerically or case-insensitively.
    parts.sort_unstable();
    let mut hasher = Sha1::new();
    for part in parts {
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Constant-time compare (`subtle::ConstantTimeEq`) of [`sign`] with `given`
/// (ASCII-lowercased first); false for wrong length.
pub fn verify(token: &str, timestamp: &str, nonce: &str, payload: &str, given: &str) -> bool {
    let expected = sign(token, timestamp, nonce, payload);
    // Senders are not obliged to use lowercase hex; the digest is the same either way.
    let given = given.to_ascii_lowercase();
    // The length is public (always 40), so leaking it via an early return costs nothing.
    if given.len() != expected.len() {
        return false;
    }
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "QDG6eK";
    const TIMESTAMP: &str = "1409659813";
    const NONCE: &str = "1372623149";
    const PAYLOAD: &str = "hello weiling";
    // python3: hashlib.sha1("".join(sorted([TOKEN, TIMESTAMP, NONCE, PAYLOAD])).encode()).hexdigest()
    const KNOWN: &str = "d204014d1b19756491f4faa186e84dc873d9d389";

    #[test]
    fn sign_matches_independent_python_value() {
        assert_eq!(sign(TOKEN, TIMESTAMP, NONCE, PAYLOAD), KNOWN);
    }

    #[test]
    fn sign_is_40_lowercase_hex() {
        let s = sign("", "", "", "");
        assert_eq!(s.len(), 40);
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }

    #[test]
    fn sort_order_is_bytewise() {
        // Uppercase before lowercase: hashlib.sha1(b"ABab").hexdigest()
        assert_eq!(
            sign("b", "a", "B", "A"),
            "4cf88ce142afe906ce4444ea98fddf229bf2392b"
        );
        // "10" < "9" < "Zeta" < "alpha" bytewise (not numeric, not case-insensitive).
        assert_eq!(
            sign("alpha", "9", "Zeta", "10"),
            "4bde8ff54f72ff850f71bfa62c3e4037b0700f17"
        );
    }

    #[test]
    fn sign_ignores_argument_order() {
        let base = sign(TOKEN, TIMESTAMP, NONCE, PAYLOAD);
        assert_eq!(sign(PAYLOAD, NONCE, TIMESTAMP, TOKEN), base);
        assert_eq!(sign(NONCE, TOKEN, PAYLOAD, TIMESTAMP), base);
    }

    #[test]
    fn verify_accepts_lowercase_and_uppercase() {
        assert!(verify(TOKEN, TIMESTAMP, NONCE, PAYLOAD, KNOWN));
        assert!(verify(
            TOKEN,
            TIMESTAMP,
            NONCE,
            PAYLOAD,
            &KNOWN.to_ascii_uppercase()
        ));
    }

    #[test]
    fn verify_rejects_flipped_char() {
        for i in 0..KNOWN.len() {
            let mut bad = KNOWN.as_bytes().to_vec();
            bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
            let bad = String::from_utf8(bad).unwrap();
            assert!(!verify(TOKEN, TIMESTAMP, NONCE, PAYLOAD, &bad), "index {i}");
        }
    }

    #[test]
    fn verify_rejects_wrong_length() {
        assert!(!verify(TOKEN, TIMESTAMP, NONCE, PAYLOAD, ""));
        assert!(!verify(TOKEN, TIMESTAMP, NONCE, PAYLOAD, &KNOWN[..39]));
        assert!(!verify(
            TOKEN,
            TIMESTAMP,
            NONCE,
            PAYLOAD,
            &format!("{KNOWN}0")
        ));
    }

    #[test]
    fn verify_rejects_other_payload() {
        assert!(!verify(TOKEN, TIMESTAMP, NONCE, "hello weiling!", KNOWN));
    }

    #[test]
    fn verify_handles_non_ascii_without_panicking() {
        assert!(!verify(
            TOKEN,
            TIMESTAMP,
            NONCE,
            PAYLOAD,
            "签名签名签名签名签名签名签名签名签名签名签名签名签名"
        ));
    }
}
