package sdktest

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/openziti/sdk-golang/ziti"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/internal/pki"
	"github.com/umbra-mesh/umbra/internal/testlimit"
)

// stolenCert is an identity's SVID and key as an attacker who copied its identity file holds them.
func stolenCert(t testing.TB, id *agentsdk.Identity) tls.Certificate {
	t.Helper()
	f := rawIdentity(t, id)
	key, err := pki.ParseKeyPEM([]byte(f.Key))
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{f.leaf(t).Raw}, PrivateKey: key}
}

// presents dials service over raw, an overlay context of a valid identity, and runs the inner mutual TLS with
// cert. It reports whether the host let the handshake through (the echo host then names the peer it verified).
func presents(t testing.TB, raw ziti.Context, service string, cert tls.Certificate) (bool, string) {
	t.Helper()
	conn, err := rawDial(t, raw, service)
	if err != nil {
		t.Fatalf("raw overlay dial: %v", err)
	}
	defer conn.Close()
	tconn := tls.Client(conn, &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true})
	_ = tconn.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tconn.Handshake(); err != nil {
		return false, err.Error()
	}
	line, err := bufio.NewReader(tconn).ReadString('\n')
	if err != nil {
		return false, err.Error()
	}
	return true, strings.TrimSpace(line)
}

// revocationWorld is a host serving an echo service, a carrier identity whose valid overlay connection the
// attacker uses, and a victim identity whose SVID and key the attacker stole.
type revocationWorld struct {
	server  *agentsdk.Agent
	carrier *agentsdk.Agent
	raw     ziti.Context
	svc     string
}

func newRevocationWorld(t testing.TB) revocationWorld {
	t.Helper()
	w := revocationWorld{server: env.NewAgent(t, "acme", "agent", uniq("rv-server")),
		carrier: env.NewAgent(t, "acme", "agent", uniq("rv-carrier")), svc: uniq("rv-echo")}
	env.Grant(t, w.svc, []spiffeid.ID{w.server.ID()}, []spiffeid.ID{w.carrier.ID()})
	serveEcho(t, w.server, w.svc)
	w.raw = rawContext(t, w.carrier.Identity())
	return w
}

// untilRefused revokes victim and measures how long until the host refuses its stolen certificate.
func (w revocationWorld) untilRefused(t testing.TB, ctx context.Context, victim *agentsdk.Identity, limit time.Duration) time.Duration {
	t.Helper()
	cert := stolenCert(t, victim)
	if ok, got := presents(t, w.raw, w.svc, cert); !ok || got != victim.SPIFFEID().String() {
		t.Fatalf("before revocation the host did not accept the victim's valid SVID: %v %q", ok, got)
	}
	if _, err := env.Admin().Controller().Revoke(ctx, victim.SPIFFEID(), "key stolen"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for {
		ok, got := presents(t, w.raw, w.svc, cert)
		if !ok {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("the host still accepted the revoked SVID %s after %s (answered %q)", victim.SPIFFEID(), limit, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRevokedSVIDRefusedByHosts is the attack: an identity's SVID and key are stolen, the identity is revoked,
// and the attacker presents the stolen SVID inside another, valid identity's overlay connection to a host made
// with agentsdk.Listen. Within a second the host refuses it. The other direction too: a host serving with a
// revoked SVID is refused by an agent that dials it.
func TestRevokedSVIDRefusedByHosts(t *testing.T) {
	limit := testlimit.Start(t, 3*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	limit.Step("set up host, carrier and victim")
	w := newRevocationWorld(t)
	victim := env.NewIdentity(t, "acme", "agent", uniq("rv-victim"))
	limit.Step("revoke the victim and present its SVID to the host")
	took := w.untilRefused(t, ctx, victim, time.Second)
	t.Logf("host refused the revoked SVID %s after the revocation", took.Round(time.Millisecond))

	limit.Step("a rogue host serves with a revoked SVID")
	rogueSvc := uniq("rv-rogue")
	client := env.NewAgent(t, "acme", "agent", uniq("rv-client"))
	env.Grant(t, rogueSvc, []spiffeid.ID{w.carrier.ID()}, []spiffeid.ID{client.ID()})
	if _, err := w.raw.RefreshService(rogueSvc); err != nil {
		t.Fatal(err)
	}
	ln, err := w.raw.Listen(rogueSvc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	cert := stolenCert(t, victim)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert})
				_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
				if tc.Handshake() == nil {
					_, _ = io.WriteString(tc, "trust me\n")
				}
			}()
		}
	}()
	var derr error
	for range 50 { // the new service may take a moment to reach the client's view
		var conn interface{ Close() error }
		conn, derr = client.Dial(ctx, rogueSvc)
		if derr == nil {
			conn.Close()
			t.Fatal("an agent completed mutual TLS with a host presenting a revoked SVID")
		}
		if errors.Is(derr, agentsdk.ErrRevoked) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !errors.Is(derr, agentsdk.ErrRevoked) {
		t.Fatalf("dialling a host with a revoked SVID: %v, want ErrRevoked", derr)
	}
}

// BenchmarkRevocationPropagation measures how long after a revocation call returns a host refuses the revoked
// SVID (each iteration revokes a fresh identity). Reports p50 and p99 in milliseconds.
func BenchmarkRevocationPropagation(b *testing.B) {
	ctx := context.Background()
	w := newRevocationWorld(b)
	var took []time.Duration
	for b.Loop() {
		b.StopTimer()
		victim := env.NewIdentity(b, "acme", "agent", uniq("rv-bench"))
		b.StartTimer()
		took = append(took, w.untilRefused(b, ctx, victim, 5*time.Second))
	}
	slices.Sort(took)
	pct := func(p float64) float64 { return float64(took[int(p*float64(len(took)-1))].Microseconds()) / 1000 }
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}
