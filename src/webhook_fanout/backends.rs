//! The backends every delivery goes to: fixed ones from `--backend` and
//! `--backends-file`, and, with `--enable-dynamic-backends`, ones registered
//! at runtime (persisted by the journal). A delivery goes to the backends
//! registered when it is accepted.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{PoisonError, RwLock},
};

use http::Uri;
use serde::{Deserialize, Serialize};

/// One backend.
#[derive(Debug, Clone, Serialize)]
pub struct Backend {
    pub name: String,
    #[serde(serialize_with = "as_string")]
    pub url: Uri,
    /// Registered at runtime (may be removed at runtime).
    pub dynamic: bool,
}

fn as_string<S: serde::Serializer>(uri: &Uri, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&uri.to_string())
}

/// What a registration asks for, and what the file lists.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// Defaults to the URL.
    #[serde(default)]
    pub name: Option<String>,
    pub url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendsFile {
    backends: Vec<BackendSpec>,
}

/// Why a backend cannot be added or removed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("{0}")]
    Invalid(String),
    #[error("a backend named {0:?} exists")]
    Exists(String),
    #[error("no backend named {0:?}")]
    NotFound(String),
    #[error("backend {0:?} is configured by flag or file and cannot be changed at runtime")]
    Fixed(String),
    #[error("at most {0} backends")]
    Full(usize),
}

/// Checks a backend URL: http or https, with a host.
pub fn parse_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|err| format!("{text:?} is not a URL: {err}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(uri),
        _ => Err(format!("{text:?} is not an http or https URL with a host")),
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 || name.chars().any(|c| c.is_control()) {
        return Err(format!("{name:?} is not a usable backend name"));
    }
    Ok(())
}

/// Reads `--backends-file` (YAML or JSON: `backends: [{name, url}]`).
pub fn read_file(path: &Path) -> Result<Vec<BackendSpec>, String> {
    let text = std::fs::read_to_string(path).map_err(|err| format!("{}: {err}", path.display()))?;
    let file: BackendsFile =
        serde_saphyr::from_str(&text).map_err(|err| format!("{}: {err}", path.display()))?;
    Ok(file.backends)
}

/// The current set of backends.
pub struct Registry {
    backends: RwLock<BTreeMap<String, Backend>>,
    max: usize,
}

impl Registry {
    /// The fixed backends; names must be unique.
    pub fn new(fixed: Vec<BackendSpec>, max: usize) -> Result<Self, String> {
        let registry = Registry {
            backends: RwLock::default(),
            max,
        };
        for spec in fixed {
            registry.add(spec, false).map_err(|err| err.to_string())?;
        }
        Ok(registry)
    }

    fn add(&self, spec: BackendSpec, dynamic: bool) -> Result<Backend, RegistryError> {
        let url = parse_url(&spec.url).map_err(RegistryError::Invalid)?;
        let name = spec.name.unwrap_or_else(|| spec.url.clone());
        check_name(&name).map_err(RegistryError::Invalid)?;
        let mut backends = self
            .backends
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if backends.contains_key(&name) {
            return Err(RegistryError::Exists(name));
        }
        if backends.len() >= self.max {
            return Err(RegistryError::Full(self.max));
        }
        let backend = Backend {
            name: name.clone(),
            url,
            dynamic,
        };
        backends.insert(name, backend.clone());
        Ok(backend)
    }

    /// Registers a runtime backend.
    pub fn add_dynamic(&self, spec: BackendSpec) -> Result<Backend, RegistryError> {
        self.add(spec, true)
    }

    /// Removes a runtime backend.
    pub fn remove_dynamic(&self, name: &str) -> Result<(), RegistryError> {
        let mut backends = self
            .backends
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match backends.get(name) {
            None => Err(RegistryError::NotFound(name.to_owned())),
            Some(b) if !b.dynamic => Err(RegistryError::Fixed(name.to_owned())),
            Some(_) => {
                backends.remove(name);
                Ok(())
            }
        }
    }

    /// The names a delivery accepted now goes to.
    pub fn names(&self) -> Vec<String> {
        self.backends
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// A backend's URL, if it is still registered.
    pub fn url(&self, name: &str) -> Option<Uri> {
        self.backends
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .map(|b| b.url.clone())
    }

    /// Every backend.
    pub fn list(&self) -> Vec<Backend> {
        self.backends
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: Option<&str>, url: &str) -> BackendSpec {
        BackendSpec {
            name: name.map(str::to_owned),
            url: url.to_owned(),
        }
    }

    #[test]
    fn fixed_and_dynamic_backends() {
        let registry = Registry::new(vec![spec(None, "http://a.example/hook")], 3).expect("valid");
        assert_eq!(registry.names(), ["http://a.example/hook"]);
        registry
            .add_dynamic(spec(Some("b"), "https://b.example/"))
            .expect("added");
        assert_eq!(
            registry
                .add_dynamic(spec(Some("b"), "https://c.example/"))
                .map(|_| ()),
            Err(RegistryError::Exists("b".into()))
        );
        assert!(matches!(
            registry.add_dynamic(spec(Some("c"), "ftp://c.example/")),
            Err(RegistryError::Invalid(_))
        ));
        registry
            .add_dynamic(spec(Some("c"), "http://c/"))
            .expect("added");
        assert_eq!(
            registry
                .add_dynamic(spec(Some("d"), "http://d/"))
                .map(|_| ()),
            Err(RegistryError::Full(3))
        );
        assert_eq!(
            registry.remove_dynamic("http://a.example/hook"),
            Err(RegistryError::Fixed("http://a.example/hook".into()))
        );
        registry.remove_dynamic("b").expect("removed");
        assert_eq!(registry.url("b"), None);
        assert_eq!(
            registry.remove_dynamic("b"),
            Err(RegistryError::NotFound("b".into()))
        );
    }

    #[test]
    fn the_file_is_yaml_or_json_and_strict() {
        let dir = tempfile::tempdir().expect("tempdir");
        let yaml = dir.path().join("b.yaml");
        std::fs::write(
            &yaml,
            "backends:\n- name: c1\n  url: http://c1/hook\n- url: http://c2/\n",
        )
        .expect("write");
        let specs = read_file(&yaml).expect("parses");
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].name.as_deref(), Some("c1"));
        let json = dir.path().join("b.json");
        std::fs::write(
            &json,
            r#"{"backends": [{"url": "http://c3/", "weight": 2}]}"#,
        )
        .expect("write");
        let err = read_file(&json).expect_err("unknown field");
        assert!(err.contains("weight"), "{err}");
    }
}
