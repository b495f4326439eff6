// The API key and calls to the gateway. The key lives in sessionStorage (gone when the browser session ends)
// unless the user ticks "remember" (localStorage).
const KEY = "longrun.apiKey";

export function apiKey() {
  return sessionStorage.getItem(KEY) || localStorage.getItem(KEY) || "";
}

export function remembered() {
  return Boolean(localStorage.getItem(KEY));
}

export function saveKey(key, remember) {
  forgetKey();
  if (!key) return;
  (remember ? localStorage : sessionStorage).setItem(KEY, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY);
  localStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/** fetch() a gateway path with the key; JSON back (null for 204); errors as ApiError with the API's message. */
export async function api(path, { method = "GET", body, query } = {}) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") params.set(name, String(value));
  }
  const url = params.size ? `${path}?${params}` : path;
  const headers = { Authorization: `Bearer ${apiKey()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, "network", `the gateway did not answer (${err.message})`);
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON: reported below */ }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code || String(response.status),
      error.message || text.slice(0, 200) || response.statusText, error.details);
  }
  return data;
}
