package main

// These tests render the embedded chart through the add-on framework itself
// (addonfactory's Helm engine, values, schema validation), as the hub does
// for a ManagedClusterAddOn in hosted mode; only the clients are fakes.

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kubefake "k8s.io/client-go/kubernetes/fake"

	addonv1alpha1 "open-cluster-management.io/api/addon/v1alpha1"
	addonfake "open-cluster-management.io/api/client/addon/clientset/versioned/fake"
	clusterfake "open-cluster-management.io/api/client/cluster/clientset/versioned/fake"
	clusterv1 "open-cluster-management.io/api/cluster/v1"
)

const (
	location  = "addon.open-cluster-management.io/hosted-manifest-location"
	preDelete = "addon.open-cluster-management.io/addon-pre-delete"
	orphan    = "addon.open-cluster-management.io/deletion-orphan"
)

func cluster(name string) *clusterv1.ManagedCluster {
	c := &clusterv1.ManagedCluster{ObjectMeta: metav1.ObjectMeta{Name: name}}
	c.Status.Version.Kubernetes = "v1.37.2"
	return c
}

// hostedAddon is the ManagedClusterAddOn of managed cluster c1 hosted by
// cluster "hosting", optionally with an AddOnDeploymentConfig.
func hostedAddon(config *addonv1alpha1.AddOnDeploymentConfig) *addonv1alpha1.ManagedClusterAddOn {
	a := &addonv1alpha1.ManagedClusterAddOn{ObjectMeta: metav1.ObjectMeta{
		Name: addonName, Namespace: "c1",
		Annotations: map[string]string{addonv1alpha1.HostingClusterNameAnnotationKey: "hosting"},
	}}
	if config != nil {
		a.Status.ConfigReferences = []addonv1alpha1.ConfigReference{{
			ConfigGroupResource: addonv1alpha1.ConfigGroupResource{
				Group: "addon.open-cluster-management.io", Resource: "addondeploymentconfigs"},
			DesiredConfig: &addonv1alpha1.ConfigSpecHash{
				ConfigReferent: addonv1alpha1.ConfigReferent{Namespace: config.Namespace, Name: config.Name},
				SpecHash:       "set",
			},
		}}
	}
	return a
}

func render(t *testing.T, config *addonv1alpha1.AddOnDeploymentConfig) []runtime.Object {
	t.Helper()
	var configs []runtime.Object
	if config != nil {
		configs = append(configs, config)
	}
	addon, err := build(kubefake.NewSimpleClientset(), addonfake.NewSimpleClientset(configs...),
		clusterfake.NewSimpleClientset(cluster("hosting"), cluster("c1")), "example.org/cluster-relay/agent:v1")
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	objects, err := addon.Manifests(cluster("c1"), hostedAddon(config))
	if err != nil {
		t.Fatalf("the framework refused to render the chart: %v", err)
	}
	return objects
}

func metaOf(t *testing.T, o runtime.Object) metav1.Object {
	m, err := meta.Accessor(o)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func deployments(objects []runtime.Object) []*appsv1.Deployment {
	var out []*appsv1.Deployment
	for _, o := range objects {
		if d, ok := o.(*appsv1.Deployment); ok {
			out = append(out, d)
		}
	}
	return out
}

func TestHostedRenderPlacesEveryManifest(t *testing.T) {
	objects := render(t, nil)
	if len(objects) == 0 {
		t.Fatal("nothing rendered")
	}
	seen := map[string]int{}
	for _, o := range objects {
		m := metaOf(t, o)
		loc := m.GetAnnotations()[location]
		if loc != "hosting" && loc != "managed" {
			t.Errorf("%T %s: location %q; no annotation means the managed cluster", o, m.GetName(), loc)
		}
		seen[loc]++
		if m.GetNamespace() == "" {
			continue
		}
		// The install namespace on the hosting cluster is the hosted
		// klusterlet's: it holds external-managed-kubeconfig, and the
		// registration agent writes the hub kubeconfig Secret there.
		if loc == "hosting" && m.GetNamespace() != "klusterlet-c1" {
			t.Errorf("%T %s in %s on the hosting cluster, want klusterlet-c1", o, m.GetName(), m.GetNamespace())
		}
	}
	if seen["hosting"] == 0 || seen["managed"] == 0 {
		t.Errorf("placements: %v", seen)
	}
}

func TestTheDefaultInstallNamespaceIsPerClusterInHostedMode(t *testing.T) {
	// The AddOnDeploymentConfig CRD defaults agentInstallNamespace to the
	// namespace every add-on shares; a hosting cluster hosts many clusters.
	config := &addonv1alpha1.AddOnDeploymentConfig{
		ObjectMeta: metav1.ObjectMeta{Name: "defaulted", Namespace: "c1"},
		Spec:       addonv1alpha1.AddOnDeploymentConfigSpec{AgentInstallNamespace: "open-cluster-management-agent-addon"},
	}
	for _, d := range deployments(render(t, config)) {
		if d.Annotations[location] == "hosting" && d.Namespace != "klusterlet-c1" {
			t.Errorf("%s in %s on the hosting cluster, want klusterlet-c1", d.Name, d.Namespace)
		}
	}
	named := &addonv1alpha1.AddOnDeploymentConfig{
		ObjectMeta: metav1.ObjectMeta{Name: "named", Namespace: "c1"},
		Spec:       addonv1alpha1.AddOnDeploymentConfigSpec{AgentInstallNamespace: "relay-c1"},
	}
	for _, d := range deployments(render(t, named)) {
		if d.Annotations[location] == "hosting" && d.Namespace != "relay-c1" {
			t.Errorf("%s in %s on the hosting cluster, want the configured relay-c1", d.Name, d.Namespace)
		}
	}
}

func TestNoLeaseIsRendered(t *testing.T) {
	// The work agent would reset a rendered Lease on every resync.
	for _, o := range render(t, nil) {
		if o.GetObjectKind().GroupVersionKind().Kind == "Lease" {
			t.Errorf("a Lease is rendered: %s", metaOf(t, o).GetName())
		}
	}
}

func TestTheSharedAddonNamespaceIsOrphaned(t *testing.T) {
	config := &addonv1alpha1.AddOnDeploymentConfig{
		ObjectMeta: metav1.ObjectMeta{Name: "shared-ns", Namespace: "c1"},
		Spec:       addonv1alpha1.AddOnDeploymentConfigSpec{AgentInstallNamespace: "open-cluster-management-agent-addon"},
	}
	found := false
	for _, o := range render(t, config) {
		if ns, ok := o.(*corev1.Namespace); ok && ns.Name == "open-cluster-management-agent-addon" {
			found = true
			if _, ok := ns.Annotations[orphan]; !ok {
				t.Errorf("Namespace %s lacks %s: deleting this add-on would delete every add-on's namespace", ns.Name, orphan)
			}
		}
	}
	if !found {
		t.Error("the managed namespace is not rendered")
	}
}

func TestPreDeleteJobRunsOnTheHostingClusterAndCanBeReapplied(t *testing.T) {
	var jobs []*batchv1.Job
	for _, o := range render(t, nil) {
		if j, ok := o.(*batchv1.Job); ok {
			jobs = append(jobs, j)
		}
	}
	if len(jobs) != 1 {
		t.Fatalf("%d Jobs, want the one cleanup Job", len(jobs))
	}
	j := jobs[0]
	if _, ok := j.Annotations[preDelete]; !ok || j.Annotations[location] != "hosting" {
		t.Errorf("annotations %v", j.Annotations)
	}
	// Without both, the work agent's re-apply fails on the immutable selector.
	if j.Spec.ManualSelector == nil || !*j.Spec.ManualSelector || j.Spec.Selector == nil {
		t.Errorf("manualSelector %v selector %v", j.Spec.ManualSelector, j.Spec.Selector)
	}
}

func TestAddOnDeploymentConfigReachesThePods(t *testing.T) {
	config := &addonv1alpha1.AddOnDeploymentConfig{
		ObjectMeta: metav1.ObjectMeta{Name: "relay", Namespace: "c1"},
		Spec: addonv1alpha1.AddOnDeploymentConfigSpec{
			NodePlacement: &addonv1alpha1.NodePlacement{
				NodeSelector: map[string]string{"relay": "yes"},
				Tolerations:  []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpExists}},
			},
			Registries: []addonv1alpha1.ImageMirror{{Source: "example.org/cluster-relay", Mirror: "mirror.example/relay"}},
			// Customized variables always arrive as strings.
			CustomizedVariables: []addonv1alpha1.CustomizedVariable{
				{Name: "logLevel", Value: "debug"},
				{Name: "adminPort", Value: "9191"},
				{Name: "shutdownGracePeriodSeconds", Value: "40"},
				{Name: "values", Value: `{"serviceRelay": {"exit": {"resolution": "endpoints"}}}`},
			},
		},
	}
	objects := render(t, config)
	ds := deployments(objects)
	if len(ds) == 0 {
		t.Fatal("no Deployment rendered")
	}
	for _, d := range ds {
		spec := d.Spec.Template.Spec
		if spec.NodeSelector["relay"] != "yes" {
			t.Errorf("%s: nodeSelector %v", d.Name, spec.NodeSelector)
		}
		if len(spec.Tolerations) == 0 || spec.Tolerations[0].Key != "dedicated" {
			t.Errorf("%s: tolerations %v", d.Name, spec.Tolerations)
		}
		if *spec.TerminationGracePeriodSeconds != 50 {
			t.Errorf("%s: grace %d", d.Name, *spec.TerminationGracePeriodSeconds)
		}
		c := spec.Containers[0]
		if c.Image != "mirror.example/relay/agent:v1" {
			t.Errorf("%s: image %s", d.Name, c.Image)
		}
		found := map[string]bool{}
		for _, a := range c.Args {
			found[a] = true
		}
		if !found["--log-level=debug"] {
			t.Errorf("%s: args %v", d.Name, c.Args)
		}
		if d.Name == "cluster-relay-service-relay-exit" && !found["--resolution=endpoints"] {
			t.Errorf("%s: the customized variable \"values\" is lost: %v", d.Name, c.Args)
		}
		admin := int32(0)
		for _, p := range c.Ports {
			if p.Name == "admin" {
				admin = p.ContainerPort
			}
		}
		if admin != 9191 {
			t.Errorf("%s: admin port %d", d.Name, admin)
		}
	}
}

func TestDefaultImageIsTheManagersFlag(t *testing.T) {
	for _, d := range deployments(render(t, nil)) {
		if img := d.Spec.Template.Spec.Containers[0].Image; img != "example.org/cluster-relay/agent:v1" {
			t.Errorf("%s: image %s", d.Name, img)
		}
	}
}

func TestTheProvisionerReportsToTheHubWithTheRegisteredKubeconfig(t *testing.T) {
	for _, d := range deployments(render(t, nil)) {
		if d.Name != "cluster-relay-provisioner" {
			continue
		}
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Secret != nil && v.Secret.SecretName == "cluster-relay-hub-kubeconfig" {
				return
			}
		}
		t.Fatalf("the provisioner does not mount cluster-relay-hub-kubeconfig: %v", d.Spec.Template.Spec.Volumes)
	}
	t.Fatal("no provisioner Deployment")
}
