// The chart page: pickers, history over REST (scrolling left pages back with `end`), live bars over
// the WebSocket (forming bar updated in place, revisions applied where they belong, a `seq` gap
// refetched over REST), and a live/stale badge.
import { CandlestickSeries, HistogramSeries, createChart } from "/assets/vendor/lightweight-charts.mjs";
import { ApiError, getJSON, ohlcv, ohlcvFrom, setApiKey } from "./api.js";
import { BarStore } from "./store.js";
import { Stream } from "./stream.js";

const PAGE = 500;
const UP = "#089981";
const DOWN = "#f23645";
const FORMING = { up: "rgba(8,153,129,0.45)", down: "rgba(242,54,69,0.45)" };
const $ = (id) => document.getElementById(id);

const chart = createChart($("chart"), { autoSize: true, timeScale: { timeVisible: true, secondsVisible: false } });
const candles = chart.addSeries(CandlestickSeries, { upColor: UP, downColor: DOWN, wickUpColor: UP, wickDownColor: DOWN, borderVisible: false });
const volume = chart.addSeries(HistogramSeries, { priceFormat: { type: "volume" }, priceScaleId: "" });
volume.priceScale().applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
candles.priceScale().applyOptions({ scaleMargins: { top: 0.05, bottom: 0.25 } });

const page = {
  selection: null, store: null, generation: 0, lastSeq: null, since: null, exhausted: false, loadingOlder: false,
  frames: 0, gaps: 0, revisions: 0, state: "connecting", firstCandlesMs: null,
};
const stream = new Stream({ frame: onFrame, state: setState });
window.chartPage = page; // read by the browser tests and the bench
page.chart = chart;
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
    setState("live"); // a channel that is stale says so in a status frame right after
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
  } else if (frame.type === "status") {
    setState(frame.state, frame.reason);
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
  if (state === "error" && detail) showError(new Error(detail)); // a refused subscription says why
}

function showError(error) {
  const message = $("message");
  message.hidden = false;
  message.textContent = error.message;
  if (error instanceof ApiError && error.status === 401) $("auth").hidden = false;
  return null;
}

async function load() {
  const generation = ++page.generation;
  const sel = page.selection;
  $("message").hidden = true;
  page.store = null;
  page.lastSeq = null;
  page.exhausted = false;
  const tf = (await markets()).timeframes[sel.timeframe];
  const [answer, info] = await Promise.all([
    ohlcv(sel, { limit: PAGE }),
    getJSON("/udf/symbols", { symbol: `${sel.provider.toUpperCase()}:${sel.symbol}` }).catch(() => null),
  ]);
  if (generation !== page.generation) return;
  // The symbol's own price step (UDF's symbol info), else two decimals.
  const scale = info && info.pricescale ? info.pricescale : 100;
  const minMove = info && info.minmov ? info.minmov / scale : 0.01;
  candles.applyOptions({ priceFormat: { type: "price", precision: Math.round(Math.log10(scale)), minMove } });
  page.store = new BarStore(tf);
  page.store.reset(answer.bars);
  drawAll();
  chart.timeScale().scrollToRealTime();
  if (answer.bars.length && page.firstCandlesMs === null) {
    page.firstCandlesMs = performance.now();
    performance.mark("first-candles");
  }
  stream.follow(sel, () => {
    page.since = page.store && page.store.last ? page.store.last.time * 1000 : null;
    return page.since;
  });
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

async function fillProviders(market, wanted) {
  const answer = await getJSON("/api/v1/providers", { market });
  const usable = answer.providers.filter((p) => p.configured).map((p) => p.provider);
  fill($("provider"), usable, wanted);
  return $("provider").value;
}

async function fillSymbols(market, provider, wanted) {
  const answer = await getJSON("/api/v1/symbols", { market, provider });
  $("symbols").replaceChildren(...answer.symbols.slice(0, 5000).map((s) => new Option(s)));
  $("symbol").value = answer.symbols.includes(wanted) ? wanted : answer.symbols[0] || "";
  return $("symbol").value;
}

function chosen() {
  return { market: $("market").value, provider: $("provider").value, symbol: $("symbol").value.trim(), timeframe: $("timeframe").value };
}

function select(sel) {
  page.selection = sel;
  history.replaceState(null, "", `?${new URLSearchParams(sel)}`);
  return load().catch(showError);
}

async function start() {
  const asked = Object.fromEntries(new URLSearchParams(location.search));
  const { markets: list } = await markets();
  const market = list.some((m) => m.market === asked.market) ? asked.market : (list.find((m) => m.market === "sim") || list[0]).market;
  fill($("market"), list.map((m) => m.market), market);
  const entry = list.find((m) => m.market === market);
  fill($("timeframe"), entry.timeframes, entry.timeframes.includes(asked.timeframe) ? asked.timeframe : "1m");
  const provider = await fillProviders(market, asked.provider);
  await fillSymbols(market, provider, asked.symbol || "SIM/USD");
  await select(chosen());
}

$("market").addEventListener("change", () => fillProviders($("market").value)
  .then((provider) => fillSymbols($("market").value, provider))
  .then(() => select(chosen()))
  .catch(showError));
$("provider").addEventListener("change", () => fillSymbols($("market").value, $("provider").value)
  .then(() => select(chosen()))
  .catch(showError));
$("symbol").addEventListener("change", () => $("symbol").value.trim() && select(chosen()));
$("timeframe").addEventListener("change", () => select(chosen()));
$("pickers").addEventListener("submit", (event) => event.preventDefault());
$("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey($("apikey").value.trim());
  $("auth").hidden = true;
  start().catch(showError);
});

start().catch(showError);
