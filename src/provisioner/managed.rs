//! What the provisioner does on the managed cluster: ensure the relay
//! ServiceAccount, its namespace and its RBAC (server-side apply, pruning
//! bindings no longer asked for), request tokens for it, verify a kubeconfig
//! before it is written, and remove all of it again on `--cleanup`.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::{
        authentication::v1::{TokenRequest, TokenRequestSpec},
        authorization::v1::{
            ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
        },
        core::v1::{Namespace, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::Kubeconfig,
};
use secrecy::SecretString;

use super::{ProvisionError, target::MANAGED_BY_LABEL};
use crate::{kube_client::client_from_kubeconfig, managed_kubeconfig::sha256_hex};

const FIELD_MANAGER: &str = "cluster-relay-provisioner";
/// Marks objects made for one ServiceAccount, so pruning and cleanup touch
/// only those (a hash: label values are at most 63 characters).
const OWNER_LABEL: &str = "cluster-relay.io/owner";

/// The relay identity on the managed cluster.
#[derive(Debug, Clone)]
pub struct Identity {
    pub namespace: String,
    pub name: String,
    /// Existing ClusterRoles to bind besides the provisioner's own.
    pub cluster_roles: Vec<String>,
    pub audiences: Vec<String>,
    pub expiration: Duration,
}

impl Identity {
    fn owner(&self) -> String {
        sha256_hex(format!("{}/{}", self.namespace, self.name).as_bytes())[..32].to_owned()
    }

    /// The provisioner's own ClusterRole: what the relays need on the
    /// managed cluster.
    pub fn role_name(&self) -> String {
        format!("cluster-relay:{}:{}", self.namespace, self.name)
    }

    fn binding_name(&self, role: &str) -> String {
        format!("cluster-relay:{}:{}:{role}", self.namespace, self.name)
    }

    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY_LABEL.0.to_owned(), MANAGED_BY_LABEL.1.to_owned()),
            (OWNER_LABEL.to_owned(), self.owner()),
        ])
    }

    fn meta(&self, name: String, namespace: Option<String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace,
            labels: Some(self.labels()),
            ..Default::default()
        }
    }
}

fn managed_err(action: &'static str) -> impl FnOnce(kube::Error) -> ProvisionError {
    move |source| ProvisionError::Managed { action, source }
}

fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == code)
}

/// Rules the relays need: services/proxy for the service relay's entry,
/// TokenReview and SubjectAccessReview for the exit relay and read cache.
fn relay_rules() -> Vec<PolicyRule> {
    vec![
        PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["services/proxy".into()]),
            verbs: ["get", "create", "update", "patch", "delete"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        },
        PolicyRule {
            api_groups: Some(vec!["authentication.k8s.io".into()]),
            resources: Some(vec!["tokenreviews".into()]),
            verbs: vec!["create".into()],
            ..Default::default()
        },
        PolicyRule {
            api_groups: Some(vec!["authorization.k8s.io".into()]),
            resources: Some(vec!["subjectaccessreviews".into()]),
            verbs: vec!["create".into()],
            ..Default::default()
        },
    ]
}

/// Ensures the namespace, ServiceAccount, ClusterRole and bindings exist as
/// configured, and removes bindings of ours that are no longer configured.
pub async fn ensure(client: &kube::Client, id: &Identity) -> Result<(), ProvisionError> {
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces
        .get_opt(&id.namespace)
        .await
        .map_err(managed_err("reading the ServiceAccount namespace"))?
        .is_none()
    {
        let namespace = Namespace {
            metadata: id.meta(id.namespace.clone(), None),
            ..Default::default()
        };
        match namespaces.create(&PostParams::default(), &namespace).await {
            Ok(_) => {
                tracing::info!(namespace = %id.namespace, "created the ServiceAccount namespace on the managed cluster")
            }
            Err(err) if is_status(&err, 409) => {}
            Err(err) => return Err(managed_err("creating the ServiceAccount namespace")(err)),
        }
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &id.namespace);
    let account = ServiceAccount {
        metadata: id.meta(id.name.clone(), Some(id.namespace.clone())),
        ..Default::default()
    };
    accounts
        .patch(&id.name, &apply, &Patch::Apply(&account))
        .await
        .map_err(managed_err("applying the ServiceAccount"))?;

    let roles: Api<ClusterRole> = Api::all(client.clone());
    let role = ClusterRole {
        metadata: id.meta(id.role_name(), None),
        rules: Some(relay_rules()),
        ..Default::default()
    };
    roles
        .patch(&id.role_name(), &apply, &Patch::Apply(&role))
        .await
        .map_err(managed_err("applying the ClusterRole"))?;

    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let mut wanted = vec![id.role_name()];
    wanted.extend(id.cluster_roles.iter().cloned());
    for role in &wanted {
        let binding = ClusterRoleBinding {
            metadata: id.meta(id.binding_name(role), None),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: role.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: id.name.clone(),
                namespace: Some(id.namespace.clone()),
                ..Default::default()
            }]),
        };
        bindings
            .patch(&id.binding_name(role), &apply, &Patch::Apply(&binding))
            .await
            .map_err(managed_err("applying a ClusterRoleBinding"))?;
    }
    let wanted: Vec<String> = wanted.iter().map(|role| id.binding_name(role)).collect();
    let ours = bindings
        .list(&ListParams::default().labels(&format!("{OWNER_LABEL}={}", id.owner())))
        .await
        .map_err(managed_err("listing ClusterRoleBindings"))?;
    for stale in ours
        .items
        .iter()
        .filter_map(|b| b.metadata.name.as_ref())
        .filter(|n| !wanted.contains(n))
    {
        tracing::info!(binding = %stale, "removing a ClusterRoleBinding no longer configured");
        delete_ignoring_missing(&bindings, stale).await?;
    }
    Ok(())
}

/// Requests a token for the ServiceAccount; returns it and its expiry.
pub async fn request_token(
    client: &kube::Client,
    id: &Identity,
) -> Result<(SecretString, Timestamp), ProvisionError> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &id.namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: id.audiences.clone(),
            expiration_seconds: Some(id.expiration.as_secs() as i64),
            ..Default::default()
        },
        ..Default::default()
    };
    let response: TokenRequest = accounts
        .create_subresource("token", &id.name, &PostParams::default(), &request)
        .await
        .map_err(managed_err("requesting a token"))?;
    let status = response
        .status
        .ok_or(ProvisionError::Token("the response has no status".into()))?;
    if status.token.is_empty() {
        return Err(ProvisionError::Token(
            "the response has an empty token".into(),
        ));
    }
    Ok((
        SecretString::from(status.token),
        status.expiration_timestamp.0,
    ))
}

/// Proves that a kubeconfig works as written: its server, CA and token
/// authenticate a request to the managed apiserver.
pub async fn verify(
    kubeconfig: Kubeconfig,
    id: &Identity,
    timeout: Duration,
) -> Result<(), ProvisionError> {
    let client = client_from_kubeconfig(kubeconfig, None, timeout)
        .await
        .map_err(|err| ProvisionError::Verify(err.to_string()))?;
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(id.namespace.clone()),
                verb: Some("get".into()),
                resource: Some("serviceaccounts".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client);
    match reviews.create(&PostParams::default(), &review).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 401 => Err(ProvisionError::Rejected),
        Err(err) => Err(ProvisionError::Verify(err.to_string())),
    }
}

async fn delete_ignoring_missing<K>(api: &Api<K>, name: &str) -> Result<bool, ProvisionError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(err) if is_status(&err, 404) => Ok(false),
        Err(err) => Err(managed_err("deleting")(err)),
    }
}

/// Removes everything [`ensure`] made; returns how many objects it deleted.
/// The namespace goes only if the provisioner created it.
pub async fn cleanup(client: &kube::Client, id: &Identity) -> Result<usize, ProvisionError> {
    let mut deleted = 0;
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let ours = bindings
        .list(&ListParams::default().labels(&format!("{OWNER_LABEL}={}", id.owner())))
        .await
        .map_err(managed_err("listing ClusterRoleBindings"))?;
    for name in ours.items.iter().filter_map(|b| b.metadata.name.as_ref()) {
        deleted += delete_ignoring_missing(&bindings, name).await? as usize;
    }
    let roles: Api<ClusterRole> = Api::all(client.clone());
    deleted += delete_ignoring_missing(&roles, &id.role_name()).await? as usize;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &id.namespace);
    deleted += delete_ignoring_missing(&accounts, &id.name).await? as usize;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if let Some(namespace) = namespaces
        .get_opt(&id.namespace)
        .await
        .map_err(managed_err("reading the ServiceAccount namespace"))?
    {
        let ours = namespace
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(OWNER_LABEL))
            == Some(&id.owner());
        if ours && namespace.metadata.deletion_timestamp.is_none() {
            deleted += delete_ignoring_missing(&namespaces, &id.namespace).await? as usize;
        }
    }
    Ok(deleted)
}
