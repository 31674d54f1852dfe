//! `agent read-cache --profile etag` in front of a GitHub-API stand-in
//! (`support/forge.rs`), all on loopback: fresh hits within the TTL,
//! revalidation with `If-None-Match`, changed content, partitions per
//! credential, the upstream allow-list, `Link` rewriting, and PyGithub
//! paging through the cache. The first tests check the stand-in itself
//! against GitHub's documented behaviour, since the rest rely on it.

mod support;

use support::forge::{Forge, get, parse_http_date};

const TOKEN_A: &str = "ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const TOKEN_B: &str = "ghp_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn auth(token: &str) -> String {
    format!("token {token}")
}

#[test]
fn stand_in_answers_conditional_requests_like_github() {
    let forge = Forge::start().expect("forge");
    forge.add_account(TOKEN_A, "alice", 3);
    let a = auth(TOKEN_A);

    let first = get(forge.addr(), "/user", &[("Authorization", &a)]).expect("GET /user");
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.json()["login"], "alice");
    let etag = first.header("etag").expect("ETag").to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong: {etag}"
    );
    let last_modified = first
        .header("last-modified")
        .expect("Last-Modified")
        .to_owned();
    assert!(parse_http_date(&last_modified).is_some(), "{last_modified}");
    assert_eq!(
        first.header("cache-control"),
        Some("private, max-age=60, s-maxage=60")
    );
    assert_eq!(first.header("x-ratelimit-limit"), Some("5000"));
    assert_eq!(first.header("x-ratelimit-used"), Some("1"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("4999"));
    assert_eq!(first.header("x-ratelimit-resource"), Some("core"));

    // A 304 has no body and does not count against the rate limit.
    let again = get(
        forge.addr(),
        "/user",
        &[("Authorization", &a), ("If-None-Match", &etag)],
    )
    .expect("conditional GET");
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("x-ratelimit-used"), Some("1"));
    let since = get(
        forge.addr(),
        "/user",
        &[("Authorization", &a), ("If-Modified-Since", &last_modified)],
    )
    .expect("If-Modified-Since");
    assert_eq!(since.status, 304);
    assert_eq!(forge.used(Some(TOKEN_A)), 1);

    // Changed content: a new ETag and a 200 for the old validator.
    forge.rename(TOKEN_A, "Alice Changed");
    let changed = get(
        forge.addr(),
        "/user",
        &[("Authorization", &a), ("If-None-Match", &etag)],
    )
    .expect("after a change");
    assert_eq!(changed.status, 200);
    assert_eq!(changed.json()["name"], "Alice Changed");
    assert_ne!(changed.header("etag"), Some(etag.as_str()));
    assert_eq!(changed.header("x-ratelimit-used"), Some("2"));

    // Bad token: 401 Bad credentials; no token on /user: 401 too.
    let bad = get(forge.addr(), "/user", &[("Authorization", "token nope")]).expect("bad");
    assert_eq!(bad.status, 401);
    assert_eq!(bad.json()["message"], "Bad credentials");
    let anonymous = get(forge.addr(), "/user", &[]).expect("anonymous");
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.header("x-ratelimit-limit"), Some("60"));
    assert_eq!(forge.answered(), 6);
}

#[test]
fn stand_in_paginates_with_link_headers_like_github() {
    let forge = Forge::start().expect("forge");
    forge.add_account(TOKEN_A, "alice", 7);
    forge.add_account(TOKEN_B, "bob", 2);
    let a = auth(TOKEN_A);
    let base = forge.url();

    let page1 = get(
        forge.addr(),
        "/user/repos?per_page=3",
        &[("Authorization", &a)],
    )
    .expect("page 1");
    assert_eq!(page1.json().as_array().map(Vec::len), Some(3));
    assert_eq!(
        page1.header("link"),
        Some(
            format!(
                "<{base}/user/repos?per_page=3&page=2>; rel=\"next\", \
                 <{base}/user/repos?per_page=3&page=3>; rel=\"last\""
            )
            .as_str()
        )
    );
    let page2 = get(
        forge.addr(),
        "/user/repos?per_page=3&page=2",
        &[("Authorization", &a)],
    )
    .expect("page 2");
    assert_eq!(
        page2.header("link"),
        Some(
            format!(
                "<{base}/user/repos?per_page=3&page=1>; rel=\"prev\", \
                 <{base}/user/repos?per_page=3&page=3>; rel=\"next\", \
                 <{base}/user/repos?per_page=3&page=3>; rel=\"last\", \
                 <{base}/user/repos?per_page=3&page=1>; rel=\"first\""
            )
            .as_str()
        )
    );
    let page3 = get(
        forge.addr(),
        "/user/repos?per_page=3&page=3",
        &[("Authorization", &a)],
    )
    .expect("page 3");
    assert_eq!(page3.json().as_array().map(Vec::len), Some(1));
    assert!(!page3.header("link").unwrap_or_default().contains("next"));

    // Everything on one page: no Link at all. Each token sees its own data.
    let bob = get(
        forge.addr(),
        "/user/repos",
        &[("Authorization", &auth(TOKEN_B))],
    )
    .expect("bob");
    assert!(bob.header("link").is_none());
    assert_eq!(bob.json()[0]["owner"]["login"], "bob");
}
