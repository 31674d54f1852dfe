//! Header handling shared by both roles: the `Cluster-Proxy-*` names (the
//! same as cluster-proxy's hosted-mode relay, so either side can be swapped
//! for it), hop-by-hop headers per RFC 9110 section 7.6.1, and
//! `X-Forwarded-*`.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// The caller's own Authorization, carried across the apiserver hop.
pub const AUTHORIZATION: &str = "Cluster-Proxy-Authorization";
/// The relay identity, for the exit relay to verify (the apiserver strips
/// `Authorization` after authenticating it).
pub const RELAY_AUTHORIZATION: &str = "Cluster-Proxy-Relay-Authorization";
pub const PROTO: &str = "Cluster-Proxy-Proto";
pub const NAMESPACE: &str = "Cluster-Proxy-Namespace";
pub const SERVICE: &str = "Cluster-Proxy-Service";
pub const PORT: &str = "Cluster-Proxy-Port";
/// Every name with it is the relay's, and goes at the exit.
pub const PREFIX: &str = "cluster-proxy-";

/// The `Cluster-Proxy-*` names, parsed once: looking a header up by `&str`
/// parses the name on every call.
pub static AUTHORIZATION_NAME: HeaderName = HeaderName::from_static("cluster-proxy-authorization");
pub static RELAY_AUTHORIZATION_NAME: HeaderName =
    HeaderName::from_static("cluster-proxy-relay-authorization");
pub static PROTO_NAME: HeaderName = HeaderName::from_static("cluster-proxy-proto");
pub static NAMESPACE_NAME: HeaderName = HeaderName::from_static("cluster-proxy-namespace");
pub static SERVICE_NAME: HeaderName = HeaderName::from_static("cluster-proxy-service");
pub static PORT_NAME: HeaderName = HeaderName::from_static("cluster-proxy-port");
static KNOWN: [&HeaderName; 6] = [
    &AUTHORIZATION_NAME,
    &RELAY_AUTHORIZATION_NAME,
    &PROTO_NAME,
    &NAMESPACE_NAME,
    &SERVICE_NAME,
    &PORT_NAME,
];
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

fn has_prefix(name: &HeaderName) -> bool {
    name.as_str().starts_with(PREFIX)
}

/// Removes every `Cluster-Proxy-*` header (whatever a client sent), and
/// returns the value of `Cluster-Proxy-Authorization` it held, if any.
pub fn take_cluster_proxy_headers(headers: &mut HeaderMap) -> Option<HeaderValue> {
    // A walk over the names is cheaper than looking each one up, and most
    // requests at the entry carry none.
    let present = headers.keys().filter(|name| has_prefix(name)).count();
    if present == 0 {
        return None;
    }
    let authorization = headers.remove(KNOWN[0]);
    let mut removed = usize::from(authorization.is_some());
    for name in &KNOWN[1..] {
        if removed == present {
            return authorization;
        }
        removed += usize::from(headers.remove(*name).is_some());
    }
    // Any other name with the prefix (rare): found, then removed.
    while let Some(name) = headers.keys().find(|name| has_prefix(name)).cloned() {
        headers.remove(name);
    }
    authorization
}

/// Whether the request asks to switch protocols.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|token| token.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// Hop-by-hop whatever `Connection` says (RFC 9110 section 7.6.1, plus the
/// legacy Keep-Alive and Proxy-Connection).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Removes hop-by-hop headers: the fixed set and whatever `Connection`
/// lists. For an upgrade, `Connection: upgrade` and `Upgrade` are kept so the
/// next hop sees the request to switch.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One walk over the names finds which of the fixed set are there
    // (standard names compare as enum values), so only those are looked
    // up; most requests have none, most responses one (Connection).
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    let upgrade = is_upgrade(headers);
    // Listed names of the fixed set go below anyway; the others are made
    // into names (an allocation each) only here.
    let listed: Vec<HeaderName> = connection_tokens(headers)
        .filter(|token| {
            !HOP_BY_HOP
                .iter()
                .any(|hop| hop.as_str().eq_ignore_ascii_case(token))
        })
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    let upgrade_value = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, there)| *there) {
        headers.remove(name);
    }
    if let Some(value) = upgrade_value {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, value);
    }
}

/// Appends the peer to `X-Forwarded-For` and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host` unless an earlier hop set them.
pub fn add_forwarded(headers: &mut HeaderMap, peer: IpAddr, proto: &str) {
    let mut buf = [0; 15];
    let peer_text = match peer {
        IpAddr::V4(v4) => ipv4_text(v4, &mut buf),
        IpAddr::V6(_) => "",
    };
    let forwarded_for = match (
        headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()),
        peer,
    ) {
        (Some(earlier), _) => HeaderValue::from_str(&format!("{earlier}, {peer}")),
        (None, IpAddr::V4(_)) => HeaderValue::from_str(peer_text),
        (None, IpAddr::V6(_)) => HeaderValue::from_str(&peer.to_string()),
    };
    if let Ok(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    let host = headers.get(header::HOST).cloned();
    headers.entry(X_FORWARDED_PROTO.clone()).or_insert_with(|| {
        HeaderValue::from_static(if proto == "https" { "https" } else { "http" })
    });
    if let Some(host) = host {
        headers.entry(X_FORWARDED_HOST.clone()).or_insert(host);
    }
}

/// An IPv4 address in dotted decimal, without the formatting machinery
/// (it showed in the exit relay's profile).
pub fn ipv4_text(ip: std::net::Ipv4Addr, buf: &mut [u8; 15]) -> &str {
    let mut at = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[at] = b'.';
            at += 1;
        }
        if octet >= 100 {
            buf[at] = b'0' + octet / 100;
            at += 1;
        }
        if octet >= 10 {
            buf[at] = b'0' + octet / 10 % 10;
            at += 1;
        }
        buf[at] = b'0' + octet % 10;
        at += 1;
    }
    std::str::from_utf8(&buf[..at]).expect("digits and dots are ASCII")
}

/// Whether a request with `method` may be sent again when no answer came
/// (RFC 9110 section 9.2.2).
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// The token of a `Bearer` credential.
pub fn bearer_token(value: &[u8]) -> Option<&str> {
    // What to_str accepts, checked a word at a time rather than a byte at
    // a time (a relay token is about 1 KiB): parsed header values hold no
    // control characters but tab, so ASCII here means visible ASCII.
    let text = std::str::from_utf8(value)
        .ok()
        .filter(|text| text.is_ascii())?;
    let (scheme, token) = text.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cluster_proxy_header_goes_and_authorization_is_returned() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "cluster-proxy-authorization",
            HeaderValue::from_static("Bearer user"),
        );
        headers.insert(
            "Cluster-Proxy-Relay-Authorization",
            HeaderValue::from_static("Bearer relay"),
        );
        headers.insert("cluster-proxy-anything-else", HeaderValue::from_static("x"));
        headers.insert("x-kept", HeaderValue::from_static("y"));
        let taken = take_cluster_proxy_headers(&mut headers);
        assert_eq!(taken, Some(HeaderValue::from_static("Bearer user")));
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn hop_by_hop_headers_go_but_upgrades_survive() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);

        // Listed by Connection, in any case, and nothing else of the set.
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("X-Private"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::ACCEPT));

        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("sec-websocket-key", HeaderValue::from_static("k"));
        assert!(is_upgrade(&headers));
        remove_hop_by_hop(&mut headers);
        assert!(is_upgrade(&headers));
        assert_eq!(headers[header::UPGRADE], "websocket");
        assert!(headers.contains_key("sec-websocket-key"));
    }

    #[test]
    fn forwarded_headers_append() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("relay.example"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarded(&mut headers, "10.0.0.2".parse().expect("ip"), "http");
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 10.0.0.2");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "relay.example");
    }

    #[test]
    fn ipv4_addresses_print_as_display_does() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.10.100.9",
        ] {
            let ip: std::net::Ipv4Addr = ip.parse().expect("ip");
            assert_eq!(ipv4_text(ip, &mut [0; 15]), ip.to_string());
        }
    }

    #[test]
    fn forwarded_headers_keep_an_earlier_hops() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        headers.insert(
            "x-forwarded-host",
            HeaderValue::from_static("outer.example"),
        );
        headers.insert(header::HOST, HeaderValue::from_static("relay.example"));
        add_forwarded(&mut headers, "::1".parse().expect("ip"), "http");
        assert_eq!(headers["x-forwarded-for"], "::1");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "outer.example");
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer_token(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer_token(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
    }
}
