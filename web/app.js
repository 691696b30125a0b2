// ohlcd chart page — plain ES module, no bundler.
// lightweight-charts v5 is loaded as a classic script from /lib/lightweight-charts.js
// and exposes the global `LightweightCharts`.

const LC = window.LightweightCharts;

// ---------------------------------------------------------------------------
// State exposed for tests / debugging. Mutated in place, never replaced.
// ---------------------------------------------------------------------------
const ohlcd = {
  ready: false,          // true once the first load finished (successfully or not)
  loading: false,        // a full (re)load is in flight
  loads: 0,              // number of finished full loads
  bars: 0,               // candles currently in the candlestick series
  resolution: null,      // resolution actually shown (the response's `resolution`)
  requestedResolution: null,
  symbol: null,
  from: null,            // unix seconds of the last full request
  to: null,              // unix seconds (exclusive) of the last full request
  lastRequest: null,     // URL (path + query) of the last full /api/ohlc request
  live: false,           // live updates active (range ends today)
  liveUpdates: 0,        // number of applied live refreshes (stream or polling)
  stream: 'off',         // live stream: 'off' | 'connecting' | 'open' | 'polling' (down: polling instead)
  streamOpens: 0,        // times the stream (re)connected
  streamUpdates: 0,      // bars applied from the stream
  error: null,           // last error message (null when the last action succeeded)
  progressRows: 0,
  timezone: 'Etc/UTC',   // zone the shown bars are counted in (the response's `timezone`)
  quotes: 0,             // watchlist refreshes applied
};
window.ohlcd = ohlcd;
// What the chart actually holds (lightweight-charts' own copy of the data), so a
// test can compare every drawn bar with the API's answer.
window.ohlcdDrawn = () => ({
  candles: candleSeries ? candleSeries.data() : [],
  volumes: volumeSeries ? volumeSeries.data() : [],
});

const POLL_MS = 5000;
const DAY = 86400;

// Timeframe buttons → default window (days, ending today) giving a sensible bar
// count; seconds show the last `span` seconds of the range instead.
const TIMEFRAMES = {
  '1S': { label: '1s', days: 0, span: 15 * 60 },
  '5S': { label: '5s', days: 0, span: 3600 },
  '15S': { label: '15s', days: 0, span: 3 * 3600 },
  '30S': { label: '30s', days: 0, span: 6 * 3600 },
  '1': { label: '1m', days: 1 },
  '5': { label: '5m', days: 3 },
  '15': { label: '15m', days: 7 },
  '30': { label: '30m', days: 14 },
  '60': { label: '1h', days: 30 },
  '240': { label: '4h', days: 120 },
  '1D': { label: '1D', days: 365 },
  '1W': { label: '1W', days: 5 * 365 },
};
const DEFAULT_RESOLUTION = '15';

const COLORS = {
  up: '#26a69a',
  down: '#ef5350',
  upVol: 'rgba(38, 166, 154, 0.55)',
  downVol: 'rgba(239, 83, 80, 0.55)',
  bg: '#0e1117',
  grid: '#1a1f2b',
  border: '#262c3a',
  text: '#8b95a7',
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------
const $ = (sel) => document.querySelector(sel);
const els = {
  symbol: $('#symbol'),
  tz: $('#tz'),
  watchBody: $('#watchlist tbody'),
  watchStatus: $('#watchlist-status'),
  timeframes: $('#timeframes'),
  rangeForm: $('#range-form'),
  fromDate: $('#from-date'),
  toDate: $('#to-date'),
  live: $('#live'),
  liveText: $('#live-text'),
  resolutionShown: $('#resolution-shown'),
  status: $('#status'),
  chart: $('#chart'),
  legend: $('#legend'),
  progressBody: $('#progress-table tbody'),
  progressStatus: $('#progress-status'),
};

const nf0 = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });

/** Seconds covered by one bar of a TradingView-style resolution ("15", "60", "1D", "1W", "1M"). */
function resolutionSeconds(res) {
  const s = String(res).trim();
  let m = /^(\d+)$/.exec(s);
  if (m) return Number(m[1]) * 60;
  m = /^(\d*)([sSmhDdWwM])$/.exec(s);
  if (!m) return 60;
  const n = m[1] === '' ? 1 : Number(m[1]);
  switch (m[2]) {
    case 's': case 'S': return n;
    case 'm': return n * 60;
    case 'h': return n * 3600;
    case 'D': case 'd': return n * DAY;
    case 'W': case 'w': return n * 7 * DAY;
    case 'M': return n * 30 * DAY;
    default: return 60;
  }
}

/** Human label: "1" → "1m", "60" → "1h", "1D" → "1D". */
function resolutionLabel(res) {
  if (res == null) return '—';
  const s = String(res).trim();
  if (/^\d+$/.test(s)) {
    const min = Number(s);
    if (min >= 60 && min % 60 === 0) return `${min / 60}h`;
    return `${min}m`;
  }
  if (/^\d+S$/.test(s)) return s.toLowerCase();
  return s;
}

function todayUTC() {
  return new Date().toISOString().slice(0, 10);
}
function dateToUnix(d) {
  const [y, m, dd] = d.split('-').map(Number);
  return Date.UTC(y, m - 1, dd) / 1000;
}
function unixToDate(t) {
  return new Date(t * 1000).toISOString().slice(0, 10);
}
function addDays(d, n) {
  return unixToDate(dateToUnix(d) + n * DAY);
}
function isValidDate(d) {
  return typeof d === 'string' && /^\d{4}-\d{2}-\d{2}$/.test(d) && !Number.isNaN(dateToUnix(d));
}

function setStatus(text, kind = 'info') {
  els.status.textContent = text;
  els.status.dataset.kind = kind;
}

class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status; // HTTP status, 0 for network / parse errors
  }
}

/** GET JSON; non-2xx → ApiError carrying the server's {"error": "..."} message. */
async function getJSON(url) {
  let resp;
  try {
    resp = await fetch(url, { headers: { Accept: 'application/json' }, cache: 'no-store' });
  } catch (e) {
    throw new ApiError(`${url}: network error (${e.message || e})`);
  }
  const text = await resp.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    if (resp.ok) throw new ApiError(`${url}: invalid JSON in response`);
  }
  if (!resp.ok) {
    const msg = body && typeof body.error === 'string' ? body.error : (text || resp.statusText).slice(0, 300);
    throw new ApiError(`HTTP ${resp.status}: ${msg}`, resp.status);
  }
  return body;
}

function ohlcUrl(symbol, resolution, from, to) {
  const q = new URLSearchParams({ symbol, resolution, from: String(from), to: String(to) });
  if (state.tz) q.set('tz', state.tz);
  return `/api/ohlc?${q}`;
}

// ---------------------------------------------------------------------------
// Time in the zone the bars are counted in: the axis, the crosshair and the
// legend show local time there, and a daily bar lands on its local date.
// ---------------------------------------------------------------------------
let zoneFormats = null;

function formatsFor(zone) {
  if (zoneFormats && zoneFormats.zone === zone) return zoneFormats;
  const f = (o) => new Intl.DateTimeFormat('en-GB', { timeZone: zone, hourCycle: 'h23', ...o });
  zoneFormats = {
    zone,
    parts: f({ year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit' }),
    month: f({ month: 'short' }),
  };
  return zoneFormats;
}

/** {y, mo, d, h, mi, s} of Unix seconds `t` in the shown zone, as strings. */
function localParts(t) {
  const out = {};
  for (const p of formatsFor(ohlcd.timezone).parts.formatToParts(new Date(t * 1000))) out[p.type] = p.value;
  return { y: out.year, mo: out.month, d: out.day, h: out.hour, mi: out.minute, s: out.second };
}

function formatTime(t, res) {
  const p = localParts(t);
  const date = `${p.y}-${p.mo}-${p.d}`;
  const secs = resolutionSeconds(res);
  if (secs >= DAY) return date;
  return secs < 60 ? `${date} ${p.h}:${p.mi}:${p.s}` : `${date} ${p.h}:${p.mi}`;
}

/** The crosshair's time label (lightweight-charts `localization.timeFormatter`). */
function chartTimeLabel(time) {
  return formatTime(Number(time), ohlcd.resolution);
}

/** The time axis' labels (lightweight-charts `timeScale.tickMarkFormatter`):
 *  0 year, 1 month, 2 day of month, 3 time, 4 time with seconds. */
function tickLabel(time, type) {
  const t = Number(time);
  const p = localParts(t);
  switch (type) {
    case 0: return p.y;
    case 1: return formatsFor(ohlcd.timezone).month.format(new Date(t * 1000));
    case 2: return String(Number(p.d));
    case 4: return `${p.h}:${p.mi}:${p.s}`;
    default: return `${p.h}:${p.mi}`;
  }
}
window.ohlcdTimeLabel = chartTimeLabel;
window.ohlcdTickLabel = tickLabel;

/** Sorted, de-duplicated candles (lightweight-charts rejects unordered data). */
function normalizeCandles(candles) {
  if (!Array.isArray(candles)) return [];
  const out = candles
    .filter((c) => c && Number.isFinite(Number(c.time)))
    .map((c) => ({ ...c, time: Number(c.time) }))
    .sort((a, b) => a.time - b.time);
  const dedup = [];
  for (const c of out) {
    if (dedup.length && dedup[dedup.length - 1].time === c.time) dedup[dedup.length - 1] = c;
    else dedup.push(c);
  }
  return dedup;
}

const toCandle = (c) => ({
  time: c.time,
  open: Number(c.open),
  high: Number(c.high),
  low: Number(c.low),
  close: Number(c.close),
});
const toVolume = (c) => ({
  time: c.time,
  value: Number(c.volume) || 0,
  color: Number(c.close) >= Number(c.open) ? COLORS.upVol : COLORS.downVol,
});

function pricePrecision(price) {
  const p = Math.abs(price);
  if (!Number.isFinite(p) || p === 0) return 2;
  if (p >= 10) return 2;
  if (p >= 1) return 4;
  if (p >= 0.01) return 6;
  return 8;
}

function formatPrice(v) {
  if (v == null || !Number.isFinite(v)) return '—';
  const d = pricePrecision(v);
  return v.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d });
}
function formatVolume(v) {
  if (v == null || !Number.isFinite(v)) return '—';
  const a = Math.abs(v);
  if (a >= 1e9) return `${(v / 1e9).toFixed(2)}B`;
  if (a >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
  if (a >= 1e3) return `${(v / 1e3).toFixed(2)}K`;
  return v.toLocaleString('en-US', { maximumFractionDigits: 4 });
}

// ---------------------------------------------------------------------------
// Chart
// ---------------------------------------------------------------------------
let chart = null;
let candleSeries = null;
let volumeSeries = null;
/** raw candles (with volume etc.) by time, for the legend */
let rawByTime = new Map();

function createChart() {
  chart = LC.createChart(els.chart, {
    autoSize: true,
    layout: {
      background: { type: 'solid', color: COLORS.bg },
      textColor: COLORS.text,
      fontSize: 12,
      fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace',
      panes: { separatorColor: COLORS.border, separatorHoverColor: 'rgba(90, 120, 200, 0.25)', enableResize: true },
    },
    grid: {
      vertLines: { color: COLORS.grid },
      horzLines: { color: COLORS.grid },
    },
    rightPriceScale: { borderColor: COLORS.border },
    timeScale: {
      borderColor: COLORS.border, timeVisible: true, secondsVisible: false, rightOffset: 4,
      tickMarkFormatter: tickLabel,
    },
    localization: { timeFormatter: chartTimeLabel },
    crosshair: {
      vertLine: { color: '#4c5566', labelBackgroundColor: '#2a3242' },
      horzLine: { color: '#4c5566', labelBackgroundColor: '#2a3242' },
    },
  });

  candleSeries = chart.addSeries(LC.CandlestickSeries, {
    upColor: COLORS.up,
    downColor: COLORS.down,
    borderUpColor: COLORS.up,
    borderDownColor: COLORS.down,
    wickUpColor: COLORS.up,
    wickDownColor: COLORS.down,
    priceLineVisible: true,
  });
  // Leave room at the top for the OHLC legend.
  candleSeries.priceScale().applyOptions({ scaleMargins: { top: 0.1, bottom: 0.05 } });

  // Volume in its own pane at the bottom.
  volumeSeries = chart.addSeries(
    LC.HistogramSeries,
    {
      priceFormat: { type: 'volume' },
      priceLineVisible: false,
      lastValueVisible: true,
      color: COLORS.upVol,
    },
    1,
  );
  const panes = chart.panes();
  if (panes.length > 1) {
    panes[0].setStretchFactor(4);
    panes[1].setStretchFactor(1);
  }

  chart.subscribeCrosshairMove((param) => {
    if (!param || param.time === undefined) {
      renderLegend(null);
      return;
    }
    renderLegend(rawByTime.get(Number(param.time)) || null);
  });
}

function lastRaw() {
  const data = candleSeries ? candleSeries.data() : [];
  if (!data.length) return null;
  return rawByTime.get(Number(data[data.length - 1].time)) || null;
}

function renderLegend(c) {
  const bar = c || lastRaw();
  els.legend.replaceChildren();
  const head = document.createElement('span');
  head.className = 'legend-symbol';
  head.textContent = `${ohlcd.symbol ?? ''} · ${resolutionLabel(ohlcd.resolution)}`;
  els.legend.append(head);
  if (!bar) return;
  const up = Number(bar.close) >= Number(bar.open);
  const item = (k, v, cls) => {
    const s = document.createElement('span');
    s.className = 'legend-item';
    const kk = document.createElement('b');
    kk.textContent = k;
    const vv = document.createElement('span');
    vv.textContent = v;
    if (cls) vv.className = cls;
    s.append(kk, vv);
    els.legend.append(s);
  };
  const dir = up ? 'up' : 'down';
  item('', formatTime(bar.time, ohlcd.resolution), 'legend-time');
  item('O', formatPrice(Number(bar.open)), dir);
  item('H', formatPrice(Number(bar.high)), dir);
  item('L', formatPrice(Number(bar.low)), dir);
  item('C', formatPrice(Number(bar.close)), dir);
  const chg = Number(bar.open) ? ((Number(bar.close) - Number(bar.open)) / Number(bar.open)) * 100 : 0;
  item('', `${chg >= 0 ? '+' : ''}${chg.toFixed(2)}%`, dir);
  item('Vol', formatVolume(Number(bar.volume)));
  if (bar.trades != null) item('Trades', nf0.format(Number(bar.trades)));
}

function applyPrecision(candles) {
  if (!candles.length) return;
  const d = pricePrecision(Number(candles[candles.length - 1].close));
  candleSeries.applyOptions({ priceFormat: { type: 'price', precision: d, minMove: 10 ** -d } });
}

// ---------------------------------------------------------------------------
// Page state / controls
// ---------------------------------------------------------------------------
const state = {
  symbol: null,
  resolution: DEFAULT_RESOLUTION,
  fromDate: null,
  toDate: null,
  tz: '',            // zone asked for ('' = the symbol's zone, as the server has it)
  followToday: true, // the to-date was "today" when chosen: roll it forward at midnight UTC
  autoRange: true,   // the range was not chosen by the user: it follows the symbol's data
};

function defaultRange(resolution, toDate = todayUTC()) {
  const days = (TIMEFRAMES[resolution] || TIMEFRAMES[DEFAULT_RESOLUTION]).days;
  return { fromDate: addDays(toDate, -days), toDate };
}

/**
 * The UTC day of `symbol`'s newest bar (from the datafeed's own countback
 * query), or null if it has none or the request fails. A chart opens there,
 * as TradingView does, so historical data does not open on an empty week.
 */
async function latestDay(symbol) {
  const now = Math.floor(Date.now() / 1000);
  const q = new URLSearchParams({
    symbol, resolution: '1D', from: '0', to: String(now + DAY), countback: '1',
  });
  try {
    const r = await getJSON(`/udf/history?${q}`);
    if (r && r.s === 'ok' && Array.isArray(r.t) && r.t.length) return unixToDate(r.t[r.t.length - 1]);
  } catch (e) {
    console.warn(`ohlcd: newest bar of ${symbol}: ${e.message}`);
  }
  return null;
}

/** While the user has not chosen a range, end it on the symbol's newest data. */
async function anchorToLatest() {
  if (!state.autoRange || !state.symbol) return;
  const day = await latestDay(state.symbol);
  const today = todayUTC();
  const end = day && day < today ? day : today;
  const r = defaultRange(state.resolution, end);
  state.fromDate = r.fromDate;
  state.toDate = r.toDate;
  // A symbol that trades today stays live; one whose data ends in the past
  // opens on its data and stays there.
  state.followToday = end >= today;
  syncControls();
}

function syncControls() {
  if (state.symbol && els.symbol.value !== state.symbol) els.symbol.value = state.symbol;
  if (els.tz.value !== state.tz) els.tz.value = state.tz;
  for (const b of els.timeframes.querySelectorAll('button[data-resolution]')) {
    const active = b.dataset.resolution === state.resolution;
    b.classList.toggle('active', active);
    b.setAttribute('aria-pressed', String(active));
  }
  els.fromDate.value = state.fromDate;
  els.toDate.value = state.toDate;
  els.fromDate.max = state.toDate;
  els.toDate.min = state.fromDate;
}

function writeHash() {
  const q = new URLSearchParams({ symbol: state.symbol || '', resolution: state.resolution });
  if (state.tz) q.set('tz', state.tz);
  if (state.followToday) {
    // A window ending "today" is stored as its length, so the link keeps following today.
    q.set('days', String(Math.round((dateToUnix(state.toDate) - dateToUnix(state.fromDate)) / DAY)));
  } else {
    q.set('from', state.fromDate);
    q.set('to', state.toDate);
  }
  history.replaceState(null, '', `#${q}`);
}

function readHash() {
  const q = new URLSearchParams(location.hash.replace(/^#/, ''));
  return {
    symbol: q.get('symbol') || null,
    resolution: q.get('resolution') || null,
    from: q.get('from') || null,
    to: q.get('to') || null,
    days: q.get('days') || null,
    tz: q.get('tz') || '',
  };
}

function isLiveRange() {
  return !!state.toDate && state.toDate >= todayUTC();
}

function updateLiveIndicator() {
  const live = isLiveRange() && ohlcd.bars > 0 && !ohlcd.error;
  ohlcd.live = isLiveRange();
  els.live.dataset.live = String(live);
  // Streaming, or polling every 5 s while the stream is down.
  const mode = ohlcd.stream === 'open' ? 'stream' : 'polling';
  els.live.dataset.mode = mode;
  els.liveText.textContent = isLiveRange()
    ? (live ? (mode === 'stream' ? 'live' : 'live · polling') : 'live (waiting)')
    : 'historical';
}

function renderResolutionLabel() {
  const shown = ohlcd.resolution;
  els.resolutionShown.dataset.resolution = shown ?? '';
  els.resolutionShown.dataset.bars = String(ohlcd.bars);
  if (shown == null) {
    els.resolutionShown.textContent = '—';
    return;
  }
  let txt = `showing ${resolutionLabel(shown)} · ${nf0.format(ohlcd.bars)} bar${ohlcd.bars === 1 ? '' : 's'}`;
  const coarsened = ohlcd.requestedResolution != null && String(shown) !== String(ohlcd.requestedResolution);
  if (coarsened) txt += ` (requested ${resolutionLabel(ohlcd.requestedResolution)})`;
  els.resolutionShown.textContent = txt;
  els.resolutionShown.classList.toggle('coarsened', coarsened);
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------
let loadSeq = 0;
let retryFailedLoad = false; // last full load hit a transient (5xx / network) error

async function load({ fit = true } = {}) {
  const seq = ++loadSeq;
  if (!state.symbol) {
    setStatus('no symbols available from /udf/search', 'error');
    finishLoad(seq);
    return;
  }
  if (!isValidDate(state.fromDate) || !isValidDate(state.toDate) || state.fromDate > state.toDate) {
    ohlcd.error = 'invalid date range: "from" must be on or before "to"';
    setStatus(ohlcd.error, 'error');
    finishLoad(seq);
    return;
  }

  let from = dateToUnix(state.fromDate);
  let to = dateToUnix(state.toDate) + DAY; // to-date inclusive → exclusive end
  const span = (TIMEFRAMES[state.resolution] || {}).span;
  if (span) {
    // Seconds: the last `span` seconds of the range (up to now while live).
    const step = resolutionSeconds(state.resolution);
    const now = Math.floor(Date.now() / 1000);
    if (isLiveRange()) to = Math.min(to, Math.floor(now / step) * step + step);
    from = Math.max(from, to - span);
  }
  const url = ohlcUrl(state.symbol, state.resolution, from, to);

  closeStream(); // the next one follows what this load shows
  ohlcd.loading = true;
  document.body.dataset.state = 'loading';
  setStatus(`loading ${state.symbol} ${resolutionLabel(state.resolution)} ${state.fromDate} → ${state.toDate}…`, 'info');
  writeHash();

  let data;
  try {
    data = await getJSON(url);
  } catch (e) {
    if (seq !== loadSeq) return;
    ohlcd.error = e.message;
    retryFailedLoad = !(e.status >= 400 && e.status < 500);
    console.error(`ohlcd: loading ${url} failed: ${e.message}`);
    setStatus(`error loading ${state.symbol}: ${e.message}`, 'error');
    // Do not leave a previous symbol's chart pretending to be this one.
    candleSeries.setData([]);
    volumeSeries.setData([]);
    rawByTime = new Map();
    Object.assign(ohlcd, {
      bars: 0, resolution: null, requestedResolution: state.resolution, symbol: state.symbol,
      from, to, lastRequest: url,
    });
    renderResolutionLabel();
    renderLegend(null);
    finishLoad(seq);
    return;
  }
  if (seq !== loadSeq) return; // superseded by a newer load
  retryFailedLoad = false;

  const candles = normalizeCandles(data && data.candles);
  rawByTime = new Map(candles.map((c) => [c.time, c]));
  applyPrecision(candles);
  candleSeries.setData(candles.map(toCandle));
  volumeSeries.setData(candles.map(toVolume));
  if (fit && candles.length) chart.timeScale().fitContent();

  Object.assign(ohlcd, {
    bars: candleSeries.data().length,
    timezone: data.timezone || 'Etc/UTC',
    resolution: data.resolution != null ? String(data.resolution) : state.resolution,
    requestedResolution: data.requested_resolution != null ? String(data.requested_resolution) : state.resolution,
    symbol: data.symbol || state.symbol,
    from,
    to,
    lastRequest: url,
    error: null,
  });
  // The toolbar shows the button the user asked for; the label shows what the server used.
  chart.applyOptions({
    timeScale: {
      timeVisible: resolutionSeconds(ohlcd.resolution) < DAY,
      secondsVisible: resolutionSeconds(ohlcd.resolution) < 60,
    },
  });
  renderResolutionLabel();
  renderLegend(null);
  if (candles.length) {
    setStatus(`loaded ${ohlcd.symbol} · last bar ${formatTime(candles[candles.length - 1].time, ohlcd.resolution)} ${ohlcd.timezone}`, 'ok');
  } else {
    setStatus(`no candles for ${ohlcd.symbol} between ${state.fromDate} and ${state.toDate} (UTC)`, 'warn');
  }
  finishLoad(seq);
}

function finishLoad(seq) {
  if (seq !== loadSeq) return;
  ohlcd.loading = false;
  ohlcd.loads += 1;
  ohlcd.ready = true;
  document.body.dataset.state = ohlcd.error ? 'error' : 'ready';
  syncStream();
  updateLiveIndicator();
}

/** Puts one newer (or the newest, changed) bar on the chart; older ones are
 *  history a live update never rewrites. True when drawn. */
function applyLiveBar(c) {
  const cur = candleSeries.data();
  const curLast = cur.length ? Number(cur[cur.length - 1].time) : -Infinity;
  if (c.time < curLast) return false;
  if (c.time >= ohlcd.to) return false; // outside the displayed range
  candleSeries.update(toCandle(c));
  volumeSeries.update(toVolume(c));
  rawByTime.set(c.time, c);
  return true;
}

function liveStatus(how) {
  const last = candleSeries.data();
  if (last.length) {
    setStatus(`live (${how}) · ${ohlcd.symbol} · last bar ${formatTime(Number(last[last.length - 1].time), ohlcd.resolution)} ${ohlcd.timezone} · updated ${new Date().toISOString().slice(11, 19)}Z`, 'ok');
  }
}

// ---------------------------------------------------------------------------
// Live stream: GET /api/live (Server-Sent Events) pushes the newest bar each
// time it changes. While it is down the page polls (liveTick); the browser
// reconnects on its own and resumes from the last bar it received
// (Last-Event-ID). A refused stream (a 4xx/5xx answer) is retried every 30 s.
// ---------------------------------------------------------------------------
const STREAM_RETRY_MS = 30000;
let source = null;
let streamKey = null;
let streamRetry = null;

function closeStream() {
  if (source) source.close();
  source = null;
  streamKey = null;
  if (streamRetry) clearTimeout(streamRetry);
  streamRetry = null;
  ohlcd.stream = 'off';
}

/** Opens, keeps or closes the stream to follow what the chart shows. */
function syncStream() {
  const wanted = typeof EventSource === 'function' && isLiveRange() && !ohlcd.loading
    && ohlcd.resolution && state.symbol && !ohlcd.error;
  const key = wanted ? `${state.symbol}|${ohlcd.resolution}|${state.tz}` : null;
  if (key === streamKey && (source || streamRetry)) return;
  closeStream();
  if (!key) return;
  const q = new URLSearchParams({ symbol: state.symbol, resolution: ohlcd.resolution });
  if (state.tz) q.set('tz', state.tz);
  // Resume from the newest bar drawn: nothing between the load and the stream is lost.
  const cur = candleSeries.data();
  if (cur.length) q.set('since', String(cur[cur.length - 1].time));
  const seq = loadSeq;
  const es = new EventSource(`/api/live?${q}`);
  source = es;
  streamKey = key;
  ohlcd.stream = 'connecting';
  const current = () => source === es && seq === loadSeq;
  es.addEventListener('open', () => {
    if (!current()) return;
    ohlcd.stream = 'open';
    ohlcd.streamOpens += 1;
    updateLiveIndicator();
  });
  es.addEventListener('bar', (ev) => {
    if (!current() || ohlcd.loading) return;
    let c;
    try {
      c = JSON.parse(ev.data);
    } catch {
      return;
    }
    c.time = Number(c.time);
    if (!applyLiveBar(c)) return;
    ohlcd.bars = candleSeries.data().length;
    ohlcd.liveUpdates += 1;
    ohlcd.streamUpdates += 1;
    ohlcd.error = null;
    renderResolutionLabel();
    renderLegend(null);
    liveStatus('stream');
    updateLiveIndicator();
  });
  // The resume point was too old for the server: reload the history.
  es.addEventListener('reset', () => {
    if (current()) load({ fit: false });
  });
  es.addEventListener('error', () => {
    if (!current()) return;
    // CONNECTING: dropped, the browser reconnects by itself; CLOSED: refused.
    ohlcd.stream = 'polling';
    if (es.readyState === EventSource.CLOSED) {
      source = null;
      streamRetry = setTimeout(() => {
        streamRetry = null;
        streamKey = null;
        syncStream();
      }, STREAM_RETRY_MS);
    }
    updateLiveIndicator();
  });
}

// ---------------------------------------------------------------------------
// Live updates without the stream: refetch the newest bars every 5 s while the
// range ends today and the stream is down.
// ---------------------------------------------------------------------------
let liveBusy = false;

async function liveTick() {
  if (liveBusy || ohlcd.loading || !ohlcd.ready) return;

  // Midnight UTC passed while following "today": move the window forward and reload.
  const today = todayUTC();
  if (state.followToday && state.toDate && state.toDate < today) {
    const shift = Math.round((dateToUnix(today) - dateToUnix(state.toDate)) / DAY);
    state.fromDate = addDays(state.fromDate, shift);
    state.toDate = today;
    syncControls();
    load({ fit: false });
    return;
  }
  // The last full load failed transiently (server restarting, storage busy): try again.
  if (retryFailedLoad && state.symbol) {
    retryFailedLoad = false;
    load();
    return;
  }
  if (!isLiveRange() || !ohlcd.resolution || !state.symbol) {
    updateLiveIndicator();
    return;
  }
  syncStream();
  if (ohlcd.stream === 'open') return; // the stream delivers; polling is the fallback

  const seq = loadSeq;
  const shown = ohlcd.resolution;
  const step = resolutionSeconds(shown);
  const data0 = candleSeries.data();
  const lastTime = data0.length ? Number(data0[data0.length - 1].time) : null;
  const now = Math.floor(Date.now() / 1000);
  const from = lastTime ?? Math.max(ohlcd.from, now - 10 * step);
  const to = Math.max(from + step, now + step);
  const url = ohlcUrl(state.symbol, shown, from, to);

  liveBusy = true;
  try {
    const data = await getJSON(url);
    if (seq !== loadSeq || ohlcd.loading) return; // a full reload started meanwhile
    if (data.resolution != null && String(data.resolution) !== String(shown)) {
      // Server chose another resolution for the tail: redraw everything consistently.
      load({ fit: false });
      return;
    }
    const candles = normalizeCandles(data.candles);
    let applied = 0;
    for (const c of candles) {
      if (applyLiveBar(c)) applied += 1;
    }
    if (applied) {
      ohlcd.bars = candleSeries.data().length;
      ohlcd.liveUpdates += 1;
      renderResolutionLabel();
      renderLegend(null);
    }
    ohlcd.error = null;
    liveStatus('polling');
  } catch (e) {
    if (seq !== loadSeq) return;
    ohlcd.error = e.message;
    console.error(`ohlcd: live update ${url} failed: ${e.message}`);
    setStatus(`live update failed: ${e.message}`, 'error');
  } finally {
    liveBusy = false;
    updateLiveIndicator();
  }
}

// ---------------------------------------------------------------------------
// Progress panel
// ---------------------------------------------------------------------------
const RES_ORDER = ['1m', '3m', '5m', '15m', '30m', '45m', '1h', '2h', '4h', '6h', '12h', '1d', '1w', '1M'];
let progressBusy = false;

function fmtTimestamp(s) {
  if (!s) return '—';
  const d = new Date(s);
  if (Number.isNaN(d.getTime())) return String(s);
  return `${d.toISOString().slice(0, 10)} ${d.toISOString().slice(11, 19)}Z`;
}

function fmtDuration(ms) {
  if (ms == null || !Number.isFinite(Number(ms))) return '';
  const v = Number(ms);
  if (v < 1000) return `${Math.round(v)} ms`;
  if (v < 60000) return `${(v / 1000).toFixed(1)} s`;
  return `${(v / 60000).toFixed(1)} min`;
}

const RESOLUTION_SECONDS = { '1m': 60, '5m': 300, '15m': 900, '1h': 3600, '4h': 14400, '1d': 86400 };

// A task is healthy while its watermark trails now by at most one window of its
// own resolution (plus the settle delay and a tick): a 1d task is normally up to
// a day behind, a 1m task a minute.
function lagClass(sec, resolution) {
  if (sec == null || !Number.isFinite(Number(sec))) return 'lag-unknown';
  const v = Number(sec);
  const window = RESOLUTION_SECONDS[resolution] ?? 60;
  if (v <= window + 120) return 'lag-ok';
  if (v <= 2 * window + 600) return 'lag-warn';
  return 'lag-bad';
}

function td(text, cls, title) {
  const c = document.createElement('td');
  c.textContent = text ?? '—';
  if (cls) c.className = cls;
  if (title) c.title = title;
  return c;
}

function renderProgress(rows) {
  const sorted = [...rows].sort((a, b) => {
    const s = String(a.symbol).localeCompare(String(b.symbol));
    if (s) return s;
    const ia = RES_ORDER.indexOf(a.resolution);
    const ib = RES_ORDER.indexOf(b.resolution);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib);
  });
  const frag = document.createDocumentFragment();
  for (const r of sorted) {
    const tr = document.createElement('tr');
    tr.dataset.symbol = r.symbol ?? '';
    tr.dataset.resolution = r.resolution ?? '';
    tr.dataset.status = r.status ?? '';

    tr.append(td(r.symbol, 'sym'));
    tr.append(td(r.resolution, 'res'));

    const st = document.createElement('td');
    const badge = document.createElement('span');
    badge.className = `badge badge-${r.status || 'unknown'}`;
    badge.textContent = r.status || 'unknown';
    st.append(badge);
    tr.append(st);

    tr.append(td(fmtTimestamp(r.watermark), 'mono', r.watermark || ''));
    tr.append(td(r.lag ?? '—', `mono ${lagClass(r.lag_seconds, r.resolution)}`, r.lag_seconds != null ? `${r.lag_seconds} s` : ''));

    const lastRun = r.last_run_finished_at || r.last_run_started_at;
    const dur = fmtDuration(r.last_run_duration_ms);
    tr.append(td(lastRun ? `${fmtTimestamp(lastRun)}${dur ? ` · ${dur}` : ''}` : '—', 'mono muted',
      `started ${r.last_run_started_at ?? '—'}\nfinished ${r.last_run_finished_at ?? '—'}${r.rows_read != null ? `\nrows read ${r.rows_read}` : ''}`));
    tr.append(td(r.candles_written != null ? nf0.format(Number(r.candles_written)) : '—', 'num mono'));
    tr.append(td(r.last_error || '—', r.last_error ? 'err' : 'muted', r.last_error || ''));
    frag.append(tr);
  }
  if (!sorted.length) {
    const tr = document.createElement('tr');
    const c = td('no aggregation jobs reported yet', 'muted empty');
    c.colSpan = 8;
    tr.append(c);
    frag.append(tr);
  }
  els.progressBody.replaceChildren(frag);
  ohlcd.progressRows = sorted.length;
}

async function refreshProgress() {
  if (progressBusy) return;
  progressBusy = true;
  try {
    const rows = await getJSON('/api/progress');
    if (!Array.isArray(rows)) throw new ApiError('/api/progress: expected a JSON array');
    renderProgress(rows);
    els.progressStatus.textContent = `updated ${new Date().toISOString().slice(11, 19)}Z · every ${POLL_MS / 1000} s`;
    els.progressStatus.dataset.kind = 'ok';
  } catch (e) {
    console.error(`ohlcd: progress refresh failed: ${e.message}`);
    els.progressStatus.textContent = `progress unavailable: ${e.message}`;
    els.progressStatus.dataset.kind = 'error';
  } finally {
    progressBusy = false;
  }
}

// ---------------------------------------------------------------------------
// Symbols
// ---------------------------------------------------------------------------
async function loadSymbols() {
  const list = await getJSON('/udf/search?query=&limit=200');
  if (!Array.isArray(list)) throw new ApiError('/udf/search: expected a JSON array');
  const seen = new Set();
  els.symbol.replaceChildren();
  for (const s of list) {
    const sym = s && (s.symbol || s.ticker || s.full_name);
    if (!sym || seen.has(sym)) continue;
    seen.add(sym);
    const opt = document.createElement('option');
    opt.value = sym;
    opt.textContent = sym;
    if (s.description && s.description !== sym) opt.title = s.description;
    els.symbol.append(opt);
  }
  return [...seen];
}

// ---------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------
function onTimeframe(res) {
  if (!TIMEFRAMES[res]) return;
  state.resolution = res;
  // Keep the end date, choose a window with a sensible bar count for the new timeframe.
  const r = defaultRange(res, state.toDate || todayUTC());
  state.fromDate = r.fromDate;
  state.toDate = r.toDate;
  state.followToday = state.toDate >= todayUTC();
  syncControls();
  load();
}

let rangeTimer = null;
function onRangeInput(immediate) {
  clearTimeout(rangeTimer);
  const go = () => {
    const f = els.fromDate.value;
    const t = els.toDate.value;
    if (!isValidDate(f) || !isValidDate(t)) return;
    if (f > t) {
      setStatus('invalid date range: "from" must be on or before "to"', 'error');
      return;
    }
    if (f === state.fromDate && t === state.toDate && !immediate) return;
    state.fromDate = f;
    state.toDate = t;
    state.followToday = t >= todayUTC();
    state.autoRange = false;
    syncControls();
    load();
  };
  if (immediate) go();
  else rangeTimer = setTimeout(go, 600);
}

function wire() {
  els.timeframes.addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-resolution]');
    if (b) onTimeframe(b.dataset.resolution);
  });
  els.tz.addEventListener('change', () => {
    state.tz = els.tz.value;
    load({ fit: false });
  });
  els.watchBody.addEventListener('click', async (ev) => {
    const row = ev.target.closest('tr[data-symbol]');
    if (!row || row.dataset.symbol === state.symbol) return;
    state.symbol = row.dataset.symbol;
    syncControls();
    await anchorToLatest();
    load();
  });
  els.symbol.addEventListener('change', async () => {
    state.symbol = els.symbol.value;
    await anchorToLatest();
    load();
  });
  els.fromDate.addEventListener('change', () => onRangeInput(false));
  els.toDate.addEventListener('change', () => onRangeInput(false));
  els.rangeForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    onRangeInput(true);
  });
  // Keyboard: 1..8 pick a timeframe when not typing in a field.
  document.addEventListener('keydown', (ev) => {
    if (ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement) return;
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const idx = Number(ev.key) - 1;
    const keys = Object.keys(TIMEFRAMES).filter((k) => !TIMEFRAMES[k].span);
    if (idx >= 0 && idx < keys.length) onTimeframe(keys[idx]);
  });
}

async function main() {
  if (!LC || typeof LC.createChart !== 'function') {
    ohlcd.error = 'lightweight-charts did not load from /lib/lightweight-charts.js';
    setStatus(ohlcd.error, 'error');
    console.error(`ohlcd: ${ohlcd.error}`);
    ohlcd.ready = true;
    return;
  }
  createChart();
  wire();

  // Initial state from the URL hash (shareable links), else defaults.
  const h = readHash();
  if (h.resolution && TIMEFRAMES[h.resolution]) state.resolution = h.resolution;
  state.tz = [...els.tz.options].some((o) => o.value === h.tz) ? h.tz : '';
  const today = todayUTC();
  const toDate = h.to && isValidDate(h.to) ? h.to : today;
  const def = defaultRange(state.resolution, toDate);
  const days = Number(h.days);
  state.toDate = toDate;
  if (h.from && isValidDate(h.from) && h.from <= toDate) state.fromDate = h.from;
  else if (!h.to && h.days != null && Number.isInteger(days) && days >= 0 && days <= 36500) state.fromDate = addDays(today, -days);
  else state.fromDate = def.fromDate;
  state.followToday = state.toDate >= today;
  syncControls();

  refreshProgress();
  setInterval(refreshProgress, POLL_MS);

  await startWithSymbols(h);
}

/** List symbols, then do the first load; retried every 5 s while /udf/search fails. */
async function startWithSymbols(h) {
  let symbols;
  try {
    symbols = await loadSymbols();
  } catch (e) {
    ohlcd.error = e.message;
    console.error(`ohlcd: loading symbols failed: ${e.message}`);
    setStatus(`cannot list symbols: ${e.message} (retrying every ${POLL_MS / 1000} s)`, 'error');
    finishLoad(++loadSeq);
    setTimeout(() => startWithSymbols(h), POLL_MS);
    return;
  }
  ohlcd.error = null;
  state.symbol = h.symbol && symbols.includes(h.symbol) ? h.symbol : symbols[0] || null;
  syncControls();
  // A shared link with explicit dates keeps them; otherwise open on the data.
  state.autoRange = !h.to && !h.from && h.days == null;
  await anchorToLatest();
  await load();
  setInterval(liveTick, POLL_MS);
  refreshQuotes(symbols);
  setInterval(() => refreshQuotes(symbols), POLL_MS);
}

// ---------------------------------------------------------------------------
// Watchlist: every symbol's last 24 hours from /udf/quotes, every 5 s.
// ---------------------------------------------------------------------------
let quotesBusy = false;

async function refreshQuotes(symbols) {
  if (quotesBusy || !symbols.length) return;
  quotesBusy = true;
  try {
    const q = new URLSearchParams({ symbols: symbols.slice(0, 100).join(',') });
    const r = await getJSON(`/udf/quotes?${q}`);
    if (!r || r.s !== 'ok' || !Array.isArray(r.d)) throw new ApiError('/udf/quotes: unexpected answer');
    const frag = document.createDocumentFragment();
    for (const item of r.d) {
      const tr = document.createElement('tr');
      tr.dataset.symbol = item.n;
      tr.dataset.status = item.s;
      tr.classList.toggle('current', item.n === state.symbol);
      tr.append(td(item.n, 'sym'));
      if (item.s !== 'ok') {
        const c = td(item.errmsg || 'no quote', 'muted');
        c.colSpan = 6;
        tr.append(c);
      } else {
        const v = item.v;
        const dir = v.ch >= 0 ? 'up' : 'down';
        tr.dataset.lp = String(v.lp);
        tr.append(td(formatPrice(v.lp), 'num mono'));
        tr.append(td(`${v.ch >= 0 ? '+' : ''}${formatPrice(v.ch)}`, `num mono ${dir}`));
        tr.append(td(`${v.chp >= 0 ? '+' : ''}${Number(v.chp).toFixed(2)}%`, `num mono ${dir}`));
        tr.append(td(formatPrice(v.high_price), 'num mono'));
        tr.append(td(formatPrice(v.low_price), 'num mono'));
        tr.append(td(formatVolume(v.volume), 'num mono'));
      }
      frag.append(tr);
    }
    els.watchBody.replaceChildren(frag);
    ohlcd.quotes += 1;
    els.watchStatus.textContent = `updated ${new Date().toISOString().slice(11, 19)}Z · every ${POLL_MS / 1000} s`;
    els.watchStatus.dataset.kind = 'ok';
  } catch (e) {
    console.error(`ohlcd: quotes refresh failed: ${e.message}`);
    els.watchStatus.textContent = `quotes unavailable: ${e.message}`;
    els.watchStatus.dataset.kind = 'error';
  } finally {
    quotesBusy = false;
  }
}

main();
