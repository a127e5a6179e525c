package sdktest

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/testlimit"
)

// TestClusterOnALoneController: a lone controller says it is no cluster and refuses a removal with a line that
// says why; an organisation's administrator sees nothing of the cluster. (A cluster's status and a member's
// replacement are tested with real processes in cmd/umbra, TestControllerCluster.)
func TestClusterOnALoneController(t *testing.T) {
	testlimit.Start(t, time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	st, err := env.Admin().Controller().Cluster(ctx)
	if err != nil || st.Clustered || len(st.Members) != 0 {
		t.Fatalf("cluster status of a lone controller: %+v, %v", st, err)
	}
	refused := func(err error, status int, code, want string) {
		t.Helper()
		var apiErr *agentsdk.APIError
		if !errors.As(err, &apiErr) || apiErr.Status != status || apiErr.Code != code || !strings.Contains(apiErr.Message, want) {
			t.Fatalf("got %v, want %d %s containing %q", err, status, code, want)
		}
	}
	_, err = env.Admin().Controller().RemoveClusterMember(ctx, "c2")
	refused(err, http.StatusConflict, api.CodeConflict, "not a cluster member")
	_, err = env.Admin().Controller().RemoveClusterMember(ctx, " ")
	refused(err, http.StatusBadRequest, api.CodeBadRequest, "name the member ID")
	org := orgAdmin(t, "clusterpeek")
	_, err = org.Controller().Cluster(ctx)
	refused(err, http.StatusForbidden, api.CodeForbidden, "only the platform administrator")
	_, err = org.Controller().RemoveClusterMember(ctx, "c2")
	refused(err, http.StatusForbidden, api.CodeForbidden, "only the platform administrator")
}
