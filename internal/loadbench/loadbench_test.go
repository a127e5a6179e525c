package loadbench_test

import (
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/internal/loadbench"
)

func TestPercentile(t *testing.T) {
	lat := []time.Duration{1 * time.Microsecond, 2 * time.Microsecond, 3 * time.Microsecond, 4 * time.Microsecond}
	if got := loadbench.Percentile(lat, 50); got != 3 {
		t.Errorf("p50 = %v, want 3", got)
	}
	if got := loadbench.Percentile(lat, 99); got != 4 {
		t.Errorf("p99 = %v, want 4", got)
	}
	if got := loadbench.Percentile(nil, 50); got != 0 {
		t.Errorf("p50 of none = %v, want 0", got)
	}
}

// TestRunMakesExactlyN runs Run inside testing.Benchmark: b.N calls are made in all, however many workers.
func TestRunMakesExactlyN(t *testing.T) {
	var calls atomic.Int64
	var last int
	res := testing.Benchmark(func(b *testing.B) {
		calls.Store(0)
		last = b.N
		loadbench.Run(b, "req", loadbench.Same(7, func() error { calls.Add(1); return nil }))
	})
	if got := calls.Load(); got != int64(last) {
		t.Fatalf("%d calls for b.N = %d", got, last)
	}
	if res.Extra["req/s"] <= 0 {
		t.Fatalf("no rate reported: %v", res.Extra)
	}
}

func TestRunStopsOnFailure(t *testing.T) {
	var calls atomic.Int64
	res := testing.Benchmark(func(b *testing.B) {
		loadbench.Run(b, "req", loadbench.Same(4, func() error {
			if calls.Add(1) > 3 {
				return errors.New("refused")
			}
			return nil
		}))
	})
	if res.N != 0 && res.Extra["req/s"] != 0 {
		t.Fatalf("a failing run reported figures: %+v", res)
	}
	if calls.Load() > 1000 {
		t.Fatalf("%d calls after the first failure", calls.Load())
	}
}

// TestRunReportsCPU: calls that each burn about 200 µs of CPU are reported as costing CPU time per call.
func TestRunReportsCPU(t *testing.T) {
	res := testing.Benchmark(func(b *testing.B) {
		loadbench.Run(b, "req", loadbench.Same(2, func() error {
			for end := time.Now().Add(200 * time.Microsecond); time.Now().Before(end); {
			}
			return nil
		}))
	})
	got, ok := res.Extra["cpu-us/req"]
	if !ok {
		t.Skip("the platform does not report CPU time")
	}
	if got < 50 {
		t.Fatalf("cpu-us/req = %v for calls that burn about 200 µs each", got)
	}
}

// TestProc reads this process's resident set and CPU time, and the load average, where /proc has them.
func TestProc(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	rss, err := loadbench.RSS(0)
	if err != nil || rss < 1<<20 {
		t.Fatalf("RSS = %d, %v; want at least 1 MiB", rss, err)
	}
	if _, err := loadbench.RSS(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
	}
	if cpu, err := loadbench.ProcessCPU(os.Getpid()); err != nil || cpu <= 0 {
		t.Fatalf("ProcessCPU = %v, %v; want more than 0 after 50 ms of spinning", cpu, err)
	}
	if got := loadbench.LoadAverage(); len(strings.Fields(got)) != 3 {
		t.Fatalf("LoadAverage = %q, want three figures", got)
	}
}
