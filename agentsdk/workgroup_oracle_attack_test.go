package agentsdk_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/internal/testlimit"
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
	own := w.outside.ID().String()
	real := w.wg
	fake := orgName(t, w.quoter.ID()) + "/no-such-group"

	ops := map[string]func(wg string) error{
		"add member": func(wg string) error { _, err := outsiderAdmin.AddMember(ctx, wg, own, ""); return err },
		"remove member": func(wg string) error {
			_, err := outsiderAdmin.RemoveMember(ctx, wg, w.quoter.ID().String())
			return err
		},
		"accept invitation":  func(wg string) error { _, err := outsiderAdmin.AnswerInvitation(ctx, wg, false); return err },
		"decline invitation": func(wg string) error { _, err := outsiderAdmin.AnswerInvitation(ctx, wg, true); return err },
		"delete":             func(wg string) error { return outsiderAdmin.DeleteWorkgroup(ctx, wg) },
	}
	for name, op := range ops {
		limit.Step("%s on the real and on a made-up workgroup", name)
		errReal, errFake := op(real), op(fake)
		if errReal == nil || errFake == nil {
			t.Errorf("%s: real=%v fake=%v, want both refused", name, errReal, errFake)
			continue
		}
		t.Logf("%s: %v", name, errReal)
		if a, b := scrub(errReal.Error(), real), scrub(errFake.Error(), fake); a != b {
			t.Errorf("%s tells a hidden workgroup from a missing one:\n real: %s\n fake: %s", name, a, b)
		}
	}

	limit.Step("add another organisation's identity, and a made-up one")
	buyer := w.buyer.ID().String()
	made := strings.Replace(buyer, "/buyer", "/nobody", 1)
	_, errReal := w.acme.Controller().AddMember(ctx, real, buyer, "")
	_, errFake := w.acme.Controller().AddMember(ctx, real, made, "")
	if errReal == nil || errFake == nil {
		t.Fatalf("adding a foreign identity: real=%v fake=%v, want both refused", errReal, errFake)
	}
	if a, b := scrub(errReal.Error(), buyer), scrub(errFake.Error(), made); a != b {
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
