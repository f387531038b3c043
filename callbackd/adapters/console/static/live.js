// The live page: server-sent events replace the tables' contents; no library, no inline script (CSP).
(function () {
  "use strict";
  var root = document.getElementById("live");
  if (!root || !window.EventSource) return;
  var words = JSON.parse(document.getElementById("words").textContent);
  var prefix = root.getAttribute("data-stream").replace(/\/live\/stream$/, "");
  function t(key) { return words[key] || key; }
  function cell(tr, text, href) {
    var td = document.createElement("td");
    if (href) { var a = document.createElement("a"); a.href = href; a.textContent = text; td.appendChild(a); }
    else td.textContent = text;
    tr.appendChild(td);
  }
  function list(id, items) {
    var ul = document.getElementById(id);
    ul.textContent = "";
    if (!items.length) items = [[t("none"), ""]];
    items.forEach(function (it) { var li = document.createElement("li"); li.textContent = it[0]; li.className = it[1]; ul.appendChild(li); });
  }
  function rows(id, data, fill) {
    var body = document.querySelector("#" + id + " tbody");
    body.textContent = "";
    data.forEach(function (d) { var tr = document.createElement("tr"); fill(tr, d); body.appendChild(tr); });
  }
  var source = new EventSource(root.getAttribute("data-stream"));
  source.onmessage = function (ev) {
    var d = JSON.parse(ev.data);
    list("operators", d.operators.map(function (o) { return [o.name + ": " + t(o.state), o.state]; }));
    list("waiting", Object.keys(d.waiting).map(function (q) { return [q + ": " + d.waiting[q], ""]; }));
    rows("in-flight", d.in_flight, function (tr, f) {
      [f.request_id, f.try_no, f.operator, f.number, t(f.stage)].forEach(function (v) { cell(tr, String(v)); });
    });
    document.getElementById("open-count").textContent = d.open_count;
    rows("open", d.open, function (tr, r) {
      tr.setAttribute("data-id", r.id);
      cell(tr, String(r.id), prefix + "/requests/" + r.id);
      [r.number, r.status, r.attempts, r.due_at, t(r.why)].forEach(function (v) { cell(tr, String(v)); });
    });
    root.setAttribute("data-updated", String(Date.now()));
  };
})();
