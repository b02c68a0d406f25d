//! Handshake cryptography: challenge–response with HMAC-SHA256.
//!
//! The server sends a fresh random nonce; the client answers `HMAC-SHA256(secret, LABEL || nonce || tenant)`.
//! The secret never crosses the wire, and a captured answer is useless against any other nonce. The server
//! compares tags in constant time (`hmac`'s `verify_slice`).

use crate::proto::NONCE_LEN;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Domain-separation label mixed into every tag.
pub const LABEL: &[u8] = b"farmem-auth-v1";

/// A fresh random challenge.
pub fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).expect("the OS random source is available");
    n
}

fn mac(secret: &[u8], nonce: &[u8], tenant: &str) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    m.update(LABEL);
    m.update(nonce);
    m.update(tenant.as_bytes());
    m
}

/// The client's answer to `nonce`.
pub fn respond(secret: &[u8], nonce: &[u8], tenant: &str) -> [u8; 32] {
    mac(secret, nonce, tenant).finalize().into_bytes().into()
}

/// Whether `tag` answers `nonce` for `tenant` under `secret` (constant-time comparison).
pub fn verify(secret: &[u8], nonce: &[u8], tenant: &str, tag: &[u8]) -> bool {
    mac(secret, nonce, tenant).verify_slice(tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_verify_only_for_their_nonce_and_secret() {
        let (n1, n2) = (nonce(), nonce());
        assert_ne!(n1, n2);
        let tag = respond(b"secret-secret-secret", &n1, "t");
        assert!(verify(b"secret-secret-secret", &n1, "t", &tag));
        assert!(!verify(b"secret-secret-secret", &n2, "t", &tag), "a replayed answer fails on a new nonce");
        assert!(!verify(b"other-secret-secret!", &n1, "t", &tag));
        assert!(!verify(b"secret-secret-secret", &n1, "u", &tag));
        assert!(!verify(b"secret-secret-secret", &n1, "t", &tag[..31]));
    }
}
