package demo

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

// A role is what one agent does in a round. Providers serve their sessions until they have answered what a round
// brings them; the planner drives the round.
type role func(ctx context.Context, n *node, round int) error

var roles = map[Workload]role{
	Diagnostics: runDiagnostics,
	PartsDesk:   runPartsDesk,
	Forecaster:  runForecaster,
	Tidewater:   runTidewater,
	Keelson:     runKeelson,
	Safety:      runSafety,
	Procurement: runProcurement,
	Planner:     runPlanner,
}

type handler func(ctx context.Context, s *agentsdk.Session, in agentsdk.Envelope) error

// provide serves n's sessions with h until h has handled want envelopes, and returns the first error h returned.
func (n *node) provide(ctx context.Context, want int, h handler) error {
	cd := newCountdown(want)
	var mu sync.Mutex
	var first error
	sctx, stop := context.WithCancel(ctx)
	served := make(chan struct{})
	go func() {
		defer close(served)
		n.serve(sctx, func(ctx context.Context, s *agentsdk.Session, in agentsdk.Envelope) error {
			defer cd.done()
			err := h(ctx, s, in)
			if err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
			return err
		})
	}()
	err := cd.wait(ctx)
	stop()
	<-served
	if err != nil {
		return err
	}
	return first
}

// runDiagnostics reads the turbine's telemetry through the MCP gateway, tries a remote restart (which Northwind's
// policy refuses), has the model summarise, and reports the fault with the parts the repair needs.
func runDiagnostics(ctx context.Context, n *node, round int) error {
	return n.provide(ctx, 1, func(ctx context.Context, s *agentsdk.Session, in agentsdk.Envelope) error {
		var req diagRequest
		if err := decode(in, &req); err != nil {
			return err
		}
		args := map[string]any{"turbine": req.Turbine}
		var alarms alarmsOut
		if err := n.call(ctx, "scada__read_alarms", args, &alarms); err != nil {
			return err
		}
		var bearing, oil sensorOut
		if err := n.call(ctx, "scada__read_sensor", map[string]any{"turbine": req.Turbine, "sensor": "gearbox.hss_bearing_temp"}, &bearing); err != nil {
			return err
		}
		if err := n.call(ctx, "scada__read_sensor", map[string]any{"turbine": req.Turbine, "sensor": "gearbox.oil_temp"}, &oil); err != nil {
			return err
		}
		n.say("asking for a remote restart of %s to run a gearbox test cycle", req.Turbine)
		restart := "performed"
		if err := n.call(ctx, "scada__set_mode", map[string]any{"turbine": req.Turbine, "mode": "restart"}, nil); errors.Is(err, errRefused) {
			restart = "refused by Northwind's tool policy (no-remote-restart): restarts are for Northwind's own operators"
		} else if err != nil {
			return err
		}
		var evidence []string
		for _, a := range alarms.Alarms {
			evidence = append(evidence, fmt.Sprintf("alarm %s (%s): %s", a.Code, a.Severity, a.Text))
		}
		evidence = append(evidence,
			fmt.Sprintf("HSS bearing temperature %.1f-%.1f C over %d h, now %.1f C, %s", bearing.Min, bearing.Max, bearing.Hours, bearing.Last, bearing.Trend),
			fmt.Sprintf("gearbox oil temperature %.1f-%.1f C, %s", oil.Min, oil.Max, oil.Trend))
		finding := "Spalling of the high-speed shaft bearings (HSS, generator side) of the main gearbox: temperature, " +
			"vibration and wear particles rise together. Replace both HSS bearings and the shaft seal, flush and refill the oil."
		// The prompt leads with the conclusion; a real model would write the summary, the sample model quotes it.
		summary, err := n.complete(ctx, "You are a gearbox diagnostics engineer. Summarise the fault for the operator.",
			"A07 gearbox: HSS bearings spalling, replace bearings and seal, change the oil. "+finding+" Evidence: "+strings.Join(evidence, "; "))
		if errors.Is(err, errRefused) {
			summary = finding
		} else if err != nil {
			return err
		}
		return n.reply(ctx, s, in, TypeDiagReport, diagReport{Turbine: req.Turbine, Finding: finding, Evidence: evidence,
			Parts:       []Part{{"HX-BRG-6330", "HSS bearing 6330 C3", 2}, {"HX-SEAL-K4", "HSS shaft seal kit", 1}, {"HX-OIL-VG320", "gear oil VG320, 200 l drum", 3}},
			Technicians: 3, WorkHours: 9, RemoteRestart: restart, Summary: summary})
	})
}

// runPartsDesk reserves parts; for the first reservation of a work order it books the freight with Tidewater,
// with whom Helix shares a workgroup of its own.
func runPartsDesk(ctx context.Context, n *node, round int) error {
	var mu sync.Mutex
	count := 0
	var freight freightConfirmation
	return n.provide(ctx, 2, func(ctx context.Context, s *agentsdk.Session, in agentsdk.Envelope) error {
		var req partsReserve
		if err := decode(in, &req); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		count++
		if count == 1 {
			ad, err := n.find(ctx, "freight", Tidewater)
			if err != nil {
				return err
			}
			fs, err := n.propose(ctx, ad, workgroups.Proposal{}, "freight to "+req.DeliverTo)
			if err != nil {
				return err
			}
			if err := n.send(ctx, fs, TypeFreightRequest, freightRequest{From: "Helix warehouse, Aalborg", To: req.DeliverTo,
				Cargo: "spare parts for " + req.WorkOrder + ", 2 pallets, 640 kg", By: req.NeededBy, Booking: req.WorkOrder}); err != nil {
				return err
			}
			if err := n.receive(ctx, fs, TypeFreightConfirmed, &freight); err != nil {
				return err
			}
			if err := n.closeSession(ctx, fs); err != nil {
				return err
			}
		}
		return n.reply(ctx, s, in, TypePartsReserved, partsReserved{Part: req.Part,
			Reservation: fmt.Sprintf("HX-R-%d%02d", round, count), From: "Helix warehouse, Aalborg",
			Freight: freight.Booking, Arrives: freight.Arrives})
	})
}

// runProcurement reserves the parts of a work order with Helix's parts desk, one envelope per line, under the
// parts desk's terms (four messages per session).
func runProcurement(ctx context.Context, n *node, round int) error {
	return n.provide(ctx, 1, func(ctx context.Context, s *agentsdk.Session, in agentsdk.Envelope) error {
		var req procRequest
		if err := decode(in, &req); err != nil {
			return err
		}
		ad, err := n.find(ctx, "reserve-parts", PartsDesk)
		if err != nil {
			return err
		}
		ps, err := n.propose(ctx, ad, workgroups.Proposal{}, "reserve "+req.WorkOrder)
		if err != nil {
			return err
		}
		conf := procConfirmation{WorkOrder: req.WorkOrder, Reserved: []partsReserved{}, Pending: []Pending{}}
		for i, line := range req.Lines {
			err := n.send(ctx, ps, TypePartsReserve, partsReserve{WorkOrder: req.WorkOrder, Part: line, DeliverTo: req.DeliverTo, NeededBy: req.NeededBy})
			var re *agentsdk.RelayError
			if errors.As(err, &re) {
				why := re.Code
				if v, err := ps.Refresh(ctx); err == nil && v.CloseReason != "" {
					why = "closed: " + string(v.CloseReason)
				}
				for _, rest := range req.Lines[i:] {
					conf.Pending = append(conf.Pending, Pending{Part: rest,
						Reason: fmt.Sprintf("the parts desk's contract allows %d messages per session, all used (session %s); a new session is needed",
							ps.Info().Contract.MaxMessages, why)})
				}
				n.say("%d of %d lines reserved; the rest needs a new session with the parts desk", i, len(req.Lines))
				break
			}
			if err != nil {
				return err
			}
			var r partsReserved
			if err := n.receive(ctx, ps, TypePartsReserved, &r); err != nil {
				return err
			}
			conf.Reserved = append(conf.Reserved, r)
		}
		return n.reply(ctx, s, in, TypeProcConfirmation, conf)
	})
}

// runForecaster answers forecast requests from tides and sea state (MCP) and a model summary (LLM). Requests are
// answered one at a time. By the second request of a round the sea-state tool has changed its definition and the
// gateway has quarantined it, and the forecaster's daily model budget is spent.
func runForecaster(ctx context.Context, n *node, round int) error {
	var mu sync.Mutex
	count := 0
	var last *Window
	return n.provide(ctx, 2, func(ctx context.Context, s *agentsdk.Session, in agentsdk.Envelope) error {
		var req forecastRequest
		if err := decode(in, &req); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		count++
		var tides tidesOut
		if err := n.call(ctx, "marine__tide_table", map[string]any{"site": req.Site}, &tides); err != nil {
			return err
		}
		if count == 1 {
			if err := n.waitTool(ctx, "marine__sea_state", true, waitLimit); err != nil {
				return err
			}
		} else if err := n.waitTool(ctx, "marine__sea_state", false, 30*time.Second); err == nil {
			n.say("tool list changed: marine__sea_state is no longer offered; calling it as planned anyway")
		}
		var sea seaOut
		seaErr := n.callAnyway(ctx, "marine__sea_state", map[string]any{"site": req.Site}, &sea)
		if seaErr != nil && !errors.Is(seaErr, errRefused) {
			return seaErr
		}
		out := forecastWindow{Site: req.Site, Tides: []string{}}
		for _, t := range tides.Tides[:4] {
			out.Tides = append(out.Tides, fmt.Sprintf("%s water %s %.1f m", t.Kind, clock(t.Time), t.HeightM))
		}
		var table []string
		if seaErr == nil {
			w, hs, wind := findWindow(sea.Hours, req.HsLimitM, req.WindLimit, req.Hours)
			out.Window, out.HsMaxM, out.WindMaxMS, out.Confirmed = w, hs, wind, w != nil
			out.Basis = "tide table and hourly sea state"
			last = w
			for _, h := range sea.Hours[:24] {
				table = append(table, fmt.Sprintf("%s %.1f m %.1f m/s", clock(h.Time), h.HsM, h.WindMS))
			}
		} else {
			out.Window = last
			out.Basis = "tide table only: the sea-state tool is quarantined at the MCP gateway; the window is the last forecast, unconfirmed"
		}
		// The prompt leads with the conclusion; a real model would write the summary, the sample model quotes it.
		prompt := "No workable window in the next 48 hours. "
		if out.Window != nil {
			prompt = fmt.Sprintf("Window %s to %s UTC, waves up to %.1f m. ", clock(out.Window.Start), clock(out.Window.End)[11:], out.HsMaxM)
		}
		prompt += fmt.Sprintf("Site %s. Limits: significant wave height %.1f m, wind %.0f m/s, %d hours of work. ", req.Site, req.HsLimitM, req.WindLimit, req.Hours)
		if len(table) > 0 {
			prompt += "Hourly forecast (time, wave height, wind): " + strings.Join(table, "; ") + "."
		} else {
			prompt += "No sea-state data; tides: " + strings.Join(out.Tides, "; ") + "."
		}
		summary, err := n.complete(ctx, "You are a marine forecaster. Summarise the weather window for a crew transfer.", prompt)
		switch {
		case errors.Is(err, errRefused):
			out.SummaryBy = "template: Meridian's model budget for today is spent"
			out.Summary = "Window as stated; no model summary available."
			if out.Window != nil {
				out.Summary = fmt.Sprintf("Workable window %s to %s UTC. %s.", out.Window.Start, out.Window.End, out.Basis)
			}
		case err != nil:
			return err
		default:
			out.Summary, out.SummaryBy = summary, "model "+ModelName+" through the LLM gateway"
		}
		return n.reply(ctx, s, in, TypeForecastWindow, out)
	})
}

// findWindow returns the longest run of hours within the limits, if it lasts at least need hours, with the
// highest wave height and wind in it.
func findWindow(hours []SeaHour, hsLimit, windLimit float64, need int) (*Window, float64, float64) {
	bestStart, bestLen := -1, 0
	for i := 0; i < len(hours); {
		if hours[i].HsM > hsLimit || hours[i].WindMS > windLimit {
			i++
			continue
		}
		j := i
		for j < len(hours) && hours[j].HsM <= hsLimit && hours[j].WindMS <= windLimit {
			j++
		}
		if j-i > bestLen {
			bestStart, bestLen = i, j-i
		}
		i = j
	}
	if bestLen < need {
		return nil, 0, 0
	}
	var hs, wind float64
	for _, h := range hours[bestStart : bestStart+bestLen] {
		hs, wind = max(hs, h.HsM), max(wind, h.WindMS)
	}
	end, _ := time.Parse(time.RFC3339, hours[bestStart+bestLen-1].Time)
	return &Window{Start: hours[bestStart].Time, End: end.Add(time.Hour).Format(time.RFC3339)}, hs, wind
}

// clock formats an RFC 3339 time as "Mon 02 Jan 15:04".
func clock(ts string) string {
	t, err := time.Parse(time.RFC3339, ts)
	if err != nil {
		return ts
	}
	return t.UTC().Format("Mon 02 Jan 15:04")
}

// runTidewater quotes and books charters, and carries freight. When a booking cites a competitor's quote, its
// dispatcher tries to find that competitor: nothing in discovery, a proposal on the cited advertisement answered
// exactly as for one that never existed, and no overlay service to dial.
func runTidewater(ctx context.Context, n *node, round int) error {
	return n.provide(ctx, 3, func(ctx context.Context, s *agentsdk.Session, in agentsdk.Envelope) error {
		switch in.Header.Type {
		case TypeQuoteRequest:
			var req quoteRequest
			if err := decode(in, &req); err != nil {
				return err
			}
			return n.reply(ctx, s, in, TypeQuote, quote{QuoteRef: fmt.Sprintf("TW-Q-%d-%s", round, strings.TrimPrefix(req.WorkOrder, "WO-")),
				Vessel: "Tidewater Swift (24 m crew transfer vessel, 12 passengers)", DayRate: 6400,
				Sailing: "05:30 UTC from " + Quay, Terms: "valid 30 minutes; deposit on booking"})
		case TypeBook:
			var b booking
			if err := decode(in, &b); err != nil {
				return err
			}
			if err := n.reply(ctx, s, in, TypeConfirmed, confirmed{Booking: fmt.Sprintf("TW-B-%d-%s", round, strings.TrimPrefix(b.WorkOrder, "WO-")),
				Vessel: "Tidewater Swift", Sailing: "05:30 UTC from " + Quay + " on " + b.Date, DayRate: 6400}); err != nil {
				return err
			}
			if b.PriceMatchRef != "" {
				n.lookForCompetitor(ctx, b.PriceMatchRef)
			}
			return nil
		case TypeFreightRequest:
			var req freightRequest
			if err := decode(in, &req); err != nil {
				return err
			}
			arrives := forecastStart().Add(-3 * time.Hour).Format(time.RFC3339)
			return n.reply(ctx, s, in, TypeFreightConfirmed, freightConfirmation{Booking: fmt.Sprintf("TW-F-%d-%s", round, strings.TrimPrefix(req.Booking, "WO-")),
				Vessel: "Tidewater Mule (supply vessel)", Arrives: arrives})
		}
		return fmt.Errorf("unexpected %s", in.Header.Type)
	})
}

func (n *node) lookForCompetitor(ctx context.Context, ref string) {
	n.say("the booking cites a competing quote %s; trying to find who made it", short(ref))
	ads, err := n.a.Discover(ctx, api.DiscoverRequest{Skill: "charter"})
	others := 0
	for _, ad := range ads {
		if ad.Provider != n.a.ID() {
			others++
		}
	}
	n.say("discovery: %d charter offers besides its own (err %v)", others, err)
	if id, perr := workgroups.ParseAdvertisementID(ref); perr != nil {
		err = perr
	} else {
		_, err = n.a.Propose(ctx, id, workgroups.Proposal{})
	}
	n.say("proposing a session on advertisement %s: %s", short(ref), apiCode(err))
	if fake, ferr := workgroups.NewAdvertisementID(rand.Reader); ferr == nil {
		_, err = n.a.Propose(ctx, fake, workgroups.Proposal{})
		n.say("proposing on a made-up advertisement %s: %s (the same answer)", short(fake.String()), apiCode(err))
	}
	conn, err := n.a.Dial(ctx, "a2a."+ref)
	if err == nil {
		conn.Close()
		n.say("dialling overlay service a2a.%s: CONNECTED (unexpected)", short(ref))
		return
	}
	reason := "refused"
	if errors.Is(err, agentsdk.ErrServiceNotFound) {
		reason = "service not found"
	}
	n.say("dialling overlay service a2a.%s: %s", short(ref), reason)
}

// apiCode summarises a controller answer for the feed.
func apiCode(err error) string {
	var ae *agentsdk.APIError
	if errors.As(err, &ae) {
		return fmt.Sprintf("%d %s", ae.Status, ae.Code)
	}
	if err == nil {
		return "ACCEPTED (unexpected)"
	}
	return err.Error()
}

// runKeelson looks for rival charter offers (and finds none), quotes, and after the buyer's bidding window has
// closed tries to undercut with a revised quote, which the relay refuses.
func runKeelson(ctx context.Context, n *node, round int) error {
	ads, err := n.a.Discover(ctx, api.DiscoverRequest{Skill: "charter"})
	if err != nil {
		return err
	}
	others := 0
	for _, ad := range ads {
		if ad.Provider != n.a.ID() {
			others++
		}
	}
	byName, err := n.a.Discover(ctx, api.DiscoverRequest{Text: "tidewater"})
	if err != nil {
		return err
	}
	n.say("looking for rival charter offers: %d besides its own, %d matching \"tidewater\"", others, len(byName))
	return n.provide(ctx, 1, func(ctx context.Context, s *agentsdk.Session, in agentsdk.Envelope) error {
		if err := n.reply(ctx, s, in, TypeQuote, quote{QuoteRef: n.ad.ID.String(),
			Vessel: "Keelson Harrier (26 m crew transfer vessel, 12 passengers)", DayRate: 7150,
			Sailing: "06:00 UTC from " + Quay, Terms: "valid for the buyer's bidding window"}); err != nil {
			return err
		}
		deadline := s.Info().Deadline()
		n.say("bidding window of session %s closes at %s; preparing a lower offer", short(s.ID().String()), deadline.Format("15:04:05.000"))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Until(deadline) + 1500*time.Millisecond):
		}
		err := n.send(ctx, s, TypeQuoteRevised, quote{QuoteRef: n.ad.ID.String(), Vessel: "Keelson Harrier", DayRate: 5950,
			Sailing: "06:00 UTC from " + Quay, Terms: "revised offer"})
		var re *agentsdk.RelayError
		if errors.As(err, &re) {
			return nil
		}
		if err == nil {
			return errors.New("a quote after the bidding window was accepted")
		}
		return err
	})
}

// runSafety signs a plan off after an independent check of the weather with Meridian.
func runSafety(ctx context.Context, n *node, round int) error {
	return n.provide(ctx, 1, func(ctx context.Context, s *agentsdk.Session, in agentsdk.Envelope) error {
		var r safetyReview
		if err := decode(in, &r); err != nil {
			return err
		}
		ad, err := n.find(ctx, "weather-window", Forecaster)
		if err != nil {
			return err
		}
		fs, err := n.propose(ctx, ad, workgroups.Proposal{}, "independent weather check")
		if err != nil {
			return err
		}
		if err := n.send(ctx, fs, TypeForecastRequest, forecastRequest{Site: Site, HsLimitM: 1.5, WindLimit: 12, Hours: 10,
			RequestFor: "safety check of " + r.WorkOrder}); err != nil {
			return err
		}
		var fw forecastWindow
		if err := n.receive(ctx, fs, TypeForecastWindow, &fw); err != nil {
			return err
		}
		if err := n.closeSession(ctx, fs); err != nil {
			return err
		}
		v := safetyVerdict{Verdict: "approved", Basis: "independent forecast: " + fw.Basis, Conditions: []string{
			"transfer only with significant wave height at or below 1.5 m; abort above",
			fmt.Sprintf("%d technicians plus a standby, all with GWO sea survival and working at height", r.Technicians),
			"gearbox isolated and locked out by Northwind's own operator before work starts"}}
		if !fw.Confirmed {
			v.Verdict = "approved with conditions"
			v.Conditions = append([]string{"go or no-go at 04:30 UTC on a fresh sea-state reading: the independent check could not confirm the sea state"}, v.Conditions...)
		}
		return n.reply(ctx, s, in, TypeSafetyVerdict, v)
	})
}
