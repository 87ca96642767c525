// Drives examples/recover/index.html in headless Chromium (the Debian package) through
// playwright-core against a running server, and checks that the page recovers what it missed
// while disconnected, and says so when it cannot.
// usage: node browser-recover.cjs WS_URL CONTROL_ADDR PROFILE_DIR
//   WS_URL        the server's /ws endpoint, e.g. ws://127.0.0.1:9080/ws
//   CONTROL_ADDR  its control socket, unix:PATH or tcp:HOST:PORT
// Environment: CHROMIUM (browser binary), PYTHON (runs lib/control.py; default python3),
//              RECOVER_WAIT_S (bound of every wait, seconds, default 20),
//              RECOVER_HISTORY (history_size of the `recover` namespace, default 100, as in
//              tests/conformance/smoke.toml).
// The page is loaded from a file, so its handshakes carry "Origin: null". Network loss is
// Chromium's offline emulation: the page's open socket stays up until the server closes it
// (control `disconnect`), and every reconnect fails until the driver goes online again, so the
// messages published meanwhile can only reach the page through recovery.
// Prints one "PASS ..." or "FAIL ..." line on stdout (the page's log and the steps go to
// stderr); exit 0 or 1.
'use strict';
const path = require('path');
const { spawn } = require('child_process');
const { pathToFileURL } = require('url');
const { chromium } = require('playwright-core');

const [wsUrl, controlAddr, profileDir] = process.argv.slice(2);
if (!wsUrl || !controlAddr || !profileDir) {
  console.error('usage: node browser-recover.cjs WS_URL CONTROL_ADDR PROFILE_DIR');
  process.exit(2);
}
const WAIT_MS = Number(process.env.RECOVER_WAIT_S || 20) * 1000;
const HISTORY = Number(process.env.RECOVER_HISTORY || 100);
const PYTHON = process.env.PYTHON || 'python3';
const CONTROL_PY = path.join(__dirname, 'control.py');
const PAGE = path.join(__dirname, '..', '..', '..', 'examples', 'recover', 'index.html');
const ws = new URL(wsUrl);
const t0 = Date.now();
const step = (text) => console.error(`[browser-recover] ${((Date.now() - t0) / 1000).toFixed(2)}s ${text}`);

// Control requests through lib/control.py, bounded with timeout(1); resolves to the results.
function control(requests) {
  return new Promise((resolve, reject) => {
    const child = spawn('timeout', ['--kill-after=2', '15', PYTHON, CONTROL_PY, controlAddr],
      { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    child.on('error', reject);
    child.on('close', (code) => {
      let replies;
      try {
        replies = out.split('\n').filter(Boolean).map((l) => JSON.parse(l));
      } catch (e) {
        return reject(new Error(`control.py printed something other than JSON: ${out.slice(0, 200)}`));
      }
      if (code !== 0 || replies.length !== requests.length) {
        const bad = replies.find((r) => !('result' in r));
        reject(new Error(`control.py exited ${code}` + (bad ? `: ${JSON.stringify(bad)}` : '') +
          (err ? `: ${err.trim()}` : '')));
      } else {
        resolve(replies.map((r) => r.result));
      }
    });
    child.stdin.end(requests.map((r) => JSON.stringify(r) + '\n').join(''));
  });
}

// Publishes {"n": i} for i in first..last; the channel must answer with offsets first..last.
async function publish(channel, first, last) {
  const requests = [];
  for (let n = first; n <= last; n++) requests.push({ method: 'publish', channel, data: { n } });
  const results = await control(requests);
  results.forEach((r, i) => {
    if (r.offset === first + i) return;
    const why = r.offset === 0 ? ' (does the server keep history for the recover namespace?)' : '';
    throw new Error(`publish {"n":${first + i}} on ${channel} got offset ${r.offset}${why}`);
  });
  step(`published #${first}..#${last} on ${channel}`);
}

// What the page shows, read from its DOM (the page has no test hooks).
function readPage(page) {
  return page.evaluate(() => {
    const text = (id) => document.getElementById(id).textContent;
    return {
      status: text('status'),
      conn: text('conn'),
      offset: text('offset'),
      epoch: text('epoch'),
      recovery: text('recovery'),
      recoveryClass: document.getElementById('recovery').className,
      duplicates: Number(text('duplicates')),
      gaps: Number(text('gaps')),
      log: text('log'),
      items: [...document.querySelectorAll('#messages li')].map((li) => ({
        offset: li.dataset.offset === undefined ? null : Number(li.dataset.offset),
        text: li.textContent,
        notice: li.classList.contains('notice'),
      })),
    };
  });
}
const summary = (s) => JSON.stringify({ ...s, log: undefined, items: s.items.length,
  first: s.items[0], last: s.items[s.items.length - 1] });

// Bounded poll of the page until `ready(state)` holds; returns the state.
async function waitFor(page, what, ready) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const s = await readPage(page);
    if (ready(s)) { step(`page: ${what}`); return s; }
    if (Date.now() > deadline) throw new Error(`no ${what} within ${WAIT_MS / 1000}s; page: ${summary(s)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function expect(cond, what, s) {
  if (!cond) throw new Error(`${what}; page: ${summary(s)}`);
}

// The page's messages (notices aside) must be exactly #first..#last with data {"n": offset}.
function expectMessages(s, first, last) {
  const got = s.items.filter((i) => !i.notice);
  const want = [];
  for (let n = first; n <= last; n++) want.push({ offset: n, text: JSON.stringify({ n }) });
  const same = got.length === want.length &&
    got.every((g, i) => g.offset === want[i].offset && g.text === want[i].text);
  expect(same, `expected messages #${first}..#${last} once each, in order, got ` +
    JSON.stringify(got.map((g) => g.offset)), s);
  expect(s.duplicates === 0 && s.gaps === 0, 'the page saw duplicates or gaps', s);
}

function pageUrl(channel) {
  const q = new URLSearchParams({ host: ws.hostname.replace(/^\[|\]$/g, ''), port: ws.port || '80', channel });
  return pathToFileURL(PAGE).href + '?' + q.toString();
}

const subscribed = (s) => s.status === 'subscribed' && s.conn !== '–';

async function loadAndSubscribe(page, channel) {
  await page.goto(pageUrl(channel));
  const s = await waitFor(page, `subscribed to ${channel}`, subscribed);
  expect(s.offset === '0' && /^[0-9]+$/.test(s.epoch), 'a fresh channel starts at offset 0', s);
  return s;
}

// The server closes the page's connection (control `disconnect`, 4003), offline or not; the
// page must see the close. Offline, it must also keep trying (and failing) to reconnect.
async function dropConnection(context, page, conn, offline) {
  const count = (log, re) => (log.match(re) || []).length;
  const before = await readPage(page);
  if (offline) await context.setOffline(true);
  const r = await control([{ method: 'disconnect', conn: Number(conn) }]);
  expect(JSON.stringify(r[0]) === '{}', `disconnect answered ${JSON.stringify(r[0])}`, before);
  if (!offline) return before;
  return waitFor(page, 'closed by the server (4003), then a failed reconnect', (s) =>
    s.conn === '–' && count(s.log, /closed \(4003/g) > count(before.log, /closed \(4003/g) &&
    count(s.log, /closed \(1006\)/g) > count(before.log, /closed \(1006\)/g));
}

const tag = `${process.pid}-${Math.random().toString(36).slice(2, 8)}`;

// Case 1: K live; offline and disconnected, A published while the page cannot reconnect; online
// again: recovered, then L live. Then disconnected while online (the page comes back on its
// backoff timer, with whatever was published meanwhile replayed), and L more live.
async function recoveredCase(context, page) {
  const channel = `recover:ok-${tag}`;
  const K = 5, A = 5, L = 5;
  const first = await loadAndSubscribe(page, channel);
  await publish(channel, 1, K);
  await waitFor(page, `#1..#${K} shown`, (s) => s.items.length >= K);
  await dropConnection(context, page, first.conn, true);
  await publish(channel, K + 1, K + A);
  await context.setOffline(false);
  let s = await waitFor(page, 'resubscribed with the missed messages', (x) =>
    subscribed(x) && x.conn !== first.conn && x.items.length >= K + A);
  expect(s.recoveryClass === 'recovered' &&
    s.recovery.startsWith(`recovered: true (${A} missed messages after #${K}, epoch ${first.epoch})`),
  `expected recovered: true for ${A} messages after #${K}`, s);
  expect(s.epoch === first.epoch, 'the epoch changed', s);
  let n = K + A + L;
  await publish(channel, K + A + 1, n);
  s = await waitFor(page, `#${n} shown`, (x) => x.items.length >= n);

  const second = s;
  await dropConnection(context, page, second.conn, false);
  await publish(channel, n + 1, n + A);
  s = await waitFor(page, 'resubscribed after a disconnect while online', (x) =>
    subscribed(x) && x.conn !== second.conn && x.recovery.includes(` after #${n}, `) &&
    x.items.length >= n + A);
  expect(s.recoveryClass === 'recovered' && s.recovery.startsWith('recovered: true ('),
    `expected recovered: true after #${n}`, s);
  const replayed = Number(/^recovered: true \(([0-9]+)/.exec(s.recovery)[1]);
  await publish(channel, n + A + 1, n + A + L);
  n += A + L;
  s = await waitFor(page, `#${n} shown`, (x) => x.items.length >= n);
  expectMessages(s, 1, n);
  expect(s.items.every((i) => !i.notice), 'the page reloaded its state', s);
  expect(s.epoch === first.epoch, 'the epoch changed', s);
  return `recovered:true twice (${A} missed while offline, ${replayed} while reconnecting), ` +
    `#1..#${n} once each in order`;
}

// Case 2: more messages published while away than the namespace keeps: recovered false, the
// page reloads its state and continues with the live messages.
async function refusedCase(context, page) {
  const channel = `recover:gone-${tag}`;
  const K = 3, A = HISTORY + 20, L = 3;
  const first = await loadAndSubscribe(page, channel);
  await publish(channel, 1, K);
  await waitFor(page, `#1..#${K} shown`, (s) => s.items.length >= K);
  await dropConnection(context, page, first.conn, true);
  await publish(channel, K + 1, K + A);
  await context.setOffline(false);
  let s = await waitFor(page, 'resubscribed, recovery refused', (x) =>
    subscribed(x) && x.conn !== first.conn && x.recoveryClass !== '');
  expect(s.recoveryClass === 'refused' && s.recovery.startsWith(`recovered: false (messages after #${K} `) &&
    s.recovery.includes(`now #${K + A}, epoch ${first.epoch})`),
  `expected recovered: false at #${K + A}`, s);
  expect(s.items.length === 1 && s.items[0].notice && s.items[0].text.includes(`after #${K + A}`),
    'expected the list cleared with one notice', s);
  expect(s.offset === String(K + A), 'the page does not continue from the reply\'s offset', s);
  await publish(channel, K + A + 1, K + A + L);
  s = await waitFor(page, `#${K + A + L} shown`, (x) => x.items.filter((i) => !i.notice).length >= L);
  expectMessages(s, K + A + 1, K + A + L);
  return `recovered:false after ${A} missed (history ${HISTORY}), reloaded at #${K + A}, ` +
    `live #${K + A + 1}..#${K + A + L} once each`;
}

(async () => {
  // The flags keep Chromium off the network (no update checks, no sync, no QUIC probes) and
  // out of the sandbox, which needs user namespaces a root CI job does not have.
  const context = await chromium.launchPersistentContext(profileDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    timeout: 30000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  let rc = 1;
  try {
    const version = context.browser() ? context.browser().version() : '';
    const page = context.pages()[0] || await context.newPage();
    const errors = [];
    page.on('console', (m) => console.error('page: ' + m.text()));
    page.on('pageerror', (e) => { errors.push(String(e)); console.error('page error: ' + e); });
    step(`chromium ${version} started`);
    const one = await recoveredCase(context, page);
    const two = await refusedCase(context, page);
    if (errors.length) throw new Error('script error on the page: ' + errors[0]);
    console.log(`PASS ${one}; ${two}; ${((Date.now() - t0) / 1000).toFixed(1)}s, chromium ${version}`);
    rc = 0;
  } catch (e) {
    console.log('FAIL ' + String(e.message || e).split('\n')[0]);
  } finally {
    await context.close();
  }
  process.exit(rc);
})().catch((e) => { console.log('FAIL ' + e); process.exit(1); });
