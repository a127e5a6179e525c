// Package console is the operators' web console: server-rendered pages over the controller's state and audit
// trail, served as a dark overlay service to administrators only.
//
// The console never listens on a port. The controller hosts it on the overlay service ServiceName, which only
// administrators' identities may dial; `umbra ui` bridges a loopback port to it with the viewer's own identity,
// and the console authorises every request by the SVID the bridge presented (the Config's Viewer function). A
// platform administrator sees every organisation; an organisation's administrator sees only its own.
//
// Pages are html/template, embedded with one CSS file and one small script (the live view's EventSource); every
// page works without JavaScript except the live updates. Every POST carries a per-viewer CSRF token bound to a
// SameSite=Strict cookie.
//
// The console reads through Source, which the controller implements; it holds no state of its own.
package console
