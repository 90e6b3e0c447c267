// The status page's small script: the page is complete without it. It keeps "5 min ago" true
// while the page stays open and, when "refresh" is ticked, reloads the figures in place (no
// scroll jump, no full reload), remembering the choice in localStorage.
(function () {
  "use strict";
  var KEY = "cachemgr.status.live";
  var REFRESH_MS = 30000;

  function duration(seconds) {
    var s = Math.abs(seconds);
    if (s < 60) return Math.round(s) + " s";
    var parts = [];
    var units = [["d", 86400], ["h", 3600], ["m", 60]];
    for (var i = 0; i < units.length && parts.length < 2; i++) {
      if (s >= units[i][1]) {
        parts.push(Math.floor(s / units[i][1]) + units[i][0]);
        s = s % units[i][1];
      }
    }
    return parts.join(" ");
  }

  function relabel(root) {
    var now = Date.now() / 1000;
    var times = root.querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var el = times[i];
      var t = Date.parse(el.getAttribute("datetime")) / 1000;
      if (isNaN(t)) continue;
      var delta = now - t;
      if (el.dataset.kind === "idle") {
        el.textContent = duration(delta);
      } else if (Math.abs(delta) < 5) {
        el.textContent = "just now";
      } else {
        el.textContent = delta > 0 ? duration(delta) + " ago" : "in " + duration(delta);
      }
      el.title = new Date(t * 1000).toLocaleString();
    }
  }

  function refresh() {
    fetch(window.location.href, { headers: { Accept: "text/html" }, cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("main");
        if (!fresh) return;
        document.getElementById("main").replaceWith(fresh);
        document.body.className = doc.body.className;
        document.title = doc.title;
        relabel(document);
      })
      .catch(function () { /* the next tick tries again */ });
  }

  var timer = null;
  function setLive(on) {
    if (timer) { clearInterval(timer); timer = null; }
    if (on) timer = setInterval(refresh, REFRESH_MS);
    try { localStorage.setItem(KEY, on ? "1" : "0"); } catch (e) { /* private mode */ }
  }

  relabel(document);
  setInterval(function () { relabel(document); }, 15000);
  var box = document.getElementById("live");
  if (box) {
    var saved = null;
    try { saved = localStorage.getItem(KEY); } catch (e) { /* private mode */ }
    box.checked = saved === "1";
    setLive(box.checked);
    box.addEventListener("change", function () { setLive(box.checked); });
  }
})();
