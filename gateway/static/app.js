// imgq web page: pick a model and a gallery image or your own file, submit a job (or one per
// model to compare them), follow it by long-polling, and keep a list of your recent jobs.
// Vanilla ES module, no build step; the API is described in docs/api-contract.md.
import { ApiError, clockTime, describe, fetchJson, seconds, setupTokenPanel, sleep } from "./api.js";

// The gateway holds a poll for at most /info's max_wait (30 s); asking for a little less keeps
// every answer well inside proxy and browser idle timeouts.
const POLL_WAIT_S = 25;
// A poll that outlives its wait by this much is treated as a lost connection.
const POLL_GRACE_MS = 15000;
// After a network error the next poll waits this long, so a restarting gateway is not hammered.
const RETRY_DELAY_MS = 1500;
// Consecutive poll failures before the page tells the person it has lost contact.
const FAILURES_BEFORE_NOTICE = 2;
// How often the models' online state is refreshed while the page is open.
const INFO_REFRESH_MS = 20000;
const FINAL_STATES = new Set(["succeeded", "failed", "cancelled"]);
const JOB_ID = /^[0-9a-f]{32}$/;
// Matches the single-column layout in style.css.
const NARROW = window.matchMedia("(max-width: 899px)");

// Upload limits, as the gateway enforces them (gateway/limits.py); the server stays the authority.
const MAX_UPLOAD_BYTES = 10 * 1024 * 1024;
const MAX_UPLOAD_PIXELS = 40_000_000;
const UPLOAD_TYPES = new Set(["image/jpeg", "image/png", "image/webp"]);
const UPLOAD_EXTENSIONS = /\.(jpe?g|png|webp)$/i;

// "Your recent jobs": kept in this browser only.
const RECENT_KEY = "imgq.recentJobs";
const RECENT_MAX = 20;

const el = (id) => document.getElementById(id);
const form = el("classify-form");
const modelSelect = el("model-select");
const modelNote = el("model-note");
const gallery = el("gallery");
const uploadField = el("upload-field");
const dropZone = el("drop-zone");
const fileInput = el("file-input");
const uploadError = el("upload-error");
const uploadClear = el("upload-clear");
const preview = el("preview-image");
const previewCaption = el("preview-caption");
const previewNote = el("preview-note");
const noCache = el("no-cache");
const submitButton = el("submit-button");
const compareButton = el("compare-button");
const errorBox = el("error-message");
const idleHint = el("idle-hint");
const details = el("job-details");
const jobIdOut = el("job-id");
const jobSubject = el("job-subject");
const statusOut = el("job-status");
const elapsedOut = el("elapsed");
const replicaRow = el("replica-row");
const replicaOut = el("job-replica");
const chart = el("result-chart");
const compareSection = el("compare-section");
const compareSubject = el("compare-subject");
const compareSummary = el("compare-summary");
const compareResults = el("compare-results");
const recentList = el("recent-jobs");
const recentEmpty = el("recent-empty");
const recentClear = el("recent-clear");

let models = [];
let pollWait = POLL_WAIT_S;
let upload = null; // the person's own file: {file, url, width, height}
let run = null; // the single job being followed: {controller, submittedAt, ticker}
let comparison = null; // the comparison being followed: {controller, ticker}

// ---- small helpers ---------------------------------------------------------------------------

function modelTitle(name) {
  const model = choices().find((m) => m.name === name);
  if (model) return model.version ? `${model.title} v${model.version}` : model.title;
  const option = [...modelSelect.options].find((o) => o.value === name);
  return option ? option.textContent.replace(/ · (online|offline)( · [a-z0-9]+)?$/, "") : name;
}

/** "upload:photo.png" -> "photo.png (your file)"; gallery names stay as they are. */
function imageLabel(image) {
  if (typeof image !== "string" || !image) return "?";
  return image.startsWith("upload:") ? `${image.slice(7)} (your file)` : image;
}

function mib(bytes) {
  if (bytes < 1024 * 1024) return `${Math.max(1, Math.round(bytes / 1024))} KiB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

function percent(score) {
  const p = score * 100;
  if (p > 0 && p < 0.01) return "<0.01%";
  return `${p.toFixed(p >= 10 ? 1 : 2)}%`;
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = false;
}

function clearError() {
  errorBox.textContent = "";
  errorBox.hidden = true;
}

function showUploadError(message) {
  uploadError.textContent = message;
  uploadError.hidden = !message;
}

/** Inference time (on the replica) of a final job, in ms, or null. */
function inferenceMs(job) {
  if (job.reused_from || job.started_at == null || job.finished_at == null) return null;
  return Math.max(0, (job.finished_at - job.started_at) * 1000);
}

// ---- model list and gallery ------------------------------------------------------------------

// The arithmetic the replicas run it in: fp32, or bf16 (bfloat16) on CPUs that have it.
function modelLabel(model) {
  const version = model.version ? ` · v${model.version}` : "";
  const precision = model.precision ? ` · ${model.precision}` : "";
  return `${model.title}${version} · ${model.online ? "online" : "offline"}${precision}`;
}

// Every choice the picker offers, by the ID a job sends: each model by name (its default
// version), and each version by name@version where a model has more than one.
function choices() {
  const all = [];
  for (const model of models) {
    all.push(model);
    const versions = Array.isArray(model.versions) ? model.versions : [];
    if (versions.length > 1) {
      for (const v of versions) all.push({ ...v, name: v.id });
    }
  }
  return all;
}

function modelOption(model, label) {
  const option = document.createElement("option");
  option.value = model.name;
  option.textContent = label;
  return option;
}

function renderModels(list) {
  models = list;
  const chosen = modelSelect.value;
  const options = list.map((model) => {
    const versions = Array.isArray(model.versions) ? model.versions : [];
    if (versions.length <= 1) return modelOption(model, modelLabel(model));
    // A model with several versions: its default first, then each version by name.
    const group = document.createElement("optgroup");
    group.label = model.title;
    group.append(modelOption(model, `${modelLabel(model)} (default)`));
    for (const v of versions) group.append(modelOption({ name: v.id }, modelLabel(v)));
    return group;
  });
  modelSelect.replaceChildren(...options);
  const all = choices();
  const keep = all.find((m) => m.name === chosen) || list.find((m) => m.online) || list[0];
  if (keep) modelSelect.value = keep.name;
  updateModelNote();
  compareButton.textContent = list.length ? `Compare all ${list.length} models` : "Compare all models";
}

function updateModelNote() {
  const model = choices().find((m) => m.name === modelSelect.value);
  if (!model) {
    modelNote.textContent = "";
    modelNote.dataset.state = "";
    return;
  }
  modelNote.dataset.state = model.online ? "online" : "offline";
  const n = Number(model.replicas) || 0;
  const replicas = n ? ` · ${n} replica${n === 1 ? "" : "s"}` : "";
  const precision =
    model.precision === "bf16" ? " · bf16 (faster, near fp32's answers)" : " · fp32";
  modelNote.textContent = model.online
    ? `Online${replicas} · input ${model.input_size} px${precision}`
    : "No replica is serving this model right now; a job will wait in the queue.";
}

function buildThumb(image, checked) {
  const label = document.createElement("label");
  label.className = "thumb";
  label.dataset.image = image.name;
  const radio = document.createElement("input");
  radio.type = "radio";
  radio.name = "image";
  radio.value = image.name;
  radio.checked = checked;
  const img = document.createElement("img");
  img.src = image.url;
  img.alt = image.name;
  img.loading = "lazy";
  if (image.width && image.height) {
    img.width = image.width;
    img.height = image.height;
  }
  const name = document.createElement("span");
  name.className = "thumb-name";
  name.textContent = image.name;
  label.append(radio, img, name);
  return label;
}

function renderGallery(images) {
  if (!images.length) return;
  const chosen = selectedImage();
  // While the person's own file is chosen, no gallery image is.
  const keep = upload ? null : images.some((i) => i.name === chosen) ? chosen : images[0].name;
  gallery.replaceChildren(...images.map((image) => buildThumb(image, image.name === keep)));
  showPreview();
}

function selectedImage() {
  const radio = gallery.querySelector('input[name="image"]:checked');
  return radio ? radio.value : null;
}

function selectGalleryImage(name) {
  const radio = [...gallery.querySelectorAll('input[name="image"]')].find((r) => r.value === name);
  if (!radio) return false;
  radio.checked = true;
  dropUpload();
  showPreview();
  return true;
}

function showPreview() {
  // Hidden only while a file the browser cannot draw is chosen.
  preview.hidden = !!(upload && upload.broken);
  const radio = gallery.querySelector('input[name="image"]:checked');
  for (const thumb of gallery.querySelectorAll(".thumb")) {
    thumb.classList.toggle("selected", !upload && thumb.contains(radio));
  }
  if (upload) {
    preview.src = upload.url;
    preview.alt = `Selected image: ${upload.file.name} (your file)`;
    const size = upload.width ? ` · ${upload.width}×${upload.height}` : "";
    previewCaption.textContent = `${upload.file.name} · ${mib(upload.file.size)}${size}`;
    uploadClear.hidden = false;
    return;
  }
  uploadClear.hidden = true;
  previewNote.hidden = true;
  if (!radio) return;
  const img = radio.parentElement.querySelector("img");
  preview.src = img.src;
  preview.alt = `Selected image: ${radio.value}`;
  previewCaption.textContent = radio.value;
}

async function loadInfo(firstTime) {
  try {
    const info = await fetchJson("/info");
    if (Number.isFinite(info.max_wait) && info.max_wait > 0) {
      pollWait = Math.min(POLL_WAIT_S, info.max_wait);
    }
    renderModels(Array.isArray(info.models) ? info.models : []);
    if (firstTime) renderGallery(Array.isArray(info.images) ? info.images : []);
    renderRecent();
    return true;
  } catch (err) {
    // A failed refresh keeps the last good list; only a failed first load is worth showing.
    if (firstTime) showError(`Could not load the models and images: ${describe(err)}`);
    return false;
  }
}

// ---- the person's own image --------------------------------------------------------------------

/** A reason to refuse the file before sending it, or null. The server checks the bytes again. */
function uploadProblem(file) {
  if (file.size > MAX_UPLOAD_BYTES) {
    return `${file.name} is ${mib(file.size)}; the limit is 10 MiB.`;
  }
  if (file.size === 0) return `${file.name} is empty.`;
  const known = file.type ? UPLOAD_TYPES.has(file.type) : UPLOAD_EXTENSIONS.test(file.name);
  if (!known) {
    const kind = file.type ? `a ${file.type} file` : "not a known image type";
    return `${file.name} is ${kind}; the service accepts JPEG, PNG and WebP images.`;
  }
  return null;
}

function dropUpload() {
  if (!upload) return;
  URL.revokeObjectURL(upload.url);
  upload = null;
  previewNote.hidden = true;
}

function useFile(file) {
  const problem = uploadProblem(file);
  if (problem) {
    showUploadError(problem);
    return;
  }
  showUploadError("");
  dropUpload();
  upload = { file, url: URL.createObjectURL(file), width: 0, height: 0, broken: false };
  for (const radio of gallery.querySelectorAll('input[name="image"]')) radio.checked = false;
  previewNote.hidden = true;
  showPreview();
}

function previewLoaded() {
  if (!upload || preview.src !== upload.url) return;
  upload.width = preview.naturalWidth;
  upload.height = preview.naturalHeight;
  if (upload.width * upload.height > MAX_UPLOAD_PIXELS) {
    const mp = ((upload.width * upload.height) / 1e6).toFixed(1);
    showUploadError(
      `${upload.file.name} is ${upload.width}×${upload.height} (${mp} megapixels); ` +
        "the limit is 40 megapixels.",
    );
    clearUpload();
    return;
  }
  showPreview();
}

function previewFailed() {
  if (!upload || preview.src !== upload.url) return;
  // The browser cannot draw it; the server reads the bytes itself and has the last word.
  upload.broken = true;
  preview.hidden = true;
  previewNote.textContent = "This browser cannot show a preview of the file.";
  previewNote.hidden = false;
}

function clearUpload() {
  dropUpload();
  const first = gallery.querySelector('input[name="image"]');
  if (first && !selectedImage()) first.checked = true;
  showPreview();
}

function hasFiles(event) {
  return !!event.dataTransfer && [...(event.dataTransfer.types || [])].includes("Files");
}

function setupDragAndDrop() {
  // Files can be dropped anywhere on the page; the drop zone lights up while one is dragged.
  let depth = 0;
  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    depth += 1;
    dropZone.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (!hasFiles(event)) return;
    depth = Math.max(0, depth - 1);
    if (!depth) dropZone.classList.remove("dragging");
  });
  document.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  document.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault(); // never let the browser navigate away to the file
    depth = 0;
    dropZone.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) useFile(file);
  });
}

// ---- submissions -------------------------------------------------------------------------------

/** What is being classified: {kind: "upload", name, file} or {kind: "gallery", name}, or null. */
function currentSource() {
  if (upload) return { kind: "upload", name: upload.file.name, file: upload.file };
  const image = selectedImage();
  return image ? { kind: "gallery", name: image } : null;
}

function postJob(model, source, signal) {
  const headers = {};
  if (noCache.checked) headers["Cache-Control"] = "no-cache";
  let body;
  if (source.kind === "upload") {
    body = new FormData(); // the browser sets the multipart boundary itself
    body.append("model", model);
    body.append("file", source.file, source.file.name);
  } else {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify({ model, image: source.name });
  }
  return fetchJson("/classifications", { method: "POST", headers, body, signal });
}

/**
 * One long-poll that also gives up if the answer is far later than the wait asked for.
 * `since` makes the server answer as soon as the status moves on (queued -> started), so
 * "started" shows the moment a replica takes the job, not only when the job is done.
 */
async function pollOnce(jobId, status, signal) {
  const controller = new AbortController();
  const abort = () => controller.abort();
  signal.addEventListener("abort", abort, { once: true });
  const timer = setTimeout(abort, pollWait * 1000 + POLL_GRACE_MS);
  try {
    const url =
      `/classifications/${encodeURIComponent(jobId)}?wait=${pollWait}` +
      `&since=${encodeURIComponent(status)}`;
    return await fetchJson(url, { signal: controller.signal });
  } finally {
    clearTimeout(timer);
    signal.removeEventListener("abort", abort);
  }
}

/**
 * Re-issue the long-poll as soon as each answer arrives, until the job is final.
 * hooks: onJob(job), onGiveUp(err) for answers that asking again will not change (404...),
 * onTrouble(err) after repeated failures, onRecovered().
 */
async function follow(jobId, status, signal, hooks) {
  let failures = 0;
  while (!signal.aborted) {
    let job;
    try {
      job = await pollOnce(jobId, status, signal);
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && err.status < 500 && err.status !== 401) {
        hooks.onGiveUp(err);
        return;
      }
      failures += 1;
      if (failures >= FAILURES_BEFORE_NOTICE) hooks.onTrouble(err);
      await sleep(RETRY_DELAY_MS, signal);
      continue;
    }
    if (signal.aborted) return;
    if (failures) hooks.onRecovered();
    failures = 0;
    hooks.onJob(job);
    status = job.status;
    if (FINAL_STATES.has(job.status)) return;
  }
}

function troubleMessage(err) {
  if (err instanceof ApiError && err.status === 401) return describe(err); // asks for a token
  const why = err instanceof ApiError ? ` (${err.message})` : "";
  return `Lost contact with the server${why}. Still trying…`;
}

// ---- the single job ------------------------------------------------------------------------------

function setStatus(status) {
  statusOut.textContent = status;
  statusOut.dataset.status = status;
}

function renderBars(list, result) {
  const rows = result.map((entry) => {
    const score = Math.max(0, Math.min(1, Number(entry.score) || 0));
    const row = document.createElement("li");
    row.className = "bar-row";
    row.dataset.label = entry.label;
    row.dataset.score = String(score);
    const label = document.createElement("span");
    label.className = "bar-label";
    label.textContent = entry.label;
    label.title = `${entry.label} (class ${entry.class_index})`;
    const track = document.createElement("span");
    track.className = "bar-track";
    track.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = `${score * 100}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = percent(score);
    row.append(label, track, value);
    return row;
  });
  list.replaceChildren(...rows);
}

function renderJob(job, current) {
  jobIdOut.textContent = job.job_id;
  // The version that ran, once a replica has taken the job (a job may name no version).
  const version = job.model_version ? ` (version ${job.model_version})` : "";
  jobSubject.textContent = `${modelTitle(job.model)}${version} · ${imageLabel(job.image)}`;
  setStatus(job.status);
  updateRecent(job.job_id, job.status);
  if (job.replica) {
    replicaOut.textContent = job.replica;
    replicaRow.hidden = false;
  }
  if (!FINAL_STATES.has(job.status)) return;

  stopTicker(current);
  if (current.submittedAt != null) {
    elapsedOut.textContent = seconds(performance.now() - current.submittedAt);
  } else if (job.finished_at && job.queued_at) {
    // Opened from a link: only the service's own times are known.
    elapsedOut.textContent = seconds((job.finished_at - job.queued_at) * 1000);
  } else {
    elapsedOut.textContent = "—";
  }
  const notes = [];
  if (job.reused_from) {
    notes.push(`reused the result of job ${job.reused_from.slice(0, 8)}…`);
  } else {
    if (current.submittedAt != null && job.finished_at && job.queued_at) {
      notes.push(`${seconds((job.finished_at - job.queued_at) * 1000)} in the service`);
    }
    const inference = inferenceMs(job);
    if (inference != null) notes.push(`inference ${seconds(inference)}`);
  }
  if (current.submittedAt == null && job.queued_at) notes.push(`submitted ${clockTime(job.queued_at)}`);
  if (notes.length) {
    const small = document.createElement("small");
    small.textContent = notes.join(" · ");
    elapsedOut.append(small);
  }
  if (job.status === "succeeded") {
    renderBars(chart, Array.isArray(job.result) ? job.result : []);
  } else if (job.status === "cancelled") {
    showError("The job was cancelled before a replica took it.");
  } else {
    const reason = job.error && job.error.message ? job.error.message : "no reason was given.";
    showError(`The classification failed: ${reason}`);
  }
}

function startTicker(current) {
  const tick = () => {
    elapsedOut.textContent = seconds(performance.now() - current.submittedAt);
  };
  tick();
  current.ticker = setInterval(tick, 100);
}

function stopTicker(current) {
  if (current.ticker) clearInterval(current.ticker);
  current.ticker = null;
}

function resetResult() {
  clearError();
  chart.replaceChildren();
  jobIdOut.textContent = "";
  jobSubject.textContent = "";
  setStatus("");
  elapsedOut.textContent = "";
  replicaOut.textContent = "";
  replicaRow.hidden = true;
}

/** Stop following the single job and start a new run; returns it. */
function newRun(submittedAt) {
  if (run) {
    run.controller.abort();
    stopTicker(run);
  }
  const current = { controller: new AbortController(), submittedAt, ticker: null };
  run = current;
  resetResult();
  idleHint.hidden = true;
  details.hidden = false;
  return current;
}

function followSingle(job, current) {
  return follow(job.job_id, job.status, current.controller.signal, {
    onJob: (next) => {
      if (run === current) renderJob(next, current);
    },
    onGiveUp: (err) => {
      stopTicker(current);
      setStatus("unknown");
      showError(describe(err));
      if (err.status === 404 || err.status === 410) updateRecent(job.job_id, "expired");
    },
    onTrouble: (err) => showError(troubleMessage(err)),
    onRecovered: clearError,
  });
}

async function submit(event) {
  event.preventDefault();
  const model = modelSelect.value;
  const source = currentSource();
  if (!model || !source) {
    showError("Choose a model and an image first.");
    return;
  }
  const current = newRun(performance.now());
  setStatus("submitting");
  startTicker(current);
  submitButton.disabled = true;
  submitButton.setAttribute("aria-busy", "true");

  let job;
  try {
    job = await postJob(model, source, current.controller.signal);
  } catch (err) {
    if (current.controller.signal.aborted) return;
    stopTicker(current);
    setStatus("");
    details.hidden = true;
    showError(`The job was not accepted: ${describe(err)}`);
    return;
  } finally {
    if (run === current) {
      submitButton.disabled = false;
      submitButton.removeAttribute("aria-busy");
    }
  }
  if (!job || typeof job.job_id !== "string") {
    stopTicker(current);
    setStatus("");
    details.hidden = true;
    showError("The server accepted the request but sent no job ID.");
    return;
  }
  addRecent(job, source);
  // The address now names the job: reloading or bookmarking the page shows it again.
  history.replaceState(null, "", `/?job=${job.job_id}`);
  renderJob(job, current);
  // On a phone the result sits below the form: bring it into view once the job exists.
  if (NARROW.matches) details.closest("section").scrollIntoView({ behavior: "smooth", block: "start" });
  if (!FINAL_STATES.has(job.status)) await followSingle(job, current);
}

/** `/?job=<id>`: show a job submitted earlier (e.g. from the recent-jobs list) and follow it. */
async function openJob(jobId) {
  const current = newRun(null);
  if (!JOB_ID.test(jobId)) {
    details.hidden = true;
    showError(`“${jobId}” is not a job ID (32 hexadecimal characters).`);
    return;
  }
  jobIdOut.textContent = jobId;
  setStatus("loading");
  let job;
  try {
    job = await fetchJson(`/classifications/${jobId}`, { signal: current.controller.signal });
  } catch (err) {
    if (current.controller.signal.aborted) return;
    setStatus("unknown");
    showError(describe(err));
    if (err instanceof ApiError && (err.status === 404 || err.status === 410)) {
      updateRecent(jobId, "expired");
    }
    return;
  }
  if (run !== current) return;
  // Put the job's model and (gallery) image back in the form, ready to run again.
  if ([...modelSelect.options].some((o) => o.value === job.model)) {
    modelSelect.value = job.model;
    updateModelNote();
  }
  if (typeof job.image === "string" && !job.image.startsWith("upload:")) selectGalleryImage(job.image);
  renderJob(job, current);
  if (!FINAL_STATES.has(job.status)) await followSingle(job, current);
}

// ---- comparing every model on one image ----------------------------------------------------------

function buildColumn(model) {
  const column = document.createElement("article");
  column.className = "compare-column";
  column.dataset.model = model.name;
  const head = document.createElement("header");
  head.className = "compare-head";
  const title = document.createElement("h3");
  title.id = `compare-title-${model.name}`;
  title.textContent = model.title;
  column.setAttribute("aria-labelledby", title.id);
  const status = document.createElement("span");
  status.className = "status compare-status";
  head.append(title, status);
  const times = document.createElement("p");
  times.className = "compare-times";
  const inference = document.createElement("span");
  inference.dataset.time = "inference";
  const total = document.createElement("span");
  total.dataset.time = "total";
  times.append(inference, total);
  const error = document.createElement("p");
  error.className = "error compare-error";
  error.hidden = true;
  const list = document.createElement("ol");
  list.className = "chart";
  list.setAttribute("aria-label", `Top-5 labels and scores for ${model.title}`);
  const job = document.createElement("p");
  job.className = "compare-job";
  column.append(head, times, error, list, job);
  return column;
}

function renderColumn(column, job, state) {
  const status = column.querySelector(".compare-status");
  status.textContent = job.status;
  status.dataset.status = job.status;
  column.dataset.status = job.status;
  const jobLine = column.querySelector(".compare-job");
  if (!jobLine.firstChild) {
    const link = document.createElement("a");
    link.href = `/?job=${job.job_id}`;
    link.textContent = `job ${job.job_id.slice(0, 8)}…`;
    link.title = job.job_id;
    jobLine.append(link);
    if (job.replica) jobLine.append(` · ${job.replica}`);
  } else if (job.replica && !jobLine.textContent.includes(job.replica)) {
    jobLine.append(` · ${job.replica}`);
  }
  updateRecent(job.job_id, job.status);
  if (!FINAL_STATES.has(job.status)) return;

  state.doneAt = performance.now();
  const inference = column.querySelector('[data-time="inference"]');
  if (job.reused_from) {
    inference.textContent = "reused";
    inference.title = `Same image and model as job ${job.reused_from}: its result is reused.`;
  } else {
    const ms = inferenceMs(job);
    inference.textContent = ms == null ? "inference —" : `inference ${seconds(ms)}`;
  }
  column.querySelector('[data-time="total"]').textContent =
    `total ${seconds(state.doneAt - state.submittedAt)}`;
  if (job.status === "succeeded") {
    renderBars(column.querySelector(".chart"), Array.isArray(job.result) ? job.result : []);
  } else {
    const reason =
      job.status === "cancelled"
        ? "cancelled before a replica took it"
        : job.error && job.error.message
          ? job.error.message
          : "no reason was given";
    showColumnError(column, `The classification failed: ${reason}`);
  }
}

function showColumnError(column, message) {
  const box = column.querySelector(".compare-error");
  box.textContent = message;
  box.hidden = !message;
}

function updateCompareSummary(states) {
  const done = states.filter((s) => s.doneAt != null).length;
  compareSummary.textContent =
    done === states.length
      ? `All ${states.length} models answered.`
      : `${done} of ${states.length} models answered…`;
}

async function compareOne(model, source, column, state, signal, states) {
  let job;
  try {
    job = await postJob(model.name, source, signal);
  } catch (err) {
    if (signal.aborted) return;
    state.doneAt = performance.now();
    column.dataset.status = "rejected";
    const status = column.querySelector(".compare-status");
    status.textContent = "not accepted";
    status.dataset.status = "failed";
    column.querySelector('[data-time="total"]').textContent = "";
    showColumnError(column, `The job was not accepted: ${describe(err)}`);
    updateCompareSummary(states);
    return;
  }
  if (signal.aborted) return;
  addRecent(job, source);
  renderColumn(column, job, state);
  updateCompareSummary(states);
  if (FINAL_STATES.has(job.status)) return;
  await follow(job.job_id, job.status, signal, {
    onJob: (next) => {
      renderColumn(column, next, state);
      if (FINAL_STATES.has(next.status)) updateCompareSummary(states);
    },
    onGiveUp: (err) => {
      state.doneAt = performance.now();
      showColumnError(column, describe(err));
      updateCompareSummary(states);
    },
    onTrouble: (err) => showColumnError(column, troubleMessage(err)),
    onRecovered: () => showColumnError(column, ""),
  });
}

async function compare() {
  const source = currentSource();
  if (!source) {
    showError("Choose an image first.");
    return;
  }
  // Every model this gateway offers (or the page's fallback list if /info has not answered).
  const list = models.length
    ? models
    : [...modelSelect.options].map((o) => ({ name: o.value, title: modelTitle(o.value) }));
  if (comparison) {
    comparison.controller.abort();
    clearInterval(comparison.ticker);
  }
  const current = { controller: new AbortController(), ticker: null };
  comparison = current;
  clearError();
  history.replaceState(null, "", "/");

  const submittedAt = performance.now();
  const states = list.map(() => ({ submittedAt, doneAt: null }));
  const columns = list.map(buildColumn);
  compareResults.replaceChildren(...columns);
  compareSubject.textContent =
    source.kind === "upload" ? `${source.name} (your file)` : source.name;
  compareSection.hidden = false;
  updateCompareSummary(states);
  // The running total of every column that has no answer yet.
  const tick = () => {
    columns.forEach((column, i) => {
      if (states[i].doneAt == null) {
        column.querySelector('[data-time="total"]').textContent =
          `total ${seconds(performance.now() - submittedAt)}`;
      }
    });
  };
  tick();
  current.ticker = setInterval(tick, 100);
  compareSection.scrollIntoView({ behavior: "smooth", block: "start" });

  compareButton.disabled = true;
  compareButton.setAttribute("aria-busy", "true");
  const signal = current.controller.signal;
  const posts = list.map((model, i) => compareOne(model, source, columns[i], states[i], signal, states));
  try {
    await Promise.all(posts);
  } finally {
    if (comparison === current) {
      clearInterval(current.ticker);
      compareButton.disabled = false;
      compareButton.removeAttribute("aria-busy");
    }
  }
}

// ---- your recent jobs (localStorage) ------------------------------------------------------------

function loadRecent() {
  try {
    const list = JSON.parse(localStorage.getItem(RECENT_KEY) || "[]");
    return Array.isArray(list)
      ? list.filter((e) => e && typeof e.job_id === "string" && JOB_ID.test(e.job_id))
      : [];
  } catch {
    return [];
  }
}

function saveRecent(list) {
  try {
    localStorage.setItem(RECENT_KEY, JSON.stringify(list.slice(0, RECENT_MAX)));
  } catch {
    // Storage full or disabled: the list just is not kept.
  }
}

function addRecent(job, source) {
  const entry = {
    job_id: job.job_id,
    model: job.model,
    image: typeof job.image === "string" && job.image ? job.image : source.name,
    submitted_at: Date.now() / 1000,
    status: job.status,
  };
  saveRecent([entry, ...loadRecent().filter((e) => e.job_id !== job.job_id)]);
  renderRecent();
}

function updateRecent(jobId, status) {
  const list = loadRecent();
  const entry = list.find((e) => e.job_id === jobId);
  if (!entry || entry.status === status) return;
  entry.status = status;
  saveRecent(list);
  renderRecent();
}

function renderRecent() {
  const list = loadRecent();
  const items = list.map((entry) => {
    const item = document.createElement("li");
    item.className = "recent-item";
    item.dataset.jobId = entry.job_id;
    const link = document.createElement("a");
    link.className = "recent-link";
    link.href = `/?job=${entry.job_id}`;
    const image = document.createElement("span");
    image.className = "recent-image";
    image.textContent = imageLabel(entry.image);
    const model = document.createElement("span");
    model.className = "recent-model";
    model.textContent = modelTitle(entry.model);
    link.append(image, model);
    link.setAttribute("aria-label", `${imageLabel(entry.image)} on ${modelTitle(entry.model)}`);
    const time = document.createElement("time");
    time.className = "recent-time";
    if (Number.isFinite(entry.submitted_at)) {
      const when = new Date(entry.submitted_at * 1000);
      time.dateTime = when.toISOString();
      time.textContent = clockTime(entry.submitted_at);
      time.title = when.toLocaleString();
    }
    const status = document.createElement("span");
    status.className = "status";
    status.textContent = entry.status || "unknown";
    status.dataset.status = entry.status || "unknown";
    item.append(link, time, status);
    return item;
  });
  recentList.replaceChildren(...items);
  recentEmpty.hidden = items.length > 0;
  recentClear.hidden = items.length === 0;
}

/** Jobs left unfinished in the list (the page was closed mid-way) get their state once. */
async function refreshRecent() {
  for (const entry of loadRecent()) {
    if (FINAL_STATES.has(entry.status) || entry.status === "expired") continue;
    if (run && jobIdOut.textContent === entry.job_id) continue; // followed anyway
    try {
      const job = await fetchJson(`/classifications/${entry.job_id}`);
      updateRecent(entry.job_id, job.status);
    } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 410)) {
        updateRecent(entry.job_id, "expired");
      }
    }
  }
}

// ---- start ---------------------------------------------------------------------------------------

form.addEventListener("submit", submit);
compareButton.addEventListener("click", compare);
gallery.addEventListener("change", () => {
  showUploadError("");
  dropUpload();
  showPreview();
});
modelSelect.addEventListener("change", updateModelNote);
fileInput.addEventListener("change", () => {
  const file = fileInput.files && fileInput.files[0];
  if (file) useFile(file);
  fileInput.value = ""; // choosing the same file again still counts as a change
});
uploadClear.addEventListener("click", clearUpload);
preview.addEventListener("load", previewLoaded);
preview.addEventListener("error", previewFailed);
recentClear.addEventListener("click", () => {
  saveRecent([]);
  renderRecent();
});
window.addEventListener("storage", (event) => {
  if (event.key === RECENT_KEY || event.key === null) renderRecent();
});
setupDragAndDrop();
setupTokenPanel(async () => {
  clearError();
  // A job opened from a link that was refused for want of a token: open it again.
  const refused = new URLSearchParams(window.location.search).get("job");
  if (refused && statusOut.dataset.status === "unknown") openJob(refused);
  if (await loadInfo(true)) refreshRecent();
});
// These need the script; without it the form still posts a gallery job.
for (const node of document.querySelectorAll("[data-needs-script]")) node.hidden = false;

showPreview();
renderRecent();
const opened = new URLSearchParams(window.location.search).get("job");
if (opened) openJob(opened);
loadInfo(true).then((ok) => {
  if (ok) refreshRecent();
});
setInterval(() => loadInfo(false), INFO_REFRESH_MS);
