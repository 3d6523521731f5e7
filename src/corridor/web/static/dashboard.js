// Corridor dashboard: one snapshot per second over server-sent events; no library.
"use strict";
const $ = (id) => document.getElementById(id);
const NS = "http://www.w3.org/2000/svg";
let selected = null;
let history = {};
let qberAlarm = 0.08;

function el(tag, attrs, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(NS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
const pct = (v) => (v === null || v === undefined) ? "-" : (v * 100).toFixed(2) + " %";
const rate = (v) => (v === null || v === undefined) ? "-" : (v / 1000).toFixed(1) + " kbit/s";

// How links are coloured: "qber" (state and QBER against the alarm level), "rate" (secret
// key rate against the best link) or "fill" (pool utilisation); the width is the pool fill.
let colourBy = "qber";
function shade(share) {  // light to dark blue, with the number in the tooltip and the table
  const v = Math.max(0, Math.min(1, share || 0));
  return `hsl(212, 90%, ${78 - 50 * v}%)`;
}

function drawMap(snap) {
  const svg = $("map");
  svg.querySelectorAll("g").forEach((g) => g.remove());
  const pos = {};
  for (const s of snap.sites) pos[s.kme_id] = [40 + s.x * 520, 20 + s.y * 380];
  const g = el("svg:g");
  const bestRate = Math.max(1, ...snap.links.map((l) => l.key_rate_bits_per_second || 0));
  for (const l of snap.links) {
    const [a, b] = [pos[l.alice_kme], pos[l.bob_kme]];
    if (!a || !b) continue;
    const attrs = {x1: a[0], y1: a[1], x2: b[0], y2: b[1], "stroke-width": 3 + 6 * l.pool_fill,
      "data-link": l.link_id};
    let words = `${l.state}; ${l.text}`;
    if (colourBy === "rate") {
      const share = (l.key_rate_bits_per_second || 0) / bestRate;
      attrs.style = `stroke: ${shade(share)}`;
      words = `key rate ${rate(l.key_rate_bits_per_second)} (${(share * 100).toFixed(0)} % of the best link); ${words}`;
    } else if (colourBy === "fill") {
      attrs.style = `stroke: ${shade(l.pool_fill)}`;
      words = `pools ${pct(l.pool_fill)} full; ${words}`;
    } else {
      attrs.class = l.level;
    }
    const line = el("svg:line", attrs);
    line.appendChild(el("svg:title", {}, `${l.link_id}: ${words}; pool ${pct(l.pool_fill)} full`));
    g.appendChild(line);
  }
  // Relays: the hops of each path a relay's key shares take (in flight: solid purple;
  // the last ones that ended: faint), over the links.
  for (const r of (snap.relays || []).filter((item) => item.role === "master")) {
    for (const path of r.paths || []) {
      const points = path.map((kme) => pos[kme]).filter((p) => p);
      if (points.length < 2) continue;
      const line = el("svg:polyline", {points: points.map((p) => p.join(",")).join(" "),
        class: r.state === "in_flight" ? "relay in-flight" : "relay", "data-relay": r.relay_id});
      line.appendChild(el("svg:title", {}, `relay ${r.relay_id.slice(0, 8)} (${r.state}): ${path.join(" > ")}, ${r.count} key(s) for ${r.master_SAE_ID}`));
      g.appendChild(line);
    }
  }
  for (const s of snap.sites) {
    const [x, y] = pos[s.kme_id];
    const site = el("svg:g", {class: "site", "data-site": s.kme_id});
    site.appendChild(el("svg:circle", {cx: x, cy: y, r: 9, fill: s.reachable === false ? "#cf222e" : "#0969da"}));
    site.appendChild(el("svg:title", {}, s.reachable === false ? `${s.kme_id}: unreachable: ${s.error}` : `${s.kme_id}: ${s.url}`));
    const anchor = x < 170 ? "start" : x > 430 ? "end" : "middle";
    site.appendChild(el("svg:text", {x: anchor === "start" ? x - 12 : anchor === "end" ? x + 12 : x, y: y + 26, "font-size": 13, "text-anchor": anchor},
      `${s.kme_id} (${s.site})${s.reachable === false ? " UNREACHABLE" : ""}`));
    g.appendChild(site);
  }
  svg.appendChild(g);
}

function drawLinks(snap) {
  const body = $("links").tBodies[0];
  body.replaceChildren();
  for (const l of snap.links) {
    const tr = el("tr", {"data-link": l.link_id});
    tr.appendChild(el("td", {}, l.link_id));
    tr.appendChild(el("td", {class: l.level}, `${l.state}: ${l.text}`));
    tr.appendChild(el("td", {}, pct(l.qber)));
    tr.appendChild(el("td", {}, rate(l.key_rate_bits_per_second)));
    tr.appendChild(el("td", {}, l.pools.map((p) => `${p.kme_id} ${p.direction}: ${p.stored_keys}/${p.max_keys}`).join("; ")));
    tr.appendChild(el("td", {}, `${l.blocks_stored} stored, ${l.blocks_aborted} aborted`));
    const td = el("td");
    const button = el("button", {type: "button", "aria-pressed": String(selected === l.link_id)}, "chart");
    button.addEventListener("click", () => { selected = l.link_id; drawChart(); });
    td.appendChild(button);
    tr.appendChild(td);
    body.appendChild(tr);
  }
  if (selected === null && snap.links.length) selected = snap.links[0].link_id;
}

function drawChart() {
  const svg = $("chart");
  svg.replaceChildren();
  const points = history[selected] || [];
  $("chart-desc").textContent = points.length
    ? `${selected}: QBER (black line, scale up to ${pct(Math.max(0.1, 1.25 * qberAlarm))}; red dashes: the ${pct(qberAlarm)} alarm level), secret key rate (purple dashes, scale up to the highest shown) and stored keys (area), last ${points.length} samples; latest QBER ${pct(points[points.length - 1].qber)}, key rate ${rate(points[points.length - 1].key_rate)}, ${points[points.length - 1].stored_keys} keys`
    : "Select a link to chart its QBER, key rate and stored keys.";
  if (points.length < 2) return;
  const t0 = points[0].t, t1 = points[points.length - 1].t || t0 + 1;
  const x = (t) => 10 + 580 * (t - t0) / Math.max(t1 - t0, 1e-9);
  const maxKeys = Math.max(1, ...points.map((p) => p.stored_keys));
  const area = points.map((p) => `${x(p.t)},${190 - 170 * p.stored_keys / maxKeys}`).join(" ");
  svg.appendChild(el("svg:polygon", {points: `10,190 ${area} ${x(t1)},190`, fill: "#c8e1ff"}));
  const top = Math.max(0.1, 1.25 * qberAlarm);
  const alarmY = 190 - 170 * qberAlarm / top;
  svg.appendChild(el("svg:line", {x1: 10, x2: 590, y1: alarmY, y2: alarmY, stroke: "#cf222e", "stroke-dasharray": "4 4"}));
  const q = points.filter((p) => p.qber !== null).map((p) => `${x(p.t)},${190 - 170 * Math.min(p.qber, top) / top}`).join(" ");
  svg.appendChild(el("svg:polyline", {points: q, fill: "none", stroke: "#1b1b1b", "stroke-width": 2, class: "qber"}));
  const maxRate = Math.max(1, ...points.map((p) => p.key_rate || 0));
  const r = points.filter((p) => p.key_rate !== null && p.key_rate !== undefined).map((p) => `${x(p.t)},${190 - 170 * p.key_rate / maxRate}`).join(" ");
  svg.appendChild(el("svg:polyline", {points: r, fill: "none", stroke: "#8250df", "stroke-width": 1.5, "stroke-dasharray": "6 3", class: "rate"}));
}

let alarmsShown = null;
function drawAlarms(snap) {
  const list = $("alarms");
  const key = JSON.stringify(snap.alarms);
  if (key === alarmsShown) return;  // keep what the operator is typing
  alarmsShown = key;
  list.replaceChildren();
  if (!snap.alarms.length) { list.appendChild(el("li", {}, "none")); return; }
  for (const a of snap.alarms) {
    const li = el("li", {class: "alarm", "data-link": a.link_id},
      `${a.link_id}: ${a.kind} (${a.reason}) at block ${a.block_id}${a.quarantined ? ", link quarantined" : ""}; recovery: ${a.recovery} `);
    const label = el("label", {}, "reason ");
    const input = el("input", {type: "text", name: "reason", maxlength: 256, "aria-label": `reason to clear ${a.link_id}`});
    label.appendChild(input);
    const button = el("button", {type: "button"}, "clear");
    button.addEventListener("click", async () => {
      const reply = await fetch(`/api/alarms/${encodeURIComponent(a.link_id)}/clear`, {
        method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({reason: input.value})});
      const body = await reply.json();
      // Its own element: the live line is rewritten by every snapshot.
      $("notice").textContent = reply.ok ? `cleared ${a.link_id} as ${body.operator}` : `not cleared: ${body.message}`;
      if (reply.ok) alarmsShown = null;
    });
    li.append(label, button);
    list.appendChild(li);
  }
}

function rows(tableId, list, cells) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren();
  for (const item of list) {
    const tr = el("tr");
    for (const [text, cls] of cells(item)) tr.appendChild(el("td", cls ? {class: cls} : {}, text));
    body.appendChild(tr);
  }
}
const secs = (v) => (v === null || v === undefined) ? "-" : (v * 1000).toFixed(1) + " ms";

function drawPairsAuditCerts(snap) {
  rows("pairs", snap.pairs || [], (p) => [[p.pair], [String(p.requests)], [String(p.keys)],
    [String(p.slave_fetches)], [secs(p.time_to_key_p50_s)], [secs(p.time_to_key_p99_s)],
    [p.last_delivery ? p.last_delivery.slice(11, 19) : "-"]]);
  const audit = snap.audit || {chains: [], tail: []};
  const chains = $("chains");
  chains.replaceChildren();
  for (const c of audit.chains) {
    const text = c.ok === true ? `KME ${c.kme_id}: chain verified up to entry ${c.verified_seq}`
      : c.ok === false ? `KME ${c.kme_id}: chain BROKEN at entry ${c.broken_at_seq}: ${c.reason}`
      : `KME ${c.kme_id}: ${c.reason}`;
    chains.appendChild(el("li", {class: c.ok === true ? "ok" : "alarm", "data-kme": c.kme_id}, text));
  }
  rows("audit", audit.tail, (e) => [[String(e.time).slice(11, 23)], [e.kme_id], [String(e.seq)],
    [e.event, e.event.includes("alarm") || e.event.includes("quarantin") ? "alarm" : ""], [e.summary]]);
  rows("certs", snap.certificates || [], (c) => [[c.role], [c.id],
    [c.not_after ? c.not_after.slice(0, 16).replace("T", " ") : "-"], [c.text, c.level]]);
}

function drawRest(snap) {
  const hybrid = $("hybrid").tBodies[0];
  hybrid.replaceChildren();
  if (snap.remote) {
    const tr = el("tr");
    tr.appendChild(el("td", {colspan: 6}, "Hybrid sessions run at the SAEs; a dashboard watching KMEs over their operator endpoints does not see them."));
    hybrid.appendChild(tr);
  }
  for (const s of snap.hybrid) {
    const tr = el("tr");
    const decisions = Object.entries(s.decisions || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
    for (const text of [`${s.initiator_sae_id} -> ${s.responder_sae_id}`, s.policy, s.state,
      (s.inputs || []).join("+") || "-", decisions || "-", String(s.rotations ?? "-")]) tr.appendChild(el("td", {}, text));
    hybrid.appendChild(tr);
  }
  const relays = $("relays");
  relays.replaceChildren();
  const masters = snap.relays.filter((r) => r.role === "master");
  if (!masters.length) relays.appendChild(el("li", {}, "none"));
  for (const r of masters) relays.appendChild(el("li", {}, `${r.relay_id.slice(0, 8)}: ${r.paths.map((p) => p.join(" > ")).join(" | ")} ${r.state}`));
  const mob = $("mobility");
  mob.replaceChildren();
  for (const [name, status] of Object.entries(snap.mobility)) {
    mob.appendChild(el("dt", {}, name));
    const summary = Object.entries(status).filter(([, v]) => typeof v !== "object" || v === null)
      .map(([k, v]) => `${k}=${v}`).join(" ");
    mob.appendChild(el("dd", {}, summary));
  }
  if (snap.inventory) {
    const s = snap.inventory;
    $("inventory").textContent = `${s.assets} assets; by risk: ` +
      Object.entries(s.by_risk || {}).map(([k, v]) => `${k} ${v}`).join(", ") +
      "; by quantum vulnerability: " + Object.entries(s.by_vulnerability || {}).map(([k, v]) => `${k} ${v}`).join(", ");
  }
}

function render(snap) {
  if (typeof snap.qber_alarm === "number") qberAlarm = snap.qber_alarm;
  $("title").textContent = `Corridor ${snap.name}`;
  document.title = `Corridor ${snap.name}`;
  for (const l of snap.links) {
    const ring = history[l.link_id] = history[l.link_id] || [];
    ring.push({t: snap.time, qber: l.qber, key_rate: l.key_rate_bits_per_second,
      stored_keys: Math.min(...l.pools.map((p) => p.stored_keys), Infinity) === Infinity ? 0 : Math.min(...l.pools.map((p) => p.stored_keys))});
    if (ring.length > 600) ring.shift();
  }
  drawMap(snap); drawLinks(snap); drawChart(); drawAlarms(snap); drawRest(snap);
  drawPairsAuditCerts(snap);
  const live = $("live");
  live.classList.remove("stale");
  live.dataset.time = String(snap.time);
  live.textContent = `live, updated ${new Date(snap.time * 1000).toISOString().slice(11, 19)} UTC`;
}

let lastSnap = null;
async function start() {
  $("colour-by").addEventListener("change", (event) => {
    colourBy = event.target.value;
    if (lastSnap) drawMap(lastSnap);
  });
  history = await (await fetch("/api/history")).json();
  const source = new EventSource("/api/events");
  source.onmessage = (event) => { lastSnap = JSON.parse(event.data); render(lastSnap); };
  source.onerror = () => { $("live").textContent = "connection lost, retrying ..."; $("live").classList.add("stale"); };
}
start();
