/* conveyor dashboard: charts (uPlot) and small behaviours around htmx. No inline script anywhere. */
(function () {
  "use strict";
  var plots = new Map();
  var colours = {
    completed: "#2e7d32", failed: "#ef6c00", dead: "#c62828",
    ready: "#1565c0", in_flight: "#6a1b9a", delayed: "#00838f",
    rss_mb: "#1565c0", cpu_percent: "#ef6c00"
  };

  function renderCharts(root) {
    root.querySelectorAll("[data-series]").forEach(function (el) {
      var data;
      try { data = JSON.parse(el.dataset.series); } catch (e) { return; }
      var old = plots.get(el.id);
      if (old) { old.destroy(); plots.delete(el.id); }
      el.textContent = "";
      if (!data.x || data.x.length === 0 || typeof uPlot === "undefined") {
        el.classList.add("empty");
        el.textContent = el.dataset.empty || "No data yet.";
        return;
      }
      el.classList.remove("empty");
      var series = [{}].concat(data.series.map(function (s) {
        return { label: s.label, stroke: colours[s.label] || "#455a64", width: 2, spanGaps: true };
      }));
      var opts = {
        width: Math.max(el.clientWidth, 280), height: 180, series: series,
        scales: { x: { time: true } }, axes: [{}, { size: 56 }], cursor: { drag: { x: false, y: false } }
      };
      var columns = [data.x].concat(data.series.map(function (s) { return s.values; }));
      plots.set(el.id, new uPlot(opts, columns, el));
    });
  }

  document.addEventListener("DOMContentLoaded", function () { renderCharts(document); });
  document.addEventListener("htmx:afterSettle", function (e) { renderCharts(e.target); });

  // Do not replace a list while the user has ticked rows in it.
  document.addEventListener("htmx:beforeRequest", function (e) {
    var elt = e.detail.elt;
    if (elt.hasAttribute("data-pause-when-checked") && elt.querySelector("input[type=checkbox]:checked")) {
      e.preventDefault();
    }
  });

  document.addEventListener("change", function (e) {
    var box = e.target;
    if (!box.matches || !box.matches("[data-select-all]")) { return; }
    box.closest("form").querySelectorAll("input[name=ids]").forEach(function (cb) { cb.checked = box.checked; });
  });

  var resizing;
  window.addEventListener("resize", function () {
    clearTimeout(resizing);
    resizing = setTimeout(function () {
      plots.forEach(function (plot, id) {
        var el = document.getElementById(id);
        if (el) { plot.setSize({ width: Math.max(el.clientWidth, 280), height: 180 }); }
      });
    }, 150);
  });
})();
