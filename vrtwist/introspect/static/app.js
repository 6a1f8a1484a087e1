// The node at a glance: polls /api/summary, keeps short histories, draws them on canvases.
// Plain JavaScript with no library and no build step; nodes often have no internet.
"use strict";
(function () {
  const POINTS = 120;                        // samples kept per series
  const params = new URLSearchParams(location.search);
  const PERIOD = Math.max(200, Number(params.get("period")) || 1000);
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
  const base = location.pathname.replace(/[^/]*$/, "");
  const state = { last: null, vif: new Map(), flowRate: [], flowActive: [], samples: 0 };
  window.vrtwist = state;                    // for people (and tests) poking at the page

  function cell(row, text, cls) {
    const td = row.insertCell();
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }
  function fill(id, rows, build) {
    const body = document.querySelector("#" + id + " tbody");
    const fresh = document.createElement("tbody");
    for (const r of rows) build(fresh.insertRow(), r);
    body.replaceWith(fresh);
  }
  function push(arr, v) { arr.push(v); if (arr.length > POINTS) arr.shift(); }
  function fmt(n) {
    if (n === undefined || n === null) return "";
    if (n >= 1e9) return (n / 1e9).toFixed(1) + "G";
    if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (n >= 1e4) return (n / 1e3).toFixed(1) + "k";
    return String(Math.round(n * 10) / 10);
  }

  function draw(canvas, series) {
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    let max = 1;
    for (const s of series) for (const v of s.data) if (v > max) max = v;
    ctx.strokeStyle = "#eee"; ctx.lineWidth = 1;
    for (let i = 1; i < 4; i++) { const y = Math.round(h * i / 4) + .5;
      ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(w, y); ctx.stroke(); }
    ctx.fillStyle = "#666"; ctx.font = "11px sans-serif"; ctx.fillText(fmt(max), 4, 12);
    for (const s of series) {
      if (s.data.length < 2) continue;
      ctx.strokeStyle = s.color; ctx.lineWidth = 1.5; ctx.beginPath();
      const dx = w / (POINTS - 1), off = POINTS - s.data.length;
      s.data.forEach((v, i) => {
        const x = (off + i) * dx, y = h - 2 - (h - 16) * v / max;
        if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      });
      ctx.stroke();
    }
  }

  function update(s) {
    const prev = state.last;
    const dt = prev ? Math.max(1e-3, s.time - prev.time) : 0;
    const before = new Map(prev ? prev.interfaces.map(i => [i.index, i]) : []);
    const rates = new Map();
    for (const i of s.interfaces) {
      const p = before.get(i.index);
      const rx = p && dt ? Math.max(0, (i.rx_packets || 0) - (p.rx_packets || 0)) / dt : 0;
      const tx = p && dt ? Math.max(0, (i.tx_packets || 0) - (p.tx_packets || 0)) / dt : 0;
      rates.set(i.index, [rx, tx]);
      if (!state.vif.has(i.index)) state.vif.set(i.index, { name: i.name, data: [] });
      push(state.vif.get(i.index).data, rx + tx);
    }
    for (const k of [...state.vif.keys()]) if (!rates.has(k)) state.vif.delete(k);
    const created = s.flows.created || 0;
    push(state.flowRate, prev && dt ? Math.max(0, created - (prev.flows.created || 0)) / dt : 0);
    push(state.flowActive, s.flows.active || 0);
    state.last = s; state.samples++;

    document.getElementById("host").textContent = s.hostname + " " + (s.fabric_ip || "");
    const hb = document.getElementById("health");
    hb.textContent = s.health.ready ? "ready" : "not ready: " + s.health.reasons.join("; ");
    hb.className = "badge " + (s.health.ready ? "ok" : "bad");
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();

    fill("vifs", s.interfaces, (row, i) => {
      row.dataset.uuid = i.uuid || ""; row.dataset.vif = i.index;
      const r = rates.get(i.index);
      cell(row, i.index); cell(row, i.name); cell(row, i.vrf_name || i.vrf);
      cell(row, i.ip || ""); cell(row, i.mac); cell(row, i.vm_name || "");
      cell(row, fmt(r[0]), "num"); cell(row, fmt(r[1]), "num");
      cell(row, fmt(i.rx_bytes), "num"); cell(row, fmt(i.tx_bytes), "num");
      cell(row, fmt(i.drops), "num");
    });
    fill("vrfs", s.vrfs, (row, v) => { cell(row, v.vrf); cell(row, v.name);
      cell(row, v.routes, "num"); cell(row, v.ports, "num"); });
    fill("xmpp", s.xmpp, (row, p) => { cell(row, p.controller); cell(row, p.state);
      cell(row, p.peer_name); cell(row, p.routes_learned, "num"); });
    fill("traps", Object.entries(s.traps.by_type), (row, [k, v]) => {
      cell(row, k); cell(row, v, "num"); });

    const top = [...state.vif.entries()]
      .sort((a, b) => b[1].data.reduce((x, y) => x + y, 0) - a[1].data.reduce((x, y) => x + y, 0))
      .slice(0, COLORS.length);
    const series = top.map(([idx, v], n) => ({ data: v.data, color: COLORS[n], label: v.name || idx }));
    draw(document.getElementById("chart-vif"), series);
    document.getElementById("legend-vif").innerHTML = "";
    for (const sr of series) {
      const span = document.createElement("span");
      const dot = document.createElement("i"); dot.style.background = sr.color;
      span.append(dot, sr.label + " " + fmt(sr.data[sr.data.length - 1] || 0));
      document.getElementById("legend-vif").append(span);
    }
    const maxActive = Math.max(1, ...state.flowActive);
    const maxRate = Math.max(1, ...state.flowRate);
    draw(document.getElementById("chart-flow"), [
      { data: state.flowRate, color: COLORS[0] },
      { data: state.flowActive.map(v => v * maxRate / maxActive), color: COLORS[2] }]);
    document.getElementById("flow-now").textContent =
      "setup " + fmt(state.flowRate[state.flowRate.length - 1]) + "/s, active " +
      fmt(s.flows.active) + ", created " + fmt(created) + ", aged " + fmt(s.flows.aged);
  }

  let busy = false;
  async function tick() {
    if (busy) return;
    busy = true;
    try {
      const r = await fetch(base + "api/summary", { cache: "no-store" });
      if (r.ok) update(await r.json());
    } catch (e) {
      document.getElementById("health").textContent = "unreachable";
      document.getElementById("health").className = "badge bad";
    } finally { busy = false; }
  }
  tick();
  setInterval(tick, PERIOD);
})();
