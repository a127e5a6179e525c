package devcluster

import "syscall"

// sysProcAttr puts a child in a process group of its own (a terminal's interrupt reaches only the parent, which
// stops the children in order) and has the kernel send it SIGTERM when the parent dies, even by SIGKILL.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
