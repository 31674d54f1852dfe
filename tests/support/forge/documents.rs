//! The JSON documents of the GitHub stand-in, shaped as GitHub's REST
//! reference shows them: users, repositories, issues (pull requests are
//! issues too, with a `pull_request` object), pull requests, their files,
//! issue comments and review comments.
//!
//! As on GitHub, documents carry absolute URLs: API URLs of the forge itself
//! (`url`, `issues_url` with its `{/number}` template, `pull_request.url`,
//! ...), which clients follow, and web URLs (`html_url`, `blob_url`) of
//! another host, `https://github.com`, which no API client requests.

use serde_json::{Value, json};

/// The web host of `html_url`s: not the API, so never rewritten.
pub const WEB: &str = "https://github.com";
/// Fixed timestamps: the documents' bytes depend only on their content.
const CREATED: &str = "2024-01-02T03:04:05Z";
const UPDATED: &str = "2024-02-03T04:05:06Z";

/// The pieces of an account that documents show.
pub struct Owner<'a> {
    pub id: u64,
    pub login: &'a str,
    pub name: &'a str,
    pub public_repos: usize,
}

/// An issue or pull request as documents show it.
pub struct IssueRef<'a> {
    pub number: u64,
    pub title: &'a str,
    pub pull: bool,
    pub comments: usize,
}

/// The simple user object GitHub nests in other documents.
pub fn simple_user(api: &str, id: u64, login: &str) -> Value {
    json!({
        "login": login,
        "id": id,
        "node_id": format!("U_{id}"),
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}?v=4"),
        "url": format!("{api}/users/{login}"),
        "html_url": format!("{WEB}/{login}"),
        "followers_url": format!("{api}/users/{login}/followers"),
        "following_url": format!("{api}/users/{login}/following{{/other_user}}"),
        "repos_url": format!("{api}/users/{login}/repos"),
        "type": "User",
        "site_admin": false,
    })
}

/// `GET /user` and `GET /users/{login}`: the simple user plus profile.
pub fn user(api: &str, owner: &Owner<'_>) -> Value {
    let mut user = simple_user(api, owner.id, owner.login);
    if let Some(fields) = user.as_object_mut() {
        fields.insert("name".into(), owner.name.into());
        fields.insert("public_repos".into(), owner.public_repos.into());
        fields.insert("created_at".into(), CREATED.into());
        fields.insert("updated_at".into(), UPDATED.into());
    }
    user
}

/// A full repository, with the URL templates GitHub sends.
pub fn repo(api: &str, owner: &Owner<'_>, id: u64, name: &str, description: &str) -> Value {
    let full = format!("{}/{name}", owner.login);
    let r = format!("{api}/repos/{full}");
    json!({
        "id": id,
        "node_id": format!("R_{id}"),
        "name": name,
        "full_name": full,
        "private": true,
        "owner": simple_user(api, owner.id, owner.login),
        "html_url": format!("{WEB}/{full}"),
        "description": description,
        "fork": false,
        "url": r,
        "comments_url": format!("{r}/comments{{/number}}"),
        "commits_url": format!("{r}/commits{{/sha}}"),
        "contents_url": format!("{r}/contents/{{+path}}"),
        "issue_comment_url": format!("{r}/issues/comments{{/number}}"),
        "issues_url": format!("{r}/issues{{/number}}"),
        "pulls_url": format!("{r}/pulls{{/number}}"),
        "labels_url": format!("{r}/labels{{/name}}"),
        "clone_url": format!("{WEB}/{full}.git"),
        "default_branch": "main",
        "created_at": CREATED,
        "updated_at": UPDATED,
        "pushed_at": UPDATED,
    })
}

/// An issue; a pull request's carries `pull_request` with its URLs.
pub fn issue(api: &str, owner: &Owner<'_>, repo: &str, issue: &IssueRef<'_>) -> Value {
    let full = format!("{}/{repo}", owner.login);
    let url = format!("{api}/repos/{full}/issues/{}", issue.number);
    let mut doc = json!({
        "id": 500_000 + owner.id * 1000 + issue.number,
        "node_id": format!("I_{}_{}", owner.id, issue.number),
        "url": url,
        "repository_url": format!("{api}/repos/{full}"),
        "labels_url": format!("{url}/labels{{/name}}"),
        "comments_url": format!("{url}/comments"),
        "events_url": format!("{url}/events"),
        "html_url": format!("{WEB}/{full}/issues/{}", issue.number),
        "number": issue.number,
        "state": "open",
        "title": issue.title,
        "body": format!("Body of #{} in {full}.", issue.number),
        "user": simple_user(api, owner.id, owner.login),
        "labels": [],
        "assignee": null,
        "locked": false,
        "comments": issue.comments,
        "created_at": CREATED,
        "updated_at": UPDATED,
        "closed_at": null,
        "author_association": "OWNER",
    });
    if issue.pull {
        let pull = format!("{api}/repos/{full}/pulls/{}", issue.number);
        let html = format!("{WEB}/{full}/pull/{}", issue.number);
        doc["pull_request"] = json!({
            "url": pull,
            "html_url": html,
            "diff_url": format!("{html}.diff"),
            "patch_url": format!("{html}.patch"),
        });
    }
    doc
}

/// A pull request (`GET /repos/{owner}/{repo}/pulls/{number}`).
pub fn pull(api: &str, owner: &Owner<'_>, repo: &str, issue: &IssueRef<'_>) -> Value {
    let full = format!("{}/{repo}", owner.login);
    let r = format!("{api}/repos/{full}");
    let url = format!("{r}/pulls/{}", issue.number);
    let html = format!("{WEB}/{full}/pull/{}", issue.number);
    let sha = format!("{:040x}", issue.number);
    let branch = |name: &str| {
        json!({
            "label": format!("{}:{name}", owner.login),
            "ref": name,
            "sha": sha,
            "user": simple_user(api, owner.id, owner.login),
        })
    };
    json!({
        "id": 700_000 + owner.id * 1000 + issue.number,
        "node_id": format!("PR_{}_{}", owner.id, issue.number),
        "url": url,
        "html_url": html,
        "diff_url": format!("{html}.diff"),
        "patch_url": format!("{html}.patch"),
        "issue_url": format!("{r}/issues/{}", issue.number),
        "commits_url": format!("{url}/commits"),
        "review_comments_url": format!("{url}/comments"),
        "review_comment_url": format!("{r}/pulls/comments{{/number}}"),
        "comments_url": format!("{r}/issues/{}/comments", issue.number),
        "statuses_url": format!("{r}/statuses/{sha}"),
        "number": issue.number,
        "state": "open",
        "locked": false,
        "title": issue.title,
        "user": simple_user(api, owner.id, owner.login),
        "body": format!("Body of #{} in {full}.", issue.number),
        "created_at": CREATED,
        "updated_at": UPDATED,
        "head": branch(&format!("topic-{}", issue.number)),
        "base": branch("main"),
        "merged": false,
        "comments": issue.comments,
        "review_comments": issue.comments,
        "draft": false,
    })
}

/// One changed file of a pull request.
pub fn pull_file(api: &str, full: &str, number: u64, filename: &str) -> Value {
    let sha = format!("{number:040x}");
    json!({
        "sha": format!("{:040x}", filename.len() as u64 * 7919 + number),
        "filename": filename,
        "status": "modified",
        "additions": 2,
        "deletions": 1,
        "changes": 3,
        "blob_url": format!("{WEB}/{full}/blob/{sha}/{filename}"),
        "raw_url": format!("{WEB}/{full}/raw/{sha}/{filename}"),
        "contents_url": format!("{api}/repos/{full}/contents/{filename}?ref={sha}"),
        "patch": "@@ -1 +1,2 @@\n-old\n+new\n+more",
    })
}

/// A comment on an issue or pull request: an issue comment
/// (`/issues/{number}/comments`), or with `review` a review comment
/// (`/pulls/{number}/comments`), which also has a diff position.
pub fn comment(
    api: &str,
    owner: &Owner<'_>,
    full: &str,
    number: u64,
    i: usize,
    review: bool,
) -> Value {
    let user = simple_user(api, owner.id, owner.login);
    if review {
        let id = 800_000 + number * 100 + i as u64;
        json!({
            "id": id,
            "node_id": format!("PRRC_{id}"),
            "url": format!("{api}/repos/{full}/pulls/comments/{id}"),
            "pull_request_review_id": 600_000 + number,
            "diff_hunk": "@@ -1 +1,2 @@",
            "path": "src/lib.rs",
            "position": 1,
            "commit_id": format!("{number:040x}"),
            "user": user,
            "body": format!("review comment {i} on #{number} of {full}"),
            "created_at": CREATED,
            "updated_at": UPDATED,
            "html_url": format!("{WEB}/{full}/pull/{number}#discussion_r{id}"),
            "pull_request_url": format!("{api}/repos/{full}/pulls/{number}"),
            "author_association": "OWNER",
        })
    } else {
        let id = 900_000 + number * 100 + i as u64;
        json!({
            "id": id,
            "node_id": format!("IC_{id}"),
            "url": format!("{api}/repos/{full}/issues/comments/{id}"),
            "html_url": format!("{WEB}/{full}/issues/{number}#issuecomment-{id}"),
            "issue_url": format!("{api}/repos/{full}/issues/{number}"),
            "user": user,
            "body": format!("comment {i} on #{number} of {full}"),
            "created_at": CREATED,
            "updated_at": UPDATED,
            "author_association": "OWNER",
        })
    }
}
