// Package loadbench runs a benchmark's calls from concurrent workers and reports throughput, latency
// percentiles and the process's CPU time per call, the same way for every surface (the relay, the MCP gateway,
// the LLM gateway), so that their figures in docs/benchmarks.md compare; and it reads the state of the machine
// those figures depend on (a process's memory and CPU time, the load average).
package loadbench

import (
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Run calls the workers, each from a goroutine of its own and one call at a time, until b.N calls are made in
// all. It reports the aggregate rate as "<unit>/s", the latency of a call at the 50th and 99th percentiles
// ("p50-us", "p99-us") and the CPU time the whole process (clients, servers, everything in it) spent per call
// ("cpu-us/<unit>", user plus system; omitted where the platform does not report it). Unlike the rate, CPU time
// per call barely moves when other jobs compete for the machine, so it compares runs on a shared machine. The
// first failed call fails the benchmark once the others have stopped.
func Run(b *testing.B, unit string, workers []func() error) {
	b.Helper()
	if len(workers) == 0 {
		b.Fatal("loadbench: no workers")
	}
	var (
		mu   sync.Mutex
		lat  = make([]time.Duration, 0, b.N)
		next atomic.Int64
		fail atomic.Value
		wg   sync.WaitGroup
	)
	b.ResetTimer()
	cpu0, cpuOK := processCPU()
	start := time.Now()
	for _, call := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]time.Duration, 0, b.N/len(workers)+1)
			for fail.Load() == nil && next.Add(1) <= int64(b.N) {
				t0 := time.Now()
				if err := call(); err != nil {
					fail.CompareAndSwap(nil, err)
					break
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu1, _ := processCPU()
	b.StopTimer()
	if err, _ := fail.Load().(error); err != nil {
		b.Fatal(err)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), unit+"/s")
	b.ReportMetric(Percentile(lat, 50), "p50-us")
	b.ReportMetric(Percentile(lat, 99), "p99-us")
	if cpuOK && len(lat) > 0 {
		b.ReportMetric(float64(cpu1-cpu0)/float64(time.Microsecond)/float64(len(lat)), "cpu-us/"+unit)
	}
}

// Same returns n workers that all make the same call.
func Same(n int, call func() error) []func() error {
	ws := make([]func() error, n)
	for i := range ws {
		ws[i] = call
	}
	return ws
}

// Percentile is the p-th percentile of sorted latencies, in microseconds (0 for none).
func Percentile(sorted []time.Duration, p int) float64 {
	if len(sorted) == 0 {
		return 0
	}
	d := sorted[min(len(sorted)-1, len(sorted)*p/100)]
	return float64(d) / float64(time.Microsecond)
}
