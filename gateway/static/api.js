// imgq: what the main page and the status page share: API calls, problem details, the API token.
// Vanilla ES module, no build step; the API is described in docs/api-contract.md.

// The token lives in this browser only (localStorage), and is sent on every API call.
const TOKEN_KEY = "imgq.apiToken";
const UNAUTHORIZED_EVENT = "imgq:unauthorized";

/** An HTTP answer that is not a success; `message` is meant for people. */
export class ApiError extends Error {
  constructor(status, message, code, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return ""; // storage disabled: the page still works on an open service
  }
}

function setToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage disabled: nothing to keep.
  }
}

async function readProblem(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (e.g. a proxy's HTML error page): fall back to the status line.
  }
  const code = body && typeof body.code === "string" ? body.code : null;
  let message;
  if (body && typeof body.detail === "string" && body.detail) message = body.detail;
  else if (body && typeof body.title === "string" && body.title) message = body.title;
  else message = `The server answered ${response.status} ${response.statusText}`.trim() + ".";
  return { code, message };
}

/**
 * fetch() with the API token and JSON Accept header; returns parsed JSON or throws
 * ApiError (HTTP) / TypeError (network) / AbortError. A 401 also tells the token panel to show.
 */
export async function fetchJson(url, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  // GETs must not come from a cache; other methods are not cached anyway, and "no-store" would
  // make the browser add "Cache-Control: no-cache", which the gateway reads as "classify again".
  const method = (options.method || "GET").toUpperCase();
  const cache = method === "GET" ? "no-store" : "default";
  const response = await fetch(url, { ...options, headers, cache });
  if (!response.ok) {
    const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
    const { code, message } = await readProblem(response);
    const error = new ApiError(response.status, message, code, Number.isFinite(retry) ? retry : null);
    if (response.status === 401) {
      window.dispatchEvent(new CustomEvent(UNAUTHORIZED_EVENT, { detail: { message, hadToken: !!token } }));
    }
    throw error;
  }
  return response.json();
}

/** A sentence for people about any error fetchJson can throw. */
export function describe(err) {
  if (err instanceof ApiError) {
    if (err.status === 401) {
      return `${err.message} Enter an API token above, then try again.`;
    }
    return err.retryAfter ? `${err.message} (Retry after ${err.retryAfter} s.)` : err.message;
  }
  return "The server could not be reached. Check your connection and try again.";
}

export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    if (signal) {
      signal.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
    }
  });
}

export function seconds(ms) {
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

export function clockTime(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleTimeString([], {
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });
}

/**
 * The API-token panel (#token-panel): hidden until the service answers 401 (then it asks for a
 * token); once a token is saved it shrinks to one line with "Forget". The token is kept in
 * localStorage. `onSaved` runs after a token is saved or forgotten (e.g. to load again).
 */
export function setupTokenPanel(onSaved) {
  const panel = document.getElementById("token-panel");
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  const note = document.getElementById("token-note");
  const saved = document.getElementById("token-saved");
  const forget = document.getElementById("token-forget");
  if (!panel || !form || !input) return;

  const show = (asking) => {
    const has = !!getToken();
    panel.hidden = !asking && !has;
    form.hidden = !asking;
    saved.hidden = asking || !has;
    forget.hidden = !has;
  };

  window.addEventListener(UNAUTHORIZED_EVENT, (event) => {
    const { message, hadToken } = event.detail || {};
    const wasAsking = !form.hidden && !panel.hidden;
    note.textContent = hadToken
      ? `The saved token was refused (${message || "unauthorized"}). Enter another one.`
      : `This service needs an API token (${message || "unauthorized"}).`;
    show(true);
    if (!wasAsking) input.focus();
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) {
      note.textContent = "Enter the token you were given, then press Save.";
      input.focus();
      return;
    }
    setToken(token);
    input.value = "";
    show(false);
    onSaved();
  });

  forget.addEventListener("click", () => {
    setToken("");
    show(false);
    onSaved();
  });

  show(false);
}
