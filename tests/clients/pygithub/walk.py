#!/usr/bin/env python3
"""Walks a repository with PyGithub, the GitHub client library from PyPI,
against whatever --base-url names (the read cache in the tests), the way
applications use it, and prints one JSON line of what it read.

- `Github(base_url=...).get_repo("owner/repo")`, then `repo.get_issues()`,
  `repo.get_pulls()`, each pull request's files, review comments and issue
  comments, and each issue's comments: PyGithub builds these URLs from the
  `url` of the object it holds, taken from the response body;
- lazy completion: an issue's `user.name` is not in the issue, so PyGithub
  fetches the user's `url`; `get_repo(..., lazy=True).description` fetches
  the repository when first read; `issue.as_pull_request()` follows the
  issue's URL to its pull request;
- pagination: every list above is longer than --per-page, so PyGithub
  follows `Link: rel="next"`.

PyGithub refuses (AssertionError) to request a URL whose host or port is not
its base URL's, so a full walk proves every URL it followed pointed at the
cache. With --expect-missing it only checks that the repository is not
visible to this token (404) and prints {"missing": true}. With --create
TITLE it creates an issue (a write, which passes through the cache), then
follows the new issue's own URLs (its comments, its user) and lists the
repository's issues again, which the write must not leave stale.

The token comes from the environment (PYGITHUB_TOKEN), not argv, so it does
not show in process listings.
"""

import argparse
import json
import os
import sys

from github import Auth, Github, UnknownObjectException


def comments(paginated):
    return [c.body for c in paginated]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--repo", required=True, help="owner/name")
    parser.add_argument("--per-page", type=int, default=30)
    parser.add_argument("--expect-missing", action="store_true")
    parser.add_argument("--create", metavar="TITLE")
    args = parser.parse_args()
    gh = Github(
        auth=Auth.Token(os.environ["PYGITHUB_TOKEN"]),
        base_url=args.base_url,
        per_page=args.per_page,
        timeout=30,
        retry=None,
        # PyGithub throttles by default (0.25 s between requests); the
        # stand-in has no abuse limits to respect.
        seconds_between_requests=None,
        seconds_between_writes=None,
    )
    if args.expect_missing:
        try:
            gh.get_repo(args.repo)
        except UnknownObjectException as err:
            print(json.dumps({"missing": err.status == 404}))
            return 0
        print(json.dumps({"missing": False}))
        return 0

    repo = gh.get_repo(args.repo)
    if args.create:
        created = repo.create_issue(title=args.create)
        print(
            json.dumps(
                {
                    "number": created.number,
                    "url": created.url,
                    "comments": comments(created.get_comments()),
                    "user_name": created.user.name,
                    "listed": [i.number for i in repo.get_issues()],
                }
            )
        )
        return 0
    issues = []
    for issue in repo.get_issues():
        issues.append(
            {
                "number": issue.number,
                "title": issue.title,
                "pull": issue.pull_request is not None,
                "url": issue.url,
                # Lazy completion: not in the issue, fetched from user.url.
                "user_name": issue.user.name,
                "comments": comments(issue.get_comments()),
            }
        )
    pulls = []
    for pull in repo.get_pulls():
        pulls.append(
            {
                "number": pull.number,
                "head": pull.head.ref,
                "files": [f.filename for f in pull.get_files()],
                "review_comments": comments(pull.get_comments()),
                "issue_comments": comments(pull.get_issue_comments()),
            }
        )
    first_pull = next(i for i in repo.get_issues() if i.pull_request is not None)
    lazy = gh.get_repo(args.repo, lazy=True)
    print(
        json.dumps(
            {
                "full_name": repo.full_name,
                "repo_url": repo.url,
                "html_url": repo.html_url,
                "issues_url": repo.issues_url,
                "issues": issues,
                "pulls": pulls,
                "as_pull_request": first_pull.as_pull_request().number,
                "lazy_description": lazy.description,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
