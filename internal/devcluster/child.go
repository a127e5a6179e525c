package devcluster

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// stopWait is how long a child has to stop on SIGTERM before it is killed.
const stopWait = 20 * time.Second

// child is one running umbra process of the cluster.
type child struct {
	name  string
	log   string        // its log file (stderr), appended to across starts
	ready chan struct{} // closed when it printed its ready line
	done  chan struct{} // closed when it exited; err is then set
	err   error         // how it exited
	tail  *tail         // the end of what it logged since this start
	cmd   *exec.Cmd
}

// startChild runs exe with args, its stderr appended to logPath, and watches its stdout for readyLine.
func startChild(name, exe string, args []string, logPath, readyLine string) (*child, error) {
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("devcluster: %s's log: %w", name, err)
	}
	c := &child{name: name, log: logPath, ready: make(chan struct{}), done: make(chan struct{}), tail: &tail{max: 8 << 10}}
	c.cmd = exec.Command(exe, args...)
	c.cmd.Stderr = io.MultiWriter(logFile, c.tail)
	c.cmd.SysProcAttr = sysProcAttr()
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		logFile.Close()
		return nil, fmt.Errorf("devcluster: %w", err)
	}
	if err := c.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("devcluster: starting %s: %w", name, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), readyLine) {
				close(c.ready)
				break
			}
		}
		_, _ = io.Copy(io.Discard, out)
		c.err = c.cmd.Wait()
		logFile.Close()
		close(c.done)
	}()
	return c, nil
}

// pid is the child's process id.
func (c *child) pid() int { return c.cmd.Process.Pid }

// exited reports whether the child has exited.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// why is the last line the child logged, or how it exited if it logged nothing.
func (c *child) why() string {
	if l := c.tail.lastLine(); l != "" {
		return l
	}
	if c.err != nil {
		return c.err.Error()
	}
	return "exited"
}

// stop sends the child SIGTERM, waits for it to stop, and kills it if it has not within stopWait.
func (c *child) stop() {
	if c.exited() {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(stopWait):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

// text is what the tail holds.
func (t *tail) text() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// lastLine is the last non-empty line written.
func (t *tail) lastLine() string {
	lines := strings.Split(strings.TrimSpace(t.text()), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
