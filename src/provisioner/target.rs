//! The target Secret: the managed kubeconfig built as a typed `Kubeconfig`
//! (never from a string template), its annotations, and the decision whether
//! what is on the hosting cluster now must be replaced.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};
use secrecy::SecretString;

use crate::managed_kubeconfig::sha256_hex;

/// When the token in the Secret expires (RFC 3339).
pub const EXPIRATION_ANNOTATION: &str = "cluster-relay.io/token-expiration";
/// SHA-256 of the source kubeconfig the Secret was made from.
pub const SOURCE_HASH_ANNOTATION: &str = "cluster-relay.io/source-hash";
/// SHA-256 of the kubeconfig as written, to notice edits by hand.
pub const CONTENT_HASH_ANNOTATION: &str = "cluster-relay.io/kubeconfig-hash";
/// Label on everything the provisioner creates.
pub const MANAGED_BY_LABEL: (&str, &str) =
    ("app.kubernetes.io/managed-by", "cluster-relay-provisioner");

/// The parts of the source's cluster entry the target keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    pub server: String,
    /// Base64 PEM, as in `certificate-authority-data`.
    pub certificate_authority_data: Option<String>,
    pub tls_server_name: Option<String>,
    pub insecure_skip_tls_verify: Option<bool>,
    pub proxy_url: Option<String>,
}

/// Builds the managed kubeconfig: the source's server and trust settings,
/// and the ServiceAccount token as its only credential.
pub fn build_kubeconfig(
    cluster: &ClusterInfo,
    context_name: &str,
    token: SecretString,
) -> Kubeconfig {
    Kubeconfig {
        api_version: Some("v1".to_owned()),
        kind: Some("Config".to_owned()),
        clusters: vec![NamedCluster {
            name: context_name.to_owned(),
            cluster: Some(Cluster {
                server: Some(cluster.server.clone()),
                certificate_authority_data: cluster.certificate_authority_data.clone(),
                tls_server_name: cluster.tls_server_name.clone(),
                insecure_skip_tls_verify: cluster.insecure_skip_tls_verify,
                proxy_url: cluster.proxy_url.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: context_name.to_owned(),
            auth_info: Some(AuthInfo {
                token: Some(token),
                ..Default::default()
            }),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: context_name.to_owned(),
            context: Some(Context {
                cluster: context_name.to_owned(),
                user: Some(context_name.to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        current_context: Some(context_name.to_owned()),
        ..Default::default()
    }
}

/// Serializes a kubeconfig as YAML.
pub fn to_yaml(kubeconfig: &Kubeconfig) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(kubeconfig)
}

/// The Secret object to apply.
pub fn secret(
    namespace: &str,
    name: &str,
    key: &str,
    kubeconfig_yaml: &str,
    expires: Timestamp,
    source_hash: &str,
) -> Secret {
    let annotations = BTreeMap::from([
        (EXPIRATION_ANNOTATION.to_owned(), expires.to_string()),
        (SOURCE_HASH_ANNOTATION.to_owned(), source_hash.to_owned()),
        (
            CONTENT_HASH_ANNOTATION.to_owned(),
            sha256_hex(kubeconfig_yaml.as_bytes()),
        ),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.0.to_owned(),
                MANAGED_BY_LABEL.1.to_owned(),
            )])),
            annotations: Some(annotations),
            ..Default::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            key.to_owned(),
            ByteString(kubeconfig_yaml.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

/// Why the target Secret must be (re)written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Missing,
    /// Our annotations are gone or unreadable.
    Unrecognised,
    /// The kubeconfig was changed by someone else.
    Altered,
    SourceChanged,
    Expiring,
    /// The managed apiserver no longer accepts the token (e.g. the
    /// ServiceAccount was recreated).
    Rejected,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Unrecognised => "unrecognised",
            Reason::Altered => "altered",
            Reason::SourceChanged => "source_changed",
            Reason::Expiring => "expiring",
            Reason::Rejected => "rejected",
        }
    }
}

/// What to do about the target Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It is good; look again at `refresh_at` at the latest.
    Keep {
        expires: Timestamp,
        refresh_at: Timestamp,
    },
    Refresh(Reason),
}

/// Decides from the Secret as it is now.
pub fn decide(
    secret: Option<&Secret>,
    key: &str,
    source_hash: &str,
    now: Timestamp,
    refresh_before: std::time::Duration,
) -> Decision {
    let Some(secret) = secret else {
        return Decision::Refresh(Reason::Missing);
    };
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let expires = annotations
        .get(EXPIRATION_ANNOTATION)
        .and_then(|text| text.parse::<Timestamp>().ok());
    let (Some(expires), Some(written_source), Some(content_hash)) = (
        expires,
        annotations.get(SOURCE_HASH_ANNOTATION),
        annotations.get(CONTENT_HASH_ANNOTATION),
    ) else {
        return Decision::Refresh(Reason::Unrecognised);
    };
    let data = secret.data.as_ref().and_then(|data| data.get(key));
    if data.map(|bytes| sha256_hex(&bytes.0)).as_deref() != Some(content_hash.as_str()) {
        return Decision::Refresh(Reason::Altered);
    }
    if written_source != source_hash {
        return Decision::Refresh(Reason::SourceChanged);
    }
    let margin = k8s_openapi::jiff::SignedDuration::try_from(refresh_before)
        .unwrap_or(k8s_openapi::jiff::SignedDuration::MAX);
    let refresh_at = expires.checked_sub(margin).unwrap_or(Timestamp::MIN);
    if now >= refresh_at {
        return Decision::Refresh(Reason::Expiring);
    }
    Decision::Keep {
        expires,
        refresh_at,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cluster() -> ClusterInfo {
        ClusterInfo {
            server: "https://10.0.0.1:6443".into(),
            certificate_authority_data: Some("Q0EK".into()),
            tls_server_name: Some("kubernetes.default.svc".into()),
            insecure_skip_tls_verify: None,
            proxy_url: None,
        }
    }

    fn written(expires: Timestamp) -> (Secret, String) {
        let yaml = to_yaml(&build_kubeconfig(
            &cluster(),
            "managed",
            SecretString::from("tok"),
        ))
        .expect("yaml");
        (
            secret("ns", "target", "kubeconfig", &yaml, expires, "src-hash"),
            yaml,
        )
    }

    #[test]
    fn the_kubeconfig_round_trips_through_kubes_parser() {
        let yaml = to_yaml(&build_kubeconfig(
            &cluster(),
            "managed",
            SecretString::from("the-token"),
        ))
        .expect("yaml");
        let parsed = crate::managed_kubeconfig::parse(yaml.as_bytes(), None).expect("parses");
        assert_eq!(parsed.endpoint.to_string(), "10.0.0.1:6443");
        let cluster = parsed.kubeconfig.clusters[0]
            .cluster
            .as_ref()
            .expect("cluster");
        assert_eq!(
            cluster.tls_server_name.as_deref(),
            Some("kubernetes.default.svc")
        );
        assert_eq!(cluster.certificate_authority_data.as_deref(), Some("Q0EK"));
        let user = parsed.kubeconfig.auth_infos[0]
            .auth_info
            .as_ref()
            .expect("user");
        use secrecy::ExposeSecret;
        assert_eq!(
            user.token
                .as_ref()
                .map(|t| t.expose_secret().to_owned())
                .as_deref(),
            Some("the-token")
        );
    }

    #[test]
    fn decisions() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let hour = Duration::from_secs(3600);
        let expires = now + k8s_openapi::jiff::SignedDuration::from_hours(24);
        let (good, _) = written(expires);
        assert!(matches!(
            decide(Some(&good), "kubeconfig", "src-hash", now, hour),
            Decision::Keep { .. }
        ));
        assert_eq!(
            decide(None, "kubeconfig", "src-hash", now, hour),
            Decision::Refresh(Reason::Missing)
        );
        assert_eq!(
            decide(Some(&good), "kubeconfig", "other-source", now, hour),
            Decision::Refresh(Reason::SourceChanged)
        );
        let late = expires - k8s_openapi::jiff::SignedDuration::from_mins(30);
        assert_eq!(
            decide(Some(&good), "kubeconfig", "src-hash", late, hour),
            Decision::Refresh(Reason::Expiring)
        );
        let mut edited = good.clone();
        edited
            .data
            .as_mut()
            .expect("data")
            .insert("kubeconfig".into(), ByteString(b"edited".to_vec()));
        assert_eq!(
            decide(Some(&edited), "kubeconfig", "src-hash", now, hour),
            Decision::Refresh(Reason::Altered)
        );
        let mut bare = good.clone();
        bare.metadata.annotations = None;
        assert_eq!(
            decide(Some(&bare), "kubeconfig", "src-hash", now, hour),
            Decision::Refresh(Reason::Unrecognised)
        );
    }
}
