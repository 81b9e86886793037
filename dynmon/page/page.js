/* dynmon report page: draws the payload in #dynmon-data with plotly.js (loaded beside the page).
   Every number was computed in Python; this script only looks series up and hands them to plotly. */
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("dynmon-data").textContent);
  var CONFIG = { displaylogo: false, responsive: true };
  var timePlots = [];
  var syncing = false;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  /* Choices survive the reloads of `--watch` (kept per tab, per page). */
  function remember(key, value) {
    try { sessionStorage.setItem("dynmon:" + location.pathname + ":" + key, value); } catch (e) { /* private mode */ }
  }
  function recall(key) {
    try { return sessionStorage.getItem("dynmon:" + location.pathname + ":" + key); } catch (e) { return null; }
  }

  function rgba(hex, alpha) {
    var n = parseInt(hex.slice(1), 16);
    return "rgba(" + (n >> 16) + "," + ((n >> 8) & 255) + "," + (n & 255) + "," + alpha + ")";
  }

  function lastStep() {
    var last = 0;
    D.xs.forEach(function (x) { if (x.length && x[x.length - 1] > last) last = x[x.length - 1]; });
    return last;
  }

  /* One stored series as plotly traces: a line when exact, a min/max band when downsampled. */
  function traces(spec) {
    var s = D.store[spec.ref];
    if (!s) return [];
    var x = D.xs[s.x];
    var base = { type: "scatter", x: x, name: spec.name, legendgroup: spec.group || spec.name,
                 opacity: spec.opacity || 1 };
    if (s.y) {
      return [Object.assign({}, base, {
        y: s.y, mode: x.length < 60 ? "lines+markers" : "lines",
        line: { color: spec.color, dash: spec.dash, width: spec.width || 1.6 },
        marker: { size: 4 },
        hovertemplate: spec.name + "<br>step %{x}: %{y:.4g}<extra></extra>"
      })];
    }
    var band = !!spec.band;
    var edge = { color: spec.color, dash: spec.dash, width: band ? 0.3 : (spec.width || 1.2) };
    var what = band ? "" : " (min/max of a bin)";
    return [
      Object.assign({}, base, {
        y: s.hi, mode: "lines", line: edge, showlegend: false,
        hovertemplate: spec.name + "<br>step ≈%{x:.0f}: high %{y:.4g}" + what + "<extra></extra>"
      }),
      Object.assign({}, base, {
        y: s.lo, mode: "lines", line: edge, fill: "tonexty",
        fillcolor: rgba(spec.color, band ? 0.18 : 0.45),
        hovertemplate: spec.name + "<br>step ≈%{x:.0f}: low %{y:.4g}" + what + "<extra></extra>"
      })
    ];
  }

  /* Events: a dashed line each, plateaus shaded, and a marker on top that shows the text on hover. */
  function eventLayer() {
    var ev = D.events || { marks: [], spans: [] };
    var shapes = [];
    var end = lastStep();
    ev.spans.forEach(function (sp) {
      shapes.push({ type: "rect", xref: "x", yref: "paper", x0: sp[0], x1: sp[1] === null ? end : sp[1],
                    y0: 0, y1: 1, fillcolor: "#7f7f7f", opacity: 0.12, line: { width: 0 }, layer: "below" });
    });
    ev.marks.forEach(function (m) {
      if (m.kind.indexOf("plateau") === 0) return;
      shapes.push({ type: "line", xref: "x", yref: "paper", x0: m.x, x1: m.x, y0: 0, y1: 1,
                    line: { color: m.color, width: 1, dash: "dash" } });
    });
    var marks = ev.marks;
    var trace = {
      type: "scatter", mode: "markers", name: "events", showlegend: false, yaxis: "y2",
      x: marks.map(function (m) { return m.x; }),
      y: marks.map(function () { return 1; }),
      marker: { symbol: "triangle-down", size: 12, color: marks.map(function (m) { return m.color; }),
                line: { width: 1, color: "#fff" } },
      hovertext: marks.map(function (m) { return m.text; }),
      hoverinfo: "text"
    };
    return { shapes: shapes, traces: marks.length ? [trace] : [] };
  }

  function syncX(source, update) {
    if (syncing) return;
    var range = update["xaxis.range[0]"] !== undefined
      ? [update["xaxis.range[0]"], update["xaxis.range[1]"]]
      : (update["xaxis.range"] || null);
    if (!range && !update["xaxis.autorange"]) return;
    syncing = true;
    var jobs = timePlots.filter(function (p) { return p !== source; }).map(function (p) {
      return Plotly.relayout(p, range ? { "xaxis.range": range } : { "xaxis.autorange": true });
    });
    Promise.all(jobs).then(function () { syncing = false; }, function () { syncing = false; });
  }

  function drawPanel(p, host) {
    var box = el("div", "panel");
    box.id = p.id;
    var bar = el("div", "bar");
    var select = null;
    if (p.options.length > 1) {
      select = el("select");
      select.setAttribute("aria-label", p.title + ": what to show");
      var chosen = recall(p.id);
      if (p.options.indexOf(chosen) < 0) chosen = p.default;
      p.options.forEach(function (o) {
        var opt = el("option", "", o);
        opt.value = o;
        if (o === chosen) opt.selected = true;
        select.appendChild(opt);
      });
      bar.appendChild(el("label", "", "show "));
      bar.appendChild(select);
    }
    box.appendChild(bar);
    var plot = el("div", "plot");
    box.appendChild(plot);
    host.appendChild(box);
    function render() {
      var opt = select ? select.value : p.default;
      var data = [];
      p.lines[opt].forEach(function (spec) { data = data.concat(traces(spec)); });
      var ev = eventLayer();
      var log = p.log[opt];
      var yrange = (p.yranges && p.yranges[opt]) || p.yrange;
      var layout = {
        title: { text: p.title + (select ? " · " + opt : ""), font: { size: 14 } },
        height: 360, margin: { l: 64, r: 16, t: 40, b: 44 },
        xaxis: { title: { text: "step" }, zeroline: false },
        yaxis: { title: { text: p.ylabel }, type: log ? "log" : "linear", range: log ? undefined : yrange || undefined,
                 exponentformat: log ? "power" : "B" },
        yaxis2: { overlaying: "y", range: [0, 1.04], visible: false, fixedrange: true },
        shapes: ev.shapes, hovermode: "closest", showlegend: true,
        legend: { font: { size: 11 } }, uirevision: p.id
      };
      return Plotly.react(plot, data.concat(ev.traces), layout, CONFIG);
    }
    if (select) select.addEventListener("change", function () { remember(p.id, select.value); render(); });
    return render().then(function () {
      timePlots.push(plot);
      plot.on("plotly_relayout", function (u) { syncX(plot, u); });
    });
  }

  function drawHeatmap(h, host) {
    var box = el("div", "panel heatmap");
    box.id = h.id;
    var n = h.steps.length;
    var bar = el("div", "bar");
    var slider = el("input");
    var start = Number(recall(h.id + ":step"));
    var at = h.steps.indexOf(start);  // the same step after a reload, else the last look
    if (recall(h.id + ":step") === null || at < 0) at = n - 1;
    slider.type = "range"; slider.min = 0; slider.max = n - 1; slider.value = at; slider.step = 1;
    slider.setAttribute("aria-label", h.title + ": step");
    var label = el("span", "step");
    bar.appendChild(el("strong", "", h.title + " "));
    bar.appendChild(slider);
    bar.appendChild(label);
    box.appendChild(bar);
    var row = el("div", "row");
    box.appendChild(row);
    host.appendChild(box);
    var divs = {};
    var first = h.z[h.circuits[0]][0];
    var layers = first.map(function (_, i) { return "L" + i; });
    var heads = first[0].map(function (_, i) { return "H" + i; });
    var height = Math.max(220, 60 + 34 * layers.length);
    function show(i) {
      label.textContent = "step " + h.steps[i] + " (" + (i + 1) + "/" + n + ")";
      box.dataset.frame = String(i);
    }
    show(at);
    h.circuits.forEach(function (c) {  // every box in the row first, so each plot gets its width
      divs[c] = el("div", "plot");
      divs[c].dataset.circuit = c;
      row.appendChild(divs[c]);
    });
    var jobs = h.circuits.map(function (c) {
      return Plotly.newPlot(divs[c], [{
        type: "heatmap", z: h.z[c][at], x: heads, y: layers, zmin: h.zmin, zmax: h.zmax,
        colorscale: h.colorscale, colorbar: { thickness: 10 },
        hovertemplate: "%{y}.%{x} " + c + ": %{z:.4g}<extra></extra>"
      }], {
        title: { text: c, font: { size: 13 } }, height: height,
        margin: { l: 40, r: 10, t: 36, b: 30 }, yaxis: { autorange: "reversed" }
      }, CONFIG);
    });
    slider.addEventListener("input", function () {
      var i = Number(slider.value);
      show(i);
      remember(h.id + ":step", String(h.steps[i]));
      h.circuits.forEach(function (c) { Plotly.restyle(divs[c], { z: [h.z[c][i]] }); });
    });
    return Promise.all(jobs);
  }

  function host(section) {
    return document.querySelector("#" + section + " .plots");
  }

  function fail(where, err) {
    var note = el("p", "warn", "This plot failed to draw: " + err);
    (where || document.body).appendChild(note);
    throw err;
  }

  var jobs = [];
  D.panels.forEach(function (p) {
    var h = host(p.section);
    try { jobs.push(drawPanel(p, h)); } catch (err) { fail(h, err); }
  });
  D.heatmaps.forEach(function (m) {
    var h = host("heatmaps");
    try { jobs.push(drawHeatmap(m, h)); } catch (err) { fail(h, err); }
  });
  Promise.all(jobs).then(function () { document.body.dataset.ready = "1"; });
})();
