//! The forge's webhook signature: `X-Hub-Signature-256: sha256=<hex>`, an
//! HMAC-SHA256 of the raw body with the shared secret (GitHub's scheme, also
//! used by Gitea and others). The legacy `X-Hub-Signature: sha1=<hex>` is
//! accepted only when enabled. Comparison is constant-time.

use hmac::{Hmac, Mac};
use http::HeaderMap;
use secrecy::{ExposeSecret, SecretBox};
use sha1::Sha1;
use sha2::Sha256;

/// The environment variable that may hold the shared secret itself.
pub const SECRET_ENV: &str = "CLUSTER_RELAY_WEBHOOK_SECRET";

/// The header GitHub signs with today.
pub const SIGNATURE_256: &str = "x-hub-signature-256";
/// The legacy SHA-1 header.
pub const SIGNATURE_SHA1: &str = "x-hub-signature";

/// Why a delivery's signature was not accepted; the label of the inbound
/// metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no signature header")]
    Missing,
    #[error("the signature header is not sha256=<64 hex digits>")]
    Malformed,
    #[error("the signature does not match the body")]
    Mismatch,
}

/// Verifies signatures with the shared secret.
pub struct Verifier {
    secret: SecretBox<[u8]>,
    allow_sha1: bool,
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Verifier {
    pub fn new(secret: Vec<u8>, allow_sha1: bool) -> Self {
        Self {
            secret: SecretBox::new(secret.into_boxed_slice()),
            allow_sha1,
        }
    }

    /// Checks the body against the signature headers: the SHA-256 one if
    /// present, else the SHA-1 one if allowed.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), SignatureError> {
        let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or(""));
        if let Some(value) = header(SIGNATURE_256) {
            let digest = value
                .strip_prefix("sha256=")
                .and_then(hex_decode)
                .filter(|d| d.len() == 32)
                .ok_or(SignatureError::Malformed)?;
            let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.expose_secret())
                .expect("HMAC takes keys of any length");
            mac.update(body);
            return mac
                .verify_slice(&digest)
                .map_err(|_| SignatureError::Mismatch);
        }
        if self.allow_sha1
            && let Some(value) = header(SIGNATURE_SHA1)
        {
            let digest = value
                .strip_prefix("sha1=")
                .and_then(hex_decode)
                .filter(|d| d.len() == 20)
                .ok_or(SignatureError::Malformed)?;
            let mut mac = Hmac::<Sha1>::new_from_slice(self.secret.expose_secret())
                .expect("HMAC takes keys of any length");
            mac.update(body);
            return mac
                .verify_slice(&digest)
                .map_err(|_| SignatureError::Mismatch);
        }
        Err(SignatureError::Missing)
    }

    /// The `X-Hub-Signature-256` value for `body`, for forwarders that sign.
    pub fn sign(&self, body: &[u8]) -> String {
        sign_sha256(self.secret.expose_secret(), body)
    }
}

/// `sha256=<hex>` of `body` with `secret`.
pub fn sign_sha256(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const PAYLOAD: &[u8] = b"Hello, World!";
    // GitHub's documented test vector.
    const EXPECTED: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).expect("valid"));
        headers
    }

    #[test]
    fn githubs_test_vector_verifies() {
        let verifier = Verifier::new(SECRET.to_vec(), false);
        assert_eq!(verifier.sign(PAYLOAD), EXPECTED);
        assert_eq!(
            verifier.verify(&headers(SIGNATURE_256, EXPECTED), PAYLOAD),
            Ok(())
        );
    }

    #[test]
    fn a_flipped_byte_or_a_bad_header_is_refused() {
        let verifier = Verifier::new(SECRET.to_vec(), false);
        let mut flipped = PAYLOAD.to_vec();
        flipped[0] ^= 1;
        let signed = headers(SIGNATURE_256, EXPECTED);
        assert_eq!(
            verifier.verify(&signed, &flipped),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verifier.verify(&HeaderMap::new(), PAYLOAD),
            Err(SignatureError::Missing)
        );
        for bad in [
            "757107ea",
            "sha256=zz",
            "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59",
        ] {
            assert_eq!(
                verifier.verify(&headers(SIGNATURE_256, bad), PAYLOAD),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn sha1_only_when_allowed() {
        let sha1 = headers(
            SIGNATURE_SHA1,
            "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59",
        );
        let strict = Verifier::new(SECRET.to_vec(), false);
        assert_eq!(strict.verify(&sha1, PAYLOAD), Err(SignatureError::Missing));
        let lenient = Verifier::new(SECRET.to_vec(), true);
        assert_eq!(lenient.verify(&sha1, PAYLOAD), Ok(()));
        assert_eq!(
            lenient.verify(&sha1, b"Hello, World?"),
            Err(SignatureError::Mismatch)
        );
    }
}
