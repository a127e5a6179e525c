package main

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/internal/testlimit"
)

// TestDemoComposeHA brings docker-compose.ha.yml up (the demo on three controllers and two routers), kills one
// controller with SIGKILL in the middle of the round, and checks that every agent completes the round through
// the other two, that every envelope a sender saw acknowledged is in the audit trail and the chain verifies,
// and that the cluster's keys are mounted in the controllers only, read-only, besides the job that made them.
func TestDemoComposeHA(t *testing.T) {
	if testing.Short() {
		t.Skip("brings up the containerised demo on three controllers")
	}
	if os.Getenv("UMBRA_TEST_COMPOSE_HA") != "1" {
		t.Skip("set UMBRA_TEST_COMPOSE_HA=1 to bring up the containerised demo on three controllers (about 9 minutes)")
	}
	limit := testlimit.Start(t, 15*time.Minute)
	c, _ := upDemoCompose(t, limit, "docker-compose.ha.yml", "UMBRA_API_PORT", "UMBRA_ENROLL_PORT", "UMBRA_CTRL_PORT",
		"UMBRA_EDGE1_PORT", "UMBRA_EDGE2_PORT")
	limit.Step("compose up and one round of the demo, controller c2 killed in it")
	logs, err := c.roundKilling("c2")
	limit.Step("checks after the round")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs, "could not answer") {
		t.Errorf("an agent failed to answer")
	}
	checkComposeAudit(t, c, "c1", logs)

	// The bundle of the cluster's keys: made by the secrets job, mounted read-only by the three controllers,
	// by nothing else.
	for _, id := range strings.Fields(c.must("ps", "-a", "-q")) {
		out, err := docker("inspect", "-f", `{{.Name}}{{range .Mounts}} {{.Name}}:{{.Destination}}:{{.RW}}{{end}}`, id)
		if err != nil {
			t.Fatalf("docker inspect: %v\n%s", err, out)
		}
		f := strings.Fields(out)
		name := f[0]
		for _, m := range f[1:] {
			if !strings.HasSuffix(strings.SplitN(m, ":", 2)[0], "_cluster-secrets") {
				continue
			}
			switch {
			case strings.Contains(name, "_secrets_"):
			case strings.Contains(name, "_c1_") || strings.Contains(name, "_c2_") || strings.Contains(name, "_c3_"):
				if !strings.HasSuffix(m, ":false") {
					t.Errorf("%s mounts the cluster's keys writable: %s", name, m)
				}
			default:
				t.Errorf("%s mounts the cluster's keys: %s", name, m)
			}
		}
	}
}
