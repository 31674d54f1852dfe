//! The GitHub stand-in (`support/forge.rs`) checked against GitHub's
//! documented behaviour, since the read-cache tests rely on it:
//! conditional requests and rate limits, Link pagination, the issue and
//! pull-request endpoints with the absolute URLs in their documents, and
//! gzip bodies with weak ETags.

mod support;

use std::io::Read as _;

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

#[test]
fn stand_in_serves_issues_and_pulls_with_their_urls_and_gzip() {
    let forge = Forge::start().expect("forge");
    forge.add_account(TOKEN_A, "alice", 1);
    forge.add_account(TOKEN_B, "bob", 1);
    forge.add_issues(TOKEN_A, "alice-repo-0", 2, 1, 2, 3);
    let a = auth(TOKEN_A);
    let api = forge.url();
    let r = format!("{api}/repos/alice/alice-repo-0");

    // Pull requests are issues too; lists are newest first and paginate.
    let issues = get(
        forge.addr(),
        "/repos/alice/alice-repo-0/issues?per_page=2",
        &[("Authorization", &a)],
    )
    .expect("issues");
    let list = issues.json();
    assert_eq!(list[0]["number"], 3);
    assert_eq!(list[0]["pull_request"]["url"], format!("{r}/pulls/3"));
    assert!(list[1].get("pull_request").is_none());
    assert!(
        issues
            .header("link")
            .unwrap_or_default()
            .contains("page=2>; rel=\"next\"")
    );
    let repo = get(
        forge.addr(),
        "/repos/alice/alice-repo-0",
        &[("Authorization", &a)],
    )
    .expect("repo")
    .json();
    assert_eq!(repo["issues_url"], format!("{r}/issues{{/number}}"));
    assert_eq!(repo["owner"]["url"], format!("{api}/users/alice"));
    assert_eq!(repo["html_url"], "https://github.com/alice/alice-repo-0");
    for (target, len) in [
        ("/repos/alice/alice-repo-0/pulls", 1),
        ("/repos/alice/alice-repo-0/pulls/3/files", 3),
        ("/repos/alice/alice-repo-0/pulls/3/comments", 2),
        ("/repos/alice/alice-repo-0/issues/1/comments", 2),
    ] {
        let answer = get(forge.addr(), target, &[("Authorization", &a)]).expect(target);
        assert_eq!(
            answer.json().as_array().map(Vec::len),
            Some(len),
            "{target}"
        );
    }
    for (target, status) in [
        ("/repos/alice/alice-repo-0/pulls/1", 404),
        ("/repos/alice/alice-repo-0/issues/3", 200),
        ("/users/alice", 200),
    ] {
        let answer = get(forge.addr(), target, &[("Authorization", &a)]).expect(target);
        assert_eq!(answer.status, status, "{target}");
    }
    // Private repositories: another token gets 404.
    let other = get(
        forge.addr(),
        "/repos/alice/alice-repo-0/issues",
        &[("Authorization", &auth(TOKEN_B))],
    )
    .expect("bob");
    assert_eq!(other.status, 404);

    // Gzip when asked, with a weak ETag that still validates.
    let plain = get(
        forge.addr(),
        "/repos/alice/alice-repo-0",
        &[("Authorization", &a)],
    )
    .expect("plain");
    let mut stream = std::net::TcpStream::connect(forge.addr()).expect("connect");
    std::io::Write::write_all(
        &mut stream,
        format!(
            "GET /repos/alice/alice-repo-0 HTTP/1.1\r\nHost: f\r\nAuthorization: {a}\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");
    let mut json = String::new();
    flate2::read::GzDecoder::new(&raw[split..])
        .read_to_string(&mut json)
        .expect("gzip");
    assert_eq!(json, plain.body);
    let weak = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .expect("etag")
        .trim()
        .to_owned();
    assert_eq!(weak, format!("w/{}", plain.header("etag").expect("etag")));
}
