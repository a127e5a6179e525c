// Package natsdtest starts clusters of embedded NATS servers (natsd) on loopback for tests: routes over mutual TLS
// with a throw-away CA, servers that can be killed and restarted on their own store.
package natsdtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/freeport"
	"github.com/umbra-mesh/umbra/internal/natsd"
)

// Cluster is a NATS cluster of servers in this process.
type Cluster struct {
	tb      testing.TB
	configs []natsd.Config
	servers []*natsd.Server // nil: killed
}

// StartCluster starts n servers routed to each other on loopback, each fsyncing before it acknowledges, and
// waits (at most 30 s) until JetStream is ready on all of them. They are shut down at the end of the test.
func StartCluster(tb testing.TB, n int) *Cluster {
	tb.Helper()
	tlsCfg, err := RouteTLS()
	if err != nil {
		tb.Fatal(err)
	}
	addrs := FreeAddrs(tb, n)
	c := &Cluster{tb: tb, servers: make([]*natsd.Server, n)}
	for i := range n {
		c.configs = append(c.configs, natsd.Config{
			StoreDir:   tb.TempDir(),
			SyncAlways: true,
			ServerName: fmt.Sprintf("n%d", i),
			Cluster:    &natsd.Cluster{Name: "umbra-test", Listen: addrs[i], Routes: addrs, TLS: tlsCfg},
		})
	}
	for i := range n {
		c.Restart(i)
	}
	tb.Cleanup(func() {
		for i := range c.servers {
			c.Kill(i)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, s := range c.servers {
		if err := s.WaitJetStream(ctx); err != nil {
			tb.Fatal(err)
		}
	}
	// A stream of n replicas can be placed once the meta leader sees every server online with JetStream.
	for {
		if peers := c.servers[c.MetaLeader()].ClusterPeers(); len(peers) == n {
			return c
		}
		if ctx.Err() != nil {
			tb.Fatalf("the meta leader does not see all %d servers after 30 s", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Add starts one more server, routed to every earlier one, and returns its index. The earlier servers learn its
// route from it (routes are gossiped), so their configurations stay as they are.
func (c *Cluster) Add() int {
	c.tb.Helper()
	cfg := c.configs[0]
	addr := FreeAddrs(c.tb, 1)[0]
	routes := append(append([]string{}, cfg.Cluster.Routes...), addr)
	cl := *cfg.Cluster
	cl.Listen, cl.Routes = addr, routes
	cfg.Cluster, cfg.StoreDir, cfg.ServerName = &cl, c.tb.TempDir(), fmt.Sprintf("n%d", len(c.configs))
	c.configs = append(c.configs, cfg)
	c.servers = append(c.servers, nil)
	i := len(c.servers) - 1
	c.Restart(i)
	return i
}

// Server is server i, nil while it is killed.
func (c *Cluster) Server(i int) *natsd.Server { return c.servers[i] }

// Len is the number of servers, running or not.
func (c *Cluster) Len() int { return len(c.servers) }

// Kill shuts server i down (a no-op if it is down).
func (c *Cluster) Kill(i int) {
	if s := c.servers[i]; s != nil {
		s.Shutdown()
		c.servers[i] = nil
	}
}

// Restart starts server i again on its store, with its name and route address.
func (c *Cluster) Restart(i int) {
	c.tb.Helper()
	s, err := natsd.Start(c.configs[i])
	if err != nil {
		c.tb.Fatalf("server %d: %v", i, err)
	}
	c.servers[i] = s
}

// MetaLeader is the index of the server leading JetStream's meta group, waiting up to 10 s for one.
func (c *Cluster) MetaLeader() int {
	c.tb.Helper()
	return c.waitFor("a JetStream meta leader", func(s *natsd.Server) bool { return s.MetaLeader() })
}

// StreamLeader is the index of the server leading stream's replicas, waiting up to 10 s for one.
func (c *Cluster) StreamLeader(stream string) int {
	c.tb.Helper()
	return c.waitFor("a leader of stream "+stream, func(s *natsd.Server) bool { return s.StreamLeader(stream) })
}

// WaitStreamCurrent waits up to 10 s until server i's replica of stream has caught up with the leader.
func (c *Cluster) WaitStreamCurrent(stream string, i int) {
	c.tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !c.servers[i].StreamCurrent(stream) {
		if time.Now().After(deadline) {
			c.tb.Fatalf("server n%d's replica of stream %s has not caught up after 10 s", i, stream)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *Cluster) waitFor(what string, ok func(*natsd.Server) bool) int {
	c.tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for i, s := range c.servers {
			if s != nil && ok(s) {
				return i
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.tb.Fatalf("no server is %s after 10 s", what)
	return -1
}

// LeadStream makes server i the leader of stream's replicas (asking the current leader to step down in its
// favour), waiting up to 10 s.
func (c *Cluster) LeadStream(stream string, i int) {
	c.tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c.servers[i].StreamLeader(stream) {
			return
		}
		leader := c.StreamLeader(stream)
		nc, err := c.servers[leader].Connect("stepdown")
		if err != nil {
			c.tb.Fatal(err)
		}
		body := fmt.Sprintf(`{"placement":{"preferred":%q}}`, c.servers[i].Name())
		_, err = nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+stream, []byte(body), 2*time.Second)
		nc.Close()
		if err != nil {
			c.tb.Logf("stream %s leader stepdown: %v", stream, err)
		}
		wait := time.Now().Add(2 * time.Second)
		for time.Now().Before(wait) && !c.servers[i].StreamLeader(stream) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	c.tb.Fatalf("server n%d did not become leader of stream %s within 10 s", i, stream)
}

// JetStream opens a client connection to server i, closed at the end of the test.
func (c *Cluster) JetStream(i int) jetstream.JetStream {
	c.tb.Helper()
	nc, err := c.servers[i].Connect(fmt.Sprintf("%s-n%d", c.tb.Name(), i))
	if err != nil {
		c.tb.Fatal(err)
	}
	c.tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		c.tb.Fatal(err)
	}
	return js
}

// RouteTLS is a route TLS configuration for loopback: a fresh CA and one certificate of it, for 127.0.0.1 and
// localhost, presented and required in both directions.
func RouteTLS() (*tls.Config, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "natsdtest CA"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "natsdtest server"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER, caDER}, PrivateKey: key}},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}, nil
}

// FreeAddrs picks n distinct free loopback addresses below the kernel's ephemeral range (freeport).
func FreeAddrs(tb testing.TB, n int) []string {
	tb.Helper()
	ports, err := freeport.Loopback(n)
	if err != nil {
		tb.Fatal(err)
	}
	addrs := make([]string, n)
	for i, p := range ports {
		addrs[i] = net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	}
	return addrs
}
