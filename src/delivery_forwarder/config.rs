//! The rules file of `agent delivery-forwarder` (YAML or JSON): which
//! repositories and organizations to read, which of their webhooks, and
//! where the deliveries go. Parsed, then validated into [`Rule`]s whose
//! errors name the rule and the field.

use std::{fmt, path::Path};

use http::Uri;
use serde::Deserialize;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    #[serde(default)]
    repositories: Vec<String>,
    #[serde(default)]
    organizations: Vec<String>,
    hook: HookSpec,
    target: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HookSpec {
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    create: bool,
    #[serde(default)]
    events: Vec<String>,
}

/// Where deliveries are read from: a repository's or an organization's hooks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    Repo { owner: String, repo: String },
    Org(String),
}

impl Source {
    /// The API path of the source's hooks, without a leading base URL.
    pub fn hooks_path(&self) -> String {
        match self {
            Source::Repo { owner, repo } => format!("/repos/{owner}/{repo}/hooks"),
            Source::Org(org) => format!("/orgs/{org}/hooks"),
        }
    }

    /// The API path that names the app installation covering the source.
    pub fn installation_path(&self) -> String {
        match self {
            Source::Repo { owner, repo } => format!("/repos/{owner}/{repo}/installation"),
            Source::Org(org) => format!("/orgs/{org}/installation"),
        }
    }

    /// A ConfigMap-safe key for a hook of this source. Owner and
    /// organization names have no dots and the hook id is the last part, so
    /// keys of different hooks never collide.
    pub fn cursor_key(&self, hook_id: u64) -> String {
        match self {
            Source::Repo { owner, repo } => format!("repo.{owner}.{repo}.{hook_id}"),
            Source::Org(org) => format!("org.{org}.{hook_id}"),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Repo { owner, repo } => write!(f, "{owner}/{repo}"),
            Source::Org(org) => write!(f, "{org}"),
        }
    }
}

/// How a rule finds its hook on each source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookRef {
    /// A known hook id (only with a single source).
    Id(u64),
    /// The hook whose `config.url` is this; created with `events` when
    /// `create` is set and none exists.
    Url {
        url: String,
        create: bool,
        events: Vec<String>,
    },
}

/// One validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub sources: Vec<Source>,
    pub hook: HookRef,
    pub target: Uri,
}

/// Why the rules file is not usable; the message names the rule and field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn name_ok(name: &str, dots: bool) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || (dots && c == '.'))
        && name != "."
        && name != ".."
}

fn parse_repo(text: &str) -> Option<Source> {
    let (owner, repo) = text.split_once('/')?;
    (name_ok(owner, false) && name_ok(repo, true)).then(|| Source::Repo {
        owner: owner.to_owned(),
        repo: repo.to_owned(),
    })
}

/// Parses and validates rules from YAML or JSON text (JSON is YAML).
pub fn parse(text: &str) -> Result<Vec<Rule>, ConfigError> {
    let file: RulesFile =
        serde_saphyr::from_str(text).map_err(|err| ConfigError(err.to_string()))?;
    if file.rules.is_empty() {
        return Err(ConfigError("rules: at least one rule is needed".into()));
    }
    let mut rules = Vec::new();
    for (i, spec) in file.rules.into_iter().enumerate() {
        let at = |field: &str, why: String| ConfigError(format!("rules[{i}].{field}: {why}"));
        let mut sources = Vec::new();
        for text in &spec.repositories {
            sources.push(
                parse_repo(text)
                    .ok_or_else(|| at("repositories", format!("{text:?} is not OWNER/REPO")))?,
            );
        }
        for org in &spec.organizations {
            if !name_ok(org, false) {
                return Err(at(
                    "organizations",
                    format!("{org:?} is not an organization name"),
                ));
            }
            sources.push(Source::Org(org.clone()));
        }
        if sources.is_empty() {
            return Err(at(
                "repositories",
                "name at least one repository or organization".into(),
            ));
        }
        let hook = match (spec.hook.id, spec.hook.url) {
            (Some(_), Some(_)) => return Err(at("hook", "give id or url, not both".into())),
            (None, None) => return Err(at("hook", "give id or url".into())),
            (Some(id), None) => {
                if sources.len() != 1 {
                    return Err(at(
                        "hook.id",
                        "a hook id belongs to one repository or organization; name exactly one, or find hooks by url".into(),
                    ));
                }
                if spec.hook.create || !spec.hook.events.is_empty() {
                    return Err(at("hook.create", "only with hook.url".into()));
                }
                HookRef::Id(id)
            }
            (None, Some(url)) => {
                check_url(&url).map_err(|why| at("hook.url", why))?;
                if !spec.hook.create && !spec.hook.events.is_empty() {
                    return Err(at("hook.events", "only with create: true".into()));
                }
                HookRef::Url {
                    url,
                    create: spec.hook.create,
                    events: spec.hook.events,
                }
            }
        };
        let target = check_url(&spec.target).map_err(|why| at("target", why))?;
        rules.push(Rule {
            sources,
            hook,
            target,
        });
    }
    Ok(rules)
}

/// Reads and validates the rules file.
pub fn read(path: &Path) -> Result<Vec<Rule>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| ConfigError(format!("{}: {err}", path.display())))?;
    parse(&text).map_err(|err| ConfigError(format!("{}: {err}", path.display())))
}

fn check_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|err| format!("{text:?} is not a URL: {err}"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(uri),
        _ => Err(format!("{text:?} is not an http(s) URL with a host")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses() {
        let rules = parse(
            "rules:\n\
             - repositories: [octo/hello.world]\n  hook: {id: 7}\n  target: http://fanout:8080/\n\
             - organizations: [octo-org]\n  repositories: [octo/a]\n  \
               hook: {url: 'https://relay.invalid/h', create: true, events: [push]}\n  \
               target: https://x.example/hook\n",
        )
        .expect("valid");
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].hook, HookRef::Id(7));
        assert_eq!(rules[0].sources[0].cursor_key(7), "repo.octo.hello.world.7");
        assert_eq!(rules[1].sources.len(), 2);
        assert_eq!(rules[1].sources[1], Source::Org("octo-org".into()));
    }

    #[test]
    fn json_parses_too() {
        let rules = parse(
            r#"{"rules": [{"organizations": ["o"], "hook": {"url": "http://h/"}, "target": "http://t/"}]}"#,
        )
        .expect("valid");
        assert_eq!(rules[0].sources[0].hooks_path(), "/orgs/o/hooks");
    }

    #[test]
    fn errors_name_the_rule_and_field() {
        for (text, wanted) in [
            ("rules: []", "rules: at least one rule"),
            (
                "rules: [{repositories: [nope], hook: {id: 1}, target: 'http://t/'}]",
                "rules[0].repositories: \"nope\" is not OWNER/REPO",
            ),
            (
                "rules: [{hook: {id: 1}, target: 'http://t/'}]",
                "rules[0].repositories: name at least one",
            ),
            (
                "rules: [{repositories: [a/b, a/c], hook: {id: 1}, target: 'http://t/'}]",
                "rules[0].hook.id: a hook id belongs to one",
            ),
            (
                "rules: [{repositories: [a/b], hook: {}, target: 'http://t/'}]",
                "rules[0].hook: give id or url",
            ),
            (
                "rules: [{repositories: [a/b], hook: {id: 1}, target: 'ftp://t/'}]",
                "rules[0].target: \"ftp://t/\" is not an http(s) URL",
            ),
            (
                "rules: [{repositories: [a/b], hook: {url: 'http://h/', events: [push]}, target: 'http://t/'}]",
                "rules[0].hook.events: only with create",
            ),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(wanted), "{text}: {err}");
        }
        let err =
            parse("rules: [{repositories: [a/b], hook: {id: 1}, target: 'http://t/', extra: 1}]")
                .expect_err("unknown field")
                .to_string();
        assert!(err.contains("extra"), "{err}");
    }
}
