//! The one place rustls is configured: the serving certificate
//! (`--tls-cert-file` / `--tls-key-file`), the client configuration every
//! upstream connection uses, and trust anchors.
//!
//! Trust policy, the same for every component that dials https: the
//! system's trust anchors (the OS store as `rustls-native-certs` finds it,
//! which honours `SSL_CERT_FILE` and `SSL_CERT_DIR`) plus every PEM file its
//! CA flag names. Unreadable system certificates are skipped; an unreadable
//! or empty CA file is an error naming the flag. A system without a store
//! (the agent's own image is FROM scratch) contributes nothing: then only the
//! CA files are trusted, and with none, https upstreams are refused (a
//! warning says so at start). The managed apiserver is the exception: it is
//! trusted by its kubeconfig's CA alone, as kubectl does.
//!
//! Go clients (kubectl, client-go) send a bearer token only over TLS, so a
//! component that authenticates callers by their token must serve TLS to
//! them.

use std::{path::Path, path::PathBuf, sync::Arc};

use clap::Args;
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio_rustls::TlsAcceptor;

/// Why a TLS configuration or a trust store cannot be built. The `String`
/// fields name where the bytes came from (a flag and a file, or the
/// kubeconfig).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: no PEM certificate in it")]
    NoCertificates(String),
    #[error("{0}: no PEM private key in it")]
    NoKey(String),
    #[error("{0}: {1}")]
    Pem(String, rustls::pki_types::pem::Error),
    #[error("{0}: {1}")]
    Rejected(String, rustls::Error),
    #[error("TLS server name {0:?} is not a valid name")]
    ServerName(String),
    #[error("insecure-skip-tls-verify is not supported; give the server's CA")]
    Insecure,
    #[error("TLS: {0}")]
    Config(#[source] rustls::Error),
}

/// Serving certificate flags.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Serving TLS")]
pub struct TlsArgs {
    /// PEM certificate chain to serve HTTPS with (e.g. a mounted
    /// kubernetes.io/tls Secret's tls.crt). Without it, plain HTTP. Read at
    /// start: restart to pick up a renewed certificate.
    #[arg(
        long,
        env = "CLUSTER_RELAY_TLS_CERT_FILE",
        value_name = "PATH",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of --tls-cert-file.
    #[arg(
        long,
        env = "CLUSTER_RELAY_TLS_KEY_FILE",
        value_name = "PATH",
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<PathBuf>,
}

impl TlsArgs {
    /// The acceptor for the configured certificate, or `None` for plain
    /// HTTP. Errors name the flag and the file.
    pub fn acceptor(&self) -> Result<Option<TlsAcceptor>, TlsError> {
        let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) else {
            return Ok(None);
        };
        let (cert_what, key_what) = (
            format!("--tls-cert-file {}", cert.display()),
            format!("--tls-key-file {}", key.display()),
        );
        let chain = certificates(&read(cert, &cert_what)?, &cert_what)?;
        let key =
            PrivateKeyDer::from_pem_slice(&read(key, &key_what)?).map_err(|err| match err {
                rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey(key_what.clone()),
                err => TlsError::Pem(key_what.clone(), err),
            })?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|err| TlsError::Rejected("--tls-cert-file/--tls-key-file".into(), err))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(TlsAcceptor::from(Arc::new(config))))
    }
}

/// The crypto every configuration uses.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|err| TlsError::Read(what.to_owned(), err))
}

/// Every certificate in PEM `bytes`; at least one.
fn certificates(bytes: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::Pem(what.to_owned(), err))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificates(what.to_owned()));
    }
    Ok(chain)
}

/// The client configuration of every upstream connection: HTTP/1.1 only
/// (no ALPN), as upgrades (WebSocket, SPDY) are not possible over h2.
pub fn client_config(roots: RootCertStore) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Trust anchors from PEM bytes (a kubeconfig's CA); `what` names the
/// source in errors.
pub fn roots_from_pem(pem: &[u8], what: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    add(&mut roots, pem, what)?;
    Ok(roots)
}

fn add(roots: &mut RootCertStore, pem: &[u8], what: &str) -> Result<(), TlsError> {
    for cert in certificates(pem, what)? {
        roots
            .add(cert)
            .map_err(|err| TlsError::Rejected(what.to_owned(), err))?;
    }
    Ok(())
}

/// The trust anchors of the module's policy: the system's plus the PEM
/// `files` of `flag`. An empty store is not an error (plain-http upstreams
/// need none) but is logged, naming the flag that would fill it.
pub fn trust_roots(files: &[PathBuf], flag: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    // Unreadable system certificates are skipped: the files given (or the
    // rest of the system store) may be all that is needed.
    let system = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(system.certs);
    for file in files {
        let what = format!("{flag} {}", file.display());
        add(&mut roots, &read(file, &what)?, &what)?;
    }
    if roots.is_empty() {
        tracing::warn!(
            flag,
            "no trust anchors: the system has none and {flag} names no CA file; https upstreams will be refused"
        );
    } else {
        tracing::debug!(system = added, total = roots.len(), "trust anchors loaded");
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files_must_hold_certificates() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let err = trust_roots(&[empty], "--ca-file").expect_err("no certificate");
        assert!(err.to_string().starts_with("--ca-file "), "{err}");
        assert!(
            err.to_string().ends_with("no PEM certificate in it"),
            "{err}"
        );
        let missing = dir.path().join("missing.pem");
        let err = trust_roots(&[missing], "--ca-file").expect_err("no file");
        assert!(matches!(err, TlsError::Read(..)), "{err}");
    }

    #[test]
    fn a_serving_key_file_without_a_key_is_named() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, "").expect("write");
        std::fs::write(&key, "").expect("write");
        let args = TlsArgs {
            tls_cert_file: Some(cert),
            tls_key_file: Some(key),
        };
        let Err(err) = args.acceptor() else {
            panic!("an acceptor without a certificate");
        };
        assert!(err.to_string().starts_with("--tls-cert-file "), "{err}");
    }
}
