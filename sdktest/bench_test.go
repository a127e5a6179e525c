package sdktest

// Benchmarks of the three ways two processes on one machine can talk: the agent SDK (overlay + mutual TLS with
// SVIDs inside), the raw overlay (sdk-golang, no inner TLS), and loopback TCP. docs/benchmarks.md has the
// command and the figures.

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openziti/sdk-golang/ziti"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
)

// A connection to a bench server starts with one mode byte.
const (
	modeEcho = 'e' // echo everything back
	modeSink = 's' // read an 8-byte length, then that many bytes, then answer one byte
)

// benchServe answers connections from ln in the modes above until ln is closed.
func benchServe(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			var mode [1]byte
			if _, err := io.ReadFull(c, mode[:]); err != nil {
				return
			}
			switch mode[0] {
			case modeEcho:
				io.Copy(c, c)
			case modeSink:
				var n [8]byte
				if _, err := io.ReadFull(c, n[:]); err != nil {
					return
				}
				if _, err := io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint64(n[:]))); err != nil {
					return
				}
				c.Write([]byte{1})
			}
		}()
	}
}

// transport is one way of reaching a bench server.
type transport struct {
	name string
	dial func(ctx context.Context) (net.Conn, error)
}

// benchTransports hosts a bench server three ways and returns how to dial each. Everything is closed when b
// ends.
func benchTransports(b *testing.B) []transport {
	b.Helper()
	host := env.NewAgent(b, "bench", "agent", uniq("host"))
	client := env.NewAgent(b, "bench", "agent", uniq("client"))
	svc, rawSvc := uniq("bench-mtls"), uniq("bench-raw")
	env.Grant(b, svc, []spiffeid.ID{host.ID()}, []spiffeid.ID{client.ID()})
	env.Grant(b, rawSvc, []spiffeid.ID{host.ID()}, []spiffeid.ID{client.ID()})

	ln, err := host.Listen(svc)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go benchServe(ln)

	rawHost := rawContext(b, host.Identity())
	opts := &ziti.ListenOptions{ConnectTimeout: 10 * time.Second, WaitForNEstablishedListeners: 1}
	rawLn, err := rawHost.ListenWithOptions(rawSvc, opts)
	if err != nil && strings.Contains(err.Error(), "not found") {
		if _, rerr := rawHost.RefreshService(rawSvc); rerr == nil {
			rawLn, err = rawHost.ListenWithOptions(rawSvc, opts)
		}
	}
	if err != nil {
		b.Fatalf("raw overlay listen: %v", err)
	}
	b.Cleanup(func() { rawLn.Close() })
	go benchServe(rawLn)
	rawClient := rawContext(b, client.Identity())

	tcpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tcpLn.Close() })
	go benchServe(tcpLn)
	var d net.Dialer

	ts := []transport{
		{"overlay+mtls", func(ctx context.Context) (net.Conn, error) { return client.Dial(ctx, svc) }},
		{"overlay", func(context.Context) (net.Conn, error) { return rawDial(b, rawClient, rawSvc) }},
		{"tcp", func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", tcpLn.Addr().String()) }},
	}
	// Warm up: the first dial of each may wait for a terminator or a service refresh.
	for _, tr := range ts {
		c := benchConn(b, tr, modeEcho)
		roundTrip(b, c, make([]byte, 64))
		c.Close()
	}
	return ts
}

func benchConn(b *testing.B, tr transport, mode byte) net.Conn {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := tr.dial(ctx)
	if err != nil {
		b.Fatalf("%s: dial: %v", tr.name, err)
	}
	if _, err := c.Write([]byte{mode}); err != nil {
		b.Fatalf("%s: %v", tr.name, err)
	}
	return c
}

func roundTrip(b *testing.B, c net.Conn, buf []byte) {
	if _, err := c.Write(buf); err != nil {
		b.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf); err != nil {
		b.Fatal(err)
	}
}

// percentile returns the p-th percentile (0 < p <= 100) of ds, sorting ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	i := int(float64(len(ds))*p/100+0.5) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkDial measures establishing a connection: for overlay+mtls this includes the mutual TLS handshake
// with SVIDs inside the overlay connection.
func BenchmarkDial(b *testing.B) {
	for _, tr := range benchTransports(b) {
		b.Run(tr.name, func(b *testing.B) {
			ctx := context.Background()
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				c, err := tr.dial(ctx)
				if err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
				if tc, ok := c.(*net.TCPConn); ok {
					tc.SetLinger(0) // no TIME_WAIT: thousands of loopback dials would exhaust the ephemeral ports
				}
				c.Close()
			}
			b.StopTimer()
			b.ReportMetric(micros(percentile(lat, 50)), "p50-us/dial")
			b.ReportMetric(micros(percentile(lat, 99)), "p99-us/dial")
		})
	}
}

// BenchmarkRoundTrip64 measures a 64-byte echo on an established connection.
func BenchmarkRoundTrip64(b *testing.B) {
	for _, tr := range benchTransports(b) {
		b.Run(tr.name, func(b *testing.B) {
			c := benchConn(b, tr, modeEcho)
			defer c.Close()
			buf := make([]byte, 64)
			roundTrip(b, c, buf)
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				roundTrip(b, c, buf)
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			b.ReportMetric(micros(percentile(lat, 50)), "p50-us/rtt")
			b.ReportMetric(micros(percentile(lat, 99)), "p99-us/rtt")
		})
	}
}

// BenchmarkThroughput measures a one-way bulk transfer in 1 MiB writes, until the receiver has read it all.
func BenchmarkThroughput(b *testing.B) {
	const chunk = 1 << 20
	for _, tr := range benchTransports(b) {
		b.Run(tr.name, func(b *testing.B) {
			c := benchConn(b, tr, modeSink)
			defer c.Close()
			buf := make([]byte, chunk)
			for i := range buf {
				buf[i] = byte(i)
			}
			var n [8]byte
			binary.BigEndian.PutUint64(n[:], uint64(b.N)*chunk)
			if _, err := c.Write(n[:]); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(chunk)
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := io.ReadFull(c, n[:1]); err != nil {
				b.Fatalf("waiting for the receiver: %v", err)
			}
		})
	}
}

// BenchmarkRevocation measures, per revoked agent, how long after the revoke call its established connection
// is cut and its new dials are refused. Each iteration enrolls a fresh agent; use a small -benchtime such as 5x.
func BenchmarkRevocation(b *testing.B) {
	host := env.NewAgent(b, "bench", "agent", uniq("rev-host"))
	svc := uniq("bench-rev")
	env.Grant(b, svc, []spiffeid.ID{host.ID()}, nil)
	ln, err := host.Listen(svc)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go benchServe(ln)
	admin := env.Admin().Controller()
	ctx := context.Background()

	var cut, refused []time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		a := env.NewAgent(b, "bench", "agent", uniq("revokee"))
		env.Grant(b, svc, nil, []spiffeid.ID{a.ID()})
		tr := transport{"overlay+mtls", func(ctx context.Context) (net.Conn, error) { return a.Dial(ctx, svc) }}
		c := benchConn(b, tr, modeEcho)
		roundTrip(b, c, make([]byte, 64))
		b.StartTimer()

		start := time.Now()
		var wg sync.WaitGroup
		var cutAt, refusedAt time.Duration
		var cutErr, refusedErr error
		wg.Add(2)
		go func() { // a blocked read returns as soon as the overlay closes the connection
			defer wg.Done()
			_ = c.SetReadDeadline(time.Now().Add(breakWithin))
			_, cutErr = c.Read(make([]byte, 1))
			cutAt = time.Since(start)
		}()
		go func() {
			defer wg.Done()
			for time.Since(start) < breakWithin {
				dctx, cancel := context.WithTimeout(ctx, breakWithin)
				d, err := a.Dial(dctx, svc)
				cancel()
				if err != nil {
					refusedAt, refusedErr = time.Since(start), err
					return
				}
				d.Close()
				time.Sleep(10 * time.Millisecond)
			}
			refusedErr = errors.New("dials still succeed")
		}()
		if _, err := admin.Revoke(ctx, a.ID(), "benchmark"); err != nil {
			b.Fatal(err)
		}
		wg.Wait()
		b.StopTimer()
		var ne net.Error
		if cutErr == nil || errors.As(cutErr, &ne) && ne.Timeout() {
			b.Fatalf("connection not cut within %v: %v", breakWithin, cutErr)
		}
		if !errors.Is(refusedErr, agentsdk.ErrNotAuthorized) && !errors.Is(refusedErr, agentsdk.ErrServiceNotFound) {
			b.Fatalf("dial after revocation: %v", refusedErr)
		}
		cut, refused = append(cut, cutAt), append(refused, refusedAt)
		c.Close()
		a.Close()
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(millis(percentile(cut, 50)), "ms-conn-cut")
	b.ReportMetric(millis(percentile(refused, 50)), "ms-dial-refused")
	b.Logf("conn cut after %v; dial refused after %v", cut, refused)
}
