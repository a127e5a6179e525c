package console

import (
	"cmp"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"
)

// usageRow is one subject's usage over the period asked for, and today's and this month's against its budget.
type usageRow struct {
	Subject                           string // as the gateway names it: id:<SPIFFE ID>, org:<organisation>
	Name                              string // the SPIFFE ID or "organisation X"
	Requests, InputTokens, OutputToks int64
	Cost                              float64
	Models                            []modelRow
	Budget                            Budget
	HasBudget                         bool
	DayTokens, MonthTokens            int64
	DayCost, MonthCost                float64
}

type modelRow struct {
	Model          string
	Requests       int64
	Tokens         int64
	Cost           float64
	Class          string // the chart's colour class
	X, Width       float64
	LabelX, LabelY float64
}

// chart is the inline SVG bar chart of tokens per subject and model: one bar a subject, a segment a model, and
// the subject's tokens-per-day budget marked when the period is one day.
type chart struct {
	Width, Height float64
	Rows          []chartRow
	Ticks         []chartTick
	Legend        []modelRow
	Title         string
}

type chartRow struct {
	Label    string
	Y, BarY  float64
	Segments []modelRow
	Total    string
	TotalX   float64
	Budget   float64 // x of the budget marker, 0 for none
	BudgetTo float64
}

type chartTick struct {
	X     float64
	Label string
}

type usagePage struct {
	Since     string
	Gateway   string
	Rows      []usageRow
	Chart     *chart
	Error     string
	Today     string
	Month     string
	PeriodDay bool // the period is today only: the chart marks day budgets
}

func (c *Console) usage(w http.ResponseWriter, r *http.Request) {
	now := time.Now().UTC()
	since := strings.TrimSpace(r.URL.Query().Get("since"))
	if since == "" {
		since = now.Format(time.DateOnly) // today: the chart then marks the day budgets
	}
	p := usagePage{Since: since, Today: now.Format(time.DateOnly), Month: now.Format("2006-01")}
	from, err := parseWhen(since, now)
	if err != nil {
		p.Error = "since: " + err.Error()
		c.render(w, r, http.StatusBadRequest, "usage", "LLM usage", "usage", p)
		return
	}
	first := from.UTC().Format(time.DateOnly)
	p.PeriodDay = first == p.Today
	// Read from the start of the month too, for the month budgets.
	fetch := min(first, now.Format("2006-01")+"-01")
	u, err := c.cfg.Gateways.Usage(r.Context(), fetch)
	p.Gateway = u.Gateway
	if err != nil {
		status, msg := gatewayStatus(err)
		p.Error = msg
		c.render(w, r, status, "usage", "LLM usage", "usage", p)
		return
	}
	bySubject := map[string]*usageRow{}
	models := map[string]map[string]*modelRow{}
	for _, e := range u.Entries {
		row := bySubject[e.Subject]
		if row == nil {
			row = &usageRow{Subject: e.Subject, Name: subjectName(e.Subject)}
			row.Budget, row.HasBudget = u.Budgets[e.Subject]
			bySubject[e.Subject] = row
			models[e.Subject] = map[string]*modelRow{}
		}
		if e.Day == p.Today {
			row.DayTokens, row.DayCost = e.InputTokens+e.OutputTokens, e.CostUSD
		}
		if strings.HasPrefix(e.Day, p.Month) {
			row.MonthTokens += e.InputTokens + e.OutputTokens
			row.MonthCost += e.CostUSD
		}
		if e.Day < first {
			continue
		}
		row.Requests += e.Requests
		row.InputTokens += e.InputTokens
		row.OutputToks += e.OutputTokens
		row.Cost += e.CostUSD
		for name, m := range e.Models {
			mr := models[e.Subject][name]
			if mr == nil {
				mr = &modelRow{Model: name}
				models[e.Subject][name] = mr
			}
			mr.Requests += m.Requests
			mr.Tokens += m.InputTokens + m.OutputTokens
			mr.Cost += m.CostUSD
		}
	}
	for s, row := range bySubject {
		for _, mr := range models[s] {
			row.Models = append(row.Models, *mr)
		}
		slices.SortFunc(row.Models, func(a, b modelRow) int { return strings.Compare(a.Model, b.Model) })
		p.Rows = append(p.Rows, *row)
	}
	slices.SortFunc(p.Rows, func(a, b usageRow) int {
		return cmp.Or(cmp.Compare(b.InputTokens+b.OutputToks, a.InputTokens+a.OutputToks), strings.Compare(a.Subject, b.Subject))
	})
	p.Chart = usageChart(p.Rows, p.PeriodDay, first)
	c.render(w, r, http.StatusOK, "usage", "LLM usage", "usage", p)
}

// subjectName is how the page names a usage subject.
func subjectName(s string) string {
	if org, ok := strings.CutPrefix(s, "org:"); ok {
		return "organisation " + org
	}
	return strings.TrimPrefix(s, "id:")
}

// usageChart lays out the bar chart; nil when there is nothing to draw.
func usageChart(rows []usageRow, periodDay bool, first string) *chart {
	var drawn []usageRow
	for _, r := range rows {
		if r.InputTokens+r.OutputToks > 0 {
			drawn = append(drawn, r)
		}
	}
	if len(drawn) == 0 {
		return nil
	}
	const left, right, rowH, barH, top = 330.0, 90.0, 34.0, 20.0, 30.0
	ch := &chart{Width: 1000, Title: "Tokens per identity and model since " + first}
	if periodDay {
		ch.Title = "Tokens per identity and model today, against the day budget"
	}
	ch.Height = top + rowH*float64(len(drawn)) + 10
	scale := 0.0
	for _, r := range drawn {
		scale = max(scale, float64(r.InputTokens+r.OutputToks))
		if periodDay && r.Budget.TokensPerDay > 0 {
			scale = max(scale, float64(r.Budget.TokensPerDay))
		}
	}
	scale = niceCeil(scale)
	plot := ch.Width - left - right
	for i := 0; i <= 4; i++ {
		v := scale * float64(i) / 4
		ch.Ticks = append(ch.Ticks, chartTick{X: left + plot*float64(i)/4, Label: compact(v)})
	}
	classes := map[string]string{}
	for _, r := range drawn {
		for _, m := range r.Models {
			if _, ok := classes[m.Model]; !ok {
				classes[m.Model] = fmt.Sprintf("s%d", len(classes)%6)
				ch.Legend = append(ch.Legend, modelRow{Model: m.Model, Class: classes[m.Model]})
			}
		}
	}
	for i, r := range drawn {
		y := top + rowH*float64(i)
		row := chartRow{Label: ellipsis(r.Name, 46), Y: y + rowH/2 + 4, BarY: y + (rowH-barH)/2}
		x := left
		for _, m := range r.Models {
			m.Class, m.X, m.Width = classes[m.Model], x, plot*float64(m.Tokens)/scale
			x += m.Width
			row.Segments = append(row.Segments, m)
		}
		row.Total, row.TotalX = compact(float64(r.InputTokens+r.OutputToks)), x+6
		if periodDay && r.Budget.TokensPerDay > 0 {
			row.Budget = left + plot*float64(r.Budget.TokensPerDay)/scale
			row.BudgetTo = y + rowH - 2
		}
		ch.Rows = append(ch.Rows, row)
	}
	return ch
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// compact writes a count as 950, 1.2k or 3.4M.
func compact(v float64) string {
	switch {
	case v >= 1e6:
		return strings.TrimSuffix(fmt.Sprintf("%.1f", v/1e6), ".0") + "M"
	case v >= 1e3:
		return strings.TrimSuffix(fmt.Sprintf("%.1f", v/1e3), ".0") + "k"
	}
	return fmt.Sprintf("%.0f", v)
}

func ellipsis(s string, n int) string {
	if len([]rune(s)) <= n {
		return s
	}
	r := []rune(s)
	return "…" + string(r[len(r)-n+1:])
}

// ratio is used/limit as a meter's value, 0 for no limit.
func ratio(used, limit float64) float64 {
	if limit <= 0 {
		return 0
	}
	return used / limit
}
