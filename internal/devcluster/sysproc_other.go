//go:build !linux

package devcluster

import "syscall"

// sysProcAttr leaves a child in the parent's process group where the kernel cannot be asked to signal it when
// the parent dies: there an interrupt of the terminal reaches it directly.
func sysProcAttr() *syscall.SysProcAttr { return nil }
