package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"gopkg.in/yaml.v3"
)

// usageError is a mistake in how a command was called. It prints as one line that names the command, says
// what was wrong and points at the command's help.
type usageError struct {
	cmd     string // e.g. "session propose"
	problem string
}

func (e *usageError) Error() string {
	return fmt.Sprintf("%s: %s; see 'umbra help %s'", e.cmd, e.problem, e.cmd)
}

func usagef(cmd, format string, args ...any) error {
	return &usageError{cmd: cmd, problem: fmt.Sprintf(format, args...)}
}

// commandError is an error a command returned, with the command's name to print before it.
type commandError struct {
	cmd string
	err error
}

func (e *commandError) Error() string { return e.cmd + ": " + e.err.Error() }
func (e *commandError) Unwrap() error { return e.err }

// errorLine is what the user sees of err: one line, the command first.
func errorLine(err error) string {
	var msg string
	var ue *usageError
	var ce *commandError
	switch {
	case errors.As(err, &ue):
		msg = ue.Error()
	case errors.As(err, &ce):
		inner := ce.err.Error()
		// Many errors already say which command they come from.
		if strings.HasPrefix(inner, ce.cmd+":") || strings.HasPrefix(inner, ce.cmd+" ") {
			msg = inner
		} else {
			msg = ce.cmd + ": " + inner
		}
	default:
		return "umbra: " + oneLine(err.Error())
	}
	return "umbra " + oneLine(msg)
}

// oneLine folds a multi-line message (a YAML decoder's list, a server's text body) into one line.
func oneLine(s string) string {
	var parts []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if l = strings.Join(strings.Fields(l), " "); l != "" {
			parts = append(parts, l)
		}
	}
	out := strings.Join(parts, "; ")
	out = strings.ReplaceAll(out, ":;", ":")
	return out
}

// wantsHelp reports whether args ask for help (-h, -help or --help) before any "--".
func wantsHelp(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "-help", "--help":
			return true
		}
	}
	return false
}

// usageLines returns the lines of the usage text that describe the command path ("session propose",
// "workgroup"), with their continuation lines.
func usageLines(path string) []string {
	words := strings.Fields(path)
	var out []string
	keep := false
	for _, l := range strings.Split(usage, "\n") {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "umbra ") {
			keep = matchesPath(strings.Fields(t)[1:], words)
			if keep {
				out = append(out, l)
			}
			continue
		}
		if keep && strings.HasPrefix(l, "      ") {
			out = append(out, l)
			continue
		}
		keep = false
	}
	return out
}

func matchesPath(fields, words []string) bool {
	if len(fields) < len(words) {
		return false
	}
	for i, w := range words {
		ok := false
		for _, alt := range strings.Split(fields[i], "|") {
			ok = ok || alt == w
		}
		if !ok {
			return false
		}
	}
	return true
}

// printHelp writes the command's usage lines and its flags, in the --name form the README uses.
func (f *flags) printHelp(w io.Writer) {
	if lines := usageLines(f.Name()); len(lines) > 0 {
		fmt.Fprintln(w, "Usage:")
		for _, l := range lines {
			fmt.Fprintln(w, l)
		}
	} else {
		fmt.Fprintf(w, "Usage: umbra %s [flags]\n", f.Name())
	}
	fmt.Fprintln(w, "\nFlags:")
	f.VisitAll(func(fl *flag.Flag) {
		arg, text := flag.UnquoteUsage(fl)
		head := "  --" + fl.Name
		if arg != "" {
			head += " " + strings.ToUpper(arg)
		}
		if fl.DefValue != "" && fl.DefValue != "false" && fl.DefValue != "0" && fl.DefValue != "0s" {
			text += fmt.Sprintf(" (default %s)", fl.DefValue)
		}
		fmt.Fprintf(w, "%-28s %s\n", head, text)
	})
}

var (
	reUnknownFlag = regexp.MustCompile(`^flag provided but not defined: -+(.*)$`)
	reNeedsArg    = regexp.MustCompile(`^flag needs an argument: -+(.*)$`)
	reBadValue    = regexp.MustCompile(`^invalid (?:boolean )?value "(.*)" for (?:flag )?-+([^:]*): (.*)$`)
)

// flagProblem turns an error of package flag into what was wrong, in the user's terms.
func (f *flags) flagProblem(err error) string {
	msg := err.Error()
	if m := reUnknownFlag.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("unknown flag --%s", m[1])
	}
	if m := reNeedsArg.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("--%s needs a value", m[1])
	}
	if m := reBadValue.FindStringSubmatch(msg); m != nil {
		value, name := m[1], m[2]
		if fl := f.Lookup(name); fl != nil {
			if want := valueKind(fl.Value); want != "" {
				return fmt.Sprintf("--%s %q: want %s", name, value, want)
			}
		}
		return fmt.Sprintf("--%s %q: %s", name, value, m[3])
	}
	return msg
}

// valueKind says in words what a flag's value must look like, from the type it holds.
func valueKind(v flag.Value) string {
	g, ok := v.(flag.Getter)
	if !ok {
		return ""
	}
	switch g.Get().(type) {
	case time.Duration:
		return "a duration such as 90s, 15m or 2h"
	case int, int64:
		return "a whole number"
	case uint, uint64:
		return "a whole number, 0 or more"
	case float64:
		return "a number"
	case bool:
		return "true or false"
	}
	return ""
}

// validLevel reports whether s is a --log-level value.
func validLevel(s string) bool {
	switch strings.ToLower(s) {
	case "debug", "info", "warn", "error":
		return true
	}
	return false
}

// identityError explains why an identity file (--as) cannot be used, and what to do about it.
func identityError(cmd, path string, err error) error {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return usagef(cmd, "--as %s: no such identity file (umbra enroll --token FILE --out %s writes one)", path, path)
	case errors.Is(err, fs.ErrPermission):
		return usagef(cmd, "--as %s: permission denied reading the identity file", path)
	case errors.As(err, &syntax), errors.As(err, &typ):
		return usagef(cmd, "--as %s is not an identity file (if it is an enrollment token, redeem it first: umbra enroll --token %s --out ID.json)", path, path)
	}
	msg := strings.TrimPrefix(err.Error(), "agentsdk: ")
	msg = strings.TrimPrefix(msg, "identity file "+path+": ")
	return usagef(cmd, "--as %s is not a usable identity file: %s", path, msg)
}

var (
	reYAMLUnknown = regexp.MustCompile(`^line (\d+): field (\S+) not found in type .*$`)
	reYAMLType    = regexp.MustCompile("^line (\\d+): cannot unmarshal !!(\\w+) `(.*)` into (.*)$")
)

// yamlError rewrites a YAML decoding error in the terms of the file: the line and the key or value that is
// wrong, without the Go types the decoder names.
func yamlError(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return errors.New(strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var out []string
	for _, e := range te.Errors {
		if m := reYAMLUnknown.FindStringSubmatch(e); m != nil {
			out = append(out, fmt.Sprintf("line %s: unknown key %q (check its spelling and indentation)", m[1], m[2]))
			continue
		}
		if m := reYAMLType.FindStringSubmatch(e); m != nil {
			out = append(out, fmt.Sprintf("line %s: %q: want %s", m[1], m[3], yamlKind(m[4])))
			continue
		}
		out = append(out, e)
	}
	return errors.New(strings.Join(out, "; "))
}

// yamlKind says in words what a Go type named by the YAML decoder looks like in a file.
func yamlKind(goType string) string {
	switch {
	case goType == "time.Duration":
		return "a duration such as 30s or 5m"
	case strings.HasPrefix(goType, "int") || strings.HasPrefix(goType, "uint"):
		return "a whole number"
	case strings.HasPrefix(goType, "float"):
		return "a number"
	case goType == "bool":
		return "true or false"
	case goType == "string":
		return "a string"
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	case strings.HasPrefix(goType, "map[") || strings.HasPrefix(goType, "struct") || strings.HasPrefix(goType, "main."):
		return "a mapping of keys"
	}
	return "a value of another kind"
}

// checkListen fails early, with the address and the flag that set it, when a port this command would listen
// on is taken: the listeners start deep inside the overlay, which reports it badly.
func checkListen(cmd, flagName, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return listenError(cmd, flagName, addr, err)
	}
	return ln.Close()
}

// listenError explains a failed listen on addr, set by --flagName.
func listenError(cmd, flagName, addr string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return usagef(cmd, "%s (--%s) is already in use: stop what listens there (another umbra?) or choose another port with --%s", addr, flagName, flagName)
	}
	return usagef(cmd, "cannot listen on %s (--%s): %s", addr, flagName, strings.TrimPrefix(err.Error(), "listen tcp "+addr+": "))
}

// hostPort joins a host and a port flag's value, with the default port when the flag is unset.
func hostPort(host string, port, def int) string {
	if host == "" {
		host = "127.0.0.1"
	}
	if port == 0 {
		port = def
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// checkSPIFFEID checks that the one positional argument is a SPIFFE ID.
func checkSPIFFEID(pos []string) error {
	if _, err := spiffeid.FromString(pos[0]); err != nil {
		return fmt.Errorf("%q is not a SPIFFE ID (spiffe://TRUST-DOMAIN/ORG/KIND/NAME)", pos[0])
	}
	return nil
}

// fileProblem says briefly why a file named on the command line could not be read.
func fileProblem(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "no such file"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied"
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
