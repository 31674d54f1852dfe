//! The Helm chart (`charts/cluster-relay`) for tests: rendered and linted by
//! `hack/chart.py` (helm-python-sdk, no helm binary), the rendered objects
//! as JSON, their placement (hosting or managed), and a check that every flag
//! a container passes is one the `agent` binary accepts.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::ControlPlane;
use super::agent::agent_bin;
use super::procs::repo_path;

/// The annotation the add-on framework places manifests by.
pub const LOCATION: &str = "addon.open-cluster-management.io/hosted-manifest-location";
/// The annotation that makes a manifest the framework's pre-delete hook.
pub const PRE_DELETE: &str = "addon.open-cluster-management.io/addon-pre-delete";

/// One rendered object.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The template it came from, e.g. `cluster-relay/templates/provisioner.yaml`.
    pub template: String,
    /// `hosting`, `managed`, or empty when the annotation is missing.
    pub location: String,
    /// The `helm.sh/hook` annotation, empty for ordinary manifests.
    pub hook: String,
    pub object: Value,
}

impl Rendered {
    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }

    pub fn namespace(&self) -> Option<&str> {
        self.object["metadata"]["namespace"].as_str()
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.object["metadata"]["annotations"][key].as_str()
    }

    /// `kind/name`, for messages.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind(), self.name())
    }

    /// The containers of a Deployment's or Job's Pod template.
    pub fn containers(&self) -> Vec<&Value> {
        self.object["spec"]["template"]["spec"]["containers"]
            .as_array()
            .map(|c| c.iter().collect())
            .unwrap_or_default()
    }
}

/// A values file of the chart, e.g. `ci/hosted-values.yaml`.
pub fn chart_file(relative: &str) -> PathBuf {
    repo_path("charts/cluster-relay").join(relative)
}

fn chart_py(command: &str, values: &[PathBuf], set_json: &Value, namespace: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(repo_path("hack/chart.py"))
        .arg(command)
        .args(["--namespace", namespace]);
    for file in values {
        cmd.arg("-f").arg(file);
    }
    if !set_json.is_null() {
        cmd.args(["--set-json", &set_json.to_string()]);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Renders the chart with `values` files and `set_json` on top (Null for
/// none), as a release in `namespace`.
pub fn render(
    values: &[PathBuf],
    set_json: &Value,
    namespace: &str,
) -> anyhow::Result<Vec<Rendered>> {
    let out = chart_py("render", values, set_json, namespace)
        .output()
        .context("running hack/chart.py (hack/install-deps.sh --helm installs its SDK)")?;
    if !out.status.success() {
        bail!(
            "rendering failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let entries: Vec<Value> =
        serde_json::from_slice(&out.stdout).context("hack/chart.py printed no JSON")?;
    Ok(entries
        .into_iter()
        .map(|e| Rendered {
            template: e["template"].as_str().unwrap_or_default().to_owned(),
            location: e["location"].as_str().unwrap_or_default().to_owned(),
            hook: e["hook"].as_str().unwrap_or_default().to_owned(),
            object: e["object"].clone(),
        })
        .collect())
}

/// Lints the chart with `values`; the report's findings of warning level
/// and above, or an error if linting itself failed.
pub fn lint(values: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let out = chart_py("lint", values, &Value::Null, "default")
        .output()
        .context("running hack/chart.py")?;
    let report: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "lint printed no report: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let mut findings: Vec<String> = report["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e.to_string())
        .collect();
    for message in report["messages"].as_array().into_iter().flatten() {
        if message["severity"].as_u64().unwrap_or(0) >= 2 {
            findings.push(message.to_string());
        }
    }
    Ok(findings)
}

/// Applies `objects` to `plane` (`kubectl apply`), in the order given.
pub fn apply(plane: &ControlPlane, objects: &[&Rendered]) -> anyhow::Result<String> {
    let mut stream = String::new();
    for object in objects {
        stream.push_str("---\n");
        stream.push_str(&object.object.to_string());
        stream.push('\n');
    }
    plane.kubectl_with_stdin(&["apply", "-f", "-"], stream.as_bytes())
}

/// Deletes `objects` from `plane`, not waiting for finalizers.
pub fn delete(plane: &ControlPlane, objects: &[&Rendered]) -> anyhow::Result<String> {
    let mut stream = String::new();
    for object in objects {
        stream.push_str("---\n");
        stream.push_str(&object.object.to_string());
        stream.push('\n');
    }
    plane.kubectl_with_stdin(
        &["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
        stream.as_bytes(),
    )
}

/// The long flags `agent <subcommand> --help` lists, or an error when the
/// binary has no such subcommand. Cached per subcommand.
pub fn accepted_flags(subcommand: &str) -> anyhow::Result<BTreeSet<String>> {
    static CACHE: OnceLock<Mutex<HashMap<String, BTreeSet<String>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(flags) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(subcommand)
    {
        return Ok(flags.clone());
    }
    let out = Command::new(agent_bin())
        .args([subcommand, "--help"])
        .stdin(Stdio::null())
        .output()
        .context("running agent --help")?;
    if !out.status.success() {
        bail!(
            "`agent {subcommand} --help` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let help = String::from_utf8_lossy(&out.stdout);
    let flags: BTreeSet<String> = help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
        .filter_map(|word| word.strip_prefix("--"))
        .map(|word| {
            word.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
        })
        .filter(|flag| !flag.is_empty())
        .collect();
    cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(subcommand.to_owned(), flags.clone());
    Ok(flags)
}

/// The container's args, as strings.
pub fn args_of(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect()
}

/// Fails, naming each one, when `args` (subcommand first) pass a flag the
/// binary does not accept: a flag renamed in the binary but not in the chart.
pub fn check_flags(args: &[String]) -> anyhow::Result<()> {
    let subcommand = args.first().context("no subcommand in the args")?;
    let accepted = accepted_flags(subcommand)?;
    let unknown: Vec<&str> = args[1..]
        .iter()
        .filter_map(|arg| arg.strip_prefix("--"))
        .map(|arg| arg.split_once('=').map_or(arg, |(name, _)| name))
        .filter(|name| !accepted.contains(*name))
        .collect();
    if !unknown.is_empty() {
        bail!("the chart passes {unknown:?} to `agent {subcommand}`, which does not accept them");
    }
    Ok(())
}
