//! Throwaway certificates for tests: a CA and a server certificate signed by
//! it, made with the openssl CLI into a directory of their own under the run
//! directory (so a killed run's files are swept too).
//!
//! Every certificate is X.509 v3: rustls (and so kube-rs, and our agent)
//! rejects v1 with `UnsupportedCertVersion`, and `openssl x509 -req` makes v1
//! unless given an extfile (SUBSTRATE.md). P-256 keys, because they are made
//! in milliseconds and every TLS stack here accepts them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use super::procs;

/// A CA and one server certificate (with its key) signed by it, as PEM files.
/// Dropping it removes the files.
pub struct TlsFiles {
    /// The CA certificate clients trust.
    pub ca_pem_path: PathBuf,
    /// The server certificate.
    pub cert_path: PathBuf,
    /// The server's private key (PKCS#8).
    pub key_path: PathBuf,
    /// The contents of `ca_pem_path`.
    pub ca_pem: String,
    dir: tempfile::TempDir,
}

impl TlsFiles {
    /// Makes a new CA and a certificate for a server known by `dns_names` and
    /// `ips` (its subjectAltName; the first DNS name is also its CN), valid
    /// for both serverAuth and clientAuth.
    pub fn generate(dns_names: &[&str], ips: &[IpAddr]) -> anyhow::Result<TlsFiles> {
        if dns_names.is_empty() && ips.is_empty() {
            bail!("a server certificate needs at least one DNS name or IP");
        }
        let dir = tempfile::Builder::new()
            .prefix("tls-")
            .tempdir_in(procs::run_dir())
            .context("creating a directory for certificates")?;
        let path = |name: &str| dir.path().join(name);
        let (ca_key, ca_pem_path) = (path("ca.key"), path("ca.crt"));
        let (key_path, cert_path, csr) =
            (path("server.key"), path("server.crt"), path("server.csr"));

        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        // `req -x509` makes a v3 certificate; the extensions make it a CA
        // that rustls accepts as a trust anchor.
        openssl(dir.path(), |cmd| {
            cmd.args([
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                "/CN=cluster-relay test CA",
            ]);
            cmd.args(ec)
                .arg("-keyout")
                .arg(&ca_key)
                .arg("-out")
                .arg(&ca_pem_path);
            cmd.args(["-addext", "basicConstraints=critical,CA:TRUE"]);
            cmd.args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        })?;

        let cn = dns_names
            .first()
            .map_or_else(|| ips[0].to_string(), |d| d.to_string());
        openssl(dir.path(), |cmd| {
            cmd.args(["req", "-new", "-subj", &format!("/CN={cn}")]);
            cmd.args(ec)
                .arg("-keyout")
                .arg(&key_path)
                .arg("-out")
                .arg(&csr);
        })?;

        let san: Vec<String> = (dns_names.iter().map(|d| format!("DNS:{d}")))
            .chain(ips.iter().map(|ip| format!("IP:{ip}")))
            .collect();
        let extfile = path("server.ext");
        std::fs::write(
            &extfile,
            format!(
                "basicConstraints = critical, CA:FALSE\n\
                 keyUsage = critical, digitalSignature, keyEncipherment\n\
                 extendedKeyUsage = serverAuth, clientAuth\n\
                 subjectKeyIdentifier = hash\n\
                 authorityKeyIdentifier = keyid\n\
                 subjectAltName = {}\n",
                san.join(", ")
            ),
        )
        .context("writing the extfile")?;
        openssl(dir.path(), |cmd| {
            // -CAcreateserial: a random serial, kept in ca.srl.
            cmd.args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"]);
            cmd.arg(&csr);
            cmd.arg("-CA").arg(&ca_pem_path).arg("-CAkey").arg(&ca_key);
            cmd.arg("-extfile")
                .arg(&extfile)
                .arg("-out")
                .arg(&cert_path);
        })?;

        let ca_pem = std::fs::read_to_string(&ca_pem_path).context("reading the CA certificate")?;
        Ok(TlsFiles {
            ca_pem_path,
            cert_path,
            key_path,
            ca_pem,
            dir,
        })
    }

    /// The directory holding the files (also the CA's key, `ca.key`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Runs one openssl command built by `build`, failing with its stderr.
fn openssl(dir: &Path, build: impl FnOnce(&mut Command)) -> anyhow::Result<()> {
    let mut cmd = Command::new("openssl");
    build(&mut cmd);
    cmd.current_dir(dir).stdin(Stdio::null());
    let out = cmd.output().context("running openssl")?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
