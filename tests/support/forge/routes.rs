//! The GET endpoints of the GitHub stand-in, one match arm each, and
//! GitHub's pagination (`per_page`, `page`, `Link`). Repositories are
//! private: only their owner's token sees them, anyone else gets 404 as
//! from GitHub. Users are public.
//!
//! - `/user`, `/user/repos`, `/users/{login}`
//! - `/repos/{owner}/{repo}`
//! - `/repos/{owner}/{repo}/issues` (pull requests included, newest first),
//!   `/issues/{number}`, `/issues/{number}/comments`
//! - `/repos/{owner}/{repo}/pulls` (newest first), `/pulls/{number}`,
//!   `/pulls/{number}/files`, `/pulls/{number}/comments` (review comments)
//! - `POST /repos/{owner}/{repo}/issues` with a `title`: a new issue

use std::net::SocketAddr;

use http::StatusCode;
use serde_json::Value;

use super::{
    Account, DEFAULT_PER_PAGE, Issue, MAX_PER_PAGE, Repo, State,
    documents::{self, IssueRef, Owner},
    later,
};

/// What a route found: a JSON document (with the time it last changed and,
/// for lists, the pagination links), or an error status and message.
pub enum Found {
    Document {
        body: Value,
        modified: u64,
        links: Option<String>,
    },
    /// A POST made it (201 Created): the new document and its URL.
    Created {
        body: Value,
        location: String,
    },
    Error(StatusCode, &'static str),
}

const NOT_FOUND: Found = Found::Error(StatusCode::NOT_FOUND, "Not Found");

fn owner(a: &Account) -> Owner<'_> {
    Owner {
        id: a.id,
        login: &a.login,
        name: &a.name,
        public_repos: a.repos.len(),
    }
}

fn issue_ref(issue: &Issue) -> IssueRef<'_> {
    IssueRef {
        number: issue.number,
        title: &issue.title,
        pull: issue.pull,
        comments: issue.comments,
    }
}

fn repo_doc(api: &str, a: &Account, i: usize, r: &Repo) -> Value {
    documents::repo(
        api,
        &owner(a),
        a.id * 1000 + i as u64,
        &r.name,
        &r.description,
    )
}

/// The document for a GET of `uri` by `token` (`None`: anonymous).
pub fn find(state: &State, addr: SocketAddr, uri: &http::Uri, token: Option<&str>) -> Found {
    let api = format!("http://{addr}");
    let account = token.and_then(|t| state.accounts.get(t));
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let document = |body, a: &Account| Found::Document {
        body,
        modified: a.repos_modified,
        links: None,
    };
    match (segments.as_slice(), account) {
        (["user"], Some(a)) => Found::Document {
            body: documents::user(&api, &owner(a)),
            modified: a.user_modified,
            links: None,
        },
        (["user", "repos"], Some(a)) => {
            let all: Vec<Value> = a
                .repos
                .iter()
                .enumerate()
                .map(|(i, r)| repo_doc(&api, a, i, r))
                .collect();
            page_of(addr, uri, all, a.repos_modified)
        }
        (["user"] | ["user", "repos"], None) => {
            Found::Error(StatusCode::UNAUTHORIZED, "Requires authentication")
        }
        (["users", login], _) => match state.accounts.values().find(|a| a.login == *login) {
            Some(a) => Found::Document {
                body: documents::user(&api, &owner(a)),
                modified: a.user_modified,
                links: None,
            },
            None => NOT_FOUND,
        },
        (["repos", o, r, rest @ ..], _) => {
            let Some((a, i, repo)) = find_repo(state, token, o, r) else {
                return NOT_FOUND;
            };
            let full = format!("{}/{}", a.login, repo.name);
            let (o, name) = (owner(a), repo.name.as_str());
            let numbered = |n: &str, pull: bool| {
                let n: u64 = n.parse().ok()?;
                repo.issues
                    .iter()
                    .find(|issue| issue.number == n && (issue.pull || !pull))
            };
            match rest {
                [] => document(repo_doc(&api, a, i, repo), a),
                ["issues"] | ["pulls"] => {
                    let pulls = rest == ["pulls"];
                    let all = repo
                        .issues
                        .iter()
                        .rev()
                        .filter(|issue| issue.pull || !pulls)
                        .map(|issue| {
                            if pulls {
                                documents::pull(&api, &o, name, &issue_ref(issue))
                            } else {
                                documents::issue(&api, &o, name, &issue_ref(issue))
                            }
                        })
                        .collect();
                    page_of(addr, uri, all, a.repos_modified)
                }
                ["issues", n] => match numbered(n, false) {
                    Some(issue) => document(documents::issue(&api, &o, name, &issue_ref(issue)), a),
                    None => NOT_FOUND,
                },
                ["pulls", n] => match numbered(n, true) {
                    Some(issue) => document(documents::pull(&api, &o, name, &issue_ref(issue)), a),
                    None => NOT_FOUND,
                },
                ["issues", n, "comments"] | ["pulls", n, "comments"] => {
                    let review = rest[0] == "pulls";
                    match numbered(n, review) {
                        Some(issue) => {
                            let all = (0..issue.comments)
                                .map(|c| {
                                    documents::comment(&api, &o, &full, issue.number, c, review)
                                })
                                .collect();
                            page_of(addr, uri, all, a.repos_modified)
                        }
                        None => NOT_FOUND,
                    }
                }
                ["pulls", n, "files"] => match numbered(n, true) {
                    Some(issue) => {
                        let all = issue
                            .files
                            .iter()
                            .map(|f| documents::pull_file(&api, &full, issue.number, f))
                            .collect();
                        page_of(addr, uri, all, a.repos_modified)
                    }
                    None => NOT_FOUND,
                },
                _ => NOT_FOUND,
            }
        }
        _ => NOT_FOUND,
    }
}

/// A POST of `body` to `uri` by `token`: creates an issue.
pub fn create(
    state: &mut State,
    addr: SocketAddr,
    uri: &http::Uri,
    token: Option<&str>,
    body: &[u8],
) -> Found {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let ["repos", o, r, "issues"] = segments.as_slice() else {
        return NOT_FOUND;
    };
    let Some((a, i, _)) = find_repo(state, token, o, r) else {
        return NOT_FOUND;
    };
    let title = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["title"].as_str().map(str::to_owned));
    let Some(title) = title.filter(|t| !t.is_empty()) else {
        return Found::Error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
    };
    let login = a.login.clone();
    let Some(account) = token.and_then(|t| state.accounts.get_mut(t)) else {
        return NOT_FOUND;
    };
    account.repos_modified = later(account.repos_modified);
    let repo = &mut account.repos[i];
    let number = repo.issues.len() as u64 + 1;
    repo.issues.push(Issue {
        number,
        title,
        pull: false,
        comments: 0,
        files: Vec::new(),
    });
    let (account, repo) = (&*account, &account.repos[i]);
    let issue = repo.issues.last().expect("just pushed");
    let api = format!("http://{addr}");
    Found::Created {
        body: documents::issue(&api, &owner(account), &repo.name, &issue_ref(issue)),
        location: format!("{api}/repos/{login}/{}/issues/{number}", repo.name),
    }
}

fn find_repo<'a>(
    state: &'a State,
    token: Option<&str>,
    owner: &str,
    repo: &str,
) -> Option<(&'a Account, usize, &'a Repo)> {
    let account = state.accounts.get(token?)?;
    if account.login != owner {
        return None;
    }
    let (i, r) = account
        .repos
        .iter()
        .enumerate()
        .find(|(_, r)| r.name == repo)?;
    Some((account, i, r))
}

/// One page of `all` as `uri` asks for it, with its `Link` header.
fn page_of(addr: SocketAddr, uri: &http::Uri, all: Vec<Value>, modified: u64) -> Found {
    let (per_page, page) = paging(uri.query());
    let total = all.len();
    let start = (page - 1).saturating_mul(per_page).min(total);
    let end = start.saturating_add(per_page).min(total);
    let items: Vec<Value> = all.into_iter().skip(start).take(end - start).collect();
    Found::Document {
        body: Value::Array(items),
        modified,
        links: links(addr, uri, per_page, page, total),
    }
}

/// `per_page` and `page` as GitHub reads them: missing or invalid values
/// take the defaults, `per_page` is capped at 100, pages count from 1.
fn paging(query: Option<&str>) -> (usize, usize) {
    let mut per_page = DEFAULT_PER_PAGE;
    let mut page = 1;
    for pair in query.unwrap_or("").split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = value.parse::<usize>().ok().filter(|v| *v > 0);
        match (name, value) {
            ("per_page", Some(v)) => per_page = v.min(MAX_PER_PAGE),
            ("page", Some(v)) => page = v,
            _ => {}
        }
    }
    (per_page, page)
}

/// The `Link` header of one page, or `None` when everything fits on one
/// page (GitHub omits it then). Other query parameters are kept.
fn links(
    addr: SocketAddr,
    uri: &http::Uri,
    per_page: usize,
    page: usize,
    total: usize,
) -> Option<String> {
    let last = total.div_ceil(per_page).max(1);
    if last == 1 {
        return None;
    }
    let others: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("page=") && !p.starts_with("per_page="))
        .collect();
    let url = |n: usize| {
        let mut query = others.join("&");
        if !query.is_empty() {
            query.push('&');
        }
        format!(
            "<http://{addr}{}?{query}per_page={per_page}&page={n}>",
            uri.path()
        )
    };
    let mut parts = Vec::new();
    if page > 1 {
        parts.push(format!("{}; rel=\"prev\"", url(page - 1)));
    }
    if page < last {
        parts.push(format!("{}; rel=\"next\"", url(page + 1)));
        parts.push(format!("{}; rel=\"last\"", url(last)));
    }
    if page > 1 {
        parts.push(format!("{}; rel=\"first\"", url(1)));
    }
    Some(parts.join(", "))
}
