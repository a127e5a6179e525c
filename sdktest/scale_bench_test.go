package sdktest

import (
	"path/filepath"
	"testing"

	"github.com/umbra-mesh/umbra/internal/scalebench"
)

// BenchmarkScale loads a world into the shared test network through the public API and measures discovery,
// propose and envelope send→acknowledgement in it (internal/scalebench; sizes from UMBRA_SCALE_* variables). The
// controller runs in this process, so its memory figures are the process's: controller, router and the
// benchmark's agents together. cmd/umbra's BenchmarkClusterScale does the same on three controller processes.
func BenchmarkScale(b *testing.B) {
	scalebench.Run(b, scalebench.Network{Admin: env.Admin(), Controllers: []scalebench.Controller{{
		Name: "controller", StoreDir: filepath.Join(env.Config.DataDir, "jetstream"),
	}}})
}
