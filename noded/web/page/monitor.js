// The web monitor: polls /api/nodes and /api/jobs (the shapes of `mosmon --json` and
// `mosps --json`) once a second and draws the view the address's hash names:
//   #/                      the clusters
//   #/cluster/NAME          one cluster's nodes
//   #/node/CLUSTER/NAME     one node and the jobs this node knows there
// Load history (the last HISTORY_S seconds) is kept here, in the page, as it polls.
"use strict";

const POLL_MS = 1000;
const HISTORY_S = 300;
const history = new Map(); // key ("cluster" or "cluster/node") -> [[time_ms, load], ...]
let nodes = null;
let clusters = null;
let jobs = [];
let lastGood = 0;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function remember(key, load, now) {
  const points = history.get(key) || [];
  points.push([now, load]);
  while (points.length && points[0][0] < now - HISTORY_S * 1000) points.shift();
  history.set(key, points);
}

// A polyline of the load over the last HISTORY_S seconds, scaled to its own maximum
// (at least `floor`, so that an idle line stays at the bottom).
function chart(key, cls, floor) {
  const points = history.get(key) || [];
  const box = svg("svg", { class: cls, viewBox: "0 0 300 100", preserveAspectRatio: "none",
                           role: "img" });
  const now = Date.now();
  const top = Math.max(floor, ...points.map((p) => p[1]));
  const coords = points.map(([t, load]) =>
    `${(300 - (now - t) / 1000).toFixed(1)},${(100 - (load / top) * 95).toFixed(1)}`);
  box.append(svg("polyline", { points: coords.join(" ") }));
  const last = points.length ? points[points.length - 1][1] : 0;
  box.setAttribute("aria-label", `load over the last ${HISTORY_S / 60} minutes, now ${last}`);
  return box;
}

const mb = (value) => (value >= 10240 ? `${(value / 1024).toFixed(1)} GiB` : `${value} MiB`);
const fixed = (value) => Number(value).toFixed(2);

function cpuTime(ms) {
  const s = Math.floor(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}.${Math.floor((ms % 1000) / 100)}`;
}

function uptime(seconds) {
  const days = Math.floor(seconds / 86400);
  const hours = Math.floor((seconds % 86400) / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  return days ? `${days} d ${hours} h` : hours ? `${hours} h ${minutes} min` : `${minutes} min`;
}

function place(node, cluster, own) {
  return !cluster || cluster === own ? node : `${cluster}/${node}`;
}

function ownCluster() {
  const self = nodes && nodes.find((n) => n.self);
  return self ? self.cluster : "";
}

function table(headers, rows) {
  const head = el("tr", {}, ...headers.map(([text, cls]) => el("th", { class: cls || "", text })));
  return el("div", { class: "scroll" }, el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
}

function cell(text, cls) {
  return el("td", { class: cls || "", text: String(text) });
}

function link(text, hash) {
  const a = el("a", { href: hash, text });
  return a;
}

function showTotals() {
  const alive = nodes.filter((n) => n.alive);
  const cpus = alive.reduce((sum, n) => sum + n.cpus, 0);
  const load = alive.reduce((sum, n) => sum + n.load, 0);
  document.getElementById("total-nodes").textContent = `${alive.length} / ${nodes.length}`;
  document.getElementById("total-cpus").textContent = String(cpus);
  document.getElementById("avg-load").textContent = alive.length ? fixed(load / alive.length) : "–";
  document.getElementById("total-jobs").textContent = String(jobs.length);
  const self = nodes.find((n) => n.self);
  document.getElementById("self").textContent = self ? `${self.cluster}/${self.name}` : "";
}

function clustersView(view) {
  view.append(el("h2", { text: "Clusters" }));
  view.append(chart("", "chart", 1));
  const rows = Object.entries(clusters).map(([name, c]) =>
    el("tr", { "data-cluster": name },
      el("td", {}, link(name, `#/cluster/${encodeURIComponent(name)}`)),
      cell(`${c.alive} / ${c.nodes}`, "nodes"), cell(c.cpus, "cpus"), cell(fixed(c.load), "load"),
      cell(c.alive ? fixed(c.load / c.alive) : "–", "avg-load"),
      el("td", { class: "hide-narrow" }, chart(name, "spark", 1))));
  view.append(table([["cluster"], ["nodes alive"], ["CPUs"], ["load"], ["load per node"],
                     ["last 5 min", "hide-narrow"]], rows));
}

function clusterView(view, name) {
  view.append(el("h2", { text: `Cluster ${name}` }));
  view.append(chart(name, "chart", 1));
  const rows = nodes.filter((n) => n.cluster === name).map((n) => {
    const used = n.mem_total_mb - n.mem_free_mb;
    return el("tr", { "data-node": n.name, class: `${n.alive ? "" : "dead"} ${n.self ? "self" : ""}` },
      el("td", {}, link(n.name, `#/node/${encodeURIComponent(name)}/${encodeURIComponent(n.name)}`)),
      cell(n.state, "state text"), cell(fixed(n.load), "load"), cell(n.cpus, "cpus"),
      cell(fixed(n.speed), "speed hide-narrow"), cell(mb(n.mem_free_mb), "mem-free"),
      cell(mb(used), "mem-used"), cell(`${mb(n.swap_free_mb)} / ${mb(n.swap_total_mb)}`, "swap hide-narrow"),
      cell(n.jobs, "jobs"), cell(n.guests, "guests"),
      cell(n.uptime_s == null ? "–" : uptime(n.uptime_s), "uptime hide-narrow"),
      cell(n.users, "users hide-narrow"),
      cell(`${(n.age_ms / 1000).toFixed(1)} s`, "age hide-narrow"),
      el("td", { class: "hide-narrow" }, chart(`${name}/${n.name}`, "spark", 1)));
  });
  view.append(table([["node"], ["state"], ["load"], ["CPUs"], ["speed", "hide-narrow"],
                     ["free memory"], ["used memory"], ["swap free / total", "hide-narrow"],
                     ["jobs away"], ["guests"], ["up", "hide-narrow"], ["users", "hide-narrow"],
                     ["heard", "hide-narrow"],
                     ["last 5 min", "hide-narrow"]], rows));
}

function nodeView(view, clusterName, name) {
  const n = nodes.find((x) => x.cluster === clusterName && x.name === name);
  view.append(el("h2", { text: `Node ${place(name, clusterName, ownCluster())}` }));
  if (!n) {
    view.append(el("p", { text: "This node is not known (any more)." }));
    return;
  }
  view.append(chart(`${clusterName}/${name}`, "chart", 1));
  view.append(el("p", { id: "node-summary",
    text: `${n.state}, load ${fixed(n.load)} on ${n.cpus} CPUs (speed ${fixed(n.speed)}), ` +
          `${mb(n.mem_free_mb)} of ${mb(n.mem_total_mb)} free, ` +
          (n.uptime_s == null ? "" : `up ${uptime(n.uptime_s)}, ${n.users} users logged in, `) +
          `${n.jobs} jobs away, ${n.guests} guests, address ${n.address}` }));
  const own = ownCluster();
  const here = jobs.filter((j) =>
    (j.where === name && (j.where_cluster || own) === clusterName) ||
    (j.home === name && (j.home_cluster || own) === clusterName));
  view.append(el("h3", { text: "Jobs" }));
  if (!here.length) {
    view.append(el("p", { class: "muted", id: "no-jobs",
      text: "No job of this home runs there, and it has no guest here." }));
    return;
  }
  const rows = here.map((j) =>
    el("tr", { "data-job": String(j.pid) },
      cell(j.pid, "pid"), cell(j.user, "user text"), cell(place(j.home, j.home_cluster, own), "home text"),
      cell(place(j.where, j.where_cluster, own), "where text"), cell(j.state, "state text"),
      cell(j.migrations, "moves"), cell(cpuTime(j.cpu_ms), "cpu"), cell(j.cmd, "cmd")));
  view.append(table([["home pid"], ["owner"], ["home"], ["where"], ["state"], ["moves"],
                     ["CPU time"], ["command"]], rows));
}

function render() {
  if (!nodes) return;
  showTotals();
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const view = document.getElementById("view");
  const crumbs = document.getElementById("crumbs");
  view.replaceChildren();
  crumbs.replaceChildren(link("all clusters", "#/"));
  if (parts[0] === "cluster" && parts[1]) {
    clusterView(view, parts[1]);
  } else if (parts[0] === "node" && parts[2]) {
    crumbs.append(" › ", link(parts[1], `#/cluster/${encodeURIComponent(parts[1])}`));
    nodeView(view, parts[1], parts[2]);
  } else {
    crumbs.replaceChildren();
    clustersView(view);
  }
}

async function poll() {
  try {
    const [nodesReply, jobsReply] = await Promise.all([
      fetch("/api/nodes", { cache: "no-store" }), fetch("/api/jobs", { cache: "no-store" })]);
    if (!nodesReply.ok || !jobsReply.ok) throw new Error(`HTTP ${nodesReply.status}/${jobsReply.status}`);
    const picture = await nodesReply.json();
    jobs = (await jobsReply.json()).jobs;
    nodes = picture.nodes;
    clusters = picture.clusters;
    const now = Date.now();
    let total = 0;
    for (const [name, c] of Object.entries(clusters)) {
      remember(name, c.load, now);
      total += c.load;
    }
    remember("", total, now);
    for (const n of nodes) remember(`${n.cluster}/${n.name}`, n.alive ? n.load : 0, now);
    lastGood = now;
    const status = document.getElementById("status");
    status.textContent = `updated ${new Date(now).toLocaleTimeString()}`;
    status.className = "muted";
    render();
  } catch (error) {
    const status = document.getElementById("status");
    status.textContent = `no answer from the daemon (${error.message}); ` +
      (lastGood ? `last update ${new Date(lastGood).toLocaleTimeString()}` : "retrying");
    status.className = "stale";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

window.addEventListener("hashchange", render);
poll();
