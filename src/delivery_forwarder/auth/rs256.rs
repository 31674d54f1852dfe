//! jsonwebtoken's crypto backend for the one signature the forwarder makes:
//! RS256 with `ring`, which rustls already brings. jsonwebtoken's own
//! backends are RustCrypto's, whose `rsa` crate has an advisory without a
//! fix (RUSTSEC-2023-0071, Marvin), or aws-lc-rs, a C build for the static
//! musl binary; this is neither. Nothing here verifies: the forge does.

use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey,
    crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils},
    errors::{Error, ErrorKind},
    signature,
};
use ring::{
    error::KeyRejected,
    rand::SystemRandom,
    signature::{RSA_PKCS1_SHA256, RsaKeyPair},
};
use rustls::pki_types::{PrivateKeyDer, pem::PemObject};

/// RS256 signing only; every other algorithm, and every verification, is
/// refused with an error rather than a panic.
static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    // JWKs are not used; these panic if they ever were.
    key_utils: KeyUtils::new_unimplemented(),
};

/// Makes this jsonwebtoken's backend for the process. Idempotent; called
/// before every signature, since jsonwebtoken has no backend of its own
/// here and would panic without one.
pub fn install() {
    // Err only when a provider is already installed: this one, as nothing
    // else in the process uses jsonwebtoken.
    let _ = PROVIDER.install_default();
}

/// Reads an RSA private key from PEM: PKCS#1 (`RSA PRIVATE KEY`, as GitHub
/// hands out app keys) or PKCS#8 (`PRIVATE KEY`), checked by ring at once,
/// so a key it cannot sign with (another kind, under 2048 bits) is refused
/// at start-up. Errors never contain key material.
pub fn encoding_key(pem: &[u8]) -> Result<EncodingKey, String> {
    let der =
        PrivateKeyDer::from_pem_slice(pem).map_err(|_| "no PEM private key found".to_owned())?;
    let checked = match &der {
        PrivateKeyDer::Pkcs1(key) => RsaKeyPair::from_der(key.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(key) => RsaKeyPair::from_pkcs8(key.secret_pkcs8_der()),
        _ => return Err("the PEM private key is not an RSA key".to_owned()),
    };
    checked.map_err(|err| format!("the RSA key is refused: {err}"))?;
    Ok(EncodingKey::from_rsa_der(der.secret_der()))
}

/// The key pair of an [`EncodingKey`] made by [`encoding_key`]: the DER
/// of PKCS#1 or PKCS#8, which cannot be mistaken for each other.
fn key_pair(der: &[u8]) -> Result<RsaKeyPair, KeyRejected> {
    RsaKeyPair::from_der(der).or_else(|_| RsaKeyPair::from_pkcs8(der))
}

struct Rs256(RsaKeyPair);

impl signature::Signer<Vec<u8>> for Rs256 {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let mut out = vec![0; self.0.public().modulus_len()];
        self.0
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg, &mut out)
            .map_err(|_| signature::Error::new())?;
        Ok(out)
    }
}

impl JwtSigner for Rs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::RS256
    }
}

fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    if *algorithm != Algorithm::RS256 {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let pair = key_pair(key.as_bytes()).map_err(|err| ErrorKind::InvalidRsaKey(err.to_string()))?;
    Ok(Box::new(Rs256(pair)))
}

fn verifier(_: &Algorithm, _: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    Err(ErrorKind::InvalidAlgorithm.into())
}
