// The console's own script (with the vendored htmx): live updates by server-sent events,
// JSON checked before it is sent, and htmx told to show refusals (4xx) as well.
(function () {
  "use strict";
  htmx.config.responseHandling = [
    { code: "204", swap: false },
    { code: "[23]..", swap: true },
    { code: "[45]..", swap: true, error: false },
  ];
  htmx.config.historyCacheSize = 0;

  // A fresh Idempotency-Key per submission of the start form: sent again (a retry of the same
  // submission by the browser) it keeps its key; a new submission gets a new one.
  document.addEventListener("htmx:configRequest", function (e) {
    var key = e.detail.elt.querySelector && e.detail.elt.querySelector("#start-key");
    if (key && !e.detail.parameters["idempotency_key"]) {
      e.detail.parameters["idempotency_key"] = crypto.randomUUID();
    }
  });

  // JSON fields are checked here, before anything is sent.
  document.addEventListener("htmx:beforeRequest", function (e) {
    var form = e.detail.elt.closest && e.detail.elt.closest("form[data-json-field]");
    if (!form) return;
    var submitter = e.detail.requestConfig && e.detail.requestConfig.triggeringEvent &&
      e.detail.requestConfig.triggeringEvent.submitter;
    if (submitter && submitter.name === "decision") return; // approve/reject carry their own data
    var field = form.querySelector("[name=" + form.dataset.jsonField + "]");
    var text = field ? field.value.trim() : "";
    if (!text) return;
    try { JSON.parse(text); } catch (err) {
      e.preventDefault();
      var target = document.querySelector(form.getAttribute("hx-target"));
      target.innerHTML = "";
      var p = document.createElement("div");
      p.className = "flash bad";
      p.setAttribute("role", "alert");
      p.dataset.outcome = "invalid";
      p.textContent = "Not sent: " + form.dataset.jsonField + " is not valid JSON (" + err.message + ")";
      target.appendChild(p);
    }
  });

  // Live: every status event the worker publishes refreshes what the page shows of it.
  var page = document.body.dataset.page;
  if (page !== "list" && page !== "instance") return;
  var live = document.getElementById("live");
  var pending = null;
  function refresh(selector) {
    if (pending) return;
    pending = setTimeout(function () {
      pending = null;
      var el = document.querySelector(selector);
      if (el) htmx.trigger(el, "refresh");
    }, 300);
  }
  var source = new EventSource("/ui/stream");
  // A page left (or kept in the back/forward cache) gives its stream back at once: a browser
  // keeps only a few connections per server open.
  window.addEventListener("pagehide", function () { source.close(); });
  source.onopen = function () { if (live) live.classList.add("on"); };
  source.onerror = function () { if (live) live.classList.remove("on"); };
  source.addEventListener("status", function (e) {
    var data = JSON.parse(e.data);
    if (page === "list") {
      refresh("#instances");
    } else {
      var el = document.getElementById("instance");
      if (el && data.instance_id === el.dataset.instance) refresh("#instance");
    }
  });
  document.body.addEventListener("htmx:afterRequest", function (e) {
    // After an action on this instance, show its new state at once.
    if (page === "instance" && e.detail.elt.closest("#actions")) refresh("#instance");
  });
})();
