#!/usr/bin/env python3
"""Pages through the authenticated user's repositories with PyGithub, the
GitHub client library from PyPI, against whatever --base-url names (the
read cache in the tests), and prints one JSON line: the login, the
repository names in the order PyGithub yielded them.

PyGithub follows each page's `Link: rel="next"` URL itself and refuses one
whose host or port is not its base URL's, so a full listing proves the
cache rewrote every Link to point back at itself.

The token comes from the environment (PYGITHUB_TOKEN), not argv, so it does
not show in process listings.
"""

import argparse
import json
import os
import sys

from github import Auth, Github


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--per-page", type=int, default=30)
    args = parser.parse_args()
    token = os.environ["PYGITHUB_TOKEN"]
    gh = Github(
        auth=Auth.Token(token),
        base_url=args.base_url,
        per_page=args.per_page,
        timeout=30,
        retry=None,
        # PyGithub throttles by default (0.25 s between requests); the
        # stand-in has no abuse limits to respect.
        seconds_between_requests=None,
        seconds_between_writes=None,
    )
    user = gh.get_user()
    # The iterator is what applications use; it follows Link headers.
    names = [repo.name for repo in user.get_repos()]
    print(json.dumps({"login": user.login, "names": names}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
