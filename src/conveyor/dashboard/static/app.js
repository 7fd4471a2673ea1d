/* conveyor dashboard: charts (uPlot) and small behaviours around htmx. No inline script anywhere. */
(function () {
  "use strict";
  var plots = new Map();
  var colours = {
    completed: "#2e7d32", failed: "#ef6c00", dead: "#c62828",
    ready: "#1565c0", in_flight: "#6a1b9a", delayed: "#00838f",
    rss_mb: "#1565c0", cpu_percent: "#ef6c00"
  };

  // Chart x values are Unix seconds (uPlot's default, ms: 1e-3); times show in the browser's zone.
  var MINUTE = 60, HOUR = 3600, DAY = 86400;
  var TIME_INCRS = [1, 2, 5, 10, 15, 30, MINUTE, 2 * MINUTE, 5 * MINUTE, 10 * MINUTE, 15 * MINUTE,
    30 * MINUTE, HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY, 30 * DAY];
  var SINGLE_SAMPLE_SPAN = 60;  // seconds shown either side of a lone sample
  var clockHM = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
  var clockHMS = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit", second: "2-digit" });
  var dayFmt = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
  var stampFmt = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "numeric", minute: "2-digit", second: "2-digit"
  });
  var numberFmt = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });

  function timeTicks(u, splits, axisIdx, space, incr) {
    var fmt = incr >= DAY ? dayFmt : incr >= MINUTE ? clockHM : clockHMS;
    return splits.map(function (t) { return fmt.format(new Date(t * 1000)); });
  }

  // uPlot stretches the x scale of a single sample to 1000 days (it assumes milliseconds there).
  function timeRange(u, min, max) {
    var xs = u.data[0];
    if (xs.length === 1 || min === max) { return [xs[0] - SINGLE_SAMPLE_SPAN, xs[0] + SINGLE_SAMPLE_SPAN]; }
    return [min, max];
  }

  function stamp(u, t) { return t == null ? "--" : stampFmt.format(new Date(t * 1000)); }
  function amount(u, v) { return v == null ? "--" : numberFmt.format(v); }

  // With the cursor off the chart, the legend shows the latest sample instead of "--".
  function showLatest(u) {
    if (u.cursor.idx == null && u.data[0].length > 0) { u.setLegend({ idx: u.data[0].length - 1 }); }
  }

  function chartOptions(data, width) {
    var series = [{ label: "Time", value: stamp }].concat(data.series.map(function (s) {
      return { label: s.label, stroke: colours[s.label] || "#455a64", width: 2, spanGaps: true, value: amount };
    }));
    return {
      width: width, height: 180, ms: 1e-3, series: series,
      scales: { x: { time: true, range: timeRange } },
      axes: [
        { incrs: TIME_INCRS, values: timeTicks, space: 100 },
        { size: 56, values: function (u, splits) { return splits.map(function (v) { return numberFmt.format(v); }); } }
      ],
      cursor: { drag: { x: false, y: false } },
      hooks: { ready: [showLatest], setCursor: [showLatest] }
    };
  }

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
      var columns = [data.x].concat(data.series.map(function (s) { return s.values; }));
      plots.set(el.id, new uPlot(chartOptions(data, Math.max(el.clientWidth, 280)), columns, el));
    });
  }

  window.conveyorCharts = plots;  // the uPlot instance of each chart, by element id (for tests and the console)
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
