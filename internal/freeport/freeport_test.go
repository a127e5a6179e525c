package freeport

import (
	"net"
	"strconv"
	"testing"
)

// TestLoopbackBelowEphemeralRange: the ports are distinct, free, and below the kernel's ephemeral range, where no
// outgoing connection or bind(0) can take them first.
func TestLoopbackBelowEphemeralRange(t *testing.T) {
	ports, err := Loopback(6)
	if err != nil {
		t.Fatal(err)
	}
	low := EphemeralLow()
	seen := map[int]bool{}
	for _, p := range ports {
		if p >= low || p < floor || seen[p] {
			t.Fatalf("ports %v: want 6 distinct ports from %d up to below %d", ports, floor, low)
		}
		seen[p] = true
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("port %d is not free: %v", p, err)
		}
		l.Close()
	}
	// A port in use is never picked: hold the ports just picked and pick again.
	var held []net.Listener
	for _, p := range ports {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
	}
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	again, err := Loopback(6)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range again {
		if seen[p] {
			t.Fatalf("port %d was picked while it was in use", p)
		}
	}
}
