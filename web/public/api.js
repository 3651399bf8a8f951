// REST calls of the chart page: JSON over fetch, with the API key when one was given.
const KEY = "market-data.api-key";

export function apiKey() {
  return localStorage.getItem(KEY) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY, key);
  else localStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, body) {
    const error = body && body.error;
    super(error ? `${error.code}: ${error.message}` : `HTTP ${status}`);
    this.status = status;
    this.code = error ? error.code : "http_error";
  }
}

export async function getJSON(path, params = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null) url.searchParams.set(name, value);
  }
  const headers = { Accept: "application/json" };
  const key = apiKey();
  if (key) headers["X-API-Key"] = key;
  const response = await fetch(url, { headers });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

// Bars of a series. `query`: {start, end, limit}; answers the /ohlcv body.
export function ohlcv(sel, query) {
  return getJSON("/api/v1/ohlcv", { ...sel, ...query });
}

// Every bar with start <= ts (< end when given), following `next` pages: a refetch after a seq
// gap, or the bars between what the page held and a reconnect's snapshot.
export async function ohlcvFrom(sel, start, maxPages = 5, end = undefined) {
  const rows = [];
  let next = start;
  for (let page = 0; next !== null && next !== undefined && page < maxPages; page++) {
    const answer = await ohlcv(sel, { start: next, end, limit: 1000 });
    rows.push(...answer.bars);
    next = answer.next;
  }
  return rows;
}
