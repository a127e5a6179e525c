package zitictrl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-openapi/runtime"
	"github.com/openziti/edge-api/rest_management_api_client"
	"github.com/openziti/edge-api/rest_management_api_client/service"
	"github.com/openziti/edge-api/rest_management_api_client/service_policy"
	"github.com/openziti/edge-api/rest_model"
	"github.com/openziti/edge-api/rest_util"
)

// TestNameTaken checks which refused creates fall back to the look-up: only those whose cause is the name.
func TestNameTaken(t *testing.T) {
	fieldErr := func(field, reason string) *rest_model.APIErrorEnvelope {
		return &rest_model.APIErrorEnvelope{Error: &rest_model.APIError{Code: "INVALID_FIELD",
			Cause: &rest_model.APIErrorCause{APIFieldError: rest_model.APIFieldError{Field: field, Reason: reason}}}}
	}
	// As Mgmt.do returns them.
	wrap := func(err error) error { return fmt.Errorf("zitictrl: create: %w", rest_util.WrapErr(err)) }
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"name checked before the create", wrap(&service.CreateServiceBadRequest{Payload: fieldErr("name", "name must be unique")}), true},
		{"name index", wrap(&service_policy.CreateServicePolicyBadRequest{Payload: fieldErr("name", "duplicate value 'x' in unique index on servicePolicies store")}), true},
		{"another field", wrap(&service_policy.CreateServicePolicyBadRequest{Payload: fieldErr("identityRoles", "no identities found with the given ids")}), false},
		{"name missing", wrap(&service.CreateServiceBadRequest{Payload: fieldErr("name", "name is required")}), false},
		{"no cause", wrap(&service.CreateServiceBadRequest{Payload: &rest_model.APIErrorEnvelope{Error: &rest_model.APIError{Code: "UNHANDLED"}}}), false},
		{"not from the API", errors.New("connection refused"), false},
		{"none", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := nameTaken(tc.err); got != tc.want {
				t.Errorf("nameTaken(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

// clientTimeout is the error of a request that an http.Client with a timeout gave up waiting for.
func clientTimeout(t *testing.T) error {
	t.Helper()
	slow := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { time.Sleep(300 * time.Millisecond) }))
	defer slow.Close()
	_, err := (&http.Client{Timeout: 50 * time.Millisecond}).Post(slow.URL, "application/json", nil)
	if err == nil {
		t.Fatal("a request outlasting the client's timeout succeeded")
	}
	return err
}

// TestUnanswered checks which failures Mgmt.do tries again: the overlay's controller not carrying out a request
// (a command forwarded to the raft leader that timed out, a cluster with no leader), not a refusal.
func TestUnanswered(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("zitictrl: create: %w", rest_util.WrapErr(err)) }
	noLeader := &rest_model.APIErrorEnvelope{Error: &rest_model.APIError{Code: "CLUSTER_NO_LEADER", Message: "cluster has no leader"}}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"forwarded command timed out", wrap(runtime.NewAPIError("unknown error", "{}", 500)), true},
		{"no leader", wrap(&service_policy.CreateServicePolicyServiceUnavailable{Payload: noLeader}), true},
		{"refused", wrap(&service.CreateServiceBadRequest{Payload: &rest_model.APIErrorEnvelope{Error: &rest_model.APIError{Code: "INVALID_FIELD"}}}), false},
		{"not found", wrap(runtime.NewAPIError("unknown error", "{}", 404)), false},
		{"connection closed without an answer", wrap(&url.Error{Op: "Post", URL: "https://127.0.0.1:1/x", Err: io.EOF}), true},
		{"connection reset", wrap(&url.Error{Op: "Post", URL: "https://127.0.0.1:1/x", Err: syscall.ECONNRESET}), true},
		{"connection refused", wrap(&url.Error{Op: "Post", URL: "https://127.0.0.1:1/x", Err: syscall.ECONNREFUSED}), false},
		{"no answer within the client's timeout", wrap(clientTimeout(t)), true},
		{"not from the API", errors.New("connection refused"), false},
		{"end of a body read elsewhere", io.EOF, false},
		{"none", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := unanswered(tc.err); got != tc.want {
				t.Errorf("unanswered(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

// TestDoTriesUnansweredAgain: a request the overlay's controller left unanswered is made again, up to
// unansweredTries times in all; a refusal is returned at once.
func TestDoTriesUnansweredAgain(t *testing.T) {
	m := &Mgmt{client: &rest_management_api_client.ZitiEdgeManagement{}, lastUsed: time.Now()}
	timedOut := runtime.NewAPIError("unknown error", "{}", 500)
	calls := 0
	err := m.do("patch identity", func(*rest_management_api_client.ZitiEdgeManagement) error {
		if calls++; calls < 3 {
			return timedOut
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("answered on the third try: %d calls, %v; want 3 calls and no error", calls, err)
	}
	calls = 0
	err = m.do("patch identity", func(*rest_management_api_client.ZitiEdgeManagement) error { calls++; return timedOut })
	if !unanswered(err) || calls != unansweredTries {
		t.Fatalf("never answered: %d calls, %v; want %d calls and the last error", calls, err, unansweredTries)
	}
	calls = 0
	refused := &service.CreateServiceBadRequest{Payload: &rest_model.APIErrorEnvelope{Error: &rest_model.APIError{Code: "INVALID_FIELD"}}}
	err = m.do("create service", func(*rest_management_api_client.ZitiEdgeManagement) error { calls++; return refused })
	if err == nil || calls != 1 {
		t.Fatalf("refused: %d calls, %v; want 1 call and its error", calls, err)
	}
}

// fakeServices plays the management API's services: creates answer in turn as answers says (500: a forwarded
// create that timed out, applied anyway; 400: the name is taken; 201: created), and a look-up by name shows
// svc1 from the visibleFrom-th look-up on (never when 0).
func fakeServices(t *testing.T, answers []int, visibleFrom int) (m *Mgmt, creates, lists *int) {
	creates, lists = new(int), new(int)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/edge/management/v1/services":
			code := answers[min(*creates, len(answers)-1)]
			*creates++
			w.WriteHeader(code)
			switch code {
			case http.StatusBadRequest:
				io.WriteString(w, `{"error":{"code":"COULD_NOT_VALIDATE","message":"invalid document","cause":{"field":"name","reason":"name must be unique","value":"a2a.x"}},"meta":{}}`)
			case http.StatusCreated:
				io.WriteString(w, `{"data":{"id":"svc1","_links":{}},"meta":{}}`)
			default:
				io.WriteString(w, "{}")
			}
		case r.Method == http.MethodGet && r.URL.Path == "/edge/management/v1/services":
			data := "[]"
			if *lists++; visibleFrom > 0 && *lists >= visibleFrom {
				data = `[{"id":"svc1","name":"a2a.x","roleAttributes":["wg.acme.pricing"],"encryptionRequired":true}]`
			}
			io.WriteString(w, `{"data":`+data+`,"meta":{"pagination":{"limit":10,"offset":0,"totalCount":1}}}`)
		default:
			http.Error(w, "not played here", http.StatusNotImplemented)
		}
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	client := rest_management_api_client.NewHTTPClientWithConfig(nil, &rest_management_api_client.TransportConfig{
		Host: u.Host, BasePath: rest_management_api_client.DefaultBasePath, Schemes: []string{"http"}})
	return &Mgmt{client: client, lastUsed: time.Now()}, creates, lists
}

// TestCreateNewServiceAfterALateCreate plays a cluster member behind a loaded leader through the management API's
// real client: the first create is forwarded, times out (500) and is applied anyway, and the create tried again
// is refused because the name is taken, while this member's copy of the store does not show the service at all.
// The service was made by the first try: CreateNewService succeeds without looking it up.
func TestCreateNewServiceAfterALateCreate(t *testing.T) {
	m, creates, lists := fakeServices(t, []int{500, 400}, 0)
	if err := m.CreateNewService("a2a.x", []string{"wg.acme.pricing"}); err != nil {
		t.Fatalf("CreateNewService after a late create: %v (creates %d, look-ups %d); want success", err, *creates, *lists)
	}
	if *creates != 2 || *lists != 0 {
		t.Errorf("creates %d, look-ups %d; want 2 and none", *creates, *lists)
	}
}

// TestCreateNewServiceTakenAtOnce: a create refused on its first try meets a service made otherwise (a create
// that stopped half way). CreateNewService looks it up until this member's copy shows it (the third look-up here)
// and ends with that service.
func TestCreateNewServiceTakenAtOnce(t *testing.T) {
	m, creates, lists := fakeServices(t, []int{400}, 3)
	if err := m.CreateNewService("a2a.x", []string{"wg.acme.pricing"}); err != nil {
		t.Fatalf("CreateNewService of a taken name: %v (creates %d, look-ups %d); want the existing service", err, *creates, *lists)
	}
	// The refused create, and a create after each of the two look-ups that missed.
	if *creates != 3 || *lists != 3 {
		t.Errorf("creates %d, look-ups %d; want 3 and 3", *creates, *lists)
	}
}

// TestDoTriesAConnectionClosedWithoutAnswer drives the management API's real client against a server that closes
// the connection of the first create without answering, as a server closing a kept-alive connection just as the
// request goes out on it does (Go's client does not repeat a POST itself). The create is made again and answered.
func TestDoTriesAConnectionClosedWithoutAnswer(t *testing.T) {
	var creates int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/edge/management/v1/service-policies" {
			http.Error(w, "not played here", http.StatusNotImplemented)
			return
		}
		if creates++; creates == 1 {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			conn.Close()
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"data":{"id":"sp1","_links":{}},"meta":{}}`)
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	client := rest_management_api_client.NewHTTPClientWithConfig(nil, &rest_management_api_client.TransportConfig{
		Host: u.Host, BasePath: rest_management_api_client.DefaultBasePath, Schemes: []string{"http"}})
	m := &Mgmt{client: client, lastUsed: time.Now()}
	if err := m.CreateOrUpdateServicePolicy("umbra-x-dial", "Dial", []string{"#x.dial"}, []string{"#x"}); err != nil || creates != 2 {
		t.Fatalf("create after a dropped connection: %v (%d creates); want success on the second create", err, creates)
	}
}

// TestHostsServiceEndsWithItsContext: the look-up asks for the service's terminators of the one host and reads
// the answer; a management API that does not answer, or answers only that it could not carry the request out,
// holds it no longer than its context (before, the tries and pauses of do took about 4 s more).
func TestHostsServiceEndsWithItsContext(t *testing.T) {
	var mode atomic.Value // "found", "none", "hang", "busy"
	var filter atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/edge/management/v1/terminators" {
			http.Error(w, "not played here", http.StatusNotImplemented)
			return
		}
		filter.Store(r.URL.Query().Get("filter"))
		w.Header().Set("Content-Type", "application/json")
		switch mode.Load() {
		case "hang": // until the client gives up, or long past the test's bound if it never does
			select {
			case <-r.Context().Done():
			case <-time.After(3 * time.Second):
			}
		case "busy":
			w.WriteHeader(http.StatusInternalServerError)
			io.WriteString(w, "{}")
		case "found":
			io.WriteString(w, `{"data":[{"id":"t1","_links":{}}],"meta":{"pagination":{"limit":1,"offset":0,"totalCount":1}}}`)
		default:
			io.WriteString(w, `{"data":[],"meta":{"pagination":{"limit":1,"offset":0,"totalCount":0}}}`)
		}
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	client := rest_management_api_client.NewHTTPClientWithConfig(nil, &rest_management_api_client.TransportConfig{
		Host: u.Host, BasePath: rest_management_api_client.DefaultBasePath, Schemes: []string{"http"}})
	m := &Mgmt{client: client, lastUsed: time.Now()}

	for _, tc := range []struct {
		mode  string
		found bool
	}{{"found", true}, {"none", false}} {
		mode.Store(tc.mode)
		found, err := m.HostsService(context.Background(), "umbra.controller", "ctrl-1")
		if err != nil || found != tc.found {
			t.Fatalf("%s: found %v, %v; want %v", tc.mode, found, err, tc.found)
		}
		if f := filter.Load(); f != `service.name = "umbra.controller" and hostId = "ctrl-1"` {
			t.Fatalf("filter %q", f)
		}
	}
	for _, m2 := range []string{"hang", "busy"} {
		mode.Store(m2)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		start := time.Now()
		_, err := m.HostsService(ctx, "umbra.controller", "ctrl-1")
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s: %v, want the context's deadline", m2, err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("%s: returned after %s, past its context's 300 ms by more than a try", m2, took)
		}
	}
}
