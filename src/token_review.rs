//! Callers checked by their bearer token: the token is reviewed by an
//! apiserver (TokenReview) and its user must be one of an allow-list (the
//! exit relay's `--allowed-caller` for the relay token in
//! `Cluster-Proxy-Relay-Authorization`, the fan-out's `--admin-user`). With
//! nobody on the list nobody is allowed (fail closed). Verdicts are cached
//! briefly per token; the cache is bounded (both are flags,
//! [`TokenReviewArgs`]), and concurrent lookups of one token share a single
//! TokenReview.

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

/// How verdicts are cached: the flags shared by the subcommands that
/// review callers.
#[derive(Debug, Clone, Copy, clap::Args)]
#[command(next_help_heading = "TokenReview")]
pub struct TokenReviewArgs {
    /// How long a caller's TokenReview verdict is reused (exit relay: the
    /// relay caller; webhook-fanout: an --admin-user caller).
    #[arg(long, env = "CLUSTER_RELAY_TOKEN_REVIEW_CACHE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub token_review_cache_ttl: Duration,

    /// Most TokenReview verdicts cached, one per token; past it, expired
    /// verdicts are dropped, and all of them if none has expired.
    #[arg(
        long,
        env = "CLUSTER_RELAY_TOKEN_REVIEW_CACHE_MAX_ENTRIES",
        default_value_t = 4096
    )]
    pub token_review_cache_max_entries: usize,
}

/// Why a token could not be reviewed (the apiserver did not answer).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("TokenReview timed out")]
    Timeout,
    #[error("TokenReview failed: {0}")]
    Api(#[source] kube::Error),
}

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

/// The verdicts, per token.
#[derive(Default)]
struct Cache {
    verdicts: HashMap<CachedToken, (Instant, Verdict)>,
    /// The token answered last, compared before any hashing: an exit relay
    /// serves one relay token at a time but while it rotates.
    last: Option<(CachedToken, Instant, Verdict)>,
}

/// Checks callers by TokenReview against the allow-list.
pub struct Callers {
    client: kube::Client,
    allowed: HashSet<String>,
    ttl: Duration,
    max_entries: usize,
    timeout: Duration,
    cache: Mutex<Cache>,
    /// Keyed by the token's SHA-256, computed on a cache miss only.
    reviews: Coalescer<[u8; 32], Verdict>,
}

impl Callers {
    pub fn new(
        client: kube::Client,
        allowed: impl IntoIterator<Item = String>,
        cache: TokenReviewArgs,
        timeout: Duration,
    ) -> Self {
        Self {
            client,
            allowed: allowed.into_iter().collect(),
            ttl: cache.token_review_cache_ttl,
            max_entries: cache.token_review_cache_max_entries,
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
    pub async fn verify(&self, token: &str) -> Result<Verdict, ReviewError> {
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

    async fn review(&self, token: &str) -> Result<Verdict, ReviewError> {
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
        .map_err(|_| ReviewError::Timeout)?
        .map_err(ReviewError::Api)?;
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
        if verdicts.len() >= self.max_entries {
            let ttl = self.ttl;
            verdicts.retain(|_, (at, _)| at.elapsed() < ttl);
            if verdicts.len() >= self.max_entries {
                verdicts.clear();
            }
        }
        let now = Instant::now();
        verdicts.insert(CachedToken(token.into()), (now, verdict.clone()));
        cache.last = Some((CachedToken(token.into()), now, verdict.clone()));
        Ok(verdict)
    }
}
