//! How a response was served, for the `cluster-relay-cache` response header
//! and the `cache` label of the request metric.

use http::{HeaderName, HeaderValue};

use crate::coalesce::Role;

/// Response header naming how the cache served the request.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cluster-relay-cache");

/// How a response was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// From the store, fresh, without asking the upstream.
    FreshHit,
    /// From the store after the upstream confirmed it (304).
    RevalidatedHit,
    /// Fetched from the upstream by this request.
    Miss,
    /// Fetched by a concurrent identical request and shared.
    Coalesced,
    /// Not cacheable: streamed to and from the upstream untouched.
    Bypass,
}

impl Served {
    /// Every variant, for pre-registering metric labels.
    pub const ALL: [Served; 5] = [
        Served::FreshHit,
        Served::RevalidatedHit,
        Served::Miss,
        Served::Coalesced,
        Served::Bypass,
    ];

    /// The header value and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Served::FreshHit => "fresh_hit",
            Served::RevalidatedHit => "revalidated_hit",
            Served::Miss => "miss",
            Served::Coalesced => "coalesced",
            Served::Bypass => "bypass",
        }
    }

    /// The header value, without an allocation.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }

    /// Whether the body came from the store.
    pub fn is_hit(self) -> bool {
        matches!(self, Served::FreshHit | Served::RevalidatedHit)
    }
}

impl From<Role> for Served {
    fn from(role: Role) -> Self {
        match role {
            Role::Leader => Served::Miss,
            Role::Coalesced => Served::Coalesced,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_match_the_documented_names() {
        let labels: Vec<_> = Served::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            labels,
            [
                "fresh_hit",
                "revalidated_hit",
                "miss",
                "coalesced",
                "bypass"
            ]
        );
        assert_eq!(Served::from(Role::Coalesced), Served::Coalesced);
        assert!(Served::RevalidatedHit.is_hit() && !Served::Miss.is_hit());
    }
}
