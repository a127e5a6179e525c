// Live view: appends session and envelope events as the console streams them (server-sent events).
// No dependencies; the page works without it (it then shows the latest events and does not update).
(function () {
  "use strict";
  var table = document.getElementById("live");
  var rows = document.getElementById("live-rows");
  var status = document.getElementById("live-status");
  if (!table || !rows || !window.EventSource) { return; }
  var keep = 200;
  function cell(tr, text, cls) {
    var td = document.createElement("td");
    if (cls) { td.className = cls; }
    td.textContent = text || "";
    tr.appendChild(td);
    return td;
  }
  function add(ev) {
    if (rows.querySelector('tr[data-seq="' + ev.seq + '"]')) { return; }
    var tr = document.createElement("tr");
    tr.setAttribute("data-seq", String(ev.seq));
    tr.className = (ev.refused ? "refused " : "") + "fresh";
    cell(tr, ev.time);
    cell(tr, ev.kind);
    var s = cell(tr, "");
    if (ev.session) {
      var a = document.createElement("a");
      a.href = "/sessions/" + encodeURIComponent(ev.session);
      var code = document.createElement("code");
      code.textContent = ev.session;
      a.appendChild(code);
      s.appendChild(a);
    }
    cell(tr, ev.summary);
    var actor = cell(tr, "");
    var c = document.createElement("code");
    c.textContent = ev.actor;
    actor.appendChild(c);
    cell(tr, ev.reason, "reason");
    rows.insertBefore(tr, rows.firstChild);
    while (rows.children.length > keep) { rows.removeChild(rows.lastChild); }
  }
  var src = new EventSource("/live/events?after=" + encodeURIComponent(table.getAttribute("data-cursor") || "0"));
  src.addEventListener("open", function () { status.textContent = "Live: connected."; status.className = "live-on"; });
  src.addEventListener("error", function () { status.textContent = "Live: reconnecting…"; status.className = "live-off"; });
  src.addEventListener("audit", function (e) {
    try { add(JSON.parse(e.data)); } catch (err) { /* a malformed event is skipped */ }
  });
})();
