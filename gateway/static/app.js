// imgq web page: pick a model and a gallery image, submit a job, follow it by long-polling.
// Vanilla JS, no build step; the API is described in docs/api-contract.md.
"use strict";

(() => {
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
  const FINAL_STATES = new Set(["succeeded", "failed"]);
  // Matches the single-column layout in style.css.
  const NARROW = window.matchMedia("(max-width: 899px)");

  const el = (id) => document.getElementById(id);
  const form = el("classify-form");
  const modelSelect = el("model-select");
  const modelNote = el("model-note");
  const gallery = el("gallery");
  const preview = el("preview-image");
  const previewCaption = el("preview-caption");
  const submitButton = el("submit-button");
  const errorBox = el("error-message");
  const idleHint = el("idle-hint");
  const details = el("job-details");
  const jobIdOut = el("job-id");
  const statusOut = el("job-status");
  const elapsedOut = el("elapsed");
  const replicaRow = el("replica-row");
  const replicaOut = el("job-replica");
  const chart = el("result-chart");

  let models = [];
  let pollWait = POLL_WAIT_S;
  let run = null; // the job being followed: {controller, submittedAt, ticker}

  /** An HTTP answer that is not a success; `message` is meant for people. */
  class ApiError extends Error {
    constructor(status, message, retryAfter) {
      super(message);
      this.status = status;
      this.retryAfter = retryAfter;
    }
  }

  async function problemMessage(response) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      // Not JSON (e.g. a proxy's HTML error page): fall back to the status line.
    }
    if (body && typeof body.detail === "string" && body.detail) return body.detail;
    if (body && typeof body.title === "string" && body.title) return body.title;
    return `The server answered ${response.status} ${response.statusText}`.trim() + ".";
  }

  /** fetch() that returns parsed JSON or throws ApiError (HTTP) / TypeError (network). */
  async function fetchJson(url, options = {}) {
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    const response = await fetch(url, { ...options, headers, cache: "no-store" });
    if (!response.ok) {
      const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
      throw new ApiError(
        response.status,
        await problemMessage(response),
        Number.isFinite(retry) ? retry : null,
      );
    }
    return response.json();
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      signal.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
    });
  }

  // ---- model list and gallery ------------------------------------------------------------------

  function modelLabel(model) {
    return `${model.title} · ${model.online ? "online" : "offline"}`;
  }

  function renderModels(list) {
    models = list;
    const chosen = modelSelect.value;
    const options = list.map((model) => {
      const option = document.createElement("option");
      option.value = model.name;
      option.textContent = modelLabel(model);
      return option;
    });
    modelSelect.replaceChildren(...options);
    const keep = list.find((m) => m.name === chosen) || list.find((m) => m.online) || list[0];
    if (keep) modelSelect.value = keep.name;
    updateModelNote();
  }

  function updateModelNote() {
    const model = models.find((m) => m.name === modelSelect.value);
    if (!model) {
      modelNote.textContent = "";
      modelNote.dataset.state = "";
      return;
    }
    modelNote.dataset.state = model.online ? "online" : "offline";
    const n = Number(model.replicas) || 0;
    const replicas = n ? ` · ${n} replica${n === 1 ? "" : "s"}` : "";
    modelNote.textContent = model.online
      ? `Online${replicas} · input ${model.input_size} px`
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
    const keep = images.some((i) => i.name === chosen) ? chosen : images[0].name;
    gallery.replaceChildren(...images.map((image) => buildThumb(image, image.name === keep)));
    showPreview();
  }

  function selectedImage() {
    const radio = gallery.querySelector('input[name="image"]:checked');
    return radio ? radio.value : null;
  }

  function showPreview() {
    const radio = gallery.querySelector('input[name="image"]:checked');
    for (const thumb of gallery.querySelectorAll(".thumb")) {
      thumb.classList.toggle("selected", thumb.contains(radio));
    }
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
    } catch (err) {
      // A failed refresh keeps the last good list; only a failed first load is worth showing.
      if (firstTime) showError(`Could not load the models and images: ${describe(err)}`);
    }
  }

  // ---- job display -----------------------------------------------------------------------------

  function describe(err) {
    if (err instanceof ApiError) {
      return err.retryAfter ? `${err.message} (Retry after ${err.retryAfter} s.)` : err.message;
    }
    return "The server could not be reached. Check your connection and try again.";
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function clearError() {
    errorBox.textContent = "";
    errorBox.hidden = true;
  }

  function seconds(ms) {
    return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  }

  function percent(score) {
    const p = score * 100;
    if (p > 0 && p < 0.01) return "<0.01%";
    return `${p.toFixed(p >= 10 ? 1 : 2)}%`;
  }

  function setStatus(status) {
    statusOut.textContent = status;
    statusOut.dataset.status = status;
  }

  function renderChart(result) {
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
    chart.replaceChildren(...rows);
  }

  function renderJob(job, current) {
    jobIdOut.textContent = job.job_id;
    setStatus(job.status);
    if (job.replica) {
      replicaOut.textContent = job.replica;
      replicaRow.hidden = false;
    }
    if (!FINAL_STATES.has(job.status)) return;

    stopTicker(current);
    elapsedOut.textContent = seconds(performance.now() - current.submittedAt);
    if (job.finished_at && job.queued_at) {
      const inService = document.createElement("small");
      inService.textContent = `${seconds((job.finished_at - job.queued_at) * 1000)} in the service`;
      elapsedOut.append(inService);
    }
    if (job.status === "succeeded") {
      renderChart(Array.isArray(job.result) ? job.result : []);
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
    setStatus("");
    elapsedOut.textContent = "";
    replicaOut.textContent = "";
    replicaRow.hidden = true;
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

  /** Re-issue the long-poll as soon as each answer arrives, until the job is final. */
  async function follow(jobId, current, status) {
    const signal = current.controller.signal;
    let failures = 0;
    while (!signal.aborted) {
      let job;
      try {
        job = await pollOnce(jobId, status, signal);
      } catch (err) {
        if (signal.aborted) return;
        if (err instanceof ApiError && err.status < 500) {
          // 404 job_not_found and the like will not change by asking again.
          stopTicker(current);
          setStatus("unknown");
          showError(describe(err));
          return;
        }
        failures += 1;
        if (failures >= FAILURES_BEFORE_NOTICE) {
          const why = err instanceof ApiError ? ` (${err.message})` : "";
          showError(`Lost contact with the server${why}. Still trying…`);
        }
        await sleep(RETRY_DELAY_MS, signal);
        continue;
      }
      if (signal.aborted) return;
      if (failures) clearError();
      failures = 0;
      renderJob(job, current);
      status = job.status;
      if (FINAL_STATES.has(job.status)) return;
    }
  }

  async function submit(event) {
    event.preventDefault();
    const model = modelSelect.value;
    const image = selectedImage();
    if (!model || !image) {
      showError("Choose a model and an image first.");
      return;
    }
    if (run) {
      run.controller.abort();
      stopTicker(run);
    }
    const current = { controller: new AbortController(), submittedAt: performance.now(), ticker: null };
    run = current;

    resetResult();
    idleHint.hidden = true;
    details.hidden = false;
    setStatus("submitting");
    startTicker(current);
    submitButton.disabled = true;
    submitButton.setAttribute("aria-busy", "true");

    let job;
    try {
      job = await fetchJson("/classifications", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ model, image }),
        signal: current.controller.signal,
      });
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
    renderJob(job, current);
    // On a phone the result sits below the form: bring it into view once the job exists.
    if (NARROW.matches) details.closest("section").scrollIntoView({ behavior: "smooth", block: "start" });
    if (!FINAL_STATES.has(job.status)) await follow(job.job_id, current, job.status);
  }

  form.addEventListener("submit", submit);
  gallery.addEventListener("change", showPreview);
  modelSelect.addEventListener("change", updateModelNote);
  showPreview();
  loadInfo(true);
  setInterval(() => loadInfo(false), INFO_REFRESH_MS);
})();
