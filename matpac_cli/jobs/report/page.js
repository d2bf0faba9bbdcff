// matpac report: the files table (filter, sort), one file's timelines and neighbours, the map's
// colouring. Everything it shows is in the page's JSON; nothing is fetched.
"use strict";
const D = JSON.parse(document.getElementById("matpac-data").textContent);
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const LEVELS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const LIMIT = 2000; // table rows drawn at once
const STOPS = [[255, 255, 217], [65, 182, 196], [8, 29, 88]];

function el(tag, attrs, text, ns) {
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function clock(s) {
  if (s === null || s === undefined) return "-";
  const m = Math.floor(s / 60), r = s - 60 * m;
  return m + ":" + (r < 10 ? "0" : "") + r.toFixed(r % 1 ? 1 : 0);
}
function secs(t) { return (Math.round(t * 100) / 100) + " s"; }
function colour(v) {
  const x = Math.min(Math.max(v, 0), 1) * 2, i = Math.min(Math.floor(x), 1), f = x - i;
  const c = STOPS[i].map((a, k) => Math.round(a + f * (STOPS[i + 1][k] - a)));
  return "rgb(" + c.join(",") + ")";
}
function tops(i, h) {
  const t = D.top[i][h] || [], out = [];
  for (let j = 0; j < t.length; j += 2) out.push([D.heads[h].labels[t[j]], t[j + 1]]);
  return out;
}

// ---------------------------------------------------------------- files table
const search = D.paths.map((p, i) => (p + " " + D.heads.map((_, h) => tops(i, h).map((t) => t[0]).join(" ")).join(" ")).toLowerCase());
let order = D.paths.map((_, i) => i);
let sorted = { col: -1, dir: 1 };

function sortBy(col) {
  sorted = { col: col, dir: sorted.col === col ? -sorted.dir : 1 };
  const key = (i) => col === 0 ? D.paths[i] : col === 1 ? (D.dur[i] ?? -1) : ((tops(i, col - 2)[0] || [""])[0]);
  order.sort((a, b) => {
    const ka = key(a), kb = key(b);
    return (ka < kb ? -1 : ka > kb ? 1 : a - b) * sorted.dir;
  });
  document.querySelectorAll("#files th").forEach((th, c) => {
    th.dataset.sort = c === col ? (sorted.dir > 0 ? "up" : "down") : "";
  });
  renderTable();
}

function renderTable() {
  const terms = $("filter").value.trim().toLowerCase().split(/\s+/).filter(Boolean);
  const rows = order.filter((i) => terms.every((t) => search[i].includes(t)));
  const body = el("tbody");
  for (const i of rows.slice(0, LIMIT)) {
    const tr = el("tr", { "data-i": i });
    const td = el("td");
    td.append(el("a", { href: "#f" + i }, D.paths[i]));
    tr.append(td, el("td", { class: "num" }, clock(D.dur[i])));
    D.heads.forEach((_, h) => {
      const cell = el("td");
      tops(i, h).forEach(([label, score], j) => {
        cell.append(el("span", { class: j ? "lab" : "lab top", title: score.toFixed(3) }, label));
      });
      tr.append(cell);
    });
    body.append(tr);
  }
  $("files").querySelector("tbody").replaceWith(body);
  const shown = Math.min(rows.length, LIMIT);
  $("count").textContent = (terms.length ? rows.length + " of " + D.paths.length + " files match" : D.paths.length + " files")
    + (shown < rows.length ? "; the first " + shown + " are listed, filter to see others" : "");
}

// ---------------------------------------------------------------- one file
function columnTimes(rec) {
  const starts = rec.ts || Array.from({ length: rec.n }, (_, c) => rec.t0 + c * rec.dt);
  return starts.map((s, c) => [s, c + 1 < starts.length ? starts[c + 1] : Math.max(rec.end, s)]);
}

function heatmap(rec, labels, audio) {
  const cols = columnTimes(rec), n = cols.length, left = 170, rowH = 16;
  const w = Math.max(2, Math.min(60, 760 / n)), height = rec.l.length * rowH + 30;
  const svg = el("svg", { class: "timeline", width: left + n * w + 20, height: height }, undefined, SVG);
  // colours span this timeline's own range: kept rows are the high scores, so 0..1 would be all dark
  const levels = [...rec.q].filter((ch) => ch !== ".").map((ch) => LEVELS.indexOf(ch) / 61);
  const hi = Math.max(...levels), lo = Math.max(0, Math.min(...levels, hi - 0.3)); // at least 0.3 wide
  const shade = (v) => colour(hi > lo ? (v - lo) / (hi - lo) : 1);
  rec.l.forEach((li, r) => {
    svg.append(el("text", { x: left - 6, y: r * rowH + 12, class: "rowlab" }, labels[li], SVG));
    for (let c = 0; c < n; c++) {
      const ch = rec.q[r * n + c], missing = ch === ".", v = missing ? 0 : LEVELS.indexOf(ch) / 61;
      const cell = el("rect", { x: left + c * w, y: r * rowH, width: w, height: rowH - 1,
        fill: missing ? "#f0f0f0" : shade(v), "data-t": cols[c][0] }, undefined, SVG);
      cell.append(el("title", {}, labels[li] + "  " + secs(cols[c][0]) + " to " + secs(cols[c][1]) + "  " +
        (missing ? "not among the kept labels" : v.toFixed(2)), SVG));
      svg.append(cell);
    }
  });
  const span = cols[n - 1][1], y = rec.l.length * rowH;
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600];
  const step = steps.find((s) => (s / Math.max(span, 1e-6)) * n * w >= 60) || 3600;
  const x = (t) => { // time to pixels, column by column
    let c = cols.findIndex(([a, b]) => t < b); if (c < 0) c = n - 1;
    const [a, b] = cols[c]; return left + (c + Math.min(1, Math.max(0, (t - a) / ((b - a) || 1)))) * w;
  };
  for (let t = 0; t <= span + 1e-6; t += step) {
    svg.append(el("line", { x1: x(t), x2: x(t), y1: y, y2: y + 4, class: "tick" }, undefined, SVG));
    svg.append(el("text", { x: x(t), y: y + 16, class: "ticklab" }, String(t), SVG));
  }
  svg.append(el("text", { x: left - 6, y: y + 16, class: "rowlab" }, "time (s)", SVG));
  if (levels.length) svg.setAttribute("data-range", lo.toFixed(2) + "-" + hi.toFixed(2));
  if (audio) {
    const head = el("line", { x1: left, x2: left, y1: 0, y2: y, class: "playhead" }, undefined, SVG);
    svg.append(head);
    audio.addEventListener("timeupdate", () => { const p = x(audio.currentTime); head.setAttribute("x1", p); head.setAttribute("x2", p); });
    svg.addEventListener("click", (e) => {
      const t = e.target.getAttribute("data-t");
      if (t !== null) { audio.currentTime = +t; audio.play().catch(() => {}); }
    });
  }
  return svg;
}

function neighbours(i) {
  const list = (D.nn || [])[i];
  if (!list) return null;
  const ol = el("ol", { class: "nn" });
  for (let j = 0; j < list.length; j += 2) {
    const target = list[j], li = el("li");
    if (target >= 0) li.append(el("a", { href: "#f" + target }, D.paths[target]));
    else li.append(el("span", { title: "embedded but not in the tags" }, D.xp[-1 - target]));
    li.append(el("span", { class: "cos" }, " cosine " + (list[j + 1] / 1000).toFixed(3)));
    ol.append(li);
  }
  return ol;
}

// the timelines are gzipped in the page; inflated once, when the first file is shown
let inflated = null;
function timelines() {
  if (!inflated) {
    const text = (($("matpac-timelines") || {}).textContent || "").trim();
    inflated = !text ? Promise.resolve(null) : (async () => {
      const bytes = Uint8Array.from(atob(text), (ch) => ch.charCodeAt(0));
      const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
      return JSON.parse(await new Response(stream).text());
    })();
  }
  return inflated;
}

let showing = -1;
async function show(i) {
  showing = i;
  let tl = null, failed = null;
  try { tl = await timelines(); } catch (err) { failed = err; }
  if (showing !== i) return; // another file was asked for meanwhile
  const box = $("file");
  box.replaceChildren(el("h3", {}, D.paths[i]));
  box.append(el("p", { class: "meta" }, "duration " + clock(D.dur[i]) + "  ·  file " + (i + 1) + " of " + D.paths.length));
  const audio = D.audio ? el("audio", { controls: "", preload: "none", src: D.audio[i] }) : null;
  if (audio) box.append(audio);
  D.heads.forEach((head, h) => {
    const t = tops(i, h);
    box.append(el("h4", {}, head.name + ": " + (t.map(([l, s]) => l + " " + s.toFixed(2)).join(", ") || "no kept labels")));
    const rec = tl && tl[i] && tl[i][h];
    if (rec) {
      const chart = heatmap(rec, head.labels, audio), range = chart.getAttribute("data-range");
      box.append(chart);
      if (range) box.append(el("p", { class: "note" }, "colour: score " + range.replace("-", " (light) to ") + " (dark)"));
    }
  });
  if (!D.tl) box.append(el("p", { class: "note" }, "No timeline: the tags were made without --segments."));
  if (failed) box.append(el("p", { class: "note" }, "This browser cannot unpack the timelines (" + failed + ")."));
  const nn = neighbours(i);
  if (nn) { box.append(el("h4", {}, "Nearest files (cosine of the clip embeddings)")); box.append(nn); }
  else if (D.nn) box.append(el("p", { class: "note" }, "This file has no embedding."));
  document.querySelectorAll("#map circle.on").forEach((c) => c.classList.remove("on"));
  const dot = document.querySelector('#map circle[data-i="' + i + '"]');
  if (dot) dot.classList.add("on");
}

function route(scroll) {
  const m = /^#f(\d+)$/.exec(location.hash);
  const i = m ? +m[1] : 0;
  if (i < D.paths.length) { show(i); if (m && scroll) $("file").scrollIntoView(); }
}

// ---------------------------------------------------------------- wiring
document.querySelectorAll("#files th").forEach((th, c) => th.addEventListener("click", () => sortBy(c)));
$("filter").addEventListener("input", renderTable);
window.addEventListener("hashchange", () => route(true));
const map = $("map");
if (map) {
  const pick = $("maphead");
  const colourBy = () => {
    map.dataset.h = pick.value;
    document.querySelectorAll(".legend").forEach((g) => { g.hidden = g.dataset.h !== pick.value; });
  };
  pick.addEventListener("change", colourBy);
  colourBy();
  map.addEventListener("click", (e) => {
    const i = e.target.getAttribute && e.target.getAttribute("data-i");
    if (i !== null) location.hash = "f" + i;
  });
}
renderTable();
route(false);
