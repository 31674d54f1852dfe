//! The Helm chart on its own: it renders (helm-python-sdk, no helm binary)
//! for the default, standalone and hosted values and lints clean; every
//! manifest carries its hosted-manifest-location; the values schema refuses
//! typos; every component can be turned off; the Pods follow the house rules
//! (restricted security context, probes on the admin port, a grace period
//! above the drain's); every container flag is one the binary accepts; and
//! every rendered manifest is accepted by the real apiserver it is meant for,
//! whose RBAC then grants the chart's ServiceAccounts what they need and
//! nothing more.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{Value, json};
use support::{
    ControlPlane,
    chart::{self, PRE_DELETE, Rendered, args_of, chart_file, check_flags},
    shared,
};

/// The three ways the chart is rendered: (label, values files, release namespace).
fn value_sets() -> Vec<(&'static str, Vec<PathBuf>, &'static str)> {
    vec![
        ("default", vec![], "cluster-relay"),
        (
            "standalone",
            vec![chart_file("ci/standalone-values.yaml")],
            "c1",
        ),
        (
            "hosted",
            vec![chart_file("ci/hosted-values.yaml")],
            "open-cluster-management-agent-addon",
        ),
    ]
}

fn render(values: &[PathBuf], set: Value, namespace: &str) -> Vec<Rendered> {
    chart::render(values, &set, namespace).unwrap_or_else(|err| panic!("{err:#}"))
}

fn hosted(set: Value) -> Vec<Rendered> {
    render(
        &[chart_file("ci/hosted-values.yaml")],
        set,
        "open-cluster-management-agent-addon",
    )
}

fn find<'a>(objects: &'a [Rendered], kind: &str, name: &str) -> &'a Rendered {
    objects
        .iter()
        .find(|o| o.kind() == kind && o.name() == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} rendered"))
}

#[test]
fn renders_for_default_standalone_and_hosted_values_and_lints_clean() {
    for (label, values, namespace) in value_sets() {
        let objects = render(&values, Value::Null, namespace);
        let locations: BTreeSet<&str> = objects.iter().map(|o| o.location.as_str()).collect();
        let expected: BTreeSet<&str> = if label == "standalone" {
            ["hosting"].into()
        } else {
            ["hosting", "managed"].into()
        };
        assert_eq!(locations, expected, "{label}: locations");
        let jobs: Vec<&Rendered> = objects.iter().filter(|o| o.kind() == "Job").collect();
        assert_eq!(jobs.len(), 1, "{label}: one cleanup Job");
        assert_eq!(jobs[0].annotation(PRE_DELETE), Some(""), "{label}");
        assert_eq!(jobs[0].hook, "pre-delete", "{label}: a Helm hook too");
        assert_eq!(jobs[0].location, "hosting", "{label}");
        let findings = chart::lint(&values).expect("lint runs");
        assert!(findings.is_empty(), "{label}: lint: {findings:?}");
    }

    let objects = hosted(Value::Null);
    let relay = find(&objects, "Service", "c1");
    assert_eq!(relay.location, "hosting");
    assert_eq!(relay.namespace(), Some("klusterlet-c1"));
    for object in &objects {
        let expected = match object.location.as_str() {
            "hosting" => Some("klusterlet-c1"),
            _ if matches!(
                object.kind(),
                "Namespace" | "ClusterRole" | "ClusterRoleBinding"
            ) =>
            {
                None
            }
            _ => Some("open-cluster-management-agent-addon"),
        };
        assert_eq!(object.namespace(), expected, "{}", object.id());
    }
    let exit = find(&objects, "Deployment", "cluster-relay-service-relay-exit");
    assert_eq!(exit.location, "managed");
    let exit_args = args_of(exit.containers()[0]);
    assert!(exit_args.contains(
        &"--allowed-caller=system:serviceaccount:open-cluster-management-agent-addon:cluster-relay"
            .to_owned()
    ));
    let entry = find(&objects, "Deployment", "cluster-relay-service-relay-entry");
    let entry_args = args_of(entry.containers()[0]);
    for flag in [
        "--exit-namespace=open-cluster-management-agent-addon",
        "--exit-service=cluster-relay-service-relay",
        "--managed-kubeconfig-secret=klusterlet-c1/cluster-relay-managed-kubeconfig",
    ] {
        assert!(
            entry_args.contains(&flag.to_owned()),
            "{flag}: {entry_args:?}"
        );
    }
    find(&objects, "Service", "cluster-relay-service-relay");
}

#[test]
fn pods_are_restricted_probed_and_drain_within_their_grace_period() {
    let objects = hosted(json!({"shutdownGracePeriodSeconds": 45}));
    let workloads: Vec<&Rendered> = objects
        .iter()
        .filter(|o| matches!(o.kind(), "Deployment" | "Job"))
        .collect();
    assert_eq!(workloads.len(), 6, "five Deployments and the Job");
    for workload in workloads {
        let pod = &workload.object["spec"]["template"]["spec"];
        let id = workload.id();
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{id}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{id}"
        );
        assert_eq!(
            pod["nodeSelector"]["kubernetes.io/os"], "linux",
            "{id}: global.nodeSelector"
        );
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(0);
        for container in workload.containers() {
            let sc = &container["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{id}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{id}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{id}");
            assert_eq!(container["command"], json!(["/agent"]), "{id}");
            assert!(
                container["resources"]["limits"]["memory"].is_string(),
                "{id}"
            );
            if workload.kind() == "Job" {
                continue;
            }
            let args = args_of(container);
            assert!(
                args.contains(&"--shutdown-grace-period=45s".to_owned()),
                "{id}: {args:?}"
            );
            assert!(
                grace > 45,
                "{id}: terminationGracePeriodSeconds {grace} <= 45"
            );
            assert!(
                args.contains(&"--admin-addr=0.0.0.0:9090".to_owned()),
                "{id}"
            );
            let admin = container["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == "admin")
                .unwrap_or_else(|| panic!("{id}: no admin port"));
            assert_eq!(admin["containerPort"], 9090, "{id}");
            assert_eq!(
                container["livenessProbe"]["httpGet"],
                json!({"path": "/healthz", "port": "admin"}),
                "{id}"
            );
            assert_eq!(
                container["readinessProbe"]["httpGet"],
                json!({"path": "/readyz", "port": "admin"}),
                "{id}"
            );
        }
    }
}

#[test]
fn every_container_flag_is_one_the_binary_accepts() {
    let objects = hosted(
        json!({"provisioner": {"clusterRoles": ["view"], "refreshBefore": "1h",
        "hub": {"kubeconfigSecret": "hub-kubeconfig"}},
        "serviceRelay": {"exit": {"upstreamCAConfigMap": "service-ca"}},
        "readCache": {"watchResources": ["configmaps", "deployments.apps"], "tls": {"secretName": "cache-tls"}}}),
    );
    let mut checked = 0;
    for workload in objects
        .iter()
        .filter(|o| matches!(o.kind(), "Deployment" | "Job"))
    {
        for container in workload.containers() {
            let args = args_of(container);
            if args[0] == "read-cache" && chart::accepted_flags("read-cache").is_err() {
                println!(
                    "SKIPPED flag check of {}: this binary has no read-cache yet",
                    workload.id()
                );
                continue;
            }
            check_flags(&args).unwrap_or_else(|err| panic!("{}: {err:#}", workload.id()));
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} containers checked");
}

#[test]
fn a_flag_renamed_in_the_binary_but_not_in_the_chart_is_caught() {
    let objects = hosted(Value::Null);
    let relay = find(&objects, "Deployment", "cluster-relay-apiserver-relay");
    let args = args_of(relay.containers()[0]);
    check_flags(&args).expect("the chart as it is passes");
    // As if the binary had renamed --max-connections: the chart's flag is
    // no longer one it accepts.
    let renamed: Vec<String> = args
        .iter()
        .map(|a| a.replace("--max-connections=", "--max-conns="))
        .collect();
    let err = check_flags(&renamed).expect_err("an unknown flag is caught");
    assert!(format!("{err}").contains("max-conns"), "{err}");
    // And the binary itself refuses to start with it, so the e2e's Pods
    // would never become ready either.
    let (status, stderr) =
        support::agent::run_to_exit(&renamed.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!status.success(), "{stderr}");
}

#[test]
fn each_component_can_be_turned_off() {
    let all = hosted(Value::Null);
    for (values, gone) in [
        (
            json!({"provisioner": {"enabled": false}, "cleanup": {"enabled": false}}),
            "provisioner",
        ),
        (
            json!({"apiserverRelay": {"enabled": false}}),
            "apiserver-relay",
        ),
        (
            json!({"serviceRelay": {"entry": {"enabled": false}}}),
            "service-relay-entry",
        ),
        (
            json!({"serviceRelay": {"exit": {"enabled": false}}}),
            "service-relay-exit",
        ),
        (json!({"readCache": {"enabled": false}}), "read-cache"),
        (json!({"cleanup": {"enabled": false}}), "cleanup"),
    ] {
        let component = |o: &Rendered| {
            o.object["metadata"]["labels"]["app.kubernetes.io/component"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        let objects = hosted(values.clone());
        assert!(
            all.iter().any(|o| component(o) == gone),
            "{gone} is rendered by default"
        );
        assert!(
            !objects.iter().any(|o| component(o) == gone),
            "{values}: {gone} still rendered"
        );
        assert!(!objects.is_empty());
    }
    let nothing = hosted(
        json!({"provisioner": {"enabled": false}, "cleanup": {"enabled": false},
        "apiserverRelay": {"enabled": false}, "readCache": {"enabled": false}, "metricsServices": false,
        "createManagedNamespace": false,
        "serviceRelay": {"entry": {"enabled": false}, "exit": {"enabled": false}}}),
    );
    assert!(
        nothing.is_empty(),
        "{:?}",
        nothing.iter().map(Rendered::id).collect::<Vec<_>>()
    );
    let no_metrics = hosted(json!({"metricsServices": false}));
    assert!(all.iter().any(|o| o.name().ends_with("-metrics")));
    assert!(!no_metrics.iter().any(|o| o.name().ends_with("-metrics")));
}

#[test]
fn the_schema_and_the_templates_refuse_what_cannot_work() {
    for (set, says) in [
        (json!({"provisioner": {"replcas": 2}}), "replcas"),
        (json!({"manifests": "both"}), "manifests"),
        (json!({"clusterName": "Not_A_Name"}), "clusterName"),
        (
            json!({"provisioner": {"tokenExpiration": "a day"}}),
            "tokenExpiration",
        ),
        (json!({"installMode": "Default"}), "hosted mode only"),
        (
            json!({"provisioner": {"enabled": false}}),
            "cleanup.enabled needs provisioner.enabled",
        ),
        (
            json!({"readCache": {"profile": "etag"}}),
            "readCache.upstream",
        ),
        (
            json!({"manifests": "hub", "webhookFanout": {"enabled": true}}),
            "webhookFanout.secretName",
        ),
        (
            json!({"webhookFanout": {"backends": ["ftp://x"]}}),
            "webhookFanout",
        ),
        // Customized variables are strings: numbers as decimal strings only.
        (json!({"adminPort": "ninety"}), "adminPort"),
        (
            json!({"hostingClusterName": "hosting"}),
            "hostingClusterName",
        ),
        (
            json!({"cleanup": {"giveUpAfterSeconds": 280}}),
            "activeDeadlineSeconds must exceed",
        ),
    ] {
        let err = chart::render(&[chart_file("ci/hosted-values.yaml")], &set, "x")
            .expect_err(&format!("{set} renders"));
        assert!(format!("{err:#}").contains(says), "{set}: {err:#}");
    }
}

/// What OCM's add-on framework would break (OCM.md) is fixed: the shared
/// add-on namespace survives the add-on, no Lease is rendered for the work
/// agent to reset, the pre-delete Job can be re-applied (manual selector)
/// and gives up rather than fail, and the values the add-on manager passes
/// (strings for customized variables, top-level tolerations, the image
/// override) are accepted and used.
#[test]
fn what_the_add_on_framework_does_to_the_chart_is_handled() {
    let objects = hosted(Value::Null);
    let ns = find(&objects, "Namespace", "open-cluster-management-agent-addon");
    assert_eq!(
        ns.annotation("addon.open-cluster-management.io/deletion-orphan"),
        Some(""),
        "the klusterlet's namespace for all add-ons must outlive this one"
    );
    assert!(
        !objects.iter().any(|o| o.kind() == "Lease"),
        "a rendered Lease is reset by the work agent on every resync"
    );
    let job = objects.iter().find(|o| o.kind() == "Job").expect("the Job");
    let spec = &job.object["spec"];
    assert_eq!(spec["manualSelector"], true);
    let template_labels = &spec["template"]["metadata"]["labels"];
    for (key, value) in spec["selector"]["matchLabels"]
        .as_object()
        .expect("an explicit selector")
    {
        assert_eq!(&template_labels[key], value, "selector {key}");
    }
    let args = args_of(job.containers()[0]);
    assert!(
        args.contains(&"--cleanup-give-up-after=180s".to_owned()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--cleanup-lease-owner=cluster-relay-provisioner".to_owned()),
        "{args:?}"
    );
    // The framework's builtin addonInstallNamespace is the hosting side's
    // namespace in hosted mode; the managed side has its own.
    let moved = hosted(
        json!({"addonInstallNamespace": "relay-c1", "adminPort": "9191",
        "shutdownGracePeriodSeconds": "40", "logLevel": "debug"}),
    );
    for workload in moved.iter().filter(|o| o.kind() == "Deployment") {
        let id = workload.id();
        if workload.location == "hosting" {
            assert_eq!(workload.namespace(), Some("relay-c1"), "{id}");
        } else {
            assert_eq!(
                workload.namespace(),
                Some("open-cluster-management-agent-addon"),
                "{id}"
            );
        }
        let pod = &workload.object["spec"]["template"]["spec"];
        assert_eq!(pod["terminationGracePeriodSeconds"], 50, "{id}");
        assert_eq!(pod["tolerations"][0]["key"], "dedicated", "{id}");
        let container = workload.containers()[0];
        assert_eq!(container["image"], "cluster-relay/agent:latest", "{id}");
        let admin = container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "admin");
        assert_eq!(
            admin.map(|p| &p["containerPort"]),
            Some(&json!(9191)),
            "{id}"
        );
        let args = args_of(container);
        assert!(args.contains(&"--log-level=debug".to_owned()), "{id}");
    }
    let provisioner = find(&moved, "Deployment", "cluster-relay-provisioner");
    assert_eq!(
        provisioner.object["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
        "cluster-relay-hub-kubeconfig",
        "the framework's hub kubeconfig Secret reports to the hub"
    );
}

/// The webhook fan-out is a hub component: rendered only with manifests=hub
/// (never once per managed cluster), its flags are ones the binary
/// accepts, and its objects are accepted by a real apiserver.
#[test]
fn the_hub_fanout_renders_alone_and_only_with_manifests_hub() {
    let on = json!({"webhookFanout": {"enabled": true, "secretName": "s"}});
    for manifests in ["all", "hosting", "managed"] {
        let mut set = on.clone();
        set["manifests"] = json!(manifests);
        let objects = render(&[chart_file("ci/hosted-values.yaml")], set, "x");
        assert!(
            !objects.iter().any(|o| o.name().contains("webhook-fanout")),
            "rendered with manifests={manifests}"
        );
    }
    let hub = render(
        &[chart_file("ci/hub-values.yaml")],
        Value::Null,
        "cluster-relay-hub",
    );
    // The hub values also turn on the delivery forwarder (tested below).
    assert!(
        hub.iter()
            .all(|o| o.name().contains("webhook-fanout") || o.name().contains("delivery-forwarder"))
    );
    let hub: Vec<Rendered> = hub
        .into_iter()
        .filter(|o| o.name().contains("webhook-fanout"))
        .collect();
    assert!(
        hub.iter().all(|o| o.location.is_empty()),
        "hub objects are not add-on manifests"
    );
    let deployment = find(&hub, "Deployment", "cluster-relay-webhook-fanout");
    let args = args_of(deployment.containers()[0]);
    check_flags(&args).unwrap_or_else(|err| panic!("{err:#}"));
    assert!(args.iter().any(|a| a == "--enable-dynamic-backends"));
    assert_eq!(
        args.iter().filter(|a| a.starts_with("--backend=")).count(),
        2,
        "{args:?}"
    );
    let plane = shared("hosting");
    plane
        .ensure_namespace("cluster-relay-hub")
        .expect("namespace");
    let all: Vec<&Rendered> = hub.iter().collect();
    let out = chart::apply(plane, &all).unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(out.lines().count(), hub.len(), "{out}");
}

/// The delivery forwarder, the other hub component: only with
/// manifests=hub; its flags are ones the binary accepts and its rules
/// ConfigMap is one the binary reads; values that cannot work are refused;
/// a real apiserver accepts its objects, and its ServiceAccount may touch
/// its cursor ConfigMap and its Lease and nothing else (the rules and
/// Secrets are mounted, not read through the API).
#[test]
fn the_hub_delivery_forwarder_renders_with_rbac_for_its_cursor_and_lease_only() {
    let on = json!({"deliveryForwarder": {"enabled": true, "signingSecretName": "s",
        "tokenSecretName": "t", "rules": [{"repositories": ["o/r"], "hook": {"id": 1}, "target": "http://t/"}]}});
    for manifests in ["all", "hosting", "managed"] {
        let mut set = on.clone();
        set["manifests"] = json!(manifests);
        let objects = render(&[chart_file("ci/hosted-values.yaml")], set, "x");
        assert!(
            !objects
                .iter()
                .any(|o| o.name().contains("delivery-forwarder")),
            "rendered with manifests={manifests}"
        );
    }
    let ns = "cluster-relay-hub-forwarder";
    let hub: Vec<Rendered> = render(&[chart_file("ci/hub-values.yaml")], Value::Null, ns)
        .into_iter()
        .filter(|o| o.name().contains("delivery-forwarder"))
        .collect();
    let deployment = find(&hub, "Deployment", "cluster-relay-delivery-forwarder");
    let args = args_of(deployment.containers()[0]);
    check_flags(&args).unwrap_or_else(|err| panic!("{err:#}"));
    for flag in [
        "--leader-elect",
        "--leader-election-lease-name=cluster-relay-delivery-forwarder",
        "--cursor-configmap=cluster-relay-hub-forwarder/cluster-relay-delivery-forwarder-cursor",
        "--app-id=4242",
        "--app-private-key-file=/etc/cluster-relay/github/private-key.pem",
        "--retry-max-age=24h",
    ] {
        assert!(args.contains(&flag.to_owned()), "{flag}: {args:?}");
    }
    let rules = find(&hub, "ConfigMap", "cluster-relay-delivery-forwarder-rules");
    let text = rules.object["data"]["rules.yaml"].as_str().expect("rules");
    let parsed = cluster_relay::delivery_forwarder::config::parse(text)
        .unwrap_or_else(|err| panic!("{err}: {text}"));
    assert_eq!(parsed.len(), 1);
    assert_eq!(deployment.object["spec"]["replicas"], 2);
    let findings = chart::lint(&[chart_file("ci/hub-values.yaml")]).expect("lint runs");
    assert!(findings.is_empty(), "hub: lint: {findings:?}");

    for (set, says) in [
        (
            json!({"deliveryForwarder": {"signingSecretName": ""}}),
            "deliveryForwarder.signingSecretName",
        ),
        (
            json!({"deliveryForwarder": {"tokenSecretName": "t"}}),
            "either app",
        ),
        (
            json!({"deliveryForwarder": {"rules": []}}),
            "deliveryForwarder.rules",
        ),
        (
            json!({"deliveryForwarder": {"retryMaxAge": "a day"}}),
            "retryMaxAge",
        ),
    ] {
        let err = chart::render(&[chart_file("ci/hub-values.yaml")], &set, ns)
            .expect_err(&format!("{set} renders"));
        assert!(format!("{err:#}").contains(says), "{set}: {err:#}");
    }

    let plane = shared("hosting");
    plane.ensure_namespace(ns).expect("namespace");
    let all: Vec<&Rendered> = hub.iter().collect();
    let out = chart::apply(plane, &all).unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(out.lines().count(), hub.len(), "{out}");
    let sa = format!("system:serviceaccount:{ns}:cluster-relay-delivery-forwarder");
    for (args, allowed) in [
        (
            &["get", "configmap/cluster-relay-delivery-forwarder-cursor"][..],
            true,
        ),
        (
            &["patch", "configmap/cluster-relay-delivery-forwarder-cursor"],
            true,
        ),
        (
            &[
                "delete",
                "configmap/cluster-relay-delivery-forwarder-cursor",
            ],
            false,
        ),
        (
            &["get", "configmap/cluster-relay-delivery-forwarder-rules"],
            false,
        ),
        (&["get", "configmap/some-other"], false),
        (&["create", "configmaps"], false),
        (&["list", "configmaps"], false),
        (&["get", "lease/cluster-relay-delivery-forwarder"], true),
        (&["update", "lease/cluster-relay-delivery-forwarder"], true),
        (&["update", "lease/cluster-relay-provisioner"], false),
        (&["create", "leases"], false),
        (&["get", "secret/github-app"], false),
        (&["list", "secrets"], false),
    ] {
        let mut full = args.to_vec();
        full.extend(["-n", ns]);
        assert_eq!(can(plane, &sa, &full), allowed, "forwarder {args:?}");
    }
}

/// Applies each location's manifests of `objects` to its plane.
fn apply_all(objects: &[Rendered], hosting: &ControlPlane, managed: &ControlPlane) {
    for (location, plane) in [("hosting", hosting), ("managed", managed)] {
        let mine: Vec<&Rendered> = objects.iter().filter(|o| o.location == location).collect();
        if mine.is_empty() {
            continue;
        }
        let out = chart::apply(plane, &mine).unwrap_or_else(|err| panic!("{location}: {err:#}"));
        for object in &mine {
            assert!(
                out.contains(&format!("/{} ", object.name())),
                "{location}: {} not applied:\n{out}",
                object.id()
            );
        }
    }
}

#[test]
fn every_manifest_is_accepted_by_the_apiserver_it_is_meant_for() {
    let (hosting, managed) = (shared("hosting"), shared("managed"));
    for (label, values, namespace) in value_sets() {
        let objects = render(&values, Value::Null, namespace);
        for object in objects.iter().filter(|o| o.location == "hosting") {
            if let Some(ns) = object.namespace() {
                hosting.ensure_namespace(ns).expect("hosting namespace");
            }
        }
        if label == "standalone" {
            // Its managed half: the same values with manifests=managed.
            let mut managed_half = render(
                &values,
                json!({"manifests": "managed", "createManagedNamespace": false}),
                namespace,
            );
            assert!(managed_half.iter().all(|o| o.location == "managed"));
            managed
                .ensure_namespace("cluster-relay")
                .expect("namespace");
            apply_all(&managed_half, hosting, managed);
            managed_half.clear();
        }
        apply_all(&objects, hosting, managed);
        println!("{label}: {} objects accepted", objects.len());
    }
}

/// `kubectl auth can-i` as `user` on `plane`.
fn can(plane: &ControlPlane, user: &str, args: &[&str]) -> bool {
    let mut full = vec!["auth", "can-i", "--as", user];
    full.extend_from_slice(args);
    let out = plane.kubectl(&full);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[test]
fn the_chart_rbac_grants_what_each_component_needs_and_no_more() {
    let (hosting, managed) = (shared("hosting"), shared("managed"));
    let objects = render(
        &[chart_file("ci/hosted-values.yaml")],
        json!({"clusterName": "rbac", "addonInstallNamespace": "klusterlet-rbac",
            "managedNamespace": "rbac-addon"}),
        "klusterlet-rbac",
    );
    hosting
        .ensure_namespace("klusterlet-rbac")
        .expect("namespace");
    apply_all(&objects, hosting, managed);
    let ns = "klusterlet-rbac";
    let sa = |name: &str| format!("system:serviceaccount:{ns}:cluster-relay-{name}");
    let provisioner = sa("provisioner");
    for (args, allowed) in [
        (&["get", "secret/external-managed-kubeconfig"][..], true),
        (&["watch", "secret/external-managed-kubeconfig"], true),
        (&["patch", "secret/external-managed-kubeconfig"], false),
        (&["patch", "secret/cluster-relay-managed-kubeconfig"], true),
        (&["create", "secret/cluster-relay-managed-kubeconfig"], true),
        (&["delete", "secret/cluster-relay-managed-kubeconfig"], true),
        (&["get", "secret/some-other-secret"], false),
        (&["list", "secrets"], false),
        // The chart renders no Lease (the work agent would reset it): the
        // provisioner creates its own.
        (&["create", "leases"], true),
        (&["update", "lease/cluster-relay-provisioner"], true),
        (&["delete", "lease/cluster-relay-provisioner"], false),
        // The cleanup names its ServiceAccount the Lease's owner.
        (&["get", "serviceaccount/cluster-relay-provisioner"], true),
        (&["get", "serviceaccount/cluster-relay-read-cache"], false),
        (&["update", "lease/someone-elses"], false),
        (&["create", "configmaps"], false),
    ] {
        let mut full = args.to_vec();
        full.extend(["-n", ns]);
        assert_eq!(
            can(hosting, &provisioner, &full),
            allowed,
            "provisioner {args:?}"
        );
    }
    for component in ["apiserver-relay", "service-relay-entry", "read-cache"] {
        let user = sa(component);
        let get = |secret: &str| {
            can(
                hosting,
                &user,
                &["get", &format!("secret/{secret}"), "-n", ns],
            )
        };
        assert!(get("cluster-relay-managed-kubeconfig"), "{component}");
        assert!(
            !get("external-managed-kubeconfig"),
            "{component} reads the admin kubeconfig"
        );
        assert!(!can(
            hosting,
            &user,
            &["patch", "secret/cluster-relay-managed-kubeconfig", "-n", ns]
        ));
    }
    let exit = "system:serviceaccount:rbac-addon:cluster-relay-service-relay-exit";
    assert!(can(
        managed,
        exit,
        &["create", "tokenreviews.authentication.k8s.io"]
    ));
    assert!(can(managed, exit, &["get", "endpoints", "-n", "apps"]));
    assert!(!can(managed, exit, &["get", "secrets", "-n", "apps"]));
    assert!(!can(managed, exit, &["list", "endpoints", "-A"]));
}
