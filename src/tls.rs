//! `--tls-cert-file` / `--tls-key-file`: serving HTTPS instead of plain
//! HTTP. Go clients (kubectl, client-go) send a bearer token only over
//! TLS, so a component that authenticates callers by their token must serve
//! TLS to them.

use std::{io::BufReader, path::PathBuf, sync::Arc};

use clap::Args;
use tokio_rustls::TlsAcceptor;

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
    pub fn acceptor(&self) -> anyhow::Result<Option<TlsAcceptor>> {
        let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) else {
            return Ok(None);
        };
        let read = |path: &PathBuf, flag: &str| {
            std::fs::read(path).map_err(|err| anyhow::anyhow!("{flag} {}: {err}", path.display()))
        };
        let chain = rustls_pemfile::certs(&mut BufReader::new(&read(cert, "--tls-cert-file")?[..]))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| anyhow::anyhow!("--tls-cert-file {}: {err}", cert.display()))?;
        if chain.is_empty() {
            anyhow::bail!(
                "--tls-cert-file {}: no PEM certificate in it",
                cert.display()
            );
        }
        let key_der =
            rustls_pemfile::private_key(&mut BufReader::new(&read(key, "--tls-key-file")?[..]))
                .map_err(|err| anyhow::anyhow!("--tls-key-file {}: {err}", key.display()))?
                .ok_or_else(|| {
                    anyhow::anyhow!("--tls-key-file {}: no PEM private key in it", key.display())
                })?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|err| anyhow::anyhow!("TLS: {err}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|err| anyhow::anyhow!("--tls-cert-file/--tls-key-file: {err}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(TlsAcceptor::from(Arc::new(config))))
    }
}
