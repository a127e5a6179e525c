package zitilog

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
)

// Shapes of the credentials OpenZiti and Umbra hand around; none of them may reach a log record.
const (
	sessionJWT  = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJhYmMiLCJ6dCI6InNlc3Npb24ifQ.c2lnbmF0dXJlLWJ5dGVzLWhlcmU_-x"
	unsignedJWT = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."
	enrollToken = "uet1.eyJzdWIiOiJzcGlmZmU6Ly91bWJyYS5sb2NhbC94In0.c2lnbmF0dXJl"
	routerToken = "urt1.eyJuYW1lIjoicjIiLCJqd3QiOiJleUpoYkdjaU9pSkZVekkxTmlJc0ltdHBaQ0k2In0"
	legacyToken = "4d0b1f6e-8a9c-4c1e-9f3a-2b7c5d6e7f80"
)

type serviceSession struct {
	ServiceID string
	Token     string
}

type stringer struct{ s string }

func (s *stringer) String() string { return s.s }

// TestRedactText: every credential shape inside free text is replaced; the text around it stays.
func TestRedactText(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"jwt", "dial failed for " + sessionJWT + ": no terminators", "dial failed for [REDACTED]: no terminators"},
		{"unsigned jwt", "token=" + unsignedJWT, "token=[REDACTED]"},
		{"two jwts", sessionJWT + "," + sessionJWT, "[REDACTED],[REDACTED]"},
		{"enrollment token", "redeeming " + enrollToken, "redeeming [REDACTED]"},
		{"router token", "router r2 token " + routerToken + " written", "router r2 token [REDACTED] written"},
		{"bearer header", "Authorization: Bearer abc.DEF-123_~+/=", "Authorization: Bearer [REDACTED]"},
		{"bearer lower case", "sent bearer " + legacyToken + " to the api", "sent bearer [REDACTED] to the api"},
		{"bearer jwt", "Bearer " + sessionJWT, "Bearer [REDACTED]"},
		{"nothing secret", "circuit abc.def created on router eyJ", "circuit abc.def created on router eyJ"},
		{"json text", `{"jwt":"` + sessionJWT + `"}`, `{"jwt":"[REDACTED]"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Redact(tc.in); got != tc.want {
				t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

// TestRouteRedacts drives OpenZiti's logger the way OpenZiti does and checks the records that come out: no
// credential in the message or in any field value, named, nested or inside a struct or an error, while the
// fields that identify things without granting anything stay readable.
func TestRouteRedacts(t *testing.T) {
	var buf bytes.Buffer
	Route(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), slog.LevelDebug)
	t.Cleanup(func() { Route(slog.New(slog.DiscardHandler), slog.LevelWarn) })

	for _, tc := range []struct {
		name   string
		log    func()
		secret string
		keep   []string
	}{
		{"jwt in message", func() { logrus.Errorf("failed to connect with session %s", sessionJWT) }, sessionJWT, []string{"failed to connect with session [REDACTED]"}},
		{"jwt in a string field", func() { logrus.WithField("claims", "raw="+sessionJWT).Warn("refresh") }, sessionJWT, []string{`"claims":"raw=[REDACTED]"`}},
		{"opaque session token by name", func() {
			logrus.WithField("connId", 7).WithField("token", legacyToken).Error("Failed to establish connection")
		}, legacyToken, []string{`"connId":7`, `"token":"[REDACTED]"`}},
		{"named token in another case", func() { logrus.WithField("sessionToken", legacyToken).Debug("connecting with session") }, legacyToken, nil},
		{"authorization header field", func() { logrus.WithField("Authorization", "Bearer "+legacyToken).Info("request") }, legacyToken, nil},
		{"nested fields", func() {
			logrus.WithField("apiSessionToken", logrus.Fields{"tokenId": "hash-1", "apiSessionId": "as-1", "raw": sessionJWT}).Warn("removed")
		}, sessionJWT, []string{`"tokenId":"hash-1"`, `"apiSessionId":"as-1"`}},
		{"struct holding a jwt", func() {
			logrus.WithField("session", &serviceSession{ServiceID: "svc-1", Token: sessionJWT}).Warn("terminator")
		}, sessionJWT, []string{"svc-1"}},
		{"error holding a jwt", func() { logrus.WithError(errors.New("invalid token " + sessionJWT)).Error("enroll") }, sessionJWT, []string{"invalid token [REDACTED]"}},
		{"stringer holding a token", func() { logrus.WithField("req", &stringer{"uet=" + enrollToken}).Warn("enroll") }, enrollToken, nil},
		{"nil stringer", func() { logrus.WithField("req", (*stringer)(nil)).Warn("nil") }, "", []string{`"msg":"nil"`}},
		{"bytes", func() { logrus.WithField("body", []byte(sessionJWT)).Warn("dial") }, sessionJWT, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buf.Reset()
			tc.log()
			out := buf.String()
			if out == "" {
				t.Fatal("no record")
			}
			if tc.secret != "" && strings.Contains(out, tc.secret) {
				t.Errorf("the record holds the credential:\n%s", out)
			}
			if secretPattern.MatchString(out) {
				t.Errorf("the record holds something credential-shaped:\n%s", out)
			}
			for _, k := range tc.keep {
				if !strings.Contains(out, k) {
					t.Errorf("the record lacks %s:\n%s", k, out)
				}
			}
		})
	}
}

// FuzzRedact: whatever the input, the output holds nothing credential-shaped, and redacting again changes nothing.
func FuzzRedact(f *testing.F) {
	for _, s := range []string{sessionJWT, unsignedJWT, enrollToken, routerToken, "Bearer " + legacyToken, "eyJ.eyJ.", "bearer bearer x", "BeArer 0000", "plain text"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r := Redact(s)
		if secretPattern.MatchString(r) {
			t.Fatalf("Redact(%q) = %q still matches", s, r)
		}
		if again := Redact(r); again != r {
			t.Fatalf("Redact is not idempotent: %q then %q", r, again)
		}
	})
}

// TestRoutineTable drives OpenZiti's logger with the entries it logs in a healthy network and with entries that
// look alike but are not routine, and checks the level each record comes out at: the known ones lowered, every
// other warning and error at OpenZiti's level.
func TestRoutineTable(t *testing.T) {
	var buf bytes.Buffer
	Route(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), slog.LevelDebug)
	t.Cleanup(func() { Route(slog.New(slog.DiscardHandler), slog.LevelWarn) })

	for _, tc := range []struct {
		name string
		log  func()
		want slog.Level
	}{
		// Known, from healthy runs of `umbra dev`, the demo and the containerised demo.
		{"forwarding faults", func() { logrus.WithField("circuitCount", 28).Warn("reported forwarding faults") }, slog.LevelInfo},
		{"payload after close", func() { logrus.WithError(errors.New("write closed")).Error("failure to buffer payload") }, slog.LevelDebug},
		{"dispatch after close", func() { logrus.Errorf("failed to dispatch to fabric: (%v)", errors.New("sequencer closed")) }, slog.LevelDebug},
		{"wildcard link listener", func() {
			logrus.WithError(errors.New("no network interface found for 0.0.0.0")).WithField("addr", "0.0.0.0:4022").Warn("unable to get interface for address")
		}, slog.LevelDebug},
		{"interfaces report on a closing channel", func() {
			logrus.WithError(errors.New("channel closed")).Error("failed to send update router interfaces request to controller")
		}, slog.LevelInfo},
		{"result on a closed channel", func() { logrus.WithError(errors.New("channel closed")).Error("failed to send result") }, slog.LevelDebug},
		{"fault on a closed channel", func() { logrus.WithError(errors.New("channel closed")).Error("error sending fault") }, slog.LevelDebug},
		{"terminator removed twice", func() { logrus.Error("terminator was replaced after being put into deleting state?!") }, slog.LevelDebug},
		{"bind with a stale service session, the SDK's side", func() {
			logrus.WithField("connId", 456).Error("bind request resulted in disconnect. msg: (api session id (cmxcyezei) does not match service session api session id (cmxcyevjg))")
		}, slog.LevelInfo},
		{"bind with a stale service session, the router's side", func() {
			logrus.WithError(errors.New("api session id (cmxcyezei) does not match service session api session id (cmxcyevjg)")).
				WithField("type", "EdgeBindType").Error("unable to verify service session token")
		}, slog.LevelInfo},
		{"create answered for a bind ended meanwhile", func() {
			logrus.WithField("routerId", "f2oYtsYsPY").WithField("terminatorId", "4XRPjeJh34phFG7bbFUwcc").Error("no terminator found for id")
		}, slog.LevelInfo},
		{"management API default", func() {
			logrus.Warnf("no default handlers were found, using the last handler [Binding: %s, Type: %T] as the default", "fabric", 1)
		}, slog.LevelDebug},
		{"control channel closed by the controller", func() {
			logrus.WithError(io.EOF).Error("rx error. closed peer and starting reconnection process")
		}, slog.LevelInfo},
		{"heartbeat to a controller that is gone", func() {
			logrus.WithError(errors.New("timeout waiting to put message in send queue: context deadline exceeded")).
				WithField("channelId", "ch{ctrl}->u{reconnecting}").Error("pulse failed to send heartbeat")
		}, slog.LevelInfo},
		{"workload gone while written to", func() {
			logrus.WithError(errors.New("write tcp 127.0.0.1:33977->127.0.0.1:46370: write: connection reset by peer")).Errorf("write error")
		}, slog.LevelInfo},
		{"close message to a workload gone", func() {
			logrus.WithError(errors.New("write: connection reset by peer")).WithField("connId", 7).Warn("unable to send close msg to edge client")
		}, slog.LevelDebug},
		{"close message to a workload whose channel closed", func() {
			logrus.WithError(errors.New("channel closed")).WithField("connId", 2147483648).Warn("unable to send close msg to edge client")
		}, slog.LevelDebug},
		{"payload to a workload whose channel closed", func() {
			logrus.WithField("circuitId", "4fRHEYxVnn7uz6r1vJF5wj").Warnf("write failed (%s), closing xgress", errors.New("channel closed"))
		}, slog.LevelDebug},
		{"dial with a stale service session", func() {
			logrus.WithError(errors.New("invalid session")).WithField("operation", "create.circuit").Error("responded with error")
		}, slog.LevelInfo},
		{"router passing on a stale session", func() {
			logrus.WithError(errors.New("invalid session")).WithField("connId", 1).Warn("failed to dial fabric")
		}, slog.LevelInfo},
		{"third-party CA login", func() { logrus.Warn("error verifying client certificate via static root pool") }, slog.LevelDebug},
		{"shutdown", func() { logrus.Error("exited") }, slog.LevelDebug},
		{"dial on a closing context", func() {
			logrus.Warnf("error adding message sink %s[%d]: %v", "umbra.controller", 1, errors.New("mux is closed, can't add sink with id [1]"))
		}, slog.LevelDebug},
		{"dial whose router channel closed", func() {
			logrus.WithField("marker", "kh5QI97F").WithField("connId", 1).Error(errors.New("channel closed"))
		}, slog.LevelDebug},
		{"a cluster's create that lost a race for its name", func() {
			logrus.WithField("index", 15801).WithError(errors.New("the value 'umbra-a2a-dial-scale1.wg00413' for 'name' is invalid: name must be unique")).
				Error("applying log resulted in error")
		}, slog.LevelInfo},
		{"known message below its level stays", func() { logrus.Debug("reported forwarding faults") }, slog.LevelDebug},

		// Unknown, or a known message with another cause: OpenZiti's level, so that an operator sees it.
		{"raft entry refused on apply for another cause", func() {
			logrus.WithField("index", 7).WithError(errors.New("database not writable")).Error("applying log resulted in error")
		}, slog.LevelError},
		{"payload buffer with another cause", func() {
			logrus.WithError(errors.New("context deadline exceeded")).Error("failure to buffer payload")
		}, slog.LevelError},
		{"payload write failing otherwise", func() {
			logrus.Warnf("write failed (%s), closing xgress", errors.New("timeout waiting to put message in send queue"))
		}, slog.LevelWarn},
		{"interface of a named host", func() {
			logrus.WithError(errors.New("no network interface found for 10.1.2.3")).Warn("unable to get interface for address")
		}, slog.LevelWarn},
		{"interfaces report refused", func() {
			logrus.WithError(errors.New("timeout waiting for response")).Error("failed to send update router interfaces request to controller")
		}, slog.LevelError},
		{"controller unreachable", func() {
			logrus.WithError(errors.New("connection refused")).WithField("endpoint", "tls:127.0.0.1:6262").Error("unable to connect controller")
		}, slog.LevelError},
		{"control channel broken otherwise", func() {
			logrus.WithError(errors.New("tls: bad record MAC")).Error("rx error. closed peer and starting reconnection process")
		}, slog.LevelError},
		{"dial failing otherwise", func() {
			logrus.WithError(errors.New("service 2x has no terminators")).Warn("failed to dial fabric")
		}, slog.LevelDebug},
		{"dial refused otherwise", func() {
			logrus.WithError(errors.New("timeout waiting for response")).Warn("failed to dial fabric")
		}, slog.LevelWarn},
		{"write error otherwise", func() { logrus.WithError(errors.New("i/o timeout")).Errorf("write error") }, slog.LevelError},
		{"bind failing on a closed channel", func() {
			logrus.WithError(errors.New("channel closed")).Error("failed to establish listener")
		}, slog.LevelError},
		{"unknown warning", func() { logrus.Warn("edge router certificate expires soon") }, slog.LevelWarn},
		{"info stays info", func() { logrus.Info("router online") }, slog.LevelInfo},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buf.Reset()
			tc.log()
			var rec struct{ Level string }
			if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
				t.Fatalf("record %q: %v", buf.String(), err)
			}
			if rec.Level != tc.want.String() {
				t.Errorf("logged at %s, want %s: %s", rec.Level, tc.want, buf.String())
			}
		})
	}
}

// TestRouteAtWarn: routed at warn, the level commands log at by default, the routine entries are gone and an
// unknown warning and error still come through.
func TestRouteAtWarn(t *testing.T) {
	var buf bytes.Buffer
	Route(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn})), slog.LevelWarn)
	t.Cleanup(func() { Route(slog.New(slog.DiscardHandler), slog.LevelWarn) })
	logrus.WithField("circuitCount", 3).Warn("reported forwarding faults")
	logrus.WithError(errors.New("write closed")).Error("failure to buffer payload")
	logrus.Warn("edge router certificate expires soon")
	logrus.WithError(errors.New("connection refused")).Error("unable to connect controller")
	out := buf.String()
	if strings.Contains(out, "forwarding faults") || strings.Contains(out, "failure to buffer payload") {
		t.Errorf("routine entries logged at warn:\n%s", out)
	}
	if !strings.Contains(out, `level=WARN msg="edge router certificate expires soon"`) ||
		!strings.Contains(out, `level=ERROR msg="unable to connect controller"`) {
		t.Errorf("an unknown warning or error was lost:\n%s", out)
	}
}

func TestRouted(t *testing.T) {
	std := logrus.StandardLogger()
	saved := std.ReplaceHooks(make(logrus.LevelHooks))
	t.Cleanup(func() { std.ReplaceHooks(saved) })
	if Routed() {
		t.Fatal("Routed() = true with no route installed")
	}
	var buf bytes.Buffer
	Route(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), slog.LevelDebug)
	if !Routed() {
		t.Fatal("Routed() = false after Route")
	}
	logrus.Debug("kept at debug")
	if !strings.Contains(buf.String(), "kept at debug") {
		t.Fatalf("debug line not routed: %q", buf.String())
	}
}
