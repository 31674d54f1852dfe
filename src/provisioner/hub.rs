//! Reports the `ManagedKubeconfigReady` condition on the hub's
//! ManagedClusterAddOn (`addon.open-cluster-management.io/v1alpha1`), when
//! the hub is reachable. Writes only when the condition changes, keeps
//! `lastTransitionTime` while the status stays, and uses the object's
//! resourceVersion so a concurrent status writer is not overwritten.

use std::path::PathBuf;

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use serde_json::{Value, json};

/// The condition type this component owns.
pub const CONDITION_TYPE: &str = "ManagedKubeconfigReady";

/// Flags for reporting to the hub.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Hub")]
pub struct HubArgs {
    /// Kubeconfig of the hub cluster; when given, the ManagedKubeconfigReady
    /// condition is set on the add-on's ManagedClusterAddOn there.
    #[arg(long, env = "CLUSTER_RELAY_HUB_KUBECONFIG", value_name = "PATH")]
    pub hub_kubeconfig: Option<PathBuf>,

    /// Name of the ManagedClusterAddOn on the hub.
    #[arg(
        long,
        env = "CLUSTER_RELAY_ADDON_NAME",
        default_value = "cluster-relay"
    )]
    pub addon_name: String,

    /// Namespace of the ManagedClusterAddOn on the hub: the managed
    /// cluster's name. Required with --hub-kubeconfig.
    #[arg(long, env = "CLUSTER_RELAY_ADDON_NAMESPACE")]
    pub addon_namespace: Option<String>,
}

/// Writes the condition to one ManagedClusterAddOn.
pub struct HubReporter {
    api: Api<DynamicObject>,
    name: String,
    last: Option<(bool, String, String)>,
}

fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            "addon.open-cluster-management.io",
            "v1alpha1",
            "ManagedClusterAddOn",
        ),
        "managedclusteraddons",
    )
}

impl HubReporter {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced_with(client, namespace, &resource()),
            name: name.to_owned(),
            last: None,
        }
    }

    /// Sets the condition unless it already says this.
    pub async fn report(
        &mut self,
        ready: bool,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let wanted = (ready, reason.to_owned(), message.to_owned());
        if self.last.as_ref() == Some(&wanted) {
            return Ok(());
        }
        let object = self.api.get_status(&self.name).await?;
        let conditions = object
            .data
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let conditions = with_condition(
            conditions,
            ready,
            reason,
            message,
            object.metadata.generation,
            Timestamp::now(),
        );
        let patch = json!({
            "metadata": {"resourceVersion": object.metadata.resource_version},
            "status": {"conditions": conditions},
        });
        self.api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        self.last = Some(wanted);
        Ok(())
    }
}

/// The conditions list with ours set; the transition time moves only when
/// the status changes.
fn with_condition(
    mut conditions: Vec<Value>,
    ready: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Value> {
    let status = if ready { "True" } else { "False" };
    let existing = conditions.iter().position(|c| c["type"] == CONDITION_TYPE);
    let transition = existing
        .map(|i| &conditions[i])
        .filter(|c| c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_owned))
        .unwrap_or_else(|| now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    let mut condition = json!({
        "type": CONDITION_TYPE,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    });
    if let Some(generation) = generation {
        condition["observedGeneration"] = json!(generation);
    }
    match existing {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
    conditions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let t1: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let t2: Timestamp = "2026-01-02T00:00:00Z".parse().expect("time");
        let other = json!({"type": "Available", "status": "True", "reason": "X", "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"});
        let first = with_condition(vec![other.clone()], true, "Provisioned", "a", Some(3), t1);
        assert_eq!(first.len(), 2);
        assert_eq!(first[0], other);
        assert_eq!(first[1]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(first[1]["observedGeneration"], 3);
        let same = with_condition(first.clone(), true, "Provisioned", "b", Some(3), t2);
        assert_eq!(same[1]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(same[1]["message"], "b");
        let flipped = with_condition(same, false, "ManagedClusterUnreachable", "c", Some(3), t2);
        assert_eq!(flipped[1]["lastTransitionTime"], "2026-01-02T00:00:00Z");
        assert_eq!(flipped[1]["status"], "False");
    }
}
