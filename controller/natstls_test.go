package controller

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/natsd"
	"github.com/umbra-mesh/umbra/internal/pki"
	"github.com/umbra-mesh/umbra/internal/testlimit"
)

func newTestCA(t *testing.T, td spiffeid.TrustDomain) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA("test CA", td, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// svidCert issues a client SVID for id from ca.
func svidCert(t *testing.T, ca *pki.CA, id string) tls.Certificate {
	t.Helper()
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	sid := spiffeid.RequireFromString(id)
	csr, err := pki.NewCSR(key, sid)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.IssueSVID(csr, sid, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
}

// TestNATSListenerIsSealed attacks the embedded NATS server's TCP listener as a process on the network would:
// without TLS, with TLS but no certificate, with a workload's SVID, and with a controller SVID from another CA.
// Only a controller SVID of the deployment's own CA gets in.
func TestNATSListenerIsSealed(t *testing.T) {
	limit := testlimit.Start(t, 2*time.Minute)
	td := spiffeid.RequireTrustDomainFromString("umbra.local")
	ca, rogue := newTestCA(t, td), newTestCA(t, td)
	self := spiffeid.RequireFromString("spiffe://umbra.local/umbra/controller/api")

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePorts(t, 1)[0]))

	if _, err := natsd.Start(natsd.Config{StoreDir: t.TempDir(), ListenAddr: addr}); err == nil {
		t.Fatal("natsd started a TCP listener without TLS")
	}
	cfg, err := natsTLS(ca, self, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	limit.Step("start NATS with mutual TLS on %s", addr)
	ns, err := natsd.Start(natsd.Config{StoreDir: t.TempDir(), ListenAddr: addr, TLS: cfg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)

	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	connect := func(opts ...nats.Option) error {
		nc, err := nats.Connect("nats://"+addr, append(opts, nats.Timeout(5*time.Second), nats.MaxReconnects(0))...)
		if err != nil {
			return err
		}
		defer nc.Close()
		// A server that let the client in answers a round trip; one that closes after the handshake does not.
		return nc.FlushTimeout(5 * time.Second)
	}
	withCert := func(c tls.Certificate) nats.Option {
		return nats.Secure(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{c}, MinVersion: tls.VersionTLS13})
	}
	for _, tc := range []struct {
		name string
		opts []nats.Option
	}{
		{"plain TCP", nil},
		{"TLS without a client certificate", []nats.Option{nats.Secure(&tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13})}},
		{"a workload SVID", []nats.Option{withCert(svidCert(t, ca, "spiffe://umbra.local/acme/agent/mallory"))}},
		{"an administrator SVID", []nats.Option{withCert(svidCert(t, ca, "spiffe://umbra.local/umbra/admin/platform"))}},
		{"a controller SVID of another CA", []nats.Option{withCert(svidCert(t, rogue, "spiffe://umbra.local/umbra/controller/api"))}},
		{"a controller SVID of another trust domain", []nats.Option{withCert(svidCert(t,
			newTestCA(t, spiffeid.RequireTrustDomainFromString("evil.example")), "spiffe://evil.example/umbra/controller/api"))}},
	} {
		limit.Step("connect with %s", tc.name)
		if err := connect(tc.opts...); err == nil {
			t.Errorf("%s: connected to the controller's NATS", tc.name)
		}
	}
	limit.Step("connect with the controller's own kind of SVID")
	if err := connect(withCert(svidCert(t, ca, "spiffe://umbra.local/umbra/controller/replica-2"))); err != nil {
		t.Fatalf("a controller SVID of this deployment was refused: %v", err)
	}
}

// TestNATSClusterRoutesAreSealed runs three controllers' NATS servers as a cluster with the controller's route
// TLS: they route to each other and elect a JetStream meta leader; a fourth server holding a controller
// certificate of another CA is refused by all of them.
func TestNATSClusterRoutesAreSealed(t *testing.T) {
	limit := testlimit.Start(t, 2*time.Minute)
	td := spiffeid.RequireTrustDomainFromString("umbra.local")
	ca, rogueCA := newTestCA(t, td), newTestCA(t, td)
	var addrs []string
	for _, p := range freePorts(t, 4) {
		addrs = append(addrs, net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	}
	start := func(i int, ca *pki.CA) *natsd.Server {
		t.Helper()
		cfg, err := Config{DataDir: t.TempDir(), NATSClusterListen: addrs[i], NATSRoutes: addrs[:3], Replicas: 3}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		s := &Server{cfg: cfg, ca: ca, controllerID: spiffeid.RequireFromSegments(td, "umbra", "controller", fmt.Sprintf("c%d", i))}
		cl, err := s.natsCluster()
		if err != nil {
			t.Fatal(err)
		}
		name, err := natsServerName(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ns, err := natsd.Start(natsd.Config{StoreDir: t.TempDir(), ServerName: name, Cluster: cl})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ns.Shutdown)
		return ns
	}
	limit.Step("start three controllers' NATS servers routed over TLS")
	var servers []*natsd.Server
	for i := range 3 {
		servers = append(servers, start(i, ca))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for _, s := range servers {
		if err := s.WaitJetStream(ctx); err != nil {
			t.Fatal(err)
		}
	}
	limit.Step("a server with a controller certificate of another CA tries to join")
	rogue := start(3, rogueCA)
	time.Sleep(3 * time.Second)
	if n := rogue.Routes(); n != 0 {
		t.Fatalf("the rogue server holds %d routes into the cluster", n)
	}
	for i, s := range servers {
		if n := s.Routes(); n == 0 {
			t.Errorf("server %d has no routes", i)
		}
	}
}
