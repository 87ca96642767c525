// Opens ringcast's dashboard (GET / of the HTTP listener) in headless Chromium (the Debian
// package, driven by playwright-core) while load runs, and checks that it shows live numbers.
// usage: node browser-dashboard.cjs HTTP_ADDR WS_URL PROFILE_DIR SCREENSHOT
//   HTTP_ADDR   the HTTP listener, 127.0.0.1:PORT: the page is http://HTTP_ADDR/, the load
//               publishes with POST /api/publish there
//   WS_URL      the /ws endpoint the load's subscribers connect to
//   PROFILE_DIR a fresh Chromium profile directory
//   SCREENSHOT  where the PNG of the page goes (written on failure too, when the page loaded)
// The load: SUBSCRIBERS (4) `ws` clients on /ws?channel=dashboard:load-PID&format=raw, then
// publishes at PUBLISH_RATE (50) per second on keep-alive connections (at most 4 unanswered), until the
// checks end or DASHBOARD_LOAD_S (default 40) seconds pass. The checks, each a bounded poll of the
// DOM (DASHBOARD_WAIT_S seconds, default 20, from the page's load): document.body.dataset.polls
// >= 3; #connections >= SUBSCRIBERS; #deliveries (frames out/s) and #publishes above 0 at some
// poll; the `channels` table has the load's channel with SUBSCRIBERS subscribers; #status starts
// with "live"; no uncaught error on the page; every publish answered 200 and every subscriber
// got messages.
// Environment: CHROMIUM (browser binary), DASHBOARD_WAIT_S, DASHBOARD_LOAD_S,
//              DASHBOARD_WRONG=1 (one deliberately wrong expectation: SUBSCRIBERS + 1000
//              connections, to see a failed check fail the run).
// Prints one "PASS ..." or "FAIL ..." line on stdout (the steps on stderr); exit 0 or 1.
'use strict';
const http = require('http');
const WebSocket = require('ws');
const { chromium } = require('playwright-core');

const [httpAddr, wsUrl, profileDir, screenshot] = process.argv.slice(2);
if (!httpAddr || !wsUrl || !profileDir || !screenshot) {
  console.error('usage: node browser-dashboard.cjs HTTP_ADDR WS_URL PROFILE_DIR SCREENSHOT');
  process.exit(2);
}
const [host, port] = [httpAddr.slice(0, httpAddr.lastIndexOf(':')), Number(httpAddr.slice(httpAddr.lastIndexOf(':') + 1))];
const WAIT_MS = Number(process.env.DASHBOARD_WAIT_S || 20) * 1000;
const LOAD_MS = Number(process.env.DASHBOARD_LOAD_S || 40) * 1000;
const SUBSCRIBERS = 4;
const PUBLISH_RATE = 50;
const CHANNEL = `dashboard:load-${process.pid}`;
const wantConnections = SUBSCRIBERS + (process.env.DASHBOARD_WRONG === '1' ? 1000 : 0);
const t0 = Date.now();
const log = (text) => console.error(`[dashboard] ${((Date.now() - t0) / 1000).toFixed(2)}s ${text}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

// One request to the HTTP listener; resolves to {status, body}.
function request(method, path, body, via = agent) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
    const req = http.request({
      host, port, method, path, agent: via, timeout: 10000,
      headers: data ? { 'Content-Type': 'application/json', 'Content-Length': data.length } : {},
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode, body: text }));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer in 10 s`)));
    req.on('error', reject);
    req.end(data);
  });
}

// "1.2 k" / "3.40 M" / "17" (the page's fmt) -> a number; NaN for anything else ("–").
function parseShown(text) {
  const m = /^([0-9]+(?:\.[0-9]+)?)(?: ([kM]))?$/.exec(String(text).trim());
  if (!m) return NaN;
  return Number(m[1]) * (m[2] === 'M' ? 1e6 : m[2] === 'k' ? 1e3 : 1);
}

async function openSubscribers() {
  const url = `${wsUrl}${wsUrl.includes('?') ? '&' : '?'}channel=${encodeURIComponent(CHANNEL)}&format=raw`;
  const subs = await Promise.all(Array.from({ length: SUBSCRIBERS }, () => new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { handshakeTimeout: 10000 });
    ws.received = 0;
    ws.on('message', () => { ws.received += 1; });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  })));
  // The subscriptions made at connect reach the channel's owner a moment after the sockets open.
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const r = await request('GET', `/api/presence?channel=${encodeURIComponent(CHANNEL)}`);
    const n = r.status === 200 ? (JSON.parse(r.body).conns || []).length : -1;
    if (n === SUBSCRIBERS) break;
    if (Date.now() > deadline) throw new Error(`presence of ${CHANNEL}: ${n} conns, expected ${SUBSCRIBERS}`);
    await sleep(50);
  }
  log(`${SUBSCRIBERS} subscribers on ${CHANNEL}`);
  return subs;
}

// Publishes at PUBLISH_RATE per second until stop.now or LOAD_MS, each request started on its
// tick without waiting for the one before (at most IN_FLIGHT_MAX unanswered: a tick that finds
// them all busy is skipped, so a slow machine gets fewer publishes, never a burst); resolves to
// {sent, bad, skipped} once every request has been answered.
const IN_FLIGHT_MAX = 4;
const publishAgent = new http.Agent({ keepAlive: true, maxSockets: IN_FLIGHT_MAX });
async function publisher(stop) {
  const end = Date.now() + LOAD_MS;
  const stats = { sent: 0, bad: 0, skipped: 0, lastBad: '' };
  const pending = new Set();
  let due = Date.now();
  while (!stop.now && Date.now() < end) {
    if (pending.size < IN_FLIGHT_MAX) {
      const n = stats.sent++;
      const p = request('POST', '/api/publish', { channel: CHANNEL, text: `load ${n}` }, publishAgent)
        .then((r) => {
          if (r.status !== 200) { stats.bad += 1; stats.lastBad = `${r.status} ${r.body.slice(0, 100)}`; }
        }, (e) => { stats.bad += 1; stats.lastBad = String(e.message || e); })
        .finally(() => pending.delete(p));
      pending.add(p);
    } else {
      stats.skipped += 1;
    }
    due = Math.max(due + 1000 / PUBLISH_RATE, Date.now());
    await sleep(due - Date.now());
  }
  await Promise.all([...pending]);
  return stats;
}

// What the page shows now.
function readPage(page) {
  return page.evaluate(() => {
    const text = (id) => (document.getElementById(id) || {}).textContent || '';
    const rows = [...document.querySelectorAll('#channels tbody tr')]
      .map((tr) => [...tr.cells].map((td) => td.textContent));
    return {
      polls: Number(document.body.dataset.polls || 0), connections: text('connections'),
      deliveries: text('deliveries'), publishes: text('publishes'), status: text('status'),
      shardRows: document.querySelectorAll('#shards tbody tr').length, channels: rows,
    };
  });
}

(async () => {
  let subs = [];
  const stop = { now: false };
  let load = null;
  let context = null;
  let rc = 1;
  let result = 'FAIL no result';
  try {
    subs = await openSubscribers();
    load = publisher(stop);
    context = await chromium.launchPersistentContext(profileDir, {
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      headless: true,
      timeout: 30000,
      viewport: { width: 1100, height: 650 },
      // As in browser-smoke.cjs: off the network, out of the sandbox (root CI job).
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    const version = context.browser() ? context.browser().version() : '';
    const page = context.pages()[0] || await context.newPage();
    const pageErrors = [];
    page.on('pageerror', (e) => { pageErrors.push(String(e.message || e)); log(`page error: ${e}`); });
    page.on('console', (m) => log(`page: ${m.text()}`));
    // Every answer of the API the page polls must be 200. (Chromium also asks for
    // /favicon.ico, which the server answers 404: not the page's request, not checked.)
    const apiErrors = [];
    page.on('response', (r) => {
      if (r.status() === 200) return;
      log(`page request ${r.url()}: ${r.status()}`);
      if (new URL(r.url()).pathname.startsWith('/api/')) apiErrors.push(`${r.url()}: ${r.status()}`);
    });
    const url = `http://${httpAddr}/`;
    const resp = await page.goto(url, { timeout: 30000 });
    if (!resp || resp.status() !== 200) throw new Error(`GET ${url}: ${resp ? resp.status() : 'no response'}`);
    log(`loaded ${url} in chromium ${version}`);

    const seen = { deliveries: 0, publishes: 0, connections: NaN, channelRow: null, status: '', polls: 0 };
    let lastPolls = -1;
    const deadline = Date.now() + WAIT_MS;
    let done = false;
    while (!done) {
      const s = await readPage(page);
      if (s.polls !== lastPolls) {
        lastPolls = s.polls;
        log(`poll ${s.polls}: connections ${s.connections}, frames out/s ${s.deliveries}, `
          + `publishes/s ${s.publishes}, status "${s.status}", channels ${JSON.stringify(s.channels)}`);
        seen.deliveries = Math.max(seen.deliveries, parseShown(s.deliveries) || 0);
        seen.publishes = Math.max(seen.publishes, parseShown(s.publishes) || 0);
        seen.connections = parseShown(s.connections);
        seen.channelRow = s.channels.find((r) => r[0] === CHANNEL) || null;
        seen.status = s.status;
        seen.polls = s.polls;
      }
      done = seen.polls >= 3 && seen.connections >= wantConnections && seen.deliveries > 0
        && seen.publishes > 0 && seen.channelRow !== null && seen.channelRow[1] === String(SUBSCRIBERS)
        && seen.status.startsWith('live');
      if (!done && Date.now() > deadline) break;
      if (!done) await sleep(100);
    }
    // The picture while the load still runs (the rates fall once it stops).
    try {
      await page.screenshot({ path: screenshot, fullPage: true });
      log(`screenshot ${screenshot}`);
    } catch (e) {
      log(`no screenshot: ${e.message || e}`);
    }
    stop.now = true;
    const sent = await load;
    load = null;
    const received = subs.map((ws) => ws.received);
    log(`load: ${sent.sent} publishes (${sent.bad} not 200, ${sent.skipped} ticks skipped with `
      + `${IN_FLIGHT_MAX} unanswered), received per subscriber ${received.join(', ')}`);
    const problems = [];
    if (seen.polls < 3) problems.push(`${seen.polls} polls (want >= 3)`);
    if (!(seen.connections >= wantConnections)) problems.push(`#connections "${seen.connections}" (want >= ${wantConnections})`);
    if (!(seen.deliveries > 0)) problems.push('#deliveries never above 0');
    if (!(seen.publishes > 0)) problems.push('#publishes never above 0');
    if (!seen.channelRow) problems.push(`no row for ${CHANNEL} in the channels table`);
    else if (seen.channelRow[1] !== String(SUBSCRIBERS)) problems.push(`channels row ${JSON.stringify(seen.channelRow)} (want ${SUBSCRIBERS} subscribers)`);
    if (!seen.status.startsWith('live')) problems.push(`#status "${seen.status}"`);
    if (pageErrors.length) problems.push(`page error: ${pageErrors[0]}`);
    if (apiErrors.length) problems.push(`${apiErrors.length} API answers not 200, first ${apiErrors[0]}`);
    if (sent.bad) problems.push(`${sent.bad} of ${sent.sent} publishes not 200 (last: ${sent.lastBad})`);
    if (received.some((n) => n === 0)) problems.push(`a subscriber got nothing (${received.join(', ')})`);
    if (problems.length) {
      result = `FAIL within ${WAIT_MS / 1000}s: ${problems.join('; ')}`;
    } else {
      result = `PASS ${seen.polls} polls: connections ${seen.connections} (>= ${SUBSCRIBERS} subscribers), `
        + `frames out/s up to ${seen.deliveries}, publishes/s up to ${seen.publishes}, `
        + `${CHANNEL} listed with ${SUBSCRIBERS}, status "live"; ${sent.sent} publishes at ${PUBLISH_RATE}/s; `
        + `chromium ${version}`;
      rc = 0;
    }
  } catch (e) {
    result = 'FAIL ' + String(e.message || e).split('\n')[0];
  } finally {
    stop.now = true;
    if (load) await load.catch(() => {});
    for (const ws of subs) ws.close(1000);
    agent.destroy();
    publishAgent.destroy();
    if (context) await context.close().catch(() => {});
  }
  console.log(result);
  process.exit(rc);
})().catch((e) => { console.log('FAIL ' + e); process.exit(1); });
