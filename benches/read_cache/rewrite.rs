//! The cost of pointing a body's upstream URLs back at the cache, which the
//! ETag profile pays once per fill (never on a hit): the library's own
//! `rewrite::represent` timed on a GitHub-like page of 30 issues, each with
//! the URL fields GitHub sends (`url`, `repository_url`, `labels_url{/name}`,
//! the user's URLs, `pull_request`, ...), as identity and as gzip, next to
//! the same page naming another host (what a body without upstream URLs
//! costs: one scan).

use std::{hint::black_box, io::Write as _, time::Duration, time::Instant};

use bench_support::report::{self, Table};
use cluster_relay::read_cache::etag::{
    rewrite::{self, Outcome},
    upstream::Upstream,
};
use http::{HeaderMap, HeaderValue, header};
use serde_json::{Value, json};

const UPSTREAM: &str = "https://api.github.com";
const PUBLIC_BASE: &str = "http://read-cache.c1.svc:7445";
const ISSUES: usize = 30;

/// One issue as GitHub lists it, with `api` as the API's base.
fn issue(api: &str, n: usize) -> Value {
    let repo = format!("{api}/repos/octo-org/octo-repo");
    let url = format!("{repo}/issues/{n}");
    let user = json!({
        "login": "octocat", "id": 1, "node_id": "MDQ6VXNlcjE=",
        "avatar_url": "https://avatars.githubusercontent.com/u/1?v=4",
        "url": format!("{api}/users/octocat"),
        "html_url": "https://github.com/octocat",
        "followers_url": format!("{api}/users/octocat/followers"),
        "following_url": format!("{api}/users/octocat/following{{/other_user}}"),
        "gists_url": format!("{api}/users/octocat/gists{{/gist_id}}"),
        "starred_url": format!("{api}/users/octocat/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{api}/users/octocat/subscriptions"),
        "organizations_url": format!("{api}/users/octocat/orgs"),
        "repos_url": format!("{api}/users/octocat/repos"),
        "events_url": format!("{api}/users/octocat/events{{/privacy}}"),
        "received_events_url": format!("{api}/users/octocat/received_events"),
        "type": "User", "site_admin": false
    });
    json!({
        "url": url,
        "repository_url": repo,
        "labels_url": format!("{url}/labels{{/name}}"),
        "comments_url": format!("{url}/comments"),
        "events_url": format!("{url}/events"),
        "html_url": format!("https://github.com/octo-org/octo-repo/issues/{n}"),
        "id": 1_000_000 + n, "node_id": "MDU6SXNzdWUx", "number": n,
        "title": format!("Found a bug number {n}"),
        "user": user.clone(),
        "labels": [{
            "id": 208_045_946, "node_id": "MDU6TGFiZWwyMDgwNDU5NDY=",
            "url": format!("{repo}/labels/bug"), "name": "bug",
            "description": "Something isn't working", "color": "f29513", "default": true
        }],
        "state": "open", "locked": false, "assignee": user,
        "comments": 3, "created_at": "2011-04-22T13:33:48Z",
        "updated_at": "2011-04-22T13:33:48Z", "closed_at": null,
        "author_association": "COLLABORATOR",
        "pull_request": {
            "url": format!("{repo}/pulls/{n}"),
            "html_url": format!("https://github.com/octo-org/octo-repo/pull/{n}"),
            "diff_url": format!("https://github.com/octo-org/octo-repo/pull/{n}.diff"),
            "patch_url": format!("https://github.com/octo-org/octo-repo/pull/{n}.patch")
        },
        "body": "I'm having a problem with this. It happens when I open the settings page and then go back; the list does not refresh until I reload."
    })
}

fn page(api: &str) -> Vec<u8> {
    let issues: Vec<Value> = (1..=ISSUES).map(|n| issue(api, n)).collect();
    serde_json::to_vec_pretty(&Value::Array(issues)).expect("JSON serializes")
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(body).expect("writes to memory");
    encoder.finish().expect("writes to memory")
}

/// Median time of `represent` on `body` over a bounded number of calls,
/// and what it did (checked: the page must be rewritten or not as meant).
fn time(
    headers: &HeaderMap,
    body: &[u8],
    upstream: &Upstream,
    calls: usize,
) -> (Duration, Option<usize>) {
    let outcome = rewrite::represent(headers, body, upstream, PUBLIC_BASE, 64 << 20);
    let rewritten = match outcome {
        Outcome::Rewritten(new) => Some(new.len()),
        Outcome::Unchanged => None,
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut samples = Vec::with_capacity(calls);
    while samples.len() < calls && Instant::now() < deadline {
        let started = Instant::now();
        black_box(rewrite::represent(
            black_box(headers),
            black_box(body),
            upstream,
            PUBLIC_BASE,
            64 << 20,
        ));
        samples.push(started.elapsed());
    }
    samples.sort();
    (samples[samples.len() / 2], rewritten)
}

/// Prints the table; fails if a body was not rewritten when it should have
/// been, or the other way round.
pub fn print(full: bool) -> anyhow::Result<()> {
    let upstream = Upstream::parse(UPSTREAM).map_err(|err| anyhow::anyhow!("{err}"))?;
    let calls = if full { 400 } else { 20 };
    let with_urls = page(UPSTREAM);
    let elsewhere = page("https://ghe.example.com/api/v3");
    let zipped = gzip(&with_urls);
    let mut json = HeaderMap::new();
    json.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    let mut gzipped = json.clone();
    gzipped.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    let urls = with_urls
        .windows(UPSTREAM.len())
        .filter(|w| *w == UPSTREAM.as_bytes())
        .count();

    report::heading(&format!(
        "the rewrite on a fill: {ISSUES} issues as GitHub lists them, {urls} upstream URLs, {UPSTREAM} → {PUBLIC_BASE}; median of up to {calls} calls"
    ));
    let mut table = Table::new(&["body", "bytes in", "bytes out", "time", "JSON MB/s"]);
    // Throughput over the JSON read, decoded for gzip.
    for (name, headers, body, json_bytes, want_rewrite) in [
        (
            "JSON with upstream URLs",
            &json,
            &with_urls,
            with_urls.len(),
            true,
        ),
        (
            "same, gzip (decoded, served decoded)",
            &gzipped,
            &zipped,
            with_urls.len(),
            true,
        ),
        (
            "JSON naming another host only",
            &json,
            &elsewhere,
            elsewhere.len(),
            false,
        ),
    ] {
        let (median, rewritten) = time(headers, body, &upstream, calls);
        anyhow::ensure!(
            rewritten.is_some() == want_rewrite,
            "{name}: rewritten {rewritten:?}, expected {want_rewrite}"
        );
        table.row(vec![
            name.to_owned(),
            body.len().to_string(),
            rewritten.map_or_else(|| "unchanged".to_owned(), |n| n.to_string()),
            format!("{:.0} µs", median.as_secs_f64() * 1e6),
            format!("{:.0}", json_bytes as f64 / median.as_secs_f64() / 1e6),
        ]);
    }
    table.print();
    println!("  paid once per fill and public base; hits serve the stored result");
    Ok(())
}
