#!/usr/bin/env node
// Browser test of the ohlcd chart page.
//
//   node web/tests/chart.mjs <base_url> <screenshot_path>
//
// Needs playwright-core (web/package.json devDependency) and a Chromium at
// /usr/bin/chromium (Debian package `chromium`); override with CHROMIUM=/path.
// Exits 0 on success, 1 with a message on failure.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import fs from 'node:fs';

// Resolve playwright-core from web/node_modules even when run from the repo root.
const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '..', 'package.json'));
let chromium;
try {
  ({ chromium } = require('playwright-core'));
} catch (e) {
  console.error(`FAIL: cannot load playwright-core (run \`npm ci\` in web/): ${e.message}`);
  process.exit(1);
}

const [baseArg, shotArg] = process.argv.slice(2);
if (!baseArg || !shotArg) {
  console.error('usage: node web/tests/chart.mjs <base_url> <screenshot_path>');
  process.exit(2);
}
const base = baseArg.replace(/\/+$/, '');
const screenshotPath = path.resolve(shotArg);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT_MS = 20_000;
const DAY_SECS = 86400;
// The server refuses live streams (server.max_streams = 0): the page must
// fall back to polling, and a posted trade still reaches the drawn bar.
const STREAM_REFUSED = process.env.EXPECT_STREAM_REFUSED === '1';
/** A refused stream is expected then: its 503 and the browser's complaint
 *  about it are not problems. */
const refusedStream = (url, text) => STREAM_REFUSED
  && ((url && new URL(url, base).pathname === '/api/live') || /EventSource/.test(text || ''));

const problems = []; // uncaught page errors / console errors
let step = 'start';
const log = (msg) => console.log(`[chart.mjs] ${msg}`);

class TestFailure extends Error {}
function assert(cond, msg) {
  if (!cond) throw new TestFailure(`${step}: ${msg}`);
}

async function state(page) {
  return page.evaluate(() => (window.ohlcd ? JSON.parse(JSON.stringify(window.ohlcd)) : null));
}

async function waitFor(page, what, fn, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: WAIT_MS, polling: 100 });
  } catch (e) {
    const s = await state(page).catch(() => null);
    const status = await page.textContent('#status').catch(() => '?');
    throw new TestFailure(`${step}: timed out after ${WAIT_MS / 1000}s waiting for ${what}; window.ohlcd=${JSON.stringify(s)}; status line="${status}"`);
  }
}

/** The first bar drawn differently from the API's candle (time, open, high, low,
 *  close, volume), as text; null when every bar matches. */
function firstDifference(drawn, candles) {
  const { candles: bars, volumes } = drawn;
  if (bars.length !== candles.length || volumes.length !== candles.length) {
    return `${bars.length} bars and ${volumes.length} volume bars drawn, ${candles.length} candles from the API`;
  }
  for (let i = 0; i < candles.length; i++) {
    const c = candles[i];
    const want = [c.time, c.open, c.high, c.low, c.close, c.volume].map(Number);
    const got = [bars[i].time, bars[i].open, bars[i].high, bars[i].low, bars[i].close, volumes[i].value].map(Number);
    if (Number(volumes[i].time) !== want[0] || got.some((x, k) => x !== want[k])) {
      return `bar ${i}: drawn [time, o, h, l, c, v] = ${JSON.stringify(got)} (volume bar at ${volumes[i].time}), API ${JSON.stringify(want)}`;
    }
  }
  return null;
}

/** Fetch the page's last /api/ohlc request ourselves and compare every bar drawn
 *  with it. Retried a few times: a live update may add a bar between our reads. */
async function assertBarsMatchApi(page, expect = {}) {
  let last = '';
  for (let attempt = 0; attempt < 8; attempt++) {
    const s = await state(page);
    assert(s && s.lastRequest, `window.ohlcd.lastRequest is not set (${JSON.stringify(s)})`);
    assert(!s.error, `page reports an error: ${s.error}`);
    const url = new URL(s.lastRequest, `${base}/`).toString();
    const resp = await fetch(url, { headers: { Accept: 'application/json' } });
    const text = await resp.text();
    assert(resp.ok, `GET ${url} → HTTP ${resp.status}: ${text.slice(0, 300)}`);
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      throw new TestFailure(`${step}: GET ${url} returned non-JSON: ${text.slice(0, 200)}`);
    }
    assert(Array.isArray(body.candles), `GET ${url}: no candles array`);
    const drawn = await page.evaluate(() => window.ohlcdDrawn());
    const s2 = await state(page);
    const n = body.candles.length;
    const difference = firstDifference(drawn, body.candles);
    if (s2.lastRequest === s.lastRequest && !difference && String(s2.resolution) === String(body.resolution)) {
      assert(n > 0, `API returned 0 candles for ${url}; the chart needs data to be tested`);
      assert(s2.bars === n, `window.ohlcd.bars is ${s2.bars}, ${n} bars drawn`);
      if (expect.resolution) assert(String(s2.requestedResolution) === expect.resolution, `requested resolution ${s2.requestedResolution}, expected ${expect.resolution}`);
      const label = await page.textContent('#resolution-shown');
      assert(label.includes(n.toLocaleString('en-US')), `#resolution-shown "${label}" does not show the bar count ${n}`);
      log(`${step}: ${s2.symbol} requested ${s2.requestedResolution} shown ${s2.resolution}: all ${n} bars drawn == API (${label.trim()})`);
      return s2;
    }
    last = `resolution ${s2.resolution} drawn, ${body.resolution} from the API; ${difference || 'bars equal'} (${url})`;
    await page.waitForTimeout(750);
  }
  throw new TestFailure(`${step}: chart does not match the API: ${last}`);
}

/** Wait until a full reload newer than `prevLoads` finished with window.ohlcd[key] === value. */
async function waitForReload(page, prevLoads, what, key, value) {
  await waitFor(
    page,
    what,
    ([prev, k, v]) => {
      const o = window.ohlcd;
      return !!o && o.loads > prev && !o.loading && o[k] === v;
    },
    [prevLoads, key, value],
  );
}

async function main() {
  // A screenshot left by an earlier run must not pass for this one.
  fs.rmSync(screenshotPath, { force: true });
  if (!fs.existsSync(executablePath)) {
    throw new TestFailure(`no Chromium at ${executablePath} (apt-get install -y chromium, or set CHROMIUM=)`);
  }
  const browser = await chromium.launch({
    executablePath,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    page.on('pageerror', (err) => problems.push(`uncaught page error: ${err.message}`));
    page.on('console', (msg) => {
      if (msg.type() === 'error') {
        const loc = msg.location();
        if (refusedStream(loc && loc.url, msg.text())) return;
        problems.push(`console error: ${msg.text()}${loc && loc.url ? ` (${loc.url})` : ''}`);
      }
    });
    page.on('requestfailed', (req) => {
      const f = req.failure();
      // The page closes its live stream on purpose when the chart changes.
      if (new URL(req.url()).pathname === '/api/live' && f && f.errorText === 'net::ERR_ABORTED') return;
      if (refusedStream(req.url(), f && f.errorText)) return;
      problems.push(`request failed: ${req.url()} ${f ? f.errorText : ''}`);
    });
    const checkProblems = () => assert(problems.length === 0, `browser reported problems:\n  ${problems.join('\n  ')}`);

    // 1. open the page and wait for the first load
    step = 'open';
    let resp;
    try {
      resp = await page.goto(`${base}/`, { waitUntil: 'domcontentloaded', timeout: WAIT_MS });
    } catch (e) {
      throw new TestFailure(`${step}: cannot open ${base}/: ${String(e.message).split('\n')[0]}`);
    }
    assert(resp && resp.ok(), `GET ${base}/ → HTTP ${resp ? resp.status() : 'no response'}`);
    await waitFor(page, 'window.ohlcd.ready', () => window.ohlcd && window.ohlcd.ready === true);
    checkProblems();

    // 2. bars drawn == API answer for the same request
    step = 'initial load';
    const first = await assertBarsMatchApi(page);
    // With data that ends in the past, the chart opens on it: the newest bar
    // at the right edge, on the day the data ends.
    const lastDay = process.env.EXPECT_LAST_DAY;
    if (lastDay) {
      const drawn = await page.evaluate(() => window.ohlcdDrawn());
      const newest = drawn.candles[drawn.candles.length - 1];
      const day = new Date(Number(newest.time) * 1000).toISOString().slice(0, 10);
      assert(day === lastDay, `newest bar drawn on ${day}, the data ends on ${lastDay}`);
      const toDate = await page.inputValue('#to-date');
      assert(toDate === lastDay, `range ends on ${toDate}, expected the data's last day ${lastDay}`);
      log(`${step}: opened on the data: newest bar on ${day}`);
    }
    const active = await page.$$eval('button[data-resolution].active', (bs) => bs.map((b) => b.dataset.resolution));
    assert(active.length === 1 && active[0] === first.requestedResolution,
      `active timeframe buttons ${JSON.stringify(active)}, expected ["${first.requestedResolution}"]`);
    checkProblems();

    // 3. 1h timeframe
    step = '1h timeframe';
    const target = first.requestedResolution === '60' ? '240' : '60';
    const before1h = (await state(page)).loads;
    await page.click(`button[data-resolution="${target}"]`);
    await waitForReload(page, before1h, `reload at resolution ${target}`, 'requestedResolution', target);
    const s1h = await assertBarsMatchApi(page, { resolution: target });
    const activeNow = await page.getAttribute(`button[data-resolution="${target}"]`, 'class');
    assert(/\bactive\b/.test(activeNow || ''), `button[data-resolution="${target}"] is not highlighted`);
    const shownAttr = await page.getAttribute('#resolution-shown', 'data-resolution');
    assert(shownAttr === String(s1h.resolution), `#resolution-shown data-resolution="${shownAttr}", expected "${s1h.resolution}"`);
    checkProblems();

    // 4. another symbol
    step = 'symbol switch';
    const options = await page.$$eval('#symbol option', (os) => os.map((o) => o.value));
    assert(options.length >= 2, `symbol selector has ${options.length} option(s): ${JSON.stringify(options)}; need at least 2`);
    const prevSymbol = s1h.symbol;
    const other = options.find((o) => o !== prevSymbol);
    const beforeSym = (await state(page)).loads;
    await page.selectOption('#symbol', other);
    await waitForReload(page, beforeSym, `reload for symbol ${other}`, 'symbol', other);
    const sSym = await assertBarsMatchApi(page, { resolution: target });
    assert(sSym.symbol !== prevSymbol && sSym.symbol === other, `window.ohlcd.symbol is ${sSym.symbol}, expected ${other} (was ${prevSymbol})`);
    checkProblems();

    // 5. a trade posted now moves the drawn bar through the live stream, without a reload
    step = 'live stream';
    if (lastDay) {
      // A range in the past is not live: no stream, and the badge says so.
      const s = await state(page);
      const badge = await page.$eval('#live', (el) => ({ live: el.dataset.live, text: el.textContent.trim() }));
      assert(!s.live && s.stream === 'off', `historical range, yet live=${s.live} stream=${s.stream}`);
      assert(badge.live === 'false' && badge.text === 'historical', `LIVE badge ${JSON.stringify(badge)} on a historical range`);
      log(`${step}: historical range: no stream, badge "${badge.text}"`);
    } else {
    if (STREAM_REFUSED) {
      await waitFor(page, 'the page to give up the refused stream and poll', () => window.ohlcd && window.ohlcd.stream === 'polling');
    } else {
      await waitFor(page, 'the live stream to open', () => window.ohlcd && window.ohlcd.stream === 'open');
    }
    const before = await state(page);
    const drawnBefore = await page.evaluate(() => window.ohlcdDrawn());
    const lastBar = drawnBefore.candles[drawnBefore.candles.length - 1];
    const lastVolume = Number(drawnBefore.volumes[drawnBefore.volumes.length - 1].value);
    // A new high, stamped at the server's now: in its open bar, after anything
    // already materialized.
    const serverNow = Number(await (await fetch(`${base}/udf/time`)).text());
    const barSecs = Number(before.resolution) * 60;
    assert(barSecs > 0, `shown resolution ${before.resolution} is not in minutes`);
    const barTime = Math.floor(serverNow / barSecs) * barSecs;
    const price = Number((Number(lastBar.high) * 1.5).toFixed(2));
    const amount = 1.25;
    const expectedVolume = barTime === Number(lastBar.time) ? lastVolume + amount : amount;
    const trade = { symbol: before.symbol, price, amount, side: 'buy', timestamp: serverNow * 1000 };
    const posted = await fetch(`${base}/api/trades`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(trade),
    });
    assert(posted.ok, `POST /api/trades → HTTP ${posted.status}: ${await posted.text()}`);
    await waitFor(page, `the newest bar to reach the posted high ${price}`, ([t, p]) => {
      const d = window.ohlcdDrawn().candles;
      const last = d[d.length - 1];
      return Number(last.time) === t && Number(last.high) === p;
    }, [barTime, price]);
    const after = await state(page);
    assert(after.loads === before.loads, `the page reloaded (${before.loads} → ${after.loads} loads); the ${STREAM_REFUSED ? 'polling' : 'stream'} should move the bar`);
    if (STREAM_REFUSED) {
      assert(after.streamUpdates === 0 && after.streamOpens === 0, `a refused stream delivered bars (${JSON.stringify(after)})`);
      assert(after.liveUpdates > before.liveUpdates, `no live update came from polling (${JSON.stringify(after)})`);
    } else {
      assert(after.streamUpdates > before.streamUpdates, `no bar came from the stream (${JSON.stringify(after)})`);
    }
    const drawnAfter = await page.evaluate(() => window.ohlcdDrawn());
    const volumeAfter = Number(drawnAfter.volumes[drawnAfter.volumes.length - 1].value);
    assert(Math.abs(volumeAfter - expectedVolume) < 1e-6 * Math.max(1, volumeAfter),
      `volume of the bar ${volumeAfter}, expected ${expectedVolume}`);
    const badge = await page.$eval('#live', (el) => ({ live: el.dataset.live, mode: el.dataset.mode }));
    const mode = STREAM_REFUSED ? 'polling' : 'stream';
    assert(badge.live === 'true' && badge.mode === mode, `LIVE badge ${JSON.stringify(badge)}, expected live by ${mode}`);
    await assertBarsMatchApi(page, { resolution: target });
    log(`${step}: the posted trade (high ${price}) moved bar ${barTime} by ${mode} without a reload`);
    }
    checkProblems();

    // 6. a seconds chart: 5S bars of the last hour, drawn as the API serves
    // them, labelled to the second
    if (!lastDay) {
      step = 'seconds chart';
      const beforeSecs = (await state(page)).loads;
      await page.click('button[data-resolution="5S"]');
      await waitForReload(page, beforeSecs, 'reload at resolution 5S', 'requestedResolution', '5S');
      const s5 = await assertBarsMatchApi(page, { resolution: '5S' });
      assert(s5.resolution === '5S', `5S requested, ${s5.resolution} shown`);
      const drawn = await page.evaluate(() => window.ohlcdDrawn().candles);
      assert(drawn.every((b) => Number(b.time) % 5 === 0), 'a 5S bar not on a 5-second boundary');
      const label = await page.evaluate((t) => window.ohlcdTimeLabel(t), Number(drawn[drawn.length - 1].time));
      assert(/ \d\d:\d\d:\d\d$/.test(label), `crosshair label "${label}" of a seconds bar has no seconds`);
      log(`${step}: ${drawn.length} 5S bars drawn == API, last labelled ${label}`);
      checkProblems();
    }

    // 7. a zone switch: daily bars in Kolkata (UTC+05:30, no DST) start at
    // Kolkata midnight and the axis and crosshair show that local date
    step = 'zone switch';
    const beforeDaily = (await state(page)).loads;
    await page.click('button[data-resolution="1D"]');
    await waitForReload(page, beforeDaily, 'reload at resolution 1D', 'requestedResolution', '1D');
    const beforeZone = (await state(page)).loads;
    await page.selectOption('#tz', 'Asia/Kolkata');
    await waitForReload(page, beforeZone, 'reload in Asia/Kolkata', 'timezone', 'Asia/Kolkata');
    const sZone = await assertBarsMatchApi(page, { resolution: '1D' });
    assert(new URL(sZone.lastRequest, base).searchParams.get('tz') === 'Asia/Kolkata',
      `the page asked ${sZone.lastRequest}, not tz=Asia/Kolkata`);
    const days = await page.evaluate(() => window.ohlcdDrawn().candles.map((b) => Number(b.time)));
    const KOLKATA = 19800;
    for (const t of days) {
      assert((t + KOLKATA) % DAY_SECS === 0, `daily bar at ${t} is not at a Kolkata midnight`);
      const localDate = new Date((t + KOLKATA) * 1000).toISOString().slice(0, 10);
      const [label, tick] = await page.evaluate((x) => [window.ohlcdTimeLabel(x), window.ohlcdTickLabel(x, 2)], t);
      assert(label === localDate, `daily bar at ${t} labelled "${label}", its Kolkata date is ${localDate}`);
      assert(tick === String(Number(localDate.slice(8))), `axis label "${tick}" for the Kolkata date ${localDate}`);
    }
    assert(await page.inputValue('#tz') === 'Asia/Kolkata', 'the zone selector does not show Asia/Kolkata');
    log(`${step}: ${days.length} daily bars on their Kolkata dates (first ${days.length ? await page.evaluate((x) => window.ohlcdTimeLabel(x), days[0]) : '-'})`);
    checkProblems();

    // 8. the watchlist shows each symbol's last price as /udf/quotes has it
    step = 'watchlist';
    await waitFor(page, 'quotes in #watchlist',
      () => document.querySelectorAll('#watchlist tbody tr[data-status="ok"]').length >= 2);
    let quoted = '';
    for (let attempt = 0; attempt < 8; attempt++) {
      const rows = await page.$$eval('#watchlist tbody tr[data-status="ok"]',
        (trs) => trs.map((tr) => [tr.dataset.symbol, Number(tr.dataset.lp)]));
      const q = new URLSearchParams({ symbols: rows.map((r) => r[0]).join(',') });
      const answer = await (await fetch(`${base}/udf/quotes?${q}`)).json();
      const served = new Map(answer.d.map((d) => [d.n, d.v && d.v.lp]));
      const differ = rows.filter(([sym, lp]) => served.get(sym) !== lp);
      quoted = `${rows.length} rows, differing: ${JSON.stringify(differ)}`;
      if (!differ.length) break;
      await page.waitForTimeout(750);
    }
    assert(/differing: \[\]$/.test(quoted), `watchlist does not show /udf/quotes: ${quoted}`);
    log(`${step}: ${quoted}`);
    checkProblems();

    // 9. progress table
    step = 'progress table';
    await waitFor(page, 'a row in #progress-table',
      () => document.querySelectorAll('#progress-table tbody tr[data-symbol]').length > 0);
    const rows = await page.$$eval('#progress-table tbody tr[data-symbol]', (trs) => trs.length);
    log(`${step}: ${rows} row(s)`);
    checkProblems();

    // 10. screenshot
    step = 'screenshot';
    fs.mkdirSync(path.dirname(screenshotPath), { recursive: true });
    await page.waitForTimeout(300); // let the canvas settle
    await page.screenshot({ path: screenshotPath, fullPage: true });
    assert(fs.statSync(screenshotPath, { throwIfNoEntry: false })?.size > 0, `no screenshot at ${screenshotPath}`);
    log(`${step}: saved ${screenshotPath}`);

    // 11. no page/console errors during the whole run
    step = 'errors';
    checkProblems();
    await context.close();
  } finally {
    await browser.close();
  }
}

try {
  await main();
  log('PASS: all chart page checks passed');
  console.log('1 passed, 0 failed');
  process.exit(0);
} catch (e) {
  console.error(`[chart.mjs] FAIL: ${e instanceof TestFailure ? e.message : e.stack || e}`);
  console.log('0 passed, 1 failed');
  process.exit(1);
}
