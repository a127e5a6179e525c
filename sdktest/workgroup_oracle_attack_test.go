package sdktest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/testlimit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// TestWorkgroupExistenceOracle probes workgroups and identities from outside, as an administrator of an
// organisation that is not part of them: every operation on a real workgroup it may not see must answer exactly
// as the same operation on one that does not exist, and adding another organisation's identity must answer
// exactly as adding one that does not exist.
func TestWorkgroupExistenceOracle(t *testing.T) {
	limit := testlimit.Start(t, 3*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	limit.Step("build the pricing world")
	w := newPricingWorld(t, defaultTerms())
	outsiderAdmin := w.initech.Controller()
	own := w.outside.ID()
	real := w.wg
	fake := workgroups.WorkgroupID{Org: orgName(t, w.quoter.ID()), Name: "no-such-group"}

	ops := map[string]func(wg workgroups.WorkgroupID) error{
		"add member": func(wg workgroups.WorkgroupID) error { _, err := outsiderAdmin.AddMember(ctx, wg, own, ""); return err },
		"remove member": func(wg workgroups.WorkgroupID) error {
			_, err := outsiderAdmin.RemoveMember(ctx, wg, w.quoter.ID())
			return err
		},
		"accept invitation": func(wg workgroups.WorkgroupID) error {
			_, err := outsiderAdmin.AnswerInvitation(ctx, wg, false)
			return err
		},
		"decline invitation": func(wg workgroups.WorkgroupID) error {
			_, err := outsiderAdmin.AnswerInvitation(ctx, wg, true)
			return err
		},
		"delete": func(wg workgroups.WorkgroupID) error { return outsiderAdmin.DeleteWorkgroup(ctx, wg) },
	}
	for name, op := range ops {
		limit.Step("%s on the real and on a made-up workgroup", name)
		errReal, errFake := op(real), op(fake)
		if errReal == nil || errFake == nil {
			t.Errorf("%s: real=%v fake=%v, want both refused", name, errReal, errFake)
			continue
		}
		t.Logf("%s: %v", name, errReal)
		if a, b := scrub(errReal.Error(), real.String()), scrub(errFake.Error(), fake.String()); a != b {
			t.Errorf("%s tells a hidden workgroup from a missing one:\n real: %s\n fake: %s", name, a, b)
		}
	}

	limit.Step("add another organisation's identity, and a made-up one")
	buyer := w.buyer.ID()
	made := spiffeid.RequireFromString(strings.Replace(buyer.String(), "/buyer", "/nobody", 1))
	_, errReal := w.acme.Controller().AddMember(ctx, real, buyer, "")
	_, errFake := w.acme.Controller().AddMember(ctx, real, made, "")
	if errReal == nil || errFake == nil {
		t.Fatalf("adding a foreign identity: real=%v fake=%v, want both refused", errReal, errFake)
	}
	if a, b := scrub(errReal.Error(), buyer.String()), scrub(errFake.Error(), made.String()); a != b {
		t.Errorf("adding members tells a foreign identity from a missing one:\n real: %s\n fake: %s", a, b)
	}
}

// scrub removes the name the caller itself supplied, which every answer may echo.
func scrub(msg, name string) string {
	msg = strings.ReplaceAll(msg, name, "<name>")
	if i := strings.Index(msg, "error id"); i >= 0 {
		msg = msg[:i]
	}
	return msg
}
