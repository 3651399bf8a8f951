// The chart page: pickers, history over REST (scrolling left pages back with `end`), live bars over
// the WebSocket (forming bar updated in place, revisions applied where they belong, a `seq` gap
// refetched over REST), a badge, and a legend with the OHLC and volume of the bar under the cursor.
// The badge never says `live` for a series the chart does not show: a switch says `loading` (the
// old series dimmed, its channel unsubscribed), a failed load clears the chart and says `error`
// (retried with backoff when the failure is temporary), a partial answer says `stale`.
import { CandlestickSeries, HistogramSeries, createChart } from "/assets/vendor/lightweight-charts.mjs";
import { ApiError, apiKey, getJSON, ohlcv, ohlcvFrom, setApiKey } from "./api.js";
import { BarStore, backoffDelay, formatVolume, retryWait } from "./store.js";
import { Stream } from "./stream.js";

const PAGE = 500;
const UP = "#089981";
const DOWN = "#f23645";
const FORMING = { up: "rgba(8,153,129,0.45)", down: "rgba(242,54,69,0.45)" };
const $ = (id) => document.getElementById(id);
const RETRY_BASE_MS = 1000;
const RETRY_CAP_MS = 30000;
const RETRY_AFTER_CAP_S = 300;

const chart = createChart($("chart"), { autoSize: true, timeScale: { timeVisible: true, secondsVisible: false } });
const candles = chart.addSeries(CandlestickSeries, { upColor: UP, downColor: DOWN, wickUpColor: UP, wickDownColor: DOWN, borderVisible: false });
const volume = chart.addSeries(HistogramSeries, { priceFormat: { type: "volume" }, priceScaleId: "" });
volume.priceScale().applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
candles.priceScale().applyOptions({ scaleMargins: { top: 0.05, bottom: 0.25 } });

const page = {
  selection: null, store: null, generation: 0, lastSeq: null, since: null, exhausted: false, loadingOlder: false,
  frames: 0, gaps: 0, revisions: 0, state: "loading", firstCandlesMs: null, incomplete: false,
  attempts: 0, retries: 0, retryTimer: null, precision: 2, cursorTime: null,
};
const stream = new Stream({ frame: onFrame, state: setState, unauthorized: askForKey });
window.chartPage = page; // read by the browser tests and the bench
page.chart = chart;
page.candles = candles;
page.stream = stream;
page.redraw = () => drawAll();
page.drawn = (time) => candles.data().find((item) => item.time === time) || null;

function candle(bar) {
  const item = { time: bar.time, open: bar.open, high: bar.high, low: bar.low, close: bar.close };
  if (!bar.closed) {
    const color = bar.close >= bar.open ? FORMING.up : FORMING.down;
    Object.assign(item, { color, wickColor: color, borderColor: color });
  }
  return item;
}

function volumeBar(bar) {
  return { time: bar.time, value: bar.volume, color: bar.close >= bar.open ? "rgba(8,153,129,0.4)" : "rgba(242,54,69,0.4)" };
}

function drawAll() {
  candles.setData(page.store.bars.map(candle));
  volume.setData(page.store.bars.map(volumeBar));
}

function draw(bar, historical) {
  candles.update(candle(bar), historical);
  volume.update(volumeBar(bar), historical);
}

function applyRow(row, closed) {
  const store = page.store;
  const kind = store.apply(row, closed);
  if (kind === "append") {
    if (store.bars.length > 1) draw(store.bars[store.bars.length - 2], true);
    draw(store.last, false);
  } else if (kind === "last") {
    draw(store.last, false);
  } else if (kind === "history") {
    draw(store.bars[store.indexOf(Math.floor(row[0] / 1000))], true);
  } else if (kind === "insert") {
    drawAll();
  }
}

function onFrame(frame) {
  if (!page.store) return;
  page.frames += 1;
  if (frame.type === "snapshot") {
    frame.bars.forEach((row) => applyRow(row, page.store.closedAt(row)));
    page.lastSeq = typeof frame.seq === "number" ? frame.seq : null;
    // A channel that is stale says so in a status frame right after; a snapshot cut short by the
    // deadline says `incomplete`, and so did REST when the page's history came in part.
    const partial = frame.incomplete || page.incomplete;
    setState(partial ? "stale" : "live", partial ? "the history is incomplete" : "");
    $("message").hidden = true;
    // Away longer than a snapshot holds (1000 bars): the bars between come over REST.
    if (page.since !== null && frame.bars.length && frame.bars[0][0] > page.since) refill(page.since, frame.bars[0][0]);
  } else if (frame.type === "bar") {
    if (typeof frame.seq === "number") {
      if (page.lastSeq !== null && frame.seq <= page.lastSeq) return; // already applied
      if (page.lastSeq !== null && frame.seq > page.lastSeq + 1) refetch();
      page.lastSeq = frame.seq;
    }
    if (frame.revised) page.revisions += 1;
    applyRow(frame.bar, Boolean(frame.closed));
    if (page.cursorTime === null) showLegend(page.store.last);
  } else if (frame.type === "status") {
    const partial = frame.state === "live" && page.incomplete; // live, over a history still in part
    setState(partial ? "stale" : frame.state, partial ? "the history is incomplete" : frame.reason);
  }
}

async function refill(start, end) {
  const generation = page.generation;
  const rows = await ohlcvFrom(page.selection, start, 10, end).catch(showError);
  if (!rows || generation !== page.generation) return;
  rows.forEach((row) => page.store.apply(row, true));
  drawAll();
}

// Frames were missed (a seq jump): take the bars from the newest closed one again over REST.
async function refetch() {
  page.gaps += 1;
  const generation = page.generation;
  const closed = page.store.bars.filter((bar) => bar.closed);
  const since = closed.length ? closed[closed.length - 1].time * 1000 : page.store.first.time * 1000;
  const rows = await ohlcvFrom(page.selection, since).catch(showError);
  if (!rows || generation !== page.generation) return;
  const forming = page.store.last.time * 1000;
  rows.filter((row) => row[0] < forming).forEach((row) => applyRow(row, true));
}

function setState(state, detail = "") {
  page.state = state;
  const badge = $("status");
  badge.dataset.state = state;
  badge.textContent = state;
  badge.title = detail || "";
  $("stage").dataset.state = state;
  if (state === "error" && detail) showError(new Error(detail)); // a refused subscription says why
}

function showError(error) {
  const message = $("message");
  message.hidden = false;
  message.textContent = error.message;
  if (error instanceof ApiError && error.status === 401) $("auth").hidden = false;
  return null;
}

// A failure that leaves nothing to show: the badge says `error` (never the state of an older
// series), the message says why, and the chart's overlay says what is wrong.
function failed(error) {
  showError(error);
  setState("error");
  $("status").title = error.message;
  $("overlay").textContent = error.message;
}

function askForKey(detail) {
  stream.stop();
  failed(new ApiError(401, { error: { code: "unauthorized", message: detail } }));
}

// The bars of the chart go, and the legend with them.
function clearSeries() {
  page.store = null;
  candles.setData([]);
  volume.setData([]);
  showLegend(null);
}

// --- Legend: the bar under the cursor, else the newest ---------------------------------------
function showLegend(bar) {
  const legend = $("ohlc");
  if (!bar) {
    legend.hidden = true;
    return;
  }
  const p = (value) => value.toFixed(page.precision);
  const change = bar.open ? ((bar.close - bar.open) / bar.open) * 100 : 0;
  legend.hidden = false;
  legend.dataset.time = String(bar.time);
  legend.dataset.direction = bar.close >= bar.open ? "up" : "down";
  const when = new Date(bar.time * 1000).toISOString().slice(0, 16).replace("T", " ");
  legend.replaceChildren(...[
    ["", when], ["O", p(bar.open)], ["H", p(bar.high)], ["L", p(bar.low)], ["C", p(bar.close)],
    ["", `${change >= 0 ? "+" : ""}${change.toFixed(2)}%`], ["V", formatVolume(bar.volume)],
  ].map(([name, value]) => {
    const item = document.createElement("span");
    if (name) {
      const label = document.createElement("b");
      label.textContent = name;
      item.append(label, " ");
    }
    item.append(value);
    return item;
  }));
}

chart.subscribeCrosshairMove((param) => {
  const store = page.store;
  if (!store) return;
  page.cursorTime = param && param.time !== undefined ? param.time : null;
  const at = page.cursorTime !== null ? store.indexOf(page.cursorTime) : -1;
  showLegend(at >= 0 ? store.bars[at] : store.last);
});

// `retry`: asking again after a temporary failure; the badge keeps saying `error` meanwhile.
async function load(retry = false) {
  const generation = ++page.generation;
  const sel = page.selection;
  clearTimeout(page.retryTimer);
  stream.stop(); // the old channel's frames must not land on the new series, nor its state
  if (!retry) $("message").hidden = true;
  page.store = null;
  page.lastSeq = null;
  page.exhausted = false;
  page.loadStartedMs = performance.now();
  if (!retry) {
    showLegend(null); // the dimmed series under it is not what is coming
    setState("loading", `${sel.provider} ${sel.symbol} ${sel.timeframe}`);
    $("overlay").textContent = `Loading ${sel.symbol} ${sel.timeframe}\u2026`; // the old series stays dimmed
  }
  let answer, tf;
  try {
    tf = (await markets()).timeframes[sel.timeframe];
    answer = await ohlcv(sel, { limit: PAGE });
  } catch (error) {
    if (generation !== page.generation) return;
    clearSeries(); // never leave another series drawn under these pickers
    failed(error);
    if (error instanceof ApiError && error.temporary) retryLater(generation, error);
    return;
  }
  if (generation !== page.generation) return;
  if (!answer.incomplete) page.attempts = 0;
  $("message").hidden = true;
  priceStep(sel, generation);
  page.store = new BarStore(tf);
  page.store.reset(answer.bars);
  page.incomplete = answer.incomplete;
  drawAll();
  showLegend(page.store.last);
  chart.timeScale().scrollToRealTime();
  if (answer.bars.length && page.firstCandlesMs === null) {
    page.firstCandlesMs = performance.now();
    performance.mark("first-candles");
  }
  page.loadMs = performance.now() - page.loadStartedMs;
  // Until the stream's snapshot: what REST said. `stale` when only part came (the exchange failed
  // and only stored bars answered, or the deadline cut a long computation short): the history is
  // asked for again, with backoff, until it is whole.
  if (answer.incomplete) {
    setState("stale", "the history is incomplete: asking again");
    page.retryTimer = setTimeout(() => {
      if (generation !== page.generation) return;
      page.retries += 1;
      load(true).catch(failed);
    }, retryWait(page.attempts++, null, RETRY_BASE_MS, RETRY_CAP_MS, RETRY_AFTER_CAP_S));
  } else {
    setState("connecting");
  }
  stream.follow(sel, () => {
    page.since = page.store && page.store.last ? page.store.last.time * 1000 : null;
    return page.since;
  });
}

// A temporary failure (the exchange or the server is down): ask again with growing waits, at
// least what Retry-After says.
function retryLater(generation, error) {
  const wait = retryWait(page.attempts++, error.retryAfter, RETRY_BASE_MS, RETRY_CAP_MS, RETRY_AFTER_CAP_S);
  $("overlay").textContent = `${error.message} (trying again in ${Math.round(wait / 1000)} s)`;
  page.retryTimer = setTimeout(() => {
    if (generation !== page.generation) return;
    page.retries += 1;
    load(true).catch(failed);
  }, wait);
}

// The price axis and the legend use the symbol's own price step (UDF's symbol info), else two
// decimals; it comes when it comes (a slow exchange must not hold the chart back).
async function priceStep(sel, generation) {
  const info = await getJSON("/udf/symbols", { symbol: `${sel.provider.toUpperCase()}:${sel.symbol}` }).catch(() => null);
  if (generation !== page.generation) return;
  const scale = info && info.pricescale ? info.pricescale : 100;
  const minMove = info && info.minmov ? info.minmov / scale : 0.01;
  page.precision = Math.max(0, Math.round(Math.log10(scale)));
  candles.applyOptions({ priceFormat: { type: "price", precision: page.precision, minMove } });
  if (page.store) showLegend(page.store.last);
}

async function loadOlder() {
  const store = page.store;
  if (!store || !store.first || page.exhausted || page.loadingOlder) return;
  page.loadingOlder = true;
  const generation = page.generation;
  try {
    const answer = await ohlcv(page.selection, { end: store.first.time * 1000, limit: PAGE });
    if (generation !== page.generation) return;
    if (store.prepend(answer.bars) === 0) page.exhausted = true;
    else drawAll();
  } catch (error) {
    showError(error);
  } finally {
    page.loadingOlder = false;
  }
}

chart.timeScale().subscribeVisibleLogicalRangeChange((range) => {
  if (range && range.from < 20) loadOlder();
});

// --- Pickers --------------------------------------------------------------------------------
let catalogue = null;
const TF_MS = { m: 60000, h: 3600000, d: 86400000, w: 604800000 };

async function markets() {
  if (!catalogue) {
    const answer = await getJSON("/api/v1/markets");
    catalogue = { markets: answer.markets, timeframes: {} };
    for (const tf of answer.markets.flatMap((m) => m.timeframes)) {
      catalogue.timeframes[tf] = parseInt(tf, 10) * TF_MS[tf.slice(-1)];
    }
  }
  return catalogue;
}

function fill(select, values, selected) {
  select.replaceChildren(...values.map((value) => new Option(value, value, false, value === selected)));
}

// Every provider of the market, configured or not: choosing one that is not configured shows the
// server's answer (which settings it needs, or PUT /credentials/<provider> with your own key).
async function fillProviders(market, wanted) {
  const answer = await getJSON("/api/v1/providers", { market });
  const select = $("provider");
  const list = answer.providers;
  const first = list.find((p) => p.provider === wanted) || list.find((p) => p.configured) || list[0];
  select.replaceChildren(...list.map((p) => {
    const label = p.configured ? p.provider : `${p.provider} (not configured)`;
    const option = new Option(label, p.provider, false, p === first);
    option.dataset.configured = String(p.configured);
    return option;
  }));
  return select.value;
}

// The symbol list of a provider. When it cannot be had (the exchange is down, the provider is not
// configured) the symbol asked for stays in the field, and the load says what is wrong.
async function fillSymbols(market, provider, wanted) {
  let symbols;
  try {
    symbols = (await getJSON("/api/v1/symbols", { market, provider })).symbols;
  } catch (error) {
    $("symbols").replaceChildren();
    $("symbol").value = wanted || "";
    if (!wanted) throw error; // nothing to load: say why
    return wanted;
  }
  $("symbols").replaceChildren(...symbols.slice(0, 5000).map((s) => new Option(s)));
  $("symbol").value = symbols.includes(wanted) ? wanted : symbols[0] || "";
  return $("symbol").value;
}

function chosen() {
  return { market: $("market").value, provider: $("provider").value, symbol: $("symbol").value.trim(), timeframe: $("timeframe").value };
}

function select(sel) {
  page.selection = sel;
  history.replaceState(null, "", `?${new URLSearchParams(sel)}`);
  return load().catch(failed);
}

// A picker's list could not be filled: nothing the pickers name can be drawn.
function pickerFailed(error) {
  ++page.generation;
  clearTimeout(page.retryTimer);
  stream.stop();
  clearSeries();
  failed(error);
}

async function start() {
  const asked = Object.fromEntries(new URLSearchParams(location.search));
  let list;
  try {
    list = (await markets()).markets;
  } catch (error) { // the server is down or restarting: try again
    failed(error);
    if (error instanceof ApiError && error.temporary) {
      page.retryTimer = setTimeout(() => start().catch(failed), backoffDelay(page.attempts++, RETRY_BASE_MS, RETRY_CAP_MS));
    }
    return;
  }
  const market = list.some((m) => m.market === asked.market) ? asked.market : (list.find((m) => m.market === "sim") || list[0]).market;
  fill($("market"), list.map((m) => m.market), market);
  const entry = list.find((m) => m.market === market);
  fill($("timeframe"), entry.timeframes, entry.timeframes.includes(asked.timeframe) ? asked.timeframe : "1m");
  const provider = await fillProviders(market, asked.provider);
  await fillSymbols(market, provider, asked.symbol || (market === "sim" ? "SIM/USD" : ""));
  await select(chosen());
}

function switching(what) {
  ++page.generation; // a load still under way for the old choice is dropped
  clearTimeout(page.retryTimer);
  stream.stop();
  setState("loading", what);
  $("overlay").textContent = `Loading ${what}\u2026`;
}

$("market").addEventListener("change", () => {
  switching($("market").value);
  fillProviders($("market").value)
    .then((provider) => fillSymbols($("market").value, provider))
    .then(() => select(chosen()))
    .catch(pickerFailed);
});
$("provider").addEventListener("change", () => {
  switching($("provider").value);
  fillSymbols($("market").value, $("provider").value, $("symbol").value.trim())
    .then(() => select(chosen()))
    .catch(pickerFailed);
});
$("symbol").addEventListener("change", () => $("symbol").value.trim() && select(chosen()));
$("timeframe").addEventListener("change", () => select(chosen()));
$("pickers").addEventListener("submit", (event) => event.preventDefault());
$("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey($("apikey").value.trim());
  $("auth").hidden = true;
  stream.restart();
  start().catch(failed);
});

setApiKey(apiKey()); // drops a key an earlier version of this page left in localStorage
start().catch(failed);
