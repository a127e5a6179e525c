package sdktest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/controller"
	"github.com/umbra-mesh/umbra/controller/anomaly"
	"github.com/umbra-mesh/umbra/router"
)

// childControllerEnv, set, makes the test binary run a controller and a router of its own instead of the tests
// (TestMain): a network that a test can kill and start again, since OpenZiti allows only one of each per process.
const childControllerEnv = "UMBRA_SDKTEST_CHILD_CONTROLLER"

// childNetwork is where a child network keeps its state and listens; the same on every start.
type childNetwork struct {
	Dir      string `json:"dir"`
	CtrlPort int    `json:"ctrl_port"`
	APIPort  int    `json:"api_port"`
	Enroll   int    `json:"enroll_port"`
	Edge     int    `json:"edge_port"`
	// Anomaly, AlertWebhook and AlertWebhookSecret configure the controller's anomaly detector
	// (TestAnomalyAlertsAndAutoSuspend); zero values leave the defaults.
	Anomaly            anomaly.Config `json:"anomaly"`
	AlertWebhook       string         `json:"alert_webhook,omitempty"`
	AlertWebhookSecret string         `json:"alert_webhook_secret,omitempty"`
}

// runChildController runs the network described by the environment until stdin closes or a signal comes,
// printing "ready" once the controller's API answers on the overlay.
func runChildController(spec string) int {
	var n childNetwork
	if err := json.Unmarshal([]byte(spec), &n); err != nil {
		fmt.Fprintln(os.Stderr, "child network:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	srv, err := controller.New(controller.Config{DataDir: filepath.Join(n.Dir, "controller"), CtrlPort: n.CtrlPort,
		OverlayAPIPort: n.APIPort, EnrollPort: n.Enroll, Logger: log,
		Anomaly: n.Anomaly, AlertWebhook: n.AlertWebhook, AlertWebhookSecret: n.AlertWebhookSecret})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctrlCtx, stopCtrl := context.WithCancel(context.Background())
	defer stopCtrl()
	errc := make(chan error, 2)
	go func() { errc <- srv.Run(ctrlCtx) }()
	select {
	case <-srv.Ready():
	case err := <-errc:
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	routerDir := filepath.Join(n.Dir, "router")
	var token string
	if _, err := os.Stat(filepath.Join(routerDir, "cert.pem")); err != nil {
		if token, err = srv.CreateRouterToken("child-router"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	r, err := router.New(router.Config{DataDir: routerDir, Token: token, EdgeAddr: "127.0.0.1:" + strconv.Itoa(n.Edge),
		CtrlEndpoint: srv.CtrlEndpoint(), Logger: log})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	routerCtx, stopRouter := context.WithCancel(context.Background())
	defer stopRouter()
	go func() { errc <- r.Run(routerCtx) }()
	select {
	case <-srv.Hosted():
	case err := <-errc:
		fmt.Fprintln(os.Stderr, err)
		return 1
	case <-ctx.Done():
		return 0
	}
	fmt.Println("ready")
	<-ctx.Done()
	stopRouter()
	stopCtrl()
	return 0
}

// startChild starts the network n in a child process and waits until it is ready; the process is killed when
// the test ends.
func startChild(t *testing.T, n childNetwork) *exec.Cmd {
	t.Helper()
	spec, err := json.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), childControllerEnv+"="+string(spec))
	logf, err := os.OpenFile(filepath.Join(n.Dir, "child.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	// The child ends when its stdin closes: with this test, or with the test binary.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "ready" {
				ready <- nil
				_, _ = io.Copy(io.Discard, out)
				return
			}
		}
		ready <- errors.New("the child network ended before it was ready")
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("%v; its log:\n%s", err, childLog(n))
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("the child network was not ready within 2 minutes; its log:\n%s", childLog(n))
	}
	return cmd
}

func childLog(n childNetwork) string {
	b, _ := os.ReadFile(filepath.Join(n.Dir, "child.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}
