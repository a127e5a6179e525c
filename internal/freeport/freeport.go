// Package freeport picks loopback TCP ports for listeners that are bound later, by another component or
// process: `umbra demo`, `umbra dev --controllers N` and the tests that start members on ports given to them.
//
// A port the kernel hands out with bind(0) comes from its ephemeral range, the same range connect() takes its
// source ports from. Between the pick and the bind, any outgoing connection on the machine (a NATS route, a
// router's link, a test's HTTP client) or another bind(0) may take it, and the listener then fails with
// "address already in use". The ports picked here lie below that range, where neither happens.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// floor is the lowest port picked: below it lie the ports of well-known services.
const floor = 10000

// Loopback picks n distinct loopback TCP ports that are free now, below the kernel's ephemeral range.
// Nothing holds them: whoever binds one first gets it.
func Loopback(n int) ([]int, error) {
	hi := EphemeralLow()
	lo := min(floor, hi/2)
	tried := map[int]bool{}
	out := make([]int, 0, n)
	for len(out) < n {
		if len(tried) >= max(1000, 4*n) || len(tried) >= hi-lo {
			return nil, fmt.Errorf("freeport: found %d free loopback ports between %d and %d, want %d", len(out), lo, hi-1, n)
		}
		p := lo + rand.IntN(hi-lo)
		if tried[p] {
			continue
		}
		tried[p] = true
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		l.Close()
		out = append(out, p)
	}
	return out, nil
}

// EphemeralLow is the first port of the kernel's ephemeral range (/proc/sys/net/ipv4/ip_local_port_range on
// Linux), or 32768 where that cannot be read (below the range of other systems too).
func EphemeralLow() int {
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil && v > 2048 {
				return v
			}
		}
	}
	return 32768
}
