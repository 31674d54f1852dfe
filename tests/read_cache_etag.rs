//! `agent read-cache --profile etag` in front of a GitHub-API stand-in
//! (`support/forge.rs`, itself checked in `forge_stand_in.rs`), all on
//! loopback: fresh hits within the TTL, revalidation with `If-None-Match`,
//! changed content, partitions per credential, the upstream allow-list,
//! `Link` and JSON body URLs pointed back at the cache (gzip included),
//! and PyGithub paging through the cache.

mod support;

use std::{process::Command, time::Duration};

use support::{
    agent::Agent,
    forge::{Answer, Forge, get, request},
    repo_path, wait_for_sync, wait_until_sync,
};

const DEADLINE: Duration = Duration::from_secs(30);
/// The response header saying how the cache served a request.
const SERVED: &str = "cluster-relay-cache";
const CHOOSER: &str = "Cluster-Relay-Upstream";

const TOKEN_A: &str = "ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const TOKEN_B: &str = "ghp_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn auth(token: &str) -> String {
    format!("token {token}")
}

/// `agent read-cache --profile etag` in front of `upstreams`, on loopback.
fn cache(upstreams: &[&str], extra: &[&str]) -> Agent {
    let mut args = vec![
        "read-cache",
        "--profile",
        "etag",
        "--listen-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ];
    for upstream in upstreams {
        args.extend(["--upstream", upstream]);
    }
    args.extend_from_slice(extra);
    Agent::spawn(&args, &["cache"]).expect("read-cache starts")
}

fn as_token(token: &str) -> Vec<(&'static str, String)> {
    vec![("Authorization", auth(token))]
}

/// GET through the cache with `headers`.
fn via(cache: &Agent, target: &str, headers: &[(&str, String)]) -> Answer {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    get(cache.addr("cache"), target, &headers).expect("the cache answers")
}

fn served(answer: &Answer) -> &str {
    answer
        .header(SERVED)
        .unwrap_or("<no cluster-relay-cache header>")
}

fn requests_metric(cache: &Agent, code: &str, how: &str) -> f64 {
    cache.metric(&format!(
        "cluster_relay_read_cache_requests_total{{cache=\"{how}\",code=\"{code}\",method=\"GET\",profile=\"etag\"}}"
    ))
}

#[test]
fn ttl_hit_then_revalidated_hit_then_changed_content() {
    let forge = Forge::start().expect("forge");
    forge.add_account(TOKEN_A, "alice", 2);
    // Short enough to expire within the test, long enough that the second
    // request lands well inside it.
    let cache = cache(&[&forge.url()], &["--cache-ttl", "2s"]);
    let a = as_token(TOKEN_A);

    let miss = via(&cache, "/user", &a);
    assert_eq!((miss.status, served(&miss)), (200, "miss"), "{miss:?}");
    assert_eq!(miss.json()["name"], "alice the first");
    // The body's URLs point at the cache, so it is another representation
    // than the upstream's, with an ETag of its own.
    let etag = miss.header("etag").expect("an ETag").to_owned();
    let upstream_etag = forge.seen()[0].etag.clone().expect("the upstream's ETag");
    assert_ne!(etag, upstream_etag);
    assert_eq!(miss.header("x-ratelimit-used"), Some("1"));

    let hit = via(&cache, "/user", &a);
    assert_eq!((hit.status, served(&hit)), (200, "fresh_hit"));
    assert_eq!(hit.body, miss.body);
    // Upstream headers, rate limits included, are served on hits too.
    for name in [
        "etag",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "cache-control",
    ] {
        assert_eq!(hit.header(name), miss.header(name), "{name}");
    }
    assert_eq!(forge.answered(), 1, "a fresh hit asks nothing upstream");

    // Another client of the same token spends quota meanwhile; the 304
    // that revalidates carries the new count into the entry.
    get(
        forge.addr(),
        "/user/repos",
        &[("Authorization", &auth(TOKEN_A))],
    )
    .expect("direct");
    let revalidated = wait_for_sync("the entry to expire and be revalidated", DEADLINE, || {
        let answer = via(&cache, "/user", &a);
        anyhow::ensure!(
            served(&answer) == "revalidated_hit",
            "served {}",
            served(&answer)
        );
        Ok(answer)
    })
    .expect("revalidated");
    assert_eq!(revalidated.status, 200);
    assert_eq!(revalidated.body, miss.body);
    assert_eq!(revalidated.header("x-ratelimit-used"), Some("2"));
    let seen = forge.seen();
    let last = seen.last().expect("the revalidation");
    assert_eq!((last.target.as_str(), last.status), ("/user", 304));
    // Revalidation asks with the upstream's validator, not the served one.
    assert_eq!(last.if_none_match.as_deref(), Some(upstream_etag.as_str()));
    assert_eq!(revalidated.header("etag"), Some(etag.as_str()));
    assert_eq!(seen.len(), 3, "one fill, one direct call, one revalidation");
    // The refreshed entry is fresh again.
    let again = via(&cache, "/user", &a);
    assert_eq!(served(&again), "fresh_hit");
    assert_eq!(again.header("x-ratelimit-used"), Some("2"));

    // Changed upstream content: served once the entry expires, and stored.
    forge.rename(TOKEN_A, "Alice Renamed");
    let changed = wait_for_sync("the new name through the cache", DEADLINE, || {
        let answer = via(&cache, "/user", &a);
        anyhow::ensure!(
            answer.json()["name"] == "Alice Renamed",
            "still {}",
            answer.body
        );
        Ok(answer)
    })
    .expect("changed");
    assert_eq!(served(&changed), "miss");
    assert_ne!(changed.header("etag"), Some(etag.as_str()));
    let last = forge.seen().last().cloned().expect("the refetch");
    assert_eq!(
        (last.status, last.if_none_match),
        (200, Some(upstream_etag))
    );
    assert_eq!(served(&via(&cache, "/user", &a)), "fresh_hit");

    // A client's own validators are answered by the cache.
    let current = changed.header("etag").expect("etag").to_owned();
    let mut conditional = a.clone();
    conditional.push(("If-None-Match", current));
    let not_modified = via(&cache, "/user", &conditional);
    assert_eq!((not_modified.status, not_modified.body.as_str()), (304, ""));
    assert!(requests_metric(&cache, "200", "fresh_hit") >= 3.0);
    assert!(requests_metric(&cache, "200", "revalidated_hit") >= 1.0);
    assert!(requests_metric(&cache, "200", "miss") >= 2.0);
}

#[test]
fn one_tokens_entries_are_never_served_to_another() {
    let forge = Forge::start().expect("forge");
    forge.add_account(TOKEN_A, "alice", 1);
    forge.add_account(TOKEN_B, "bob", 1);
    let cache = cache(&[&forge.url()], &["--cache-ttl", "1h"]);

    let alice = via(&cache, "/user", &as_token(TOKEN_A));
    assert_eq!(alice.json()["login"], "alice");
    assert_eq!(
        served(&via(&cache, "/user", &as_token(TOKEN_A))),
        "fresh_hit"
    );
    let bob = via(&cache, "/user", &as_token(TOKEN_B));
    assert_eq!(
        (bob.json()["login"].clone(), served(&bob)),
        ("bob".into(), "miss")
    );
    // The same token in another scheme is another credential string.
    let bearer = via(
        &cache,
        "/user",
        &[("Authorization", format!("Bearer {TOKEN_A}"))],
    );
    assert_eq!(
        (bearer.json()["login"].clone(), served(&bearer)),
        ("alice".into(), "miss")
    );
    // Without a credential: the upstream's 401, never anyone's entry, and
    // errors are not stored: each one reaches the upstream.
    for _ in 0..2 {
        let anonymous = via(&cache, "/user", &[]);
        assert_eq!((anonymous.status, served(&anonymous)), (401, "miss"));
        let wrong = via(&cache, "/user", &as_token("ghp_wrong"));
        assert_eq!((wrong.status, served(&wrong)), (401, "miss"));
        assert_eq!(wrong.json()["message"], "Bad credentials");
    }
    let unauthorized = forge.seen().iter().filter(|s| s.status == 401).count();
    assert_eq!(unauthorized, 4);
    assert_eq!(forge.answered(), 3 + 4);
    assert_eq!(requests_metric(&cache, "401", "miss"), 4.0);
}

#[test]
fn only_allowed_upstreams_are_reached() {
    let first = Forge::start().expect("forge 1");
    let second = Forge::start().expect("forge 2");
    first.add_account(TOKEN_A, "alice", 1);
    second.add_account(TOKEN_A, "enterprise-alice", 1);
    let outside = Forge::start().expect("a forge off the list");
    outside.add_account(TOKEN_A, "mallory", 1);
    let cache = cache(
        &[&first.url(), &second.url()],
        &["--upstream-header", CHOOSER],
    );
    let pick = |url: &str| {
        let mut headers = as_token(TOKEN_A);
        headers.push((CHOOSER, url.to_owned()));
        headers
    };

    assert_eq!(
        via(&cache, "/user", &as_token(TOKEN_A)).json()["login"],
        "alice"
    );
    let chosen = via(&cache, "/user", &pick(&format!("{}/", second.url())));
    assert_eq!(chosen.json()["login"], "enterprise-alice");
    assert_eq!(served(&chosen), "miss", "another upstream is another key");
    // The chooser header is the cache's, not the upstream's.
    assert!(second.seen()[0].headers.get(CHOOSER).is_none());

    let link_local = "http://169.254.169.254";
    for refused in [
        outside.url().as_str(),
        link_local,
        "not a url",
        "https://api.github.com",
    ] {
        let answer = via(&cache, "/user", &pick(refused));
        assert_eq!(
            (answer.status, served(&answer)),
            (403, "bypass"),
            "{refused}"
        );
    }
    // A proxy-style absolute target cannot steer the cache either.
    let absolute = via(
        &cache,
        &format!("{}/user", outside.url()),
        &as_token(TOKEN_A),
    );
    assert_eq!(absolute.json()["login"], "alice");
    // Other methods are refused off the list too, and pass through on it.
    let post = request(
        cache.addr("cache"),
        "POST",
        "/user/repos",
        &[(CHOOSER, &outside.url()), ("Authorization", &auth(TOKEN_A))],
    )
    .expect("POST");
    assert_eq!(post.status, 403);
    let post = request(
        cache.addr("cache"),
        "POST",
        "/user/repos",
        &[("Authorization", &auth(TOKEN_A))],
    )
    .expect("POST");
    assert_eq!((post.status, served(&post)), (404, "bypass"));
    assert_eq!(
        outside.answered(),
        0,
        "nothing reached the upstream off the list"
    );
    assert_eq!(first.answered(), 2);
}

#[test]
fn pagination_links_point_back_at_the_cache() {
    let forge = Forge::start().expect("forge");
    forge.add_account(TOKEN_A, "alice", 5);
    let cache = cache(&[&forge.url()], &["--cache-ttl", "1h"]);
    let own = format!("http://{}", cache.addr("cache"));

    let page1 = via(&cache, "/user/repos?per_page=2", &as_token(TOKEN_A));
    assert_eq!(
        page1.header("link"),
        Some(
            format!(
                "<{own}/user/repos?per_page=2&page=2>; rel=\"next\", \
                 <{own}/user/repos?per_page=2&page=3>; rel=\"last\""
            )
            .as_str()
        )
    );
    // Behind a TLS-terminating proxy: its scheme and host, on a hit too.
    // Entries are per public base (their links and bodies point at it), so
    // the first request by this base fills one of its own.
    let mut forwarded = as_token(TOKEN_A);
    forwarded.push(("X-Forwarded-Proto", "https".into()));
    forwarded.push(("X-Forwarded-Host", "cache.example.com".into()));
    for how in ["miss", "fresh_hit"] {
        let behind = via(&cache, "/user/repos?per_page=2", &forwarded);
        assert_eq!(served(&behind), how);
        assert!(
            behind.header("link").unwrap_or_default().starts_with(
                "<https://cache.example.com/user/repos?per_page=2&page=2>; rel=\"next\""
            ),
            "{behind:?}"
        );
        assert_eq!(
            behind.json()[0]["url"],
            "https://cache.example.com/repos/alice/alice-repo-0"
        );
    }
    // Following next to the end through the cache.
    let mut next = Some(format!("{own}/user/repos?per_page=2"));
    let mut names = Vec::new();
    while let Some(url) = next.take() {
        let target = url
            .strip_prefix(&own)
            .expect("a link to the cache")
            .to_owned();
        let page = via(&cache, &target, &as_token(TOKEN_A));
        names.extend(
            page.json()
                .as_array()
                .expect("a list")
                .iter()
                .map(|r| r["name"].as_str().unwrap_or_default().to_owned()),
        );
        next = page.header("link").and_then(|link| {
            link.split(", ")
                .find(|l| l.ends_with("rel=\"next\""))
                .map(|l| l[1..l.find('>').expect("<url>")].to_owned())
        });
    }
    assert_eq!(names.len(), 5);
    assert_eq!(
        forge.answered(),
        4,
        "three pages, each fetched once, and one for the other base"
    );
}

/// The Python interpreter PyGithub was installed for (hack/install-deps.sh
/// runs `python3 -m pip`), so the one first on PATH.
fn python_with_pygithub() -> Option<&'static str> {
    let ok = Command::new("python3")
        .args(["-c", "import github"])
        .output()
        .is_ok_and(|out| out.status.success());
    ok.then_some("python3")
}

#[test]
fn pygithub_pages_through_the_cache() {
    let Some(python) = python_with_pygithub() else {
        panic!("PyGithub is not installed for python3: run hack/install-deps.sh (make deps)");
    };
    let forge = Forge::start().expect("forge");
    forge.add_account(TOKEN_A, "alice", 7);
    let cache = cache(&[&forge.url()], &["--cache-ttl", "1h"]);
    let run = || {
        let out = Command::new(python)
            .arg(repo_path("tests/clients/pygithub/pages.py"))
            .args(["--base-url", &format!("http://{}", cache.addr("cache"))])
            .args(["--per-page", "3"])
            .env("PYGITHUB_TOKEN", TOKEN_A)
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "PyGithub failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("one JSON line")
    };

    let listed = run();
    assert_eq!(listed["login"], "alice");
    let names: Vec<&str> = listed["names"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    let expected: Vec<String> = (0..7).map(|i| format!("alice-repo-{i}")).collect();
    assert_eq!(names, expected);
    // Every page went through the cache: the stand-in saw each page once,
    // pages 2 and 3 by the URLs of the (rewritten) Links, whose query
    // PyGithub rebuilds in its own order.
    let pages: Vec<Vec<String>> = forge
        .seen()
        .iter()
        .filter(|s| s.target.starts_with("/user/repos"))
        .map(|s| {
            let query = s.target.split_once('?').map_or("", |(_, q)| q);
            let mut params: Vec<String> = query.split('&').map(str::to_owned).collect();
            params.sort();
            params
        })
        .collect();
    assert_eq!(
        pages,
        [
            vec!["per_page=3"],
            vec!["page=2", "per_page=3"],
            vec!["page=3", "per_page=3"]
        ]
    );
    let before = forge.answered();
    // A second run is served from the cache: nothing new upstream.
    assert_eq!(run(), listed);
    assert_eq!(forge.answered(), before);
    assert!(requests_metric(&cache, "200", "fresh_hit") >= 4.0);
}

#[test]
fn concurrent_misses_fetch_once_and_large_answers_stream_uncached() {
    let forge = Forge::start().expect("forge");
    forge.add_account(TOKEN_A, "alice", 40);
    let cache = cache(
        &[&forge.url()],
        &["--cache-ttl", "1h", "--max-object-bytes", "4Ki"],
    );
    let addr = cache.addr("cache");

    forge.hold();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                get(addr, "/user", &[("Authorization", &auth(TOKEN_A))]).expect("answer")
            })
        })
        .collect();
    wait_until_sync("the first fetch to reach the forge", DEADLINE, || {
        forge.arrived() >= 1
    })
    .expect("arrived");
    forge.release();
    let answers: Vec<Answer> = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .collect();
    assert_eq!(
        forge.answered(),
        1,
        "eight identical requests, one upstream call"
    );
    let mut how: Vec<&str> = answers.iter().map(served).collect();
    how.sort();
    assert_eq!(how.iter().filter(|h| **h == "miss").count(), 1, "{how:?}");
    assert!(
        how.iter()
            .all(|h| ["miss", "coalesced", "fresh_hit"].contains(h)),
        "{how:?}"
    );
    assert!(
        answers
            .iter()
            .all(|a| a.status == 200 && a.body == answers[0].body)
    );

    // 40 repositories on one page are well over 4 KiB: streamed, not kept.
    for _ in 0..2 {
        let big = via(&cache, "/user/repos?per_page=100", &as_token(TOKEN_A));
        assert_eq!((big.status, served(&big)), (200, "miss"));
        assert_eq!(big.json().as_array().map(Vec::len), Some(40));
        assert!(big.body.len() > 4096);
        // Passed through untouched: the upstream's own URLs and ETag.
        assert_eq!(
            big.json()[0]["url"],
            format!("{}/repos/alice/alice-repo-0", forge.url())
        );
        assert_eq!(
            big.header("etag"),
            forge.seen().last().and_then(|s| s.etag.as_deref())
        );
    }
    assert_eq!(forge.answered(), 3);
}

#[test]
fn json_bodies_point_back_at_the_cache_gzip_included() {
    let forge = Forge::start().expect("forge");
    forge.add_account(TOKEN_A, "alice", 1);
    forge.add_issues(TOKEN_A, "alice-repo-0", 1, 1, 0, 1);
    let cache = cache(&[&forge.url()], &["--cache-ttl", "1h"]);
    let own = format!("http://{}", cache.addr("cache"));
    let mut gzip = as_token(TOKEN_A);
    gzip.push(("Accept-Encoding", "br, gzip, deflate".into()));

    for (headers, coding) in [(&gzip, Some("gzip")), (&as_token(TOKEN_A), None)] {
        let answer = via(&cache, "/repos/alice/alice-repo-0/pulls/2", headers);
        assert_eq!((answer.status, served(&answer)), (200, "miss"));
        // The cache asked for what it can read, and got it.
        let fill = forge.seen().last().cloned().expect("the fill");
        assert_eq!(
            fill.headers
                .get("accept-encoding")
                .and_then(|v| v.to_str().ok()),
            coding
        );
        let upstream_etag = fill.etag.expect("the upstream's ETag");
        assert_eq!(upstream_etag.starts_with("W/"), coding.is_some());
        // Served decoded, whole, with the cache's URLs; web URLs and the
        // rest of the document as they were.
        assert_eq!(answer.header("content-encoding"), None);
        assert_eq!(
            answer.header("content-length"),
            Some(answer.body.len().to_string().as_str())
        );
        let pull = answer.json();
        let r = format!("{own}/repos/alice/alice-repo-0");
        assert_eq!(pull["url"], format!("{r}/pulls/2"));
        assert_eq!(pull["issue_url"], format!("{r}/issues/2"));
        assert_eq!(
            pull["review_comment_url"],
            format!("{r}/pulls/comments{{/number}}")
        );
        assert_eq!(pull["head"]["user"]["url"], format!("{own}/users/alice"));
        assert_eq!(
            pull["html_url"],
            "https://github.com/alice/alice-repo-0/pull/2"
        );
        assert_eq!(pull["title"], "pull request 2 of alice-repo-0");
        assert!(!answer.body.contains(&forge.url()), "{}", answer.body);
        // Another representation, so another ETag, weak if the upstream's
        // was; the client's own If-None-Match with it is the cache's to
        // answer, on the hit that follows.
        let etag = answer.header("etag").expect("an ETag").to_owned();
        assert_ne!(etag, upstream_etag);
        assert_eq!(etag.starts_with("W/"), upstream_etag.starts_with("W/"));
        let mut conditional = headers.clone();
        conditional.push(("If-None-Match", etag.clone()));
        let not_modified = via(&cache, "/repos/alice/alice-repo-0/pulls/2", &conditional);
        assert_eq!(
            (
                not_modified.status,
                served(&not_modified),
                not_modified.body.as_str()
            ),
            (304, "fresh_hit", "")
        );
        assert_eq!(not_modified.header("etag"), Some(etag.as_str()));
        // The upstream's ETag names another representation: a 200.
        let mut theirs = headers.clone();
        theirs.push(("If-None-Match", upstream_etag));
        let full = via(&cache, "/repos/alice/alice-repo-0/pulls/2", &theirs);
        assert_eq!(
            (full.status, full.body.as_str()),
            (200, answer.body.as_str())
        );
    }
    assert_eq!(forge.answered(), 2, "one fill per Accept-Encoding");
}
