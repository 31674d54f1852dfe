// Walks a repository with Octokit (@octokit/rest from npm) against whatever
// --base-url names (the read cache in the tests) and prints one JSON line of
// what it read:
//
// - `octokit.paginate` over the repository's issues, which follows each
//   page's `Link: rel="next"` URL as it is;
// - `repos.get`, then follow-ups by the URLs in the bodies, as they are:
//   `issues_url` (an RFC 6570 template, `{/number}`, which Octokit expands),
//   an issue's `pull_request.url`, and `paginate` over the pull request's
//   `review_comments_url`.
//
// Octokit requests absolute URLs as they are, wherever they point; the
// printed "followed" URLs let the test check that they pointed at the cache.
// The token comes from the environment (GITHUB_TOKEN), not argv.

import { parseArgs } from "node:util";
import { Octokit } from "@octokit/rest";

const { values } = parseArgs({
  options: {
    "base-url": { type: "string" },
    repo: { type: "string" },
    "per-page": { type: "string", default: "30" },
  },
});
const [owner, repo] = (values.repo ?? "").split("/");
if (!values["base-url"] || !owner || !repo) {
  console.error("--base-url and --repo owner/name are required");
  process.exit(2);
}
const perPage = Number(values["per-page"]);

const octokit = new Octokit({
  auth: process.env.GITHUB_TOKEN,
  baseUrl: values["base-url"],
  request: { signal: AbortSignal.timeout(60_000) },
  log: { debug() {}, info() {}, warn: console.error, error: console.error },
});

const issues = await octokit.paginate(octokit.rest.issues.listForRepo, {
  owner,
  repo,
  per_page: perPage,
});
const { data: repository } = await octokit.rest.repos.get({ owner, repo });

const followed = [];
const pull = issues.find((issue) => issue.pull_request);
const { data: byTemplate } = await octokit.request(repository.issues_url, {
  number: pull.number,
});
followed.push(byTemplate.url);
const { data: pullRequest } = await octokit.request(byTemplate.pull_request.url);
followed.push(byTemplate.pull_request.url);
const reviewComments = await octokit.paginate(pullRequest.review_comments_url, {
  per_page: perPage,
});
followed.push(pullRequest.review_comments_url);

console.log(
  JSON.stringify({
    full_name: repository.full_name,
    issues_url: repository.issues_url,
    issues: issues.map((issue) => ({
      number: issue.number,
      title: issue.title,
      pull: Boolean(issue.pull_request),
    })),
    followed,
    pull: {
      number: pullRequest.number,
      head: pullRequest.head.ref,
      review_comments: reviewComments.map((comment) => comment.body),
    },
  }),
);
