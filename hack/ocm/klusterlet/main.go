// Command klusterlet is OCM's registration-operator command (its
// cmd/registration-operator/main.go, unchanged) with one flag more,
// --work-resync-interval, for the e2e (tests/e2e_ocm.rs).
//
// The work agent re-applies every ManifestWork's objects after each
// successful reconcile, after manifestcontroller.ResyncInterval (4m in
// v1.2.1, jittered up to +50%). OCM has no flag for it: its package
// variable is the only option. hack/build-ocm.sh builds this file into its
// wrapper module beside OCM's own commands.
package main

import (
	goflag "flag"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	utilflag "k8s.io/component-base/cli/flag"
	"k8s.io/component-base/logs"

	"open-cluster-management.io/ocm/pkg/cmd/hub"
	"open-cluster-management.io/ocm/pkg/cmd/spoke"
	"open-cluster-management.io/ocm/pkg/version"
	"open-cluster-management.io/ocm/pkg/work/spoke/controllers/manifestcontroller"
)

func main() {
	pflag.CommandLine.SetNormalizeFunc(utilflag.WordSepNormalizeFunc)
	pflag.CommandLine.AddGoFlagSet(goflag.CommandLine)
	pflag.CommandLine.DurationVar(&manifestcontroller.ResyncInterval, "work-resync-interval",
		manifestcontroller.ResyncInterval,
		"The work agent's base interval between re-applies of a ManifestWork (jittered up to +50%).")

	logs.AddFlags(pflag.CommandLine)
	logs.InitLogs()
	defer logs.FlushLogs()

	cmd := &cobra.Command{
		Use:   "klusterlet",
		Short: "OCM's registration-operator with --work-resync-interval",
		Run: func(cmd *cobra.Command, args []string) {
			_ = cmd.Help()
			os.Exit(1)
		},
	}
	cmd.Version = version.Get().String()
	cmd.AddCommand(hub.NewHubOperatorCmd())
	cmd.AddCommand(spoke.NewKlusterletOperatorCmd())
	cmd.AddCommand(spoke.NewKlusterletAgentCmd())
	if err := cmd.Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "%v\n", err)
		os.Exit(1) //nolint:gocritic
	}
}
