//! Credentials for the forge's API: a personal access token as given, or a
//! GitHub App, which signs a short JWT (RS256, `iss` = the app, at most ten
//! minutes) with its private key and exchanges it for installation tokens.
//! Installation tokens expire (an hour on GitHub); one is renewed
//! `--token-refresh-before` its expiry, on the request that finds it that
//! close, so a poll never goes out with a token about to lapse.

mod rs256;

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio::sync::Mutex;

/// How the forwarder authenticates.
pub enum Credentials {
    /// A personal access token (or any bearer token the forge accepts).
    Token(SecretString),
    /// A GitHub App.
    App(Box<App>),
}

/// A GitHub App's identity and the installation tokens it holds.
pub struct App {
    app_id: String,
    key: EncodingKey,
    /// A fixed installation, or `None` to look it up per source owner.
    pub installation_id: Option<u64>,
    pub refresh_before: Duration,
    /// Installation id by source owner, learnt once.
    pub installations: Mutex<HashMap<String, u64>>,
    /// Token and expiry by installation id. A tokio mutex held across a
    /// renewal, so concurrent pollers renew once.
    pub tokens: Mutex<HashMap<u64, (SecretString, SystemTime)>>,
}

/// Why an app credential cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the app private key is not an RSA key in PEM: {0}")]
    Key(String),
    #[error("cannot sign the app JWT: {0}")]
    Sign(String),
}

#[derive(Serialize)]
struct Claims<'a> {
    iat: u64,
    exp: u64,
    iss: &'a str,
}

impl App {
    pub fn new(
        app_id: String,
        private_key_pem: &[u8],
        installation_id: Option<u64>,
        refresh_before: Duration,
    ) -> Result<Self, AuthError> {
        let key = rs256::encoding_key(private_key_pem).map_err(AuthError::Key)?;
        Ok(Self {
            app_id,
            key,
            installation_id,
            refresh_before,
            installations: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// A fresh app JWT. `iat` is a minute in the past and `exp` nine
    /// minutes ahead, GitHub's advice against clock drift within its ten
    /// minute ceiling.
    pub fn jwt(&self) -> Result<SecretString, AuthError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            iat: now.saturating_sub(60),
            exp: now + 9 * 60,
            iss: &self.app_id,
        };
        rs256::install();
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map(SecretString::from)
            .map_err(|err| AuthError::Sign(err.to_string()))
    }

    /// The cached token of `installation` if it is good for longer than
    /// `refresh_before`.
    pub fn fresh(
        tokens: &HashMap<u64, (SecretString, SystemTime)>,
        installation: u64,
        refresh_before: Duration,
    ) -> Option<SecretString> {
        let (token, expires) = tokens.get(&installation)?;
        let left = expires.duration_since(SystemTime::now()).ok()?;
        (left > refresh_before).then(|| SecretString::from(token.expose_secret().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_that_is_not_rsa_pem_is_refused_without_echoing_it() {
        let err = App::new(
            "1".into(),
            b"-----BEGIN RSA PRIVATE KEY-----\nsecretstuff\n-----END RSA PRIVATE KEY-----\n",
            None,
            Duration::from_secs(300),
        )
        .err()
        .expect("refused")
        .to_string();
        assert!(!err.contains("secretstuff"), "{err}");
    }

    /// Runs openssl with `args`, failing the test on an error.
    fn openssl(args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    }

    /// The app JWT made with a PKCS#1 key (as GitHub hands them out) and a
    /// PKCS#8 one verifies with OpenSSL, an implementation independent of
    /// the ring signer, and carries GitHub's header and claims.
    #[test]
    fn the_app_jwt_verifies_with_openssl() {
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_owned();
        openssl(&["genrsa", "-traditional", "-out", &file("pkcs1.pem"), "2048"]);
        openssl(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            &file("pkcs1.pem"),
            "-out",
            &file("pkcs8.pem"),
        ]);
        openssl(&[
            "rsa",
            "-in",
            &file("pkcs1.pem"),
            "-pubout",
            "-out",
            &file("pub.pem"),
        ]);
        for key in ["pkcs1.pem", "pkcs8.pem"] {
            let pem = std::fs::read(file(key)).expect("the key");
            let app =
                App::new("4242".into(), &pem, None, Duration::from_secs(300)).expect("an RSA key");
            let jwt = app.jwt().expect("signed");
            let (message, signature) = jwt.expose_secret().rsplit_once('.').expect("three parts");
            std::fs::write(file("message"), message).expect("written");
            let signature = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
            std::fs::write(file("signature"), signature).expect("written");
            let verify = |message: &str| {
                std::process::Command::new("openssl")
                    .args(["dgst", "-sha256", "-verify", &file("pub.pem")])
                    .args(["-signature", &file("signature"), &file(message)])
                    .output()
                    .expect("openssl runs")
                    .status
                    .success()
            };
            assert!(verify("message"), "{key}: OpenSSL refuses the signature");
            // The check can fail: the same signature over other claims does.
            std::fs::write(file("forged"), message.replacen('e', "f", 1)).expect("written");
            assert!(!verify("forged"), "{key}: OpenSSL accepts anything");

            let part = |n: usize| -> serde_json::Value {
                let b64 = message.split('.').nth(n).expect("a part");
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(b64).expect("base64url"))
                    .expect("JSON")
            };
            assert_eq!(part(0)["alg"], "RS256", "{key}");
            let claims = part(1);
            assert_eq!(claims["iss"], "4242");
            let (iat, exp) = (claims["iat"].as_u64(), claims["exp"].as_u64());
            assert_eq!(exp.zip(iat).map(|(e, i)| e - i), Some(600), "{claims}");
        }
    }

    /// Keys ring cannot sign RS256 with are refused when the app is made,
    /// not at the first token: an EC key, an RSA key under 2048 bits.
    #[test]
    fn keys_that_cannot_sign_rs256_are_refused_at_once() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_owned();
        openssl(&["genrsa", "-traditional", "-out", &file("small.pem"), "1024"]);
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &file("ec.pem"),
        ]);
        for key in ["small.pem", "ec.pem"] {
            let pem = std::fs::read(file(key)).expect("the key");
            let refused = App::new("1".into(), &pem, None, Duration::from_secs(300));
            assert!(matches!(refused, Err(AuthError::Key(_))), "{key}");
        }
    }

    #[test]
    fn a_token_close_to_expiry_is_not_fresh() {
        let mut tokens = HashMap::new();
        let soon = SystemTime::now() + Duration::from_secs(60);
        tokens.insert(1, (SecretString::from("t"), soon));
        assert!(App::fresh(&tokens, 1, Duration::from_secs(300)).is_none());
        assert!(App::fresh(&tokens, 1, Duration::from_secs(10)).is_some());
        assert!(App::fresh(&tokens, 2, Duration::from_secs(10)).is_none());
    }
}
