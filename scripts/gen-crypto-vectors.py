#!/usr/bin/env python3
"""Generate known-answer vectors for crates/weiling-proto/src/callback/cipher.rs and signature.rs.

This is an independent implementation of the WeCom callback scheme (Python's
`cryptography` + `hashlib`), so the Rust tests catch mistakes that a Rust-only
round trip would happily reproduce on both sides.

Everything is deterministic (fixed keys, fixed token/timestamp/nonce, random
prefix derived from the vector index), so re-running the script yields the same
file byte for byte.

Usage: python3 scripts/gen-crypto-vectors.py  (writes tests/fixtures/crypto_vectors.json)
"""

import base64
import hashlib
import json
import pathlib
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "crypto_vectors.json"

# The first key is the sample from the WeCom documentation. Its last character
# ('C') carries non-zero trailing bits, which strict base64 decoders reject but
# WeCom (and Python's b64decode) accept, so it must stay in the set. The second
# key ends in 'E' (zero trailing bits), the canonical case.
KEYS = [
    "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
    "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFE",
]
TOKEN = "QDG6eK"
TIMESTAMP = "1409659813"
NONCE = "1372623149"
RECEIVE_ID = "wwa1b2c3d4e5f6a7b8"  # 18 bytes, shaped like a CorpID
BLOCK = 32  # WeCom pads to 32 bytes, not the AES block size of 16


def decode_key(encoding_aes_key: str) -> bytes:
    assert len(encoding_aes_key) == 43
    key = base64.b64decode(encoding_aes_key + "=")
    assert len(key) == 32
    return key


def pad_len(n: int) -> int:
    return BLOCK - (n % BLOCK)


def encrypt(key: bytes, random: bytes, msg: bytes, receive_id: bytes) -> tuple[str, int]:
    plain = random + struct.pack(">I", len(msg)) + msg + receive_id
    pad = pad_len(len(plain))
    plain += bytes([pad]) * pad
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    ct = enc.update(plain) + enc.finalize()
    return base64.b64encode(ct).decode("ascii"), pad


def decrypt(key: bytes, encrypt_msg: str) -> tuple[bytes, bytes]:
    dec = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = dec.update(base64.b64decode(encrypt_msg)) + dec.finalize()
    pad = plain[-1]
    assert 1 <= pad <= BLOCK and plain[-pad:] == bytes([pad]) * pad
    plain = plain[:-pad]
    (msg_len,) = struct.unpack(">I", plain[16:20])
    return plain[20 : 20 + msg_len], plain[20 + msg_len :]


def sign(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode("utf-8")).hexdigest()


def ascii_message(length: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(alphabet[i % len(alphabet)] for i in range(length))


def cases() -> list[tuple[str, str, str]]:
    """(encoding_aes_key, message, receive_id) covering every pad value 1..=32."""
    out = []
    fixed = 16 + 4 + len(RECEIVE_ID.encode())
    for pad in range(1, BLOCK + 1):
        # Smallest message length that lands on exactly this pad value.
        msg_len = (BLOCK - pad - fixed) % BLOCK
        out.append((KEYS[pad % 2], ascii_message(msg_len), RECEIVE_ID))
    json_msg = json.dumps(
        {
            "event": "customer_add",
            "corp_id": RECEIVE_ID,
            "name": "张三",
            "remark": "来自卫瓴的回调：客户已添加 ✅",
            "tags": ["重要客户", "华东区"],
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    out.append((KEYS[0], json_msg, RECEIVE_ID))
    out.append((KEYS[1], "", RECEIVE_ID))
    out.append((KEYS[0], "message with an empty receive_id", ""))
    out.append((KEYS[1], ascii_message(300), RECEIVE_ID))
    return out


def main() -> None:
    vectors = []
    for index, (encoding_aes_key, message, receive_id) in enumerate(cases()):
        key = decode_key(encoding_aes_key)
        random = hashlib.sha256(f"weiling-relay vector {index}".encode()).digest()[:16]
        msg_bytes = message.encode("utf-8")
        rid_bytes = receive_id.encode("utf-8")
        encrypt_msg, pad = encrypt(key, random, msg_bytes, rid_bytes)
        assert decrypt(key, encrypt_msg) == (msg_bytes, rid_bytes)
        vectors.append(
            {
                "encoding_aes_key": encoding_aes_key,
                "token": TOKEN,
                "timestamp": TIMESTAMP,
                "nonce": NONCE,
                "receive_id": receive_id,
                "random_hex": random.hex(),
                "message": message,
                "encrypt_msg": encrypt_msg,
                "msg_signature": sign(TOKEN, TIMESTAMP, NONCE, encrypt_msg),
                "pad": pad,
            }
        )
    pads = {v["pad"] for v in vectors}
    assert pads == set(range(1, BLOCK + 1)), pads
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(vectors, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(vectors)} vectors to {OUT}")


if __name__ == "__main__":
    main()
