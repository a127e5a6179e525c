package zitictrl

import (
	"errors"
	"fmt"
	"testing"

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
