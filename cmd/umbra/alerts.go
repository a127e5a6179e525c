package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// alertsWait is how long one request of `alerts --follow` waits for news.
const alertsWait = 15 * time.Second

// cmdAlerts is `alerts`: the latest anomaly alerts, and with --follow the new ones as they come.
func cmdAlerts(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var asJSON, follow bool
	var limit int
	return withAgent(ctx, "alerts", args, stderr, func(f *flags) {
		f.BoolVar(&asJSON, "json", false, "print each alert as one line of JSON")
		f.BoolVar(&follow, "follow", false, "keep printing new alerts until interrupted")
		f.IntVar(&limit, "limit", 0, "how many of the latest alerts to print first (default 100)")
		f.args(0, "")
	}, func(a *agentsdk.Agent, _ []string) error {
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		show := func(alerts []api.Alert) error {
			defer tw.Flush()
			for _, al := range alerts {
				if asJSON {
					if err := printJSONLine(stdout, al); err != nil {
						return err
					}
					continue
				}
				what := al.Message
				if al.Suspend {
					what += " [suspended]"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", al.Time.Format(time.RFC3339), al.Severity, al.Rule, al.SPIFFEID, what)
			}
			return nil
		}
		first, err := a.Controller().Alerts(ctx, 0, 0)
		if err != nil {
			return err
		}
		if limit > 0 && len(first.Alerts) > limit {
			first.Alerts = first.Alerts[len(first.Alerts)-limit:]
		}
		if !asJSON && !follow && len(first.Alerts) == 0 {
			fmt.Fprintln(stdout, "no alerts")
		}
		if err := show(first.Alerts); err != nil {
			return err
		}
		cursor := first.Cursor
		for failed := 0; follow; {
			page, err := a.Controller().Alerts(ctx, cursor, alertsWait)
			if ctx.Err() != nil {
				return nil // interrupted
			}
			if err != nil {
				// The controller may be restarting: say so, and ask again, more slowly each time.
				var apiErr *agentsdk.APIError
				if errors.As(err, &apiErr) && apiErr.Status/100 == 4 {
					return err
				}
				failed++
				fmt.Fprintf(stderr, "alerts: %s; asking again\n", strings.TrimPrefix(err.Error(), "agentsdk: "))
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(min(time.Duration(failed)*time.Second, 10*time.Second)):
				}
				continue
			}
			failed = 0
			if err := show(page.Alerts); err != nil {
				return err
			}
			cursor = page.Cursor
		}
		return nil
	})
}

// printJSONLine writes v as one compact line of JSON.
func printJSONLine(w io.Writer, v any) error { return json.NewEncoder(w).Encode(v) }
