//! The source: the admin-ish kubeconfig of the managed cluster, given in a
//! Secret on the hosting cluster. Parsed per content, file references
//! resolved at read time, exec and auth-provider users refused with a
//! clear error, and turned into a client for the managed cluster.

use std::time::Duration;

use base64::Engine as _;
use kube::config::Kubeconfig;

use super::target::ClusterInfo;
use crate::{kube_client::client_from_kubeconfig, managed_kubeconfig::sha256_hex};

/// Why the source kubeconfig cannot be used. Never quotes its content.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source kubeconfig is not valid YAML")]
    Yaml,
    #[error("source kubeconfig has no context {0:?} (set --source-context or its current-context)")]
    Context(String),
    #[error("source kubeconfig has no cluster {0:?} with a server")]
    Cluster(String),
    #[error(
        "source kubeconfig user {0:?} uses an exec plugin, which cannot run here; give a client certificate or a token"
    )]
    ExecPlugin(String),
    #[error(
        "source kubeconfig user {0:?} uses an auth-provider, which is not supported; give a client certificate or a token"
    )]
    AuthProvider(String),
    #[error("source kubeconfig: cannot read certificate-authority file {path}: {source}")]
    CaFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("source kubeconfig: {0}")]
    Client(String),
}

/// A parsed source kubeconfig.
#[derive(Debug, Clone)]
pub struct SourceKubeconfig {
    pub hash: String,
    pub context: String,
    pub cluster: ClusterInfo,
    kubeconfig: Kubeconfig,
}

/// Parses the source and resolves the context, cluster and user it uses.
pub fn parse(bytes: &[u8], context: Option<&str>) -> Result<SourceKubeconfig, SourceError> {
    let text = std::str::from_utf8(bytes).map_err(|_| SourceError::Yaml)?;
    let kubeconfig = Kubeconfig::from_yaml(text).map_err(|_| SourceError::Yaml)?;
    let context_name = context
        .map(str::to_owned)
        .or_else(|| kubeconfig.current_context.clone())
        .unwrap_or_default();
    let context = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| SourceError::Context(context_name.clone()))?;
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .filter(|c| c.server.is_some())
        .ok_or_else(|| SourceError::Cluster(context.cluster.clone()))?;
    let user_name = context.user.clone().unwrap_or_default();
    if let Some(user) = kubeconfig
        .auth_infos
        .iter()
        .find(|u| u.name == user_name)
        .and_then(|u| u.auth_info.as_ref())
    {
        if user.exec.is_some() {
            return Err(SourceError::ExecPlugin(user_name));
        }
        if user.auth_provider.is_some() {
            return Err(SourceError::AuthProvider(user_name));
        }
    }
    let certificate_authority_data = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => Some(data.clone()),
        (None, Some(path)) => {
            let pem = std::fs::read(path).map_err(|source| SourceError::CaFile {
                path: path.clone(),
                source,
            })?;
            Some(base64::engine::general_purpose::STANDARD.encode(pem))
        }
        (None, None) => None,
    };
    Ok(SourceKubeconfig {
        hash: sha256_hex(bytes),
        context: context_name,
        cluster: ClusterInfo {
            server: cluster.server.clone().unwrap_or_default(),
            certificate_authority_data,
            tls_server_name: cluster.tls_server_name.clone(),
            insecure_skip_tls_verify: cluster.insecure_skip_tls_verify,
            proxy_url: cluster.proxy_url.clone(),
        },
        kubeconfig,
    })
}

impl SourceKubeconfig {
    /// A client for the managed cluster with the source's credentials.
    /// Client certificate, key and token files are read now.
    pub async fn client(&self, timeout: Duration) -> Result<kube::Client, SourceError> {
        client_from_kubeconfig(self.kubeconfig.clone(), Some(self.context.clone()), timeout)
            .await
            .map_err(|err| SourceError::Client(err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster: {{server: \"https://10.0.0.1\", certificate-authority-data: Q0EK}}\ncontexts:\n- name: c\n  context: {{cluster: k, user: u}}\nusers:\n- name: u\n  user: {user}\n"
        )
    }

    #[test]
    fn exec_and_auth_provider_users_are_refused_clearly() {
        let exec =
            kubeconfig("{exec: {apiVersion: client.authentication.k8s.io/v1, command: aws}}");
        let err = parse(exec.as_bytes(), None).unwrap_err().to_string();
        assert!(err.contains("exec plugin"), "{err}");
        let provider = kubeconfig("{auth-provider: {name: gcp}}");
        assert!(matches!(
            parse(provider.as_bytes(), None),
            Err(SourceError::AuthProvider(_))
        ));
    }

    #[test]
    fn token_users_parse_and_keep_the_trust_settings() {
        let source = parse(kubeconfig("{token: abc}").as_bytes(), None).expect("parses");
        assert_eq!(source.cluster.server, "https://10.0.0.1");
        assert_eq!(
            source.cluster.certificate_authority_data.as_deref(),
            Some("Q0EK")
        );
        assert_eq!(source.context, "c");
    }

    #[test]
    fn a_missing_ca_file_names_the_path() {
        let text = kubeconfig("{token: abc}").replace(
            "certificate-authority-data: Q0EK",
            "certificate-authority: /nonexistent/ca.crt",
        );
        let err = parse(text.as_bytes(), None).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.crt"), "{err}");
    }
}
