package loadbench

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// The machine's state a benchmark's figures depend on, read from /proc (Linux; elsewhere an error or "unknown").

// clockTick is the unit of a process's CPU times in /proc/PID/stat: USER_HZ, 100 on every Linux platform Go runs on.
const clockTick = 10 * time.Millisecond

// RSS is the resident set size of process pid (0: this process), from /proc/PID/status.
func RSS(pid int) (uint64, error) {
	f, err := os.Open(procPath(pid, "status"))
	if err != nil {
		return 0, fmt.Errorf("loadbench: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("loadbench: VmRSS of %d: %w", pid, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("loadbench: no VmRSS for process %d", pid)
}

// ProcessCPU is the user and system CPU time process pid (0: this process) has used so far, from /proc/PID/stat:
// for another process, where the rusage of this one does not reach.
func ProcessCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(procPath(pid, "stat"))
	if err != nil {
		return 0, fmt.Errorf("loadbench: %w", err)
	}
	// After the command name in parentheses, utime and stime are the 12th and 13th fields.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("loadbench: /proc/%d/stat has %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("loadbench: /proc/%d/stat: utime %q, stime %q", pid, f[11], f[12])
	}
	return time.Duration(utime+stime) * clockTick, nil
}

// LoadAverage is the machine's load average over 1, 5 and 15 minutes, as /proc/loadavg shows it, or "unknown".
func LoadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

func procPath(pid int, file string) string {
	if pid == 0 {
		return "/proc/self/" + file
	}
	return "/proc/" + strconv.Itoa(pid) + "/" + file
}
