//! Credentials for the forge's API: a personal access token as given, or a
//! GitHub App, which signs a short JWT (RS256, `iss` = the app, at most ten
//! minutes) with its private key and exchanges it for installation tokens.
//! Installation tokens expire (an hour on GitHub); one is renewed
//! `--token-refresh-before` its expiry, on the request that finds it that
//! close, so a poll never goes out with a token about to lapse.

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
        // The error text of the PEM parser never contains the key.
        let key = EncodingKey::from_rsa_pem(private_key_pem)
            .map_err(|err| AuthError::Key(err.to_string()))?;
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
