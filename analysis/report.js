// pagesim report charts: small canvas line/step/area charts, no dependencies.
// Drag across a chart to zoom into a time range, double-click to reset; the
// pointer shows the values under it. Each redraw thins a series to at most
// two points (min and max) per pixel column of the visible range, so a
// 100k-step series stays fast at any zoom.
"use strict";
(function () {
  const PAD = {l: 64, r: 16, t: 10, b: 40};

  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) { return [lo]; }
    const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw) || 10 * mag;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) { out.push(v); }
    return out;
  }

  function logTicks(lo, hi) {
    const out = [];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
      const v = Math.pow(10, e);
      if (v >= lo && v <= hi) { out.push(v); }
    }
    return out.length ? out : [lo, hi];
  }

  function fmt(v) {
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) { return v.toExponential(1); }
    if (a >= 1000) { return v.toLocaleString("en-US", {maximumFractionDigits: 0}); }
    return String(Math.round(v * 1000) / 1000);
  }

  // Indices of a sorted x array inside [lo, hi], one point of margin each side.
  function visibleRange(x, lo, hi) {
    let a = 0, b = x.length;
    while (a < b) { const m = (a + b) >> 1; if (x[m] < lo) { a = m + 1; } else { b = m; } }
    let c = a, d = x.length;
    while (c < d) { const m = (c + d) >> 1; if (x[m] <= hi) { c = m + 1; } else { d = m; } }
    return [Math.max(0, a - 1), Math.min(x.length, c + 1)];
  }

  // At most a min and a max point per pixel column (keeps every peak).
  function thin(x, y, i0, i1, px, cols) {
    if (i1 - i0 <= 2 * cols) { return {x: x.slice(i0, i1), y: y.slice(i0, i1)}; }
    const ox = [], oy = [];
    let col = -1, lo = 0, hi = 0, xl = 0, xh = 0;
    for (let i = i0; i < i1; i++) {
      const c = Math.floor(px(x[i]));
      if (c !== col) {
        if (col >= 0) { if (xl <= xh) { ox.push(xl, xh); oy.push(lo, hi); } else { ox.push(xh, xl); oy.push(hi, lo); } }
        col = c; lo = hi = y[i]; xl = xh = x[i];
      } else {
        if (y[i] < lo) { lo = y[i]; xl = x[i]; }
        if (y[i] > hi) { hi = y[i]; xh = x[i]; }
      }
    }
    if (col >= 0) { ox.push(xl, xh); oy.push(lo, hi); }
    return {x: ox, y: oy};
  }

  class Chart {
    constructor(el, spec) {
      this.el = el; this.spec = spec;
      this.full = this.extent();
      this.view = this.full.x.slice();
      this.canvas = document.createElement("canvas");
      this.canvas.setAttribute("role", "img");
      this.canvas.setAttribute("aria-label", spec.title || "chart");
      this.tip = document.createElement("div");
      this.tip.className = "tip";
      el.appendChild(this.canvas); el.appendChild(this.tip); el.appendChild(this.legend());
      this.bind();
      this.draw();
    }

    extent() {
      let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
      for (const s of this.spec.series) {
        for (let i = 0; i < s.x.length; i++) {
          const xv = s.x[i], yv = s.y[i];
          if (this.spec.logx && !(xv > 0)) { continue; }
          if (xv < x0) { x0 = xv; } if (xv > x1) { x1 = xv; }
          if (yv < y0) { y0 = yv; } if (yv > y1) { y1 = yv; }
        }
      }
      if (!isFinite(x0)) { x0 = 0; x1 = 1; y0 = 0; y1 = 1; }
      if (x1 === x0) { x1 = x0 + 1; }
      if (this.spec.ymin !== undefined) { y0 = this.spec.ymin; }
      if (this.spec.ymax !== undefined) { y1 = this.spec.ymax; }
      if (y1 === y0) { y1 = y0 + 1; }
      return {x: [x0, x1], y: [Math.min(0, y0), y1 * (this.spec.ymax === undefined ? 1.05 : 1)]};
    }

    legend() {
      const box = document.createElement("div");
      box.className = "legend";
      for (const s of this.spec.series) {
        const item = document.createElement("span");
        const sw = document.createElement("i");
        sw.style.background = s.color;
        item.appendChild(sw);
        item.appendChild(document.createTextNode(s.name));
        box.appendChild(item);
      }
      return box;
    }

    scales(w, h) {
      const [a, b] = this.view, logx = this.spec.logx;
      const fx = logx ? Math.log10 : (v => v);
      const xa = fx(a), xb = fx(b);
      const [y0, y1] = this.full.y;
      return {
        px: v => PAD.l + (fx(v) - xa) / (xb - xa) * (w - PAD.l - PAD.r),
        inv: p => { const v = xa + (p - PAD.l) / (w - PAD.l - PAD.r) * (xb - xa); return logx ? Math.pow(10, v) : v; },
        py: v => h - PAD.b - (v - y0) / (y1 - y0) * (h - PAD.t - PAD.b),
      };
    }

    draw() {
      const dpr = window.devicePixelRatio || 1, w = this.el.clientWidth || 600, h = this.spec.height || 260;
      const cv = this.canvas;
      cv.width = w * dpr; cv.height = h * dpr; cv.style.width = w + "px"; cv.style.height = h + "px";
      const g = cv.getContext("2d");
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.fillStyle = "#fff"; g.fillRect(0, 0, w, h);
      const sc = this.scales(w, h);
      this.axes(g, sc, w, h);
      g.save();
      g.beginPath(); g.rect(PAD.l, PAD.t, w - PAD.l - PAD.r, h - PAD.t - PAD.b); g.clip();
      const cols = w - PAD.l - PAD.r;
      const series = this.spec.series;
      for (let k = series.length - 1; k >= 0; k--) { this.drawSeries(g, sc, series[k], cols, h); }
      for (const m of this.spec.marks || []) {
        g.strokeStyle = m.color || "#9b2226"; g.setLineDash([4, 3]); g.beginPath();
        g.moveTo(sc.px(m.x), PAD.t); g.lineTo(sc.px(m.x), h - PAD.b); g.stroke(); g.setLineDash([]);
        g.fillStyle = m.color || "#9b2226"; g.font = "11px sans-serif";
        const right = sc.px(m.x) > (PAD.l + w - PAD.r) / 2;   // label on the roomier side
        g.textAlign = right ? "right" : "left";
        g.fillText(m.label, sc.px(m.x) + (right ? -4 : 4), PAD.t + 12 + 14 * (m.row || 0));
        g.textAlign = "left";
      }
      g.restore();
      this.sc = sc; this.w = w; this.h = h;
    }

    drawSeries(g, sc, s, cols, h) {
      const [i0, i1] = visibleRange(s.x, this.view[0], this.view[1]);
      const d = thin(s.x, s.y, i0, i1, sc.px, cols);
      if (!d.x.length) { return; }
      g.beginPath();
      for (let i = 0; i < d.x.length; i++) {
        const X = sc.px(d.x[i]), Y = sc.py(d.y[i]);
        if (i === 0) { g.moveTo(X, Y); }
        else if (s.kind === "step") { g.lineTo(X, sc.py(d.y[i - 1])); g.lineTo(X, Y); }
        else { g.lineTo(X, Y); }
      }
      if (s.kind === "area") {
        g.lineTo(sc.px(d.x[d.x.length - 1]), h - PAD.b); g.lineTo(sc.px(d.x[0]), h - PAD.b); g.closePath();
        g.fillStyle = s.color; g.fill();
      } else if (s.kind === "points") {
        g.fillStyle = s.color;
        for (let i = 0; i < d.x.length; i++) { g.fillRect(sc.px(d.x[i]) - 1, sc.py(d.y[i]) - 4, 2, 8); }
      } else {
        g.strokeStyle = s.color; g.lineWidth = 1.5; g.stroke();
      }
    }

    axes(g, sc, w, h) {
      g.strokeStyle = "#ccc"; g.fillStyle = "#333"; g.font = "11px sans-serif"; g.lineWidth = 1;
      const xt = this.spec.logx ? logTicks(this.view[0], this.view[1]) : niceTicks(this.view[0], this.view[1], 8);
      g.textAlign = "center";
      for (const v of xt) {
        const X = sc.px(v); g.beginPath(); g.moveTo(X, PAD.t); g.lineTo(X, h - PAD.b); g.stroke();
        g.fillText(fmt(v), X, h - PAD.b + 14);
      }
      g.textAlign = "right";
      for (const v of niceTicks(this.full.y[0], this.full.y[1], 5)) {
        const Y = sc.py(v); g.beginPath(); g.moveTo(PAD.l, Y); g.lineTo(w - PAD.r, Y); g.stroke();
        g.fillText(fmt(v), PAD.l - 6, Y + 4);
      }
      g.textAlign = "center";
      g.fillText(this.spec.xlabel || "", (PAD.l + w - PAD.r) / 2, h - 6);
      g.save(); g.translate(14, (PAD.t + h - PAD.b) / 2); g.rotate(-Math.PI / 2);
      g.fillText(this.spec.ylabel || "", 0, 0); g.restore();
    }

    bind() {
      const cv = this.canvas;
      let start = null;
      cv.addEventListener("mousedown", e => { start = e.offsetX; });
      cv.addEventListener("mousemove", e => {
        if (start !== null) {
          this.draw();
          const g = cv.getContext("2d");
          g.fillStyle = "rgba(38,70,83,0.15)";
          g.fillRect(Math.min(start, e.offsetX), PAD.t, Math.abs(e.offsetX - start), this.h - PAD.t - PAD.b);
        }
        this.hover(e.offsetX, e.offsetY);
      });
      cv.addEventListener("mouseup", e => {
        if (start !== null && Math.abs(e.offsetX - start) > 4) {
          const a = this.sc.inv(Math.min(start, e.offsetX)), b = this.sc.inv(Math.max(start, e.offsetX));
          if (b > a) { this.view = [a, b]; }
        }
        start = null; this.draw();
      });
      cv.addEventListener("mouseleave", () => { this.tip.style.display = "none"; });
      cv.addEventListener("dblclick", () => { this.view = this.full.x.slice(); this.draw(); });
      window.addEventListener("resize", () => this.draw());
    }

    hover(px, py) {
      if (px < PAD.l || px > this.w - PAD.r) { this.tip.style.display = "none"; return; }
      const xv = this.sc.inv(px), lines = [(this.spec.xlabel || "x") + ": " + fmt(xv)];
      for (const s of this.spec.series) {
        if (!s.x.length) { continue; }
        const [i] = visibleRange(s.x, xv, xv);
        const j = Math.min(i + 1, s.x.length - 1);
        lines.push(s.name + ": " + fmt(s.raw ? s.raw[j] : s.y[j]));
      }
      this.tip.textContent = lines.join("\n");
      this.tip.style.display = "block";
      this.tip.style.left = Math.min(px + 12, this.w - 180) + "px";
      this.tip.style.top = (py + 12) + "px";
    }
  }

  // Share of the plot area that is not background: a chart that drew nothing is ~0.
  Chart.prototype.inked = function () {
    const dpr = window.devicePixelRatio || 1, g = this.canvas.getContext("2d");
    const d = g.getImageData(PAD.l * dpr, PAD.t * dpr, (this.w - PAD.l - PAD.r) * dpr, (this.h - PAD.t - PAD.b) * dpr).data;
    let ink = 0;
    for (let i = 0; i < d.length; i += 4) { if (d[i] + d[i + 1] + d[i + 2] < 600) { ink++; } }
    return ink / (d.length / 4);
  };

  window.pagesimCharts = [];
  for (const el of document.querySelectorAll("[data-chart]")) {
    const spec = JSON.parse(document.getElementById(el.dataset.chart).textContent);
    window.pagesimCharts.push(new Chart(el, spec));
  }
  // For automated checks (and the curious): how many charts drew something.
  const drawn = window.pagesimCharts.filter(c => c.inked() > 0.002).length;
  document.documentElement.dataset.charts = window.pagesimCharts.length + " drawn " + drawn;
})();
