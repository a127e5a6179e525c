package approval

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/umbra-mesh/umbra/mcpgw/internal/kv"
)

var bind = Binding{Caller: "spiffe://acme.test/acme/agent/a", Tool: "bank__pay", ArgsDigest: "d1", PolicyVersion: "p1"}

func TestApproveWakesWaiterAndIsSingleUse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		m := New(kv.Memory(), Config{Timeout: time.Minute, TTL: 5 * time.Minute})
		r, err := m.Open(ctx, bind, "bank", nil, "sensitive")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan Request)
		go func() {
			got, err := m.Wait(ctx, r.ID)
			if err != nil {
				t.Error(err)
			}
			done <- got
		}()
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if found, ok, _ := m.Find(ctx, bind); !ok || found.ID != r.ID || found.Status != Pending {
			t.Fatalf("Find while pending = %+v, %v", found, ok)
		}
		if _, ok, _ := m.Find(ctx, Binding{Caller: bind.Caller, Tool: bind.Tool, ArgsDigest: "other", PolicyVersion: "p1"}); ok {
			t.Fatal("Find matched other arguments")
		}
		pending, err := m.List(ctx, true)
		if err != nil || len(pending) != 1 || pending[0].ID != r.ID {
			t.Fatalf("pending = %v, %v", pending, err)
		}
		if _, err := m.Decide(ctx, r.ID, true, "admin", "other-digest"); !errors.Is(err, ErrMismatch) {
			t.Fatalf("approving other arguments: %v, want ErrMismatch", err)
		}
		if _, err := m.Decide(ctx, r.ID, true, "admin", "d1"); err != nil {
			t.Fatal(err)
		}
		got := <-done
		if got.Status != Approved || got.DecidedBy != "admin" {
			t.Fatalf("waiter got %+v", got)
		}
		if _, err := m.Decide(ctx, r.ID, false, "admin", ""); !errors.Is(err, ErrDecided) {
			t.Fatalf("second decision: %v, want ErrDecided", err)
		}
		if found, ok, _ := m.Find(ctx, bind); !ok || found.ID != r.ID || found.Status != Approved {
			t.Fatal("Find did not find the approval")
		}
		if _, err := m.Redeem(ctx, r.ID, bind); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Redeem(ctx, r.ID, bind); !errors.Is(err, ErrNotValid) {
			t.Fatalf("second use: %v, want ErrNotValid", err)
		}
		if _, ok, _ := m.Find(ctx, bind); ok {
			t.Fatal("a used approval is still found")
		}
	})
}

func TestRedeemRefuses(t *testing.T) {
	other := func(f func(*Binding)) Binding { b := bind; f(&b); return b }
	tests := []struct {
		name string
		wait time.Duration // after approval
		b    Binding
		want error
	}{
		{"exact binding", 0, bind, nil},
		{"changed arguments", 0, other(func(b *Binding) { b.ArgsDigest = "d2" }), ErrMismatch},
		{"other tool", 0, other(func(b *Binding) { b.Tool = "bank__refund" }), ErrMismatch},
		{"policy changed", 0, other(func(b *Binding) { b.PolicyVersion = "p2" }), ErrMismatch},
		{"other caller", 0, other(func(b *Binding) { b.Caller = "spiffe://acme.test/acme/agent/b" }), ErrNotFound},
		{"expired", 6 * time.Minute, bind, ErrExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx := context.Background()
				m := New(kv.Memory(), Config{TTL: 5 * time.Minute})
				r, err := m.Open(ctx, bind, "bank", nil, "")
				if err != nil {
					t.Fatal(err)
				}
				if _, err := m.Decide(ctx, r.ID, true, "admin", ""); err != nil {
					t.Fatal(err)
				}
				time.Sleep(tt.wait)
				if _, err := m.Redeem(ctx, r.ID, tt.b); !errors.Is(err, tt.want) {
					t.Fatalf("Redeem = %v, want %v", err, tt.want)
				}
			})
		})
	}
}

func TestTimeoutIsDenial(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		m := New(kv.Memory(), Config{Timeout: 30 * time.Second})
		r, err := m.Open(ctx, bind, "bank", nil, "")
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		got, err := m.Wait(ctx, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != Expired || time.Since(start) != 30*time.Second {
			t.Fatalf("after %v: %+v", time.Since(start), got)
		}
		if _, err := m.Decide(ctx, r.ID, true, "admin", ""); !errors.Is(err, ErrDecided) {
			t.Fatalf("approving an expired request: %v", err)
		}
		if _, err := m.Redeem(ctx, r.ID, bind); !errors.Is(err, ErrNotValid) {
			t.Fatalf("redeeming an expired request: %v", err)
		}
		// A request nobody waits on expires all the same.
		r2, _ := m.Open(ctx, bind, "bank", nil, "")
		time.Sleep(31 * time.Second)
		if _, err := m.Decide(ctx, r2.ID, true, "admin", ""); !errors.Is(err, ErrExpired) {
			t.Fatalf("late approval: %v, want ErrExpired", err)
		}
	})
}

func TestWaitGivesUpWithContextAndRetryRedeems(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := New(kv.Memory(), Config{Timeout: time.Minute})
		r, _ := m.Open(context.Background(), bind, "bank", nil, "")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := m.Wait(ctx, r.ID); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Wait = %v", err)
		}
		if got, _ := m.Get(context.Background(), r.ID); got.Status != Pending {
			t.Fatalf("request no longer pending after the caller gave up: %s", got.Status)
		}
		if _, err := m.Decide(context.Background(), r.ID, true, "admin", ""); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Redeem(context.Background(), r.ID, bind); err != nil {
			t.Fatalf("retry could not use the approval: %v", err)
		}
	})
}

func TestRetention(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		m := New(kv.Memory(), Config{Timeout: time.Minute, Retain: time.Hour})
		if _, err := m.Open(ctx, bind, "bank", nil, ""); err != nil {
			t.Fatal(err)
		}
		if all, _ := m.List(ctx, false); len(all) != 1 {
			t.Fatalf("List = %v", all)
		}
		time.Sleep(2 * time.Hour)
		if all, _ := m.List(ctx, false); len(all) != 0 {
			t.Fatalf("old request kept: %v", all)
		}
	})
}

// A cancelled call's request is withdrawn: a waiter wakes, it leaves the pending list, and neither an approval
// given afterwards nor a retry can use it.
func TestCancelWithdraws(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		m := New(kv.Memory(), Config{Timeout: time.Minute, TTL: 5 * time.Minute})
		r, err := m.Open(ctx, bind, "bank", nil, "sensitive")
		if err != nil {
			t.Fatal(err)
		}
		woke := make(chan Status, 1)
		go func() {
			got, _ := m.Wait(ctx, r.ID)
			woke <- got.Status
		}()
		synctest.Wait()
		got, withdrawn, err := m.Cancel(ctx, r.ID)
		if err != nil || !withdrawn || got.Status != Cancelled {
			t.Fatalf("Cancel = %+v, %v, %v", got, withdrawn, err)
		}
		if st := <-woke; st != Cancelled {
			t.Fatalf("the waiter saw %s", st)
		}
		if pending, _ := m.List(ctx, true); len(pending) != 0 {
			t.Fatalf("a withdrawn request is still pending: %+v", pending)
		}
		if _, err := m.Decide(ctx, r.ID, true, "admin", ""); !errors.Is(err, ErrDecided) {
			t.Fatalf("approving a withdrawn request: %v", err)
		}
		if _, err := m.Redeem(ctx, r.ID, bind); !errors.Is(err, ErrNotValid) {
			t.Fatalf("redeeming a withdrawn request: %v", err)
		}
		if _, ok, _ := m.Find(ctx, bind); ok {
			t.Fatal("Find offered a withdrawn request")
		}
		if _, withdrawn, err := m.Cancel(ctx, r.ID); err != nil || withdrawn {
			t.Fatalf("second Cancel: %v %v", withdrawn, err)
		}
		// An approval not used yet is withdrawn too; a used one is history and stays.
		r2, _ := m.Open(ctx, bind, "bank", nil, "sensitive")
		if _, err := m.Decide(ctx, r2.ID, true, "admin", ""); err != nil {
			t.Fatal(err)
		}
		if got, withdrawn, _ := m.Cancel(ctx, r2.ID); !withdrawn || got.Status != Cancelled {
			t.Fatalf("Cancel of an unused approval: %+v %v", got, withdrawn)
		}
		r3, _ := m.Open(ctx, bind, "bank", nil, "sensitive")
		m.Decide(ctx, r3.ID, true, "admin", "")
		if _, err := m.Redeem(ctx, r3.ID, bind); err != nil {
			t.Fatal(err)
		}
		if got, withdrawn, _ := m.Cancel(ctx, r3.ID); withdrawn || got.Status != Used {
			t.Fatalf("Cancel of a used approval: %+v %v", got, withdrawn)
		}
	})
}
