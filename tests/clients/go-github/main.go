// Command go-github-walk walks a repository with go-github, the GitHub
// client library for Go, against whatever -base-url names (the read cache
// in the tests), and prints one JSON line of what it read:
//
//   - Repositories.Get, then every page of Issues.ListByRepo and
//     PullRequests.List (following resp.NextPage, which go-github reads from
//     the Link header), each pull request's files and review comments, and
//     each issue's comments;
//   - a follow-up by URL: the issue and pull request URLs taken from the
//     response bodies, requested as they are with client.NewRequest, the way
//     applications follow `url`, `issue_url` and `pull_request.url`.
//
// The printed "followed" URLs let the test check that body URLs pointed at
// the cache. The token comes from the environment (GITHUB_TOKEN), not argv.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/google/go-github/v75/github"
)

type issueOut struct {
	Number   int      `json:"number"`
	Title    string   `json:"title"`
	Pull     bool     `json:"pull"`
	Comments []string `json:"comments"`
}

type pullOut struct {
	Number         int      `json:"number"`
	Files          []string `json:"files"`
	ReviewComments []string `json:"review_comments"`
}

type output struct {
	FullName string     `json:"full_name"`
	RepoURL  string     `json:"repo_url"`
	Issues   []issueOut `json:"issues"`
	Pulls    []pullOut  `json:"pulls"`
	Followed []string   `json:"followed"`
	Titles   []string   `json:"followed_titles"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "go-github walk:", err)
		os.Exit(1)
	}
}

func run() error {
	baseURL := flag.String("base-url", "", "the API root to use (the cache)")
	repoName := flag.String("repo", "", "owner/name")
	perPage := flag.Int("per-page", 30, "page size")
	flag.Parse()
	owner, name, ok := strings.Cut(*repoName, "/")
	if *baseURL == "" || !ok {
		return fmt.Errorf("-base-url and -repo owner/name are required")
	}
	base, err := url.Parse(strings.TrimSuffix(*baseURL, "/") + "/")
	if err != nil {
		return err
	}
	client := github.NewClient(nil).WithAuthToken(os.Getenv("GITHUB_TOKEN"))
	// Not WithEnterpriseURLs: it appends /api/v3/ to a host that does not
	// look like an API host, and the cache serves the API at its root.
	client.BaseURL = base
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	repo, _, err := client.Repositories.Get(ctx, owner, name)
	if err != nil {
		return fmt.Errorf("get repository: %w", err)
	}
	out := output{FullName: repo.GetFullName(), RepoURL: repo.GetURL()}
	list := github.ListOptions{PerPage: *perPage}

	var issues []*github.Issue
	issueOpts := &github.IssueListByRepoOptions{ListOptions: list}
	for {
		page, resp, err := client.Issues.ListByRepo(ctx, owner, name, issueOpts)
		if err != nil {
			return fmt.Errorf("list issues: %w", err)
		}
		issues = append(issues, page...)
		if resp.NextPage == 0 {
			break
		}
		issueOpts.ListOptions.Page = resp.NextPage
	}
	for _, issue := range issues {
		comments, err := issueComments(ctx, client, owner, name, issue.GetNumber(), list)
		if err != nil {
			return err
		}
		out.Issues = append(out.Issues, issueOut{
			Number:   issue.GetNumber(),
			Title:    issue.GetTitle(),
			Pull:     issue.IsPullRequest(),
			Comments: comments,
		})
	}

	pullOpts := &github.PullRequestListOptions{ListOptions: list}
	for {
		page, resp, err := client.PullRequests.List(ctx, owner, name, pullOpts)
		if err != nil {
			return fmt.Errorf("list pull requests: %w", err)
		}
		for _, pull := range page {
			p, err := pullDetails(ctx, client, owner, name, pull.GetNumber(), list)
			if err != nil {
				return err
			}
			out.Pulls = append(out.Pulls, p)
		}
		if resp.NextPage == 0 {
			break
		}
		pullOpts.ListOptions.Page = resp.NextPage
	}

	// Follow-ups by the URLs in the bodies, as they are.
	for _, issue := range issues {
		target := issue.GetURL()
		if issue.IsPullRequest() {
			target = issue.GetPullRequestLinks().GetURL()
		}
		req, err := client.NewRequest("GET", target, nil)
		if err != nil {
			return fmt.Errorf("request %s: %w", target, err)
		}
		var doc struct {
			Title string `json:"title"`
		}
		if _, err := client.Do(ctx, req, &doc); err != nil {
			return fmt.Errorf("follow %s: %w", target, err)
		}
		out.Followed = append(out.Followed, target)
		out.Titles = append(out.Titles, doc.Title)
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

func issueComments(ctx context.Context, client *github.Client, owner, name string, number int, list github.ListOptions) ([]string, error) {
	var bodies []string
	opts := &github.IssueListCommentsOptions{ListOptions: list}
	for {
		page, resp, err := client.Issues.ListComments(ctx, owner, name, number, opts)
		if err != nil {
			return nil, fmt.Errorf("comments of #%d: %w", number, err)
		}
		for _, c := range page {
			bodies = append(bodies, c.GetBody())
		}
		if resp.NextPage == 0 {
			return bodies, nil
		}
		opts.ListOptions.Page = resp.NextPage
	}
}

func pullDetails(ctx context.Context, client *github.Client, owner, name string, number int, list github.ListOptions) (pullOut, error) {
	out := pullOut{Number: number}
	opts := list
	for {
		files, resp, err := client.PullRequests.ListFiles(ctx, owner, name, number, &opts)
		if err != nil {
			return out, fmt.Errorf("files of #%d: %w", number, err)
		}
		for _, f := range files {
			out.Files = append(out.Files, f.GetFilename())
		}
		if resp.NextPage == 0 {
			break
		}
		opts.Page = resp.NextPage
	}
	commentOpts := &github.PullRequestListCommentsOptions{ListOptions: list}
	for {
		comments, resp, err := client.PullRequests.ListComments(ctx, owner, name, number, commentOpts)
		if err != nil {
			return out, fmt.Errorf("review comments of #%d: %w", number, err)
		}
		for _, c := range comments {
			out.ReviewComments = append(out.ReviewComments, c.GetBody())
		}
		if resp.NextPage == 0 {
			return out, nil
		}
		commentOpts.ListOptions.Page = resp.NextPage
	}
}
