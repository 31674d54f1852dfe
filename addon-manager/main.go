// Command addon-manager registers the cluster-relay chart with Open Cluster
// Management's add-on framework, hosted mode enabled, and runs the
// framework's controllers on the hub: for each ManagedClusterAddOn
// "cluster-relay" the chart is rendered and its manifests placed by their
// hosted-manifest-location annotation in ManifestWorks for the hosting and
// the managed cluster.
//
// What it adds to the chart's values (see README, "Helm chart"):
//   - AddOnDeploymentConfig: node placement (global.nodeSelector, tolerations),
//     image registries (global.imageOverrides.agent), customized variables
//     (top-level strings; "values" is a JSON object of nested values),
//     agentInstallNamespace;
//   - the install namespace: in hosted mode, when no AddOnDeploymentConfig
//     names one, klusterlet-<cluster> on the hosting cluster, where the
//     hosted klusterlet keeps external-managed-kubeconfig;
//   - registration: the agent gets a hub kubeconfig (<addon>-hub-kubeconfig)
//     allowed to report conditions on its own ManagedClusterAddOn;
//   - health: every Deployment of the hosting work available (see
//     hostingDeploymentsProber).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"open-cluster-management.io/addon-framework/pkg/addonfactory"
	"open-cluster-management.io/addon-framework/pkg/addonmanager"
	"open-cluster-management.io/addon-framework/pkg/agent"
	cmdfactory "open-cluster-management.io/addon-framework/pkg/cmd/factory"
	"open-cluster-management.io/addon-framework/pkg/utils"
	"open-cluster-management.io/addon-framework/pkg/version"
	addonv1alpha1 "open-cluster-management.io/api/addon/v1alpha1"
	addonclient "open-cluster-management.io/api/client/addon/clientset/versioned"
	clusterclient "open-cluster-management.io/api/client/cluster/clientset/versioned"
	workv1 "open-cluster-management.io/api/work/v1"
)

const addonName = "cluster-relay"

func main() {
	image := "cluster-relay/agent:latest"
	cmd := cmdfactory.NewControllerCommandConfig("cluster-relay-addon-manager", version.Get(),
		func(ctx context.Context, cfg *rest.Config) error { return run(ctx, cfg, image) }).NewCommand()
	cmd.Use = "addon-manager"
	cmd.Short = "Deploy the cluster-relay chart to managed clusters, in hosted mode"
	cmd.Flags().StringVar(&image, "agent-image", image,
		"The agent image; AddOnDeploymentConfig registries may rewrite it per cluster.")
	cobra.CheckErr(cmd.Execute())
	os.Exit(0)
}

func run(ctx context.Context, cfg *rest.Config, image string) error {
	mgr, err := addonmanager.New(cfg)
	if err != nil {
		return err
	}
	addon, err := newAgentAddon(cfg, image)
	if err != nil {
		return err
	}
	if err := mgr.AddAgent(addon); err != nil {
		return err
	}
	if err := mgr.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

func newAgentAddon(cfg *rest.Config, image string) (agent.AgentAddon, error) {
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	addons, err := addonclient.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	clusters, err := clusterclient.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return build(kube, addons, clusters, image)
}

// build is newAgentAddon from clients, so that tests can pass fakes.
func build(kube kubernetes.Interface, addons addonclient.Interface, clusters clusterclient.Interface,
	image string) (agent.AgentAddon, error) {
	configs := utils.NewAddOnDeploymentConfigGetter(addons)
	return addonfactory.NewAgentAddonFactory(addonName, chartFS, chartDir).
		WithAgentHostedModeEnabledOption().
		WithManagedClusterClient(clusters).
		WithConfigGVRs(utils.AddOnDeploymentConfigGVR).
		WithGetValuesFuncs(
			addonfactory.GetAgentImageValues(configs, "global.imageOverrides.agent", image),
			addonfactory.GetAddOnDeploymentConfigValues(configs,
				addonfactory.ToAddOnNodePlacementValues,
				customizedVariables),
		).
		WithAgentInstallNamespace(installNamespace(configs)).
		WithAgentRegistrationOption(registration(kube, configs)).
		WithAgentHealthProber(hostingDeploymentsProber()).
		BuildHelmAgentAddon()
}

// installNamespace is the AddOnDeploymentConfig's agentInstallNamespace.
// In hosted mode, when that is empty or the default (the AddOnDeploymentConfig
// CRD defaults it to open-cluster-management-agent-addon, one namespace for
// every managed cluster a hosting cluster hosts), it is the hosted
// klusterlet's namespace on the hosting cluster, klusterlet-<cluster>,
// which holds the managed cluster's kubeconfig.
func installNamespace(configs utils.AddOnDeploymentConfigGetter) func(*addonv1alpha1.ManagedClusterAddOn) (string, error) {
	fromConfig := utils.AgentInstallNamespaceFromDeploymentConfigFunc(configs)
	return func(addon *addonv1alpha1.ManagedClusterAddOn) (string, error) {
		ns, err := fromConfig(addon)
		if err != nil {
			return "", err
		}
		hosted := addon.Annotations[addonv1alpha1.HostingClusterNameAnnotationKey] != ""
		if hosted && (ns == "" || ns == addonfactory.AddonDefaultInstallNamespace) {
			return fmt.Sprintf("klusterlet-%s", addon.Namespace), nil
		}
		return ns, nil
	}
}

// registration gives the agent a hub kubeconfig whose only right is to
// report conditions on its own ManagedClusterAddOn.
func registration(kube kubernetes.Interface, configs utils.AddOnDeploymentConfigGetter) *agent.RegistrationOption {
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "cluster-relay-addon-agent"},
		Rules: []rbacv1.PolicyRule{{
			APIGroups:     []string{"addon.open-cluster-management.io"},
			Resources:     []string{"managedclusteraddons", "managedclusteraddons/status"},
			ResourceNames: []string{addonName},
			Verbs:         []string{"get", "list", "watch", "patch", "update"},
		}},
	}
	return &agent.RegistrationOption{
		CSRConfigurations: agent.KubeClientSignerConfigurations(addonName, addonName+"-agent"),
		CSRApproveCheck:   utils.DefaultCSRApprover(addonName + "-agent"),
		PermissionConfig:  utils.NewRBACPermissionConfigBuilder(kube).BindKubeClientRole(role).Build(),
		// In hosted mode the registration agent writes the hub kubeconfig
		// Secret into this namespace on the hosting cluster.
		AgentInstallNamespace: installNamespace(configs),
	}
}

// customizedVariables makes AddOnDeploymentConfig customized variables
// chart values. Like the framework's ToAddOnCustomizedVariableValues, each
// is a top-level key with a string value (the chart's schema takes strings
// where a variable may set a number), except "values": a JSON object of
// chart values, merged, for nested values the names (which must match
// ^[a-zA-Z_][_a-zA-Z0-9]*$) cannot reach, with their own types.
func customizedVariables(config addonv1alpha1.AddOnDeploymentConfig) (addonfactory.Values, error) {
	values := addonfactory.Values{}
	for _, v := range config.Spec.CustomizedVariables {
		if v.Name != "values" {
			values[v.Name] = v.Value
			continue
		}
		nested := addonfactory.Values{}
		if err := json.Unmarshal([]byte(v.Value), &nested); err != nil {
			return nil, fmt.Errorf("customized variable values: a JSON object of chart values: %w", err)
		}
		values = addonfactory.MergeValues(values, nested)
	}
	return values, nil
}

// hostingDeploymentsProber: the add-on is Available when every Deployment in
// its works is. In hosted mode the framework reads only the hosting
// cluster's works; its WorkloadAvailability prober would also wait for the
// exit relay's Deployment, rendered for the managed cluster, whose feedback
// is never there ("readyReplica is not probed"). Wildcards match every
// Deployment of the works the framework reads.
func hostingDeploymentsProber() *agent.HealthProber {
	return &agent.HealthProber{
		Type: agent.HealthProberTypeWork,
		WorkProber: &agent.WorkHealthProber{
			ProbeFields: []agent.ProbeField{{
				ResourceIdentifier: workv1.ResourceIdentifier{
					Group: "apps", Resource: "deployments", Namespace: "*", Name: "*"},
				ProbeRules: []workv1.FeedbackRule{{Type: workv1.WellKnownStatusType}},
			}},
			HealthChecker: utils.WorkloadAvailabilityHealthChecker,
		},
	}
}
