// imgq live status page: GET /status every 2 s while the tab is visible (a dashboard, so a plain
// interval is fine), paused while it is hidden. Vanilla ES module, no build step.
import { clockTime, describe, fetchJson, seconds, setupTokenPanel } from "./api.js";

const REFRESH_MS = 2000;

const el = (id) => document.getElementById(id);
const liveState = el("live-state");
const updatedAt = el("updated-at");
const errorBox = el("status-error");
const replicaCount = el("replica-count");
const queueDepth = el("queue-depth");
const jobsPerSecond = el("jobs-per-second");
const replicaRows = el("replica-rows");
const brokerRows = el("broker-rows");
const brokerCount = el("broker-count");
const replicasEmpty = el("replicas-empty");
const recentRows = el("recent-rows");
const recentEmpty = el("recent-empty");

let inFlight = false;

/** The line read out to screen readers: it changes only when the page's own state does. */
function setLive(state, text) {
  if (liveState.dataset.state === state && liveState.textContent === text) return;
  liveState.dataset.state = state;
  liveState.textContent = text;
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

/** A table cell; `label` names it when narrow screens show rows as stacked cards. */
function cell(text, className, label) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  if (label) td.dataset.label = label;
  return td;
}

function pill(status) {
  const span = document.createElement("span");
  span.className = "status";
  span.dataset.status = status;
  span.textContent = status;
  return span;
}

function ago(unixSeconds) {
  if (!Number.isFinite(unixSeconds)) return "—";
  // The browser's clock against the gateway's: a small skew must not read as "in the future".
  const s = Math.max(0, Date.now() / 1000 - unixSeconds);
  if (s < 1.5) return "just now";
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function span(from, to) {
  return Number.isFinite(from) && Number.isFinite(to) ? seconds(Math.max(0, to - from) * 1000) : "—";
}

function renderReplicas(replicas) {
  const rows = replicas.map((replica) => {
    const tr = document.createElement("tr");
    tr.dataset.replica = replica.replica;
    const name = cell(replica.replica, "mono");
    name.dataset.field = "replica";
    const models = cell(Array.isArray(replica.models) ? replica.models.join(", ") : "", "wrap");
    models.dataset.field = "models";
    const done = cell(String(Number(replica.jobs_done) || 0), "num", "Jobs done");
    done.dataset.field = "jobs_done";
    const state = document.createElement("td");
    state.dataset.field = "state";
    // Stalled: holding work and not moving (its supervisor should restart it), whatever
    // else its heartbeat says.
    state.append(pill(replica.stalled ? "stalled" : replica.busy ? "busy" : "idle"));
    const seen = cell(ago(replica.last_seen), "num", "Last seen");
    seen.dataset.field = "last_seen";
    if (Number.isFinite(replica.last_seen)) seen.title = new Date(replica.last_seen * 1000).toLocaleString();
    const restarts = cell(String(Number(replica.restarts) || 0), "num", "Restarts");
    restarts.dataset.field = "restarts";
    tr.append(name, models, done, state, seen, restarts);
    return tr;
  });
  replicaRows.replaceChildren(...rows);
  replicasEmpty.hidden = rows.length > 0;
  replicaCount.textContent = String(rows.length);
}

function renderBroker(nodes) {
  const rows = nodes.map((node) => {
    const tr = document.createElement("tr");
    tr.dataset.node = node.name;
    const name = cell(node.name, "mono");
    name.dataset.field = "name";
    const state = document.createElement("td");
    state.dataset.field = "running";
    state.append(pill(node.running ? "running" : "down"));
    const used = cell(node.connected ? "this gateway" : "", "", "Connection");
    used.dataset.field = "connected";
    tr.append(name, state, used);
    return tr;
  });
  brokerRows.replaceChildren(...rows);
  const running = nodes.filter((node) => node.running).length;
  brokerCount.textContent = nodes.length ? `${running} / ${nodes.length}` : "—";
}

function renderRecent(recent) {
  const rows = recent.map((job) => {
    const tr = document.createElement("tr");
    tr.append(cell(job.model || "?", "mono"));
    const status = document.createElement("td");
    status.append(pill(job.status || "unknown"));
    tr.append(
      status,
      cell(Number.isFinite(job.queued_at) ? clockTime(job.queued_at) : "—", "", "Submitted"),
      cell(span(job.queued_at, job.started_at), "num", "Waited"),
      cell(span(job.started_at, job.finished_at), "num", "Inference"),
      cell(span(job.queued_at, job.finished_at), "num", "Total"),
    );
    return tr;
  });
  recentRows.replaceChildren(...rows);
  recentEmpty.hidden = rows.length > 0;
}

function render(status) {
  renderReplicas(Array.isArray(status.replicas) ? status.replicas : []);
  renderBroker(status.broker && Array.isArray(status.broker.nodes) ? status.broker.nodes : []);
  renderRecent(Array.isArray(status.recent) ? status.recent : []);
  if (Number.isFinite(status.queue_depth)) {
    queueDepth.textContent = String(status.queue_depth);
    // Each model has its own work queue: the tooltip says where the waiting jobs are.
    const queues = status.queues && typeof status.queues === "object" ? status.queues : {};
    queueDepth.title = Object.entries(queues)
      .map(([name, depth]) => `${name}: ${depth}`)
      .join("\n");
  } else {
    queueDepth.textContent = "?";
    queueDepth.title = "The broker has not told the gateway how many jobs are waiting.";
  }
  const rate = Number(status.jobs_per_second) || 0;
  jobsPerSecond.textContent = rate.toFixed(rate >= 10 ? 1 : 2);
}

async function refresh() {
  if (document.visibilityState === "hidden" || inFlight) return;
  inFlight = true;
  try {
    render(await fetchJson("/status"));
    showError("");
    // A request sent before the tab went to the back may answer after: the page stays paused.
    if (document.visibilityState === "hidden") showPaused();
    else setLive("live", "Live");
    updatedAt.textContent = `· updated ${clockTime(Date.now() / 1000)}`;
  } catch (err) {
    setLive("error", "Not updating");
    showError(`Could not load the status: ${describe(err)}`);
  } finally {
    inFlight = false;
  }
}

function showPaused() {
  setLive("paused", "Paused while this tab is hidden");
}

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "hidden") {
    showPaused();
  } else {
    refresh();
  }
});
setupTokenPanel(refresh);
refresh();
setInterval(refresh, REFRESH_MS);
