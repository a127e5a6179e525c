package a2a

import (
	"fmt"
	"strings"
)

// Suffixes of the envelope types that answer a call.
const (
	// ResultSuffix ends the type of the one envelope that completes a call.
	ResultSuffix = ".result"
	// EventSuffix ends the type of each streamed event before the last.
	EventSuffix = ".event"
)

// Methods lists the A2A methods of the JSON-RPC binding (A2A 0.3) that this package carries.
func Methods() []string {
	return []string{
		"message/send",
		"message/stream",
		"tasks/get",
		"tasks/cancel",
		"tasks/resubscribe",
		"tasks/pushNotificationConfig/get",
		"tasks/pushNotificationConfig/set",
		"tasks/pushNotificationConfig/list",
		"tasks/pushNotificationConfig/delete",
		"agent/getAuthenticatedExtendedCard",
	}
}

// MessageType returns the envelope type that carries A2A method m: "a2a." followed by the method in lower case
// with "/" turned into "." ("message/send" is "a2a.message.send", "tasks/pushNotificationConfig/get" is
// "a2a.tasks.pushnotificationconfig.get"). It fails for a method A2A does not define.
func MessageType(m string) (string, error) {
	for _, x := range Methods() {
		if x == m {
			return "a2a." + strings.ToLower(strings.ReplaceAll(m, "/", ".")), nil
		}
	}
	return "", fmt.Errorf("a2a: %q is not an A2A method", m)
}

// Method returns the A2A method an envelope type carries, and whether it carries one.
func Method(msgType string) (string, bool) {
	for _, x := range Methods() {
		if t, _ := MessageType(x); t == msgType {
			return x, true
		}
	}
	return "", false
}

// streaming reports whether method m answers with a stream of events (server-sent events over HTTP).
func streaming(m string) bool { return m == "message/stream" || m == "tasks/resubscribe" }
