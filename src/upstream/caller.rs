//! The exit relay's check of its caller: the relay token in
//! `Cluster-Proxy-Relay-Authorization` is reviewed by the managed cluster's
//! apiserver (TokenReview) and its user must be one of `--allowed-caller`.
//! With no allowed caller configured nobody is allowed (fail closed).
//! Verdicts are cached briefly per token; the cache is bounded, and
//! concurrent lookups of one token share a single TokenReview.

use std::{
    borrow::Borrow,
    collections::{HashMap, HashSet},
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, api::PostParams};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::coalesce::Coalescer;

/// The outcome of checking a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    // Arc<str>: a cached verdict is cloned on every request.
    Allowed(Arc<str>),
    /// Authenticated, but not an allowed caller.
    NotAllowed(Arc<str>),
    Unauthenticated,
}

const CACHE_LIMIT: usize = 4096;

/// A token as a verdict-cache key. Looked up by the token itself, with the
/// map's keyed SipHash: hashing a ~1 KiB token with SHA-256 on every request
/// was the largest single cost of a cached verdict. An equal hash is then
/// confirmed by comparing the whole token, so a verdict is never reused for
/// another token. The copy is wiped when the entry goes, and never printed.
struct CachedToken(Box<str>);

impl Borrow<str> for CachedToken {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq for CachedToken {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for CachedToken {}

impl std::hash::Hash for CachedToken {
    // As str hashes, which `Borrow<str>` lookups rely on.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl Drop for CachedToken {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CachedToken(..)")
    }
}

/// Checks relay callers.
#[derive(Default)]
struct Cache {
    verdicts: HashMap<CachedToken, (Instant, Verdict)>,
    /// The token answered last, compared before any hashing: an exit relay
    /// serves one relay token at a time but while it rotates.
    last: Option<(CachedToken, Instant, Verdict)>,
}

pub struct Callers {
    client: kube::Client,
    allowed: HashSet<String>,
    ttl: Duration,
    timeout: Duration,
    cache: Mutex<Cache>,
    /// Keyed by the token's SHA-256, computed on a cache miss only.
    reviews: Coalescer<[u8; 32], Verdict>,
}

impl Callers {
    pub fn new(
        client: kube::Client,
        allowed: impl IntoIterator<Item = String>,
        ttl: Duration,
        timeout: Duration,
    ) -> Self {
        Self {
            client,
            allowed: allowed.into_iter().collect(),
            ttl,
            timeout,
            cache: Mutex::default(),
            reviews: Coalescer::new(),
        }
    }

    /// Whether any caller can ever be allowed.
    pub fn any_allowed(&self) -> bool {
        !self.allowed.is_empty()
    }

    /// Reviews `token`; an error means the apiserver could not answer.
    pub async fn verify(&self, token: &str) -> Result<Verdict, String> {
        {
            let mut cache = self.cache.lock().expect("cache lock");
            if let Some((last, at, verdict)) = &cache.last
                && *last.0 == *token
                && at.elapsed() < self.ttl
            {
                return Ok(verdict.clone());
            }
            if let Some((at, verdict)) = cache.verdicts.get(token)
                && at.elapsed() < self.ttl
            {
                let (at, verdict) = (*at, verdict.clone());
                cache.last = Some((CachedToken(token.into()), at, verdict.clone()));
                return Ok(verdict);
            }
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // When a verdict expires under load, every request with the token
        // misses at once; one review answers them all.
        let (verdict, _) = self
            .reviews
            .get_or_fetch(key, || self.review(token))
            .await?;
        Ok(verdict)
    }

    async fn review(&self, token: &str) -> Result<Verdict, String> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let answer = tokio::time::timeout(
            self.timeout,
            reviews.create(&PostParams::default(), &review),
        )
        .await
        .map_err(|_| "TokenReview timed out".to_owned())?
        .map_err(|err| format!("TokenReview failed: {err}"))?;
        let status = answer.status.unwrap_or_default();
        let verdict = match (status.authenticated, status.user.and_then(|u| u.username)) {
            (Some(true), Some(user)) if self.allowed.contains(&user) => {
                Verdict::Allowed(user.into())
            }
            (Some(true), Some(user)) => Verdict::NotAllowed(user.into()),
            _ => Verdict::Unauthenticated,
        };
        let mut cache = self.cache.lock().expect("cache lock");
        let verdicts = &mut cache.verdicts;
        if verdicts.len() >= CACHE_LIMIT {
            let ttl = self.ttl;
            verdicts.retain(|_, (at, _)| at.elapsed() < ttl);
            if verdicts.len() >= CACHE_LIMIT {
                verdicts.clear();
            }
        }
        let now = Instant::now();
        verdicts.insert(CachedToken(token.into()), (now, verdict.clone()));
        cache.last = Some((CachedToken(token.into()), now, verdict.clone()));
        Ok(verdict)
    }
}
