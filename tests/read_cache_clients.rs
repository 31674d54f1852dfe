//! Real GitHub client libraries through `agent read-cache --profile etag`,
//! with the cache as their base URL, in front of the GitHub stand-in
//! (`support/forge.rs`): PyGithub (PyPI), Octokit (`@octokit/rest`, npm,
//! `tests/clients/octokit`) and go-github (Go module,
//! `tests/clients/go-github`), each run as a subprocess by the program in
//! `tests/clients/`, which prints what it read as one JSON line.
//!
//! Each walks a repository: listings across pages, pull requests with
//! their files and comments, and follow-ups by the URLs in the response
//! bodies (lazy completion, `pull_request.url`, URL templates); PyGithub
//! also creates an issue and follows the URLs of what it created. The
//! stand-in's URLs are its own, so a client that followed one unrewritten
//! would leave the cache: PyGithub refuses such a URL, and for the others
//! the test checks each URL they followed and that a second pass costs the
//! upstream's rate limit nothing (every answer a fresh hit). The clients ask
//! for gzip, which the stand-in then sends, as GitHub does.
//!
//! `make deps` (hack/install-deps.sh) installs PyGithub, the npm packages
//! and the Go module; a missing one fails the test with that hint.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use support::{agent::Agent, forge::Forge, repo_path, run_dir};

const ALICE: &str = "ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const BOB: &str = "ghp_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
/// Small pages, so every list the clients read spans several.
const PER_PAGE: &str = "2";
const ISSUES: usize = 3;
const PULLS: usize = 2;
const COMMENTS: usize = 3;
const FILES: usize = 3;

/// The stand-in with two accounts, `alice-repo-0` and `bob-repo-0` holding
/// issues and pull requests, and a cache in front of it.
struct Setup {
    forge: Forge,
    cache: Agent,
}

impl Setup {
    fn start() -> Setup {
        let forge = Forge::start().expect("forge");
        forge.add_account(ALICE, "alice", 2);
        forge.add_account(BOB, "bob", 1);
        forge.add_issues(ALICE, "alice-repo-0", ISSUES, PULLS, COMMENTS, FILES);
        forge.add_issues(BOB, "bob-repo-0", 1, 1, 1, 1);
        let cache = Agent::spawn(
            &[
                "read-cache",
                "--profile",
                "etag",
                "--listen-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
                "--upstream",
                &forge.url(),
                "--cache-ttl",
                "1h",
            ],
            &["cache"],
        )
        .expect("read-cache starts");
        Setup { forge, cache }
    }

    /// The cache's base URL, as the clients are given it.
    fn base(&self) -> String {
        format!("http://{}", self.cache.addr("cache"))
    }

    /// Runs `client` twice for `token`: the second pass must be answered
    /// by the cache alone and print the same. Returns the first output.
    fn twice(&self, token: &str, client: impl Fn() -> Value) -> Value {
        let first = client();
        let used = self.forge.used(Some(token));
        let answered = self.forge.answered();
        let hits = self.hits();
        assert_eq!(client(), first, "the second pass reads the same");
        assert_eq!(
            self.forge.used(Some(token)),
            used,
            "the second pass costs the rate limit nothing"
        );
        assert_eq!(self.forge.answered(), answered, "nothing reached upstream");
        assert!(self.hits() > hits, "the second pass was served by hits");
        first
    }

    fn hits(&self) -> f64 {
        self.cache.metric(
            "cluster_relay_read_cache_requests_total{cache=\"fresh_hit\",code=\"200\",method=\"GET\",profile=\"etag\"}",
        )
    }

    /// What reached the forge asked for gzip, and every answer was a 200,
    /// a 201 or a 404 the client expected (a 401/403 would mean a token
    /// leaked or ran out).
    fn check_upstream(&self) {
        let seen = self.forge.seen();
        assert!(
            seen.iter().all(|s| [200, 201, 404].contains(&s.status)),
            "{:?}",
            seen.iter()
                .map(|s| (&s.target, s.status))
                .collect::<Vec<_>>()
        );
        assert!(
            seen.iter().any(|s| s
                .headers
                .get("accept-encoding")
                .is_some_and(|v| v == "gzip")),
            "the clients asked for gzip and the cache asked the forge for it"
        );
    }
}

/// Runs `command` and parses the one JSON line it prints.
fn json_of(mut command: Command, what: &str) -> Value {
    let out = command
        .output()
        .unwrap_or_else(|err| panic!("{what} runs: {err}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
        panic!(
            "{what} printed no JSON line ({err}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A tool on PATH, or at one of the places install-deps.sh puts it.
fn tool(name: &str, fallbacks: &[&str]) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|p| p.is_file());
    on_path
        .unwrap_or_else(|| panic!("{name} is not installed: run hack/install-deps.sh (make deps)"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("a list: {value}"))
        .iter()
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
        .collect()
}

fn numbers(list: &Value) -> Vec<u64> {
    list.as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .map(|item| item["number"].as_u64().expect("a number"))
        .collect()
}

/// Issue and pull-request numbers of alice-repo-0, newest first: issues
/// 1..=3, pull requests 4 and 5.
fn newest_first() -> Vec<u64> {
    (1..=(ISSUES + PULLS) as u64).rev().collect()
}

fn comments(full: &str, number: u64, review: bool, count: usize) -> Vec<String> {
    let kind = if review { "review comment" } else { "comment" };
    (0..count)
        .map(|i| format!("{kind} {i} on #{number} of {full}"))
        .collect()
}

fn pygithub(setup: &Setup, token: &str, repo: &str, extra: &[&str]) -> Value {
    let mut command = Command::new(tool("python3", &[]));
    command
        .arg(repo_path("tests/clients/pygithub/walk.py"))
        .args(["--base-url", &setup.base(), "--repo", repo])
        .args(["--per-page", PER_PAGE])
        .args(extra)
        .env("PYGITHUB_TOKEN", token);
    json_of(command, "PyGithub")
}

#[test]
fn pygithub_walks_a_repository_through_the_cache() {
    let setup = Setup::start();
    let base = setup.base();
    let walk = setup.twice(ALICE, || pygithub(&setup, ALICE, "alice/alice-repo-0", &[]));

    assert_eq!(walk["full_name"], "alice/alice-repo-0");
    // Body URLs point at the cache, templates included; web URLs do not.
    assert_eq!(walk["repo_url"], format!("{base}/repos/alice/alice-repo-0"));
    assert_eq!(
        walk["issues_url"],
        format!("{base}/repos/alice/alice-repo-0/issues{{/number}}")
    );
    assert_eq!(walk["html_url"], "https://github.com/alice/alice-repo-0");
    let issues = &walk["issues"];
    assert_eq!(numbers(issues), newest_first());
    for issue in issues.as_array().expect("issues") {
        let n = issue["number"].as_u64().expect("number");
        assert_eq!(issue["pull"], n > ISSUES as u64, "{issue}");
        assert_eq!(
            issue["url"],
            format!("{base}/repos/alice/alice-repo-0/issues/{n}")
        );
        // Lazy completion: the name is only in the user's own document.
        assert_eq!(issue["user_name"], "alice the first");
        assert_eq!(
            strings(&issue["comments"]),
            comments("alice/alice-repo-0", n, false, COMMENTS)
        );
    }
    let pulls = &walk["pulls"];
    assert_eq!(numbers(pulls), [5, 4]);
    for pull in pulls.as_array().expect("pulls") {
        let n = pull["number"].as_u64().expect("number");
        assert_eq!(pull["head"], format!("topic-{n}"));
        let files: Vec<String> = (0..FILES).map(|f| format!("src/file_{f}.rs")).collect();
        assert_eq!(strings(&pull["files"]), files);
        assert_eq!(
            strings(&pull["review_comments"]),
            comments("alice/alice-repo-0", n, true, COMMENTS)
        );
        assert_eq!(
            strings(&pull["issue_comments"]),
            comments("alice/alice-repo-0", n, false, COMMENTS)
        );
    }
    assert_eq!(walk["as_pull_request"], 5);
    assert_eq!(
        walk["lazy_description"],
        "repository 0 of alice, generation 0"
    );
    // The user's document was fetched by the URL in the issues' bodies.
    assert!(
        setup
            .forge
            .seen()
            .iter()
            .any(|s| s.target == "/users/alice")
    );
    setup.check_upstream();
}

#[test]
fn pygithub_creates_an_issue_and_follows_its_urls_through_the_cache() {
    let setup = Setup::start();
    let base = setup.base();
    // The listing is cached first, so the write must drop it.
    let walk = pygithub(&setup, ALICE, "alice/alice-repo-0", &[]);
    assert_eq!(numbers(&walk["issues"]), newest_first());
    let created = pygithub(
        &setup,
        ALICE,
        "alice/alice-repo-0",
        &["--create", "found through the cache"],
    );
    let number = (ISSUES + PULLS + 1) as u64;
    assert_eq!(created["number"], number);
    // The write's answer passed through with its URLs pointing back.
    assert_eq!(
        created["url"],
        format!("{base}/repos/alice/alice-repo-0/issues/{number}")
    );
    assert_eq!(created["user_name"], "alice the first");
    assert_eq!(created["comments"], serde_json::json!([]));
    let mut listed = newest_first();
    listed.insert(0, number);
    let listed: Vec<Value> = listed.into_iter().map(Value::from).collect();
    assert_eq!(created["listed"], Value::Array(listed));
    let post = setup
        .forge
        .seen()
        .into_iter()
        .find(|s| s.method == "POST")
        .expect("the POST reached the forge");
    assert_eq!(
        (post.target.as_str(), post.status),
        ("/repos/alice/alice-repo-0/issues", 201)
    );
    setup.check_upstream();
}

#[test]
fn pygithub_tokens_never_see_each_others_data() {
    let setup = Setup::start();
    let alice = pygithub(&setup, ALICE, "alice/alice-repo-0", &[]);
    let bob = setup.twice(BOB, || pygithub(&setup, BOB, "bob/bob-repo-0", &[]));
    assert_eq!(bob["full_name"], "bob/bob-repo-0");
    assert_eq!(numbers(&bob["issues"]), [2, 1]);
    assert_eq!(bob["issues"][0]["user_name"], "bob the first");
    let text = bob.to_string();
    assert!(!text.contains("alice"), "bob saw alice's data: {text}");
    // Alice's repository, cached for alice, is not bob's to read, through
    // the cache as upstream; and alice's entries were never served to bob.
    let missing = pygithub(&setup, BOB, "alice/alice-repo-0", &["--expect-missing"]);
    assert_eq!(missing["missing"], true);
    assert!(setup.forge.seen().iter().any(|s| {
        s.target == "/repos/alice/alice-repo-0"
            && s.token.as_deref() == Some(BOB)
            && s.status == 404
    }));
    // Alice's walk again: all hits, her data unchanged by bob's.
    let used = setup.forge.used(Some(ALICE));
    assert_eq!(pygithub(&setup, ALICE, "alice/alice-repo-0", &[]), alice);
    assert_eq!(setup.forge.used(Some(ALICE)), used);
    setup.check_upstream();
}

#[test]
fn octokit_paginates_and_follows_body_urls_through_the_cache() {
    let dir = repo_path("tests/clients/octokit");
    assert!(
        dir.join("node_modules/@octokit/rest").is_dir(),
        "@octokit/rest is not installed in tests/clients/octokit: run hack/install-deps.sh (make deps)"
    );
    let setup = Setup::start();
    let base = setup.base();
    let node = tool("node", &[]);
    let walk = setup.twice(ALICE, || {
        let mut command = Command::new(&node);
        command
            .current_dir(&dir)
            .arg("walk.mjs")
            .args(["--base-url", &base, "--repo", "alice/alice-repo-0"])
            .args(["--per-page", PER_PAGE])
            .env("GITHUB_TOKEN", ALICE);
        json_of(command, "Octokit")
    });

    assert_eq!(walk["full_name"], "alice/alice-repo-0");
    assert_eq!(numbers(&walk["issues"]), newest_first());
    let r = format!("{base}/repos/alice/alice-repo-0");
    assert_eq!(walk["issues_url"], format!("{r}/issues{{/number}}"));
    assert_eq!(
        strings(&walk["followed"]),
        [
            format!("{r}/issues/5"),
            format!("{r}/pulls/5"),
            format!("{r}/pulls/5/comments"),
        ]
    );
    assert_eq!(walk["pull"]["number"], 5);
    assert_eq!(walk["pull"]["head"], "topic-5");
    assert_eq!(
        strings(&walk["pull"]["review_comments"]),
        comments("alice/alice-repo-0", 5, true, COMMENTS)
    );
    // paginate followed Link to the last page of the issues.
    assert!(setup.forge.seen().iter().any(|s| {
        s.target.starts_with("/repos/alice/alice-repo-0/issues?") && s.target.contains("page=3")
    }));
    setup.check_upstream();
}

/// Builds the go-github walker into the run directory (the Go build cache,
/// warmed by install-deps.sh, makes this quick).
fn go_walker() -> PathBuf {
    let go = tool("go", &["/usr/local/go/bin/go"]);
    let out = run_dir().join("go-github-walk");
    let status = Command::new(go)
        .current_dir(repo_path("tests/clients/go-github"))
        .args(["build", "-mod=readonly", "-o"])
        .arg(&out)
        .arg(".")
        .env("GOFLAGS", "-buildvcs=false")
        .status()
        .expect("go runs");
    assert!(
        status.success(),
        "go build of tests/clients/go-github failed: run hack/install-deps.sh (make deps)"
    );
    out
}

#[test]
fn go_github_lists_and_follows_body_urls_through_the_cache() {
    let walker = go_walker();
    let setup = Setup::start();
    let base = setup.base();
    let walk = setup.twice(ALICE, || {
        let mut command = Command::new(Path::new(&walker));
        command
            .args(["-base-url", &base, "-repo", "alice/alice-repo-0"])
            .args(["-per-page", PER_PAGE])
            .env("GITHUB_TOKEN", ALICE);
        json_of(command, "go-github")
    });

    assert_eq!(walk["full_name"], "alice/alice-repo-0");
    let r = format!("{base}/repos/alice/alice-repo-0");
    assert_eq!(walk["repo_url"], r);
    assert_eq!(numbers(&walk["issues"]), newest_first());
    for issue in walk["issues"].as_array().expect("issues") {
        let n = issue["number"].as_u64().expect("number");
        assert_eq!(
            strings(&issue["comments"]),
            comments("alice/alice-repo-0", n, false, COMMENTS)
        );
    }
    assert_eq!(numbers(&walk["pulls"]), [5, 4]);
    for pull in walk["pulls"].as_array().expect("pulls") {
        let n = pull["number"].as_u64().expect("number");
        assert_eq!(strings(&pull["files"]).len(), FILES);
        assert_eq!(
            strings(&pull["review_comments"]),
            comments("alice/alice-repo-0", n, true, COMMENTS)
        );
    }
    // Follow-ups by body URLs stayed on the cache.
    let followed: Vec<String> = newest_first()
        .into_iter()
        .map(|n| {
            let kind = if n > ISSUES as u64 { "pulls" } else { "issues" };
            format!("{r}/{kind}/{n}")
        })
        .collect();
    assert_eq!(strings(&walk["followed"]), followed);
    let titles: Vec<String> = newest_first()
        .into_iter()
        .map(|n| {
            let kind = if n > ISSUES as u64 {
                "pull request"
            } else {
                "issue"
            };
            format!("{kind} {n} of alice-repo-0")
        })
        .collect();
    assert_eq!(strings(&walk["followed_titles"]), titles);
    setup.check_upstream();
}
