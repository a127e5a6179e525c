package budget

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/natsd"
)

func exceeded(t *testing.T, err error, limit string, rate bool) *Exceeded {
	t.Helper()
	var ex *Exceeded
	if !errors.As(err, &ex) || ex.Limit != limit || ex.Rate != rate {
		t.Fatalf("got %v, want %s exceeded (rate %v)", err, limit, rate)
	}
	return ex
}

func TestReservationsCountUntilSettled(t *testing.T) {
	ctx := context.Background()
	l := NewLimiter(NewMemoryStore())
	claims := []Claim{{Subject: "id:a", Limits: Limits{TokensPerDay: 100}}}
	r1, err := l.Reserve(ctx, claims, Estimate{Tokens: 60})
	if err != nil {
		t.Fatal(err)
	}
	// 60 reserved of 100: the next is admitted although its estimate does not fit, and then the budget is closed.
	r2, err := l.Reserve(ctx, claims, Estimate{Tokens: 60})
	if err != nil {
		t.Fatal(err)
	}
	_, err = l.Reserve(ctx, claims, Estimate{Tokens: 1})
	exceeded(t, err, "tokens_per_day", false)
	// Settling with less than reserved frees the difference.
	if err := r1.Settle(ctx, "m", Counts{InputTokens: 5, OutputTokens: 5}); err != nil {
		t.Fatal(err)
	}
	if err := r1.Settle(ctx, "m", Counts{InputTokens: 500}); err != nil {
		t.Fatal(err) // a second settle is ignored
	}
	if _, err := l.Reserve(ctx, claims, Estimate{Tokens: 1}); err != nil {
		t.Errorf("after settling 10 of 60: %v", err)
	}
	_ = r2.Settle(ctx, "m", Counts{InputTokens: 50})
	recs, err := l.Usage(ctx, time.Now().Add(-time.Hour), func(s string) bool { return s == "id:a" })
	if err != nil || len(recs) != 1 || recs[0].Tokens() != 60 || recs[0].Requests != 2 || recs[0].Models["m"].Requests != 2 {
		t.Errorf("usage %+v %v", recs, err)
	}
}

func TestRateLimitsAndPeriods(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		l := NewLimiter(NewMemoryStore())
		c := []Claim{{Subject: "org:x", Limits: Limits{RequestsPerMinute: 2, TokensPerDay: 30, TokensPerMonth: 50}}}
		use := func(tokens int64) error {
			r, err := l.Reserve(ctx, c, Estimate{Tokens: 1})
			if err != nil {
				return err
			}
			return r.Settle(ctx, "", Counts{OutputTokens: tokens})
		}
		if err := use(10); err != nil {
			t.Fatal(err)
		}
		if err := use(10); err != nil {
			t.Fatal(err)
		}
		ex := exceeded(t, use(10), "requests_per_minute", true)
		if ex.RetryAfter <= 0 || ex.RetryAfter > time.Minute {
			t.Errorf("retry after %v", ex.RetryAfter)
		}
		time.Sleep(time.Minute)
		if err := use(10); err != nil {
			t.Fatalf("next minute: %v", err)
		}
		time.Sleep(time.Minute)
		exceeded(t, use(10), "tokens_per_day", false)
		time.Sleep(24 * time.Hour)
		if err := use(15); err != nil { // a new day; 45 of the month's 50
			t.Fatalf("next day: %v", err)
		}
		time.Sleep(time.Minute)
		if err := use(5); err != nil {
			t.Fatalf("45 of 50: %v", err)
		}
		time.Sleep(time.Minute)
		exceeded(t, use(1), "tokens_per_month", false)
	})
}

func TestConcurrencyAndCost(t *testing.T) {
	ctx := context.Background()
	l := NewLimiter(NewMemoryStore())
	c := []Claim{{Subject: "id:a", Limits: Limits{MaxConcurrent: 1, CostPerDay: 0.001}}}
	r, err := l.Reserve(ctx, c, Estimate{CostNanos: 1})
	if err != nil {
		t.Fatal(err)
	}
	exceeded(t, func() error { _, err := l.Reserve(ctx, c, Estimate{}); return err }(), "max_concurrent", true)
	_ = r.Settle(ctx, "m", Counts{CostNanos: Nanos(0.001)})
	_, err = l.Reserve(ctx, c, Estimate{})
	exceeded(t, err, "cost_per_day", false)
}

func TestTighter(t *testing.T) {
	a := Limits{RequestsPerMinute: 10, TokensPerDay: 0, CostPerDay: 5}
	b := Limits{RequestsPerMinute: 20, TokensPerDay: 100, CostPerDay: 2}
	if got := a.Tighter(b); got != (Limits{RequestsPerMinute: 10, TokensPerDay: 100, CostPerDay: 2}) {
		t.Errorf("%+v", got)
	}
}

// TestSharedStore: two limiters on one store (a restart, or two gateways) see each other's usage, and
// concurrent settles lose nothing.
func TestSharedStore(t *testing.T) {
	ctx := context.Background()
	store := NewMemoryStore()
	a, b := NewLimiter(store), NewLimiter(store)
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := a
			if i%2 == 1 {
				l = b
			}
			r, err := l.Reserve(ctx, []Claim{{Subject: "id:a"}}, Estimate{})
			if err != nil {
				t.Error(err)
				return
			}
			if err := r.Settle(ctx, "m", Counts{InputTokens: 1}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	fresh := NewLimiter(store)
	_, err := fresh.Reserve(ctx, []Claim{{Subject: "id:a", Limits: Limits{TokensPerMonth: 40}}}, Estimate{})
	exceeded(t, err, "tokens_per_month", false)
}

func TestKVStore(t *testing.T) {
	srv, err := natsd.Start(natsd.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	nc, err := srv.Connect("budget-test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	s, err := NewKVStore(ctx, js, "")
	if err != nil {
		t.Fatal(err)
	}
	if v, rev, err := s.Get(ctx, "usage.d.20250101.x"); v != nil || rev != 0 || err != nil {
		t.Errorf("missing key: %q %d %v", v, rev, err)
	}
	rev, err := s.Put(ctx, "usage.d.20250101.x", []byte("1"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "usage.d.20250101.x", []byte("2"), 0); !errors.Is(err, ErrConflict) {
		t.Errorf("create over an existing key: %v", err)
	}
	if _, err := s.Put(ctx, "usage.d.20250101.x", []byte("2"), rev+5); !errors.Is(err, ErrConflict) {
		t.Errorf("update at a stale revision: %v", err)
	}
	if _, err := s.Put(ctx, "usage.d.20250101.x", []byte("2"), rev); err != nil {
		t.Fatal(err)
	}
	_, _ = s.Put(ctx, "usage.m.202501.x", []byte("3"), 0)
	keys, err := s.Keys(ctx, "usage.d.")
	if err != nil || len(keys) != 1 || keys[0] != "usage.d.20250101.x" {
		t.Errorf("keys %v %v", keys, err)
	}
	l := NewLimiter(s)
	r, _ := l.Reserve(ctx, []Claim{{Subject: "id:spiffe://td/o/agent/a"}}, Estimate{})
	if err := r.Settle(ctx, "m", Counts{OutputTokens: 3}); err != nil {
		t.Fatalf("settle into JetStream with a SPIFFE ID subject: %v", err)
	}
}
