// The commissioning page's own script: live values over server-sent events, the chart, and the
// forms that talk to the gateway. No library, nothing fetched from elsewhere.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
const body = document.body.dataset;

async function api(method, url, data) {
  const opts = { method, headers: { "x-csrf-token": csrf } };
  if (data !== undefined) {
    opts.headers["content-type"] = "application/json";
    opts.body = typeof data === "string" ? data : JSON.stringify(data);
  }
  const r = await fetch(url, opts);
  let j;
  try { j = await r.json(); } catch (e) { j = { ok: false, error: r.status + " " + r.statusText }; }
  return j;
}

function show(id, text) {
  const el = document.getElementById(id);
  if (el) el.textContent = text;
}

function pretty(v) {
  if (v === null || v === undefined) return "–";
  return typeof v === "string" ? v : JSON.stringify(v);
}

// ---- live values ----
function live() {
  const dot = document.getElementById("live");
  const es = new EventSource("/api/live");
  es.onopen = () => dot && dot.classList.add("on");
  es.onerror = () => dot && dot.classList.remove("on");
  es.addEventListener("reload", () => location.reload());
  es.onmessage = (ev) => {
    let m;
    try { m = JSON.parse(ev.data); } catch (e) { return; }
    let p = null;
    try { p = m.payload ? JSON.parse(m.payload) : null; } catch (e) { p = null; }
    // Availability anywhere on the page.
    document.querySelectorAll('[data-availability="' + CSS.escape(m.topic) + '"]').forEach((el) => {
      const s = p && p.status ? p.status : "unknown";
      el.textContent = s;
      el.className = "status " + s;
    });
    if (body.page !== "device") return;
    if (m.topic === body.availability) {
      const el = document.getElementById("availability");
      if (el && p) { el.textContent = p.status; el.className = "status " + p.status; }
    } else if (m.topic === body.state && p) {
      for (const [k, v] of Object.entries(p)) {
        if (k !== "timestamp") setValue(k, v, p.timestamp);
      }
      // Points absent from the state are unknown (they failed to read).
      document.querySelectorAll("#points tr[data-point]").forEach((tr) => {
        if (!(tr.dataset.point in p)) setValue(tr.dataset.point, null, 0);
      });
    } else if (m.topic === body.result) {
      const li = document.createElement("li");
      li.textContent = new Date(m.at * 1000).toISOString().slice(0, 19) + "Z  " + m.payload;
      document.getElementById("results")?.prepend(li);
    } else {
      const tr = document.querySelector('#points tr[data-topic="' + CSS.escape(m.topic) + '"]');
      if (tr && p) setValue(tr.dataset.point, p.value, p.timestamp || m.at);
    }
  };
}

function setValue(point, value, at) {
  const tr = document.querySelector('#points tr[data-point="' + CSS.escape(point) + '"]');
  if (!tr) return;
  const cell = tr.querySelector("td.value");
  const text = pretty(value);
  if (cell.textContent !== text) {
    cell.textContent = text;
    tr.classList.remove("changed");
    void tr.offsetWidth;
    tr.classList.add("changed");
  }
  const age = tr.querySelector("td.age");
  if (age) age.dataset.at = value === null ? 0 : at;
  ages();
}

function ages() {
  const now = Date.now() / 1000;
  document.querySelectorAll("td.age").forEach((td) => {
    const at = parseFloat(td.dataset.at || "0");
    td.textContent = at > 0 ? Math.max(0, Math.round(now - at)) + " s" : "–";
  });
}

// ---- commands ----
async function send(payload) {
  show("command-result", "sending…");
  const r = await api("POST", "/api/device/" + encodeURIComponent(body.device) + "/command", payload);
  show("command-result", JSON.stringify(r, null, 1));
}

function commands() {
  document.querySelectorAll("button.action").forEach((b) =>
    b.addEventListener("click", () => send({ action: b.dataset.action })));
  document.querySelectorAll("button.set").forEach((b) =>
    b.addEventListener("click", () => {
      const input = document.querySelector('[data-set="' + CSS.escape(b.dataset.point) + '"]');
      let v = input.value;
      if (input.dataset.kind === "number") v = Number(v);
      else if (input.dataset.kind === "bool") v = v === "true";
      send({ [b.dataset.point]: v });
    }));
  document.getElementById("send-raw")?.addEventListener("click", () =>
    send(document.getElementById("raw-command").value));
}

// ---- the chart ----
async function chart() {
  const canvas = document.getElementById("chart");
  if (!canvas) return;
  const point = document.getElementById("chart-point").value;
  const since = document.getElementById("chart-since").value;
  const r = await fetch("/api/device/" + encodeURIComponent(body.device) + "/history?point=" +
    encodeURIComponent(point) + "&since=" + encodeURIComponent(since));
  const j = await r.json();
  const rows = (j.rows || []).filter((x) => typeof x[1] === "number");
  show("chart-note", j.ok ? rows.length + " readings of " + point + " in the last " + since : j.error);
  draw(canvas, rows);
}

function draw(canvas, rows) {
  const g = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, L = 60, B = 24, T = 10, R = 10;
  g.clearRect(0, 0, W, H);
  g.font = "12px system-ui, sans-serif";
  g.fillStyle = "#6a7381";
  if (rows.length === 0) { g.fillText("no readings in this window", L, H / 2); return; }
  let t0 = rows[0][0], t1 = rows[rows.length - 1][0];
  let lo = Math.min(...rows.map((x) => x[1])), hi = Math.max(...rows.map((x) => x[1]));
  if (hi === lo) { hi += 1; lo -= 1; }
  if (t1 === t0) t1 = t0 + 1;
  const x = (t) => L + (t - t0) / (t1 - t0) * (W - L - R);
  const y = (v) => T + (hi - v) / (hi - lo) * (H - T - B);
  g.strokeStyle = "#dde2e8";
  g.beginPath(); g.moveTo(L, T); g.lineTo(L, H - B); g.lineTo(W - R, H - B); g.stroke();
  g.fillText(String(+hi.toPrecision(6)), 4, T + 10);
  g.fillText(String(+lo.toPrecision(6)), 4, H - B);
  g.fillText(new Date(t0 * 1000).toLocaleTimeString(), L, H - 6);
  const end = new Date(t1 * 1000).toLocaleTimeString();
  g.fillText(end, W - R - g.measureText(end).width, H - 6);
  g.strokeStyle = "#2458a6"; g.lineWidth = 1.5;
  g.beginPath();
  rows.forEach((r, i) => (i ? g.lineTo(x(r[0]), y(r[1])) : g.moveTo(x(r[0]), y(r[1]))));
  g.stroke();
}

// ---- a bus ----
function busForms() {
  const bus = encodeURIComponent(body.bus);
  document.getElementById("read")?.addEventListener("click", async () => {
    show("read-result", "reading…");
    const q = new URLSearchParams({
      unit: document.getElementById("read-unit").value,
      register: document.getElementById("read-register").value,
      count: document.getElementById("read-count").value,
    });
    const r = await fetch("/api/bus/" + bus + "/read?" + q);
    const j = await r.json();
    show("read-result", j.ok ? j.text : "error: " + j.error);
  });
  document.getElementById("write")?.addEventListener("click", async () => {
    show("write-result", "writing…");
    const j = await api("POST", "/api/bus/" + bus + "/write", {
      unit: Number(document.getElementById("write-unit").value),
      register: document.getElementById("write-register").value,
      type: document.getElementById("write-type").value,
      order: document.getElementById("write-order").value,
      value: document.getElementById("write-value").value,
    });
    show("write-result", j.ok ? j.text : "error: " + j.error);
  });
  document.getElementById("scan")?.addEventListener("click", () => {
    const button = document.getElementById("scan");
    const found = document.getElementById("scan-found");
    const bar = document.getElementById("scan-progress");
    found.textContent = "";
    button.disabled = true;
    const q = new URLSearchParams({
      units: document.getElementById("scan-units").value,
      identify: document.getElementById("scan-identify").checked,
      csrf,
    });
    const es = new EventSource("/api/bus/" + bus + "/scan?" + q);
    const finish = (text) => { es.close(); button.disabled = false; show("scan-status", text); };
    es.addEventListener("progress", (ev) => {
      const p = JSON.parse(ev.data);
      bar.max = p.total; bar.value = p.done;
      show("scan-status", "asking unit " + p.unit + " (" + p.done + " of " + p.total + ")");
    });
    es.addEventListener("found", (ev) => {
      const f = JSON.parse(ev.data);
      const div = document.createElement("div");
      div.className = "found";
      div.dataset.unit = f.unit;
      const h = document.createElement("pre");
      h.textContent = "unit " + f.unit + ": " + f.text;
      const s = document.createElement("pre");
      s.className = "snippet";
      s.textContent = f.snippet;
      div.append(h, s);
      found.append(div);
    });
    es.addEventListener("done", (ev) => {
      bar.value = bar.max;
      finish("done: " + JSON.parse(ev.data).found + " unit(s) answered");
    });
    es.addEventListener("error", (ev) => {
      if (ev.data) finish("error: " + JSON.parse(ev.data).error);
      else if (es.readyState === EventSource.CLOSED) finish("the scan could not start");
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  if (body.page) live();
  if (body.page === "device") {
    commands();
    ages();
    setInterval(ages, 1000);
    document.getElementById("chart-point")?.addEventListener("change", chart);
    document.getElementById("chart-since")?.addEventListener("change", chart);
    chart();
  }
  if (body.page === "bus") busForms();
});
