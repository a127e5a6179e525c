package demo

// The payloads the agents exchange, as JSON. The relay never reads them: it sees only the envelope headers.

// Message types.
const (
	TypeDiagRequest      = "diag.request"
	TypeDiagReport       = "diag.report"
	TypePartsReserve     = "parts.reserve"
	TypePartsReserved    = "parts.reserved"
	TypeForecastRequest  = "forecast.request"
	TypeForecastWindow   = "forecast.window"
	TypeQuoteRequest     = "charter.quote.request"
	TypeQuote            = "charter.quote"
	TypeQuoteRevised     = "charter.quote.revised"
	TypeBook             = "charter.book"
	TypeConfirmed        = "charter.confirmed"
	TypePayment          = "payment.instruction"
	TypeFreightRequest   = "freight.request"
	TypeFreightConfirmed = "freight.confirmation"
	TypeSafetyReview     = "safety.review"
	TypeSafetyVerdict    = "safety.verdict"
	TypeProcRequest      = "proc.request"
	TypeProcConfirmation = "proc.confirmation"
)

// Site and turbine of the scenario.
const (
	Site    = "Northwind Bank"
	Turbine = "A07"
	Quay    = "Esbjerg quay 7"
)

type diagRequest struct {
	Turbine string `json:"turbine"`
	Site    string `json:"site"`
	Alarm   string `json:"alarm"`
}

// Part is one line of a parts list.
type Part struct {
	SKU  string `json:"sku"`
	Name string `json:"name"`
	Qty  int    `json:"qty"`
}

type diagReport struct {
	Turbine       string   `json:"turbine"`
	Finding       string   `json:"finding"`
	Evidence      []string `json:"evidence"`
	Parts         []Part   `json:"parts"`
	Technicians   int      `json:"technicians"`
	WorkHours     int      `json:"work_hours"`
	RemoteRestart string   `json:"remote_restart"`
	Summary       string   `json:"summary"`
}

type forecastRequest struct {
	Site       string  `json:"site"`
	HsLimitM   float64 `json:"hs_limit_m"`
	WindLimit  float64 `json:"wind_limit_ms"`
	Hours      int     `json:"hours_needed"`
	RequestFor string  `json:"request_for"`
}

// Window is a weather window.
type Window struct {
	Start string `json:"start"`
	End   string `json:"end"`
}

type forecastWindow struct {
	Site      string   `json:"site"`
	Window    *Window  `json:"window,omitempty"`
	HsMaxM    float64  `json:"hs_max_m,omitempty"`
	WindMaxMS float64  `json:"wind_max_ms,omitempty"`
	Tides     []string `json:"tides"`
	Confirmed bool     `json:"confirmed"`
	Basis     string   `json:"basis"`
	Summary   string   `json:"summary"`
	SummaryBy string   `json:"summary_by"`
}

type procRequest struct {
	WorkOrder string `json:"work_order"`
	Lines     []Part `json:"lines"`
	DeliverTo string `json:"deliver_to"`
	NeededBy  string `json:"needed_by"`
}

type partsReserve struct {
	WorkOrder string `json:"work_order"`
	Part
	DeliverTo string `json:"deliver_to"`
	NeededBy  string `json:"needed_by"`
}

type partsReserved struct {
	Part
	Reservation string `json:"reservation"`
	From        string `json:"from"`
	Freight     string `json:"freight,omitempty"`
	Arrives     string `json:"arrives,omitempty"`
}

// Pending is a part that could not be reserved, and why.
type Pending struct {
	Part
	Reason string `json:"reason"`
}

type procConfirmation struct {
	WorkOrder string          `json:"work_order"`
	Reserved  []partsReserved `json:"reserved"`
	Pending   []Pending       `json:"pending"`
}

type freightRequest struct {
	From    string `json:"from"`
	To      string `json:"to"`
	Cargo   string `json:"cargo"`
	By      string `json:"by"`
	Booking string `json:"reference"`
}

type freightConfirmation struct {
	Booking string `json:"booking"`
	Vessel  string `json:"vessel"`
	Arrives string `json:"arrives"`
}

type quoteRequest struct {
	WorkOrder   string `json:"work_order"`
	Date        string `json:"date"`
	Technicians int    `json:"technicians"`
	CargoKg     int    `json:"cargo_kg"`
	From        string `json:"from"`
}

type quote struct {
	QuoteRef string `json:"quote_ref"`
	Vessel   string `json:"vessel"`
	DayRate  int    `json:"day_rate_eur"`
	Sailing  string `json:"sailing"`
	Terms    string `json:"terms"`
}

type payment struct {
	WorkOrder  string `json:"work_order"`
	DepositEUR int    `json:"deposit_eur"`
	QuoteRef   string `json:"quote_ref"`
}

type booking struct {
	WorkOrder     string `json:"work_order"`
	QuoteRef      string `json:"quote_ref"`
	Date          string `json:"date"`
	PriceMatchRef string `json:"price_match_ref,omitempty"`
	CompetingRate int    `json:"competing_day_rate_eur,omitempty"`
}

type confirmed struct {
	Booking string `json:"booking"`
	Vessel  string `json:"vessel"`
	Sailing string `json:"sailing"`
	DayRate int    `json:"day_rate_eur"`
}

type safetyReview struct {
	WorkOrder   string  `json:"work_order"`
	Window      *Window `json:"window,omitempty"`
	Vessel      string  `json:"vessel"`
	Technicians int     `json:"technicians"`
	Task        string  `json:"task"`
}

type safetyVerdict struct {
	Verdict    string   `json:"verdict"`
	Conditions []string `json:"conditions"`
	Basis      string   `json:"basis"`
}
