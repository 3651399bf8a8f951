// The bars a chart shows, ascending by time, each marked closed or forming. Pure data: no DOM.
// A row is the API's bar [ts_ms, open, high, low, close, volume].

export function toBar(row, closed) {
  return {
    time: Math.floor(row[0] / 1000), open: row[1], high: row[2], low: row[3], close: row[4],
    volume: row[5], closed,
  };
}

export class BarStore {
  constructor(timeframeMs) {
    this.timeframeMs = timeframeMs;
    this.bars = [];
  }

  get first() { return this.bars[0]; }
  get last() { return this.bars[this.bars.length - 1]; }

  // Closed when its bucket has ended by the given clock (the server says so on the stream).
  closedAt(row, now = Date.now()) {
    return row[0] + this.timeframeMs <= now;
  }

  // Replace everything (a first REST page).
  reset(rows) {
    this.bars = rows.map((row) => toBar(row, this.closedAt(row)));
  }

  // Older rows in front (a page fetched with end = the first bar's time); returns how many were new.
  prepend(rows) {
    const first = this.first ? this.first.time : Infinity;
    const older = rows.filter((row) => row[0] / 1000 < first).map((row) => toBar(row, this.closedAt(row)));
    this.bars = older.concat(this.bars);
    return older.length;
  }

  // Apply one bar. Returns what changed, for the chart: "append", "last", "history" (an existing
  // older bar changed), "insert" (a bar appeared between two others), or "none" (a frame older
  // than the forming bar's own state, or before the loaded history).
  apply(row, closed) {
    const bar = toBar(row, closed);
    const last = this.last;
    if (!last || bar.time > last.time) {
      if (last && !last.closed) this.bars[this.bars.length - 1] = { ...last, closed: true }; // its bucket ended
      this.bars.push(bar);
      return "append";
    }
    if (bar.time === last.time) {
      if (last.closed && !closed) return "none"; // never reopen a closed bar
      this.bars[this.bars.length - 1] = bar;
      return "last";
    }
    if (bar.time < this.first.time) return "none";
    const at = this.indexOf(bar.time);
    if (at >= 0) {
      this.bars[at] = { ...bar, closed: true };
      return "history";
    }
    this.bars.splice(-at - 1, 0, { ...bar, closed: true });
    return "insert";
  }

  // Binary search: the index of `time`, or -(insertion point) - 1.
  indexOf(time) {
    let lo = 0;
    let hi = this.bars.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const t = this.bars[mid].time;
      if (t === time) return mid;
      if (t < time) lo = mid + 1;
      else hi = mid - 1;
    }
    return -lo - 1;
  }
}

// Reconnect delays: exponential, capped, with jitter (half the window fixed, half random), so
// clients cut off together do not all come back in the same instant.
export function backoffDelay(attempt, baseMs = 500, capMs = 15000, random = Math.random) {
  const window = Math.min(capMs, baseMs * 2 ** attempt);
  return Math.round(window / 2 + random() * window / 2);
}

// The wait before asking again after a temporary failure: the backoff, or at least what the
// server's Retry-After said (seconds, capped so that a long one does not leave the page idle).
export function retryWait(attempt, retryAfterS = null, baseMs = 1000, capMs = 30000, afterCapS = 300, random = Math.random) {
  const after = Math.min(retryAfterS || 0, afterCapS) * 1000;
  return Math.max(backoffDelay(attempt, baseMs, capMs, random), after);
}

// A volume for the legend: grouped digits below 10,000, then K, M and B.
export function formatVolume(value) {
  if (value >= 1e9) return `${(value / 1e9).toFixed(2)}B`;
  if (value >= 1e6) return `${(value / 1e6).toFixed(2)}M`;
  if (value >= 1e4) return `${(value / 1e3).toFixed(2)}K`;
  return value.toLocaleString("en-US", { maximumFractionDigits: 4 });
}
