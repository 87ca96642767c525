// Drives examples/04-push-every-second/ against its own server (tests/conformance/seeds.sh
// started it with the example's ringcast.toml, two shards): the page in headless Chromium plus
// 40 Node `ws` clients, ticker.php pushing once a second through the control socket.
// usage: node seed-push-every-second.cjs WS_URL CONTROL_ADDR PAGE_URL SERVER_PID EXAMPLE_DIR
// Checks what the users saw:
//   - every connection, on both shards, gets every push: the same consecutive numbers;
//   - one push per second: over a 5 s window each connection got 5 (± 1) pushes, and the
//     ticker's own log says it reached every connection;
//   - SIGTERM to the server: every client is closed with 1001 "going away", the page says the
//     server is restarting (and tries to reconnect), and the server exits by itself (seeds.sh
//     checks its exit status).
// Prints one "PASS ..." or "FAIL ..." line on stdout (steps on stderr); exit 0/1.
'use strict';
const path = require('path');
const { spawn } = require('child_process');
const WebSocket = require('ws');
const { stepper, control, waitFor, expect, launch, newPage } = require('./users-common.cjs');

const [wsUrl, controlAddr, pageBase, serverPid, exampleDir] = process.argv.slice(2);
if (!wsUrl || !controlAddr || !pageBase || !serverPid || !exampleDir) {
  console.error('usage: node seed-push-every-second.cjs WS_URL CONTROL_ADDR PAGE_URL SERVER_PID EXAMPLE_DIR');
  process.exit(2);
}
const CLIENTS = 40;
const step = stepper('seed-push-every-second');
const errors = [];

// A Node client: the pushes it got ({n, at}) and how it was closed.
function client(i) {
  const c = { i, conn: null, pushes: [], closed: null };
  c.ws = new WebSocket(wsUrl);
  c.ws.on('message', (data) => {
    const msg = JSON.parse(String(data));
    if (msg.op === 'welcome') c.conn = msg.conn;
    if (msg.op === 'push') c.pushes.push({ n: msg.data.n, at: Date.now() });
  });
  c.ws.on('close', (code) => { c.closed = code; });
  c.ws.on('error', (e) => { c.error = String(e); });
  return c;
}

async function main() {
  const browser = await launch();
  let ticker;
  try {
    const page = await newPage(await browser.newContext(), 'page', errors, step);
    const ws = new URL(wsUrl);
    await page.goto(new URL(`index.html?host=${ws.hostname}&port=${ws.port}`, pageBase).href);
    const clients = Array.from({ length: CLIENTS }, (_, i) => client(i));
    await waitFor('all clients welcomed', async () => clients.filter((c) => c.conn !== null).length,
      (n) => n === CLIENTS);
    await waitFor('the page connected', () => page.evaluate(() => document.getElementById('state').dataset.state),
      (s) => s === 'open');
    // A shard publishes its counters every few ticks, so a snapshot taken right after the
    // welcomes may not count them yet: poll until both shards do (bounded).
    const perShard = await waitFor('connections counted on both shards', async () => {
      const [stats] = await control(controlAddr, [{ method: 'stats' }]);
      return stats.shards.map((s) => s.open);
    }, (p) => p.length === 2 && p.every((n) => n > 0));
    step(`open connections per shard: ${perShard}`);

    const log = [];
    ticker = spawn('php', [path.join(exampleDir, 'ticker.php')], {
      env: { ...process.env, RINGCAST_CONTROL: controlAddr }, stdio: ['ignore', 'ignore', 'pipe'] });
    ticker.stderr.on('data', (d) => { for (const l of String(d).split('\n').filter(Boolean)) { log.push(l); step(l); } });

    // Wait for the first push everywhere, then count over the next 5 s.
    await waitFor('the first push on every client', async () => clients.filter((c) => c.pushes.length > 0).length,
      (n) => n === CLIENTS);
    const t0 = Date.now();
    await new Promise((r) => setTimeout(r, 5000));
    const t1 = Date.now();
    const inWindow = clients.map((c) => c.pushes.filter((p) => p.at >= t0 && p.at < t1).length);
    step(`pushes per client in ${t1 - t0} ms: min ${Math.min(...inWindow)} max ${Math.max(...inWindow)}`);
    expect(inWindow.every((n) => n >= 4 && n <= 6), 'each client got 5 +- 1 pushes in 5 s', inWindow);
    // Every push reached every client: after the next push, all have the same consecutive run.
    const seen = Math.max(...clients.map((c) => c.pushes.length));
    await waitFor('every client caught up', async () => clients.every((c) => c.pushes.length >= seen), (x) => x);
    for (const c of clients) {
      const ns = c.pushes.map((p) => p.n);
      const first = clients[0].pushes[0].n;
      expect(ns.every((n, k) => n === ns[0] + k), `client ${c.i}: consecutive pushes`, ns);
      expect(Math.abs(ns[0] - first) <= 1, `client ${c.i}: started with the others`, ns);
    }
    const pageSaw = await page.evaluate(() => Number(document.getElementById('count').textContent));
    expect(pageSaw >= 5, 'the page shows the pushes', pageSaw);
    const reach = log.filter((l) => / push \d+: \d+ connections$/.test(l)).map((l) => Number(l.match(/(\d+) connections$/)[1]));
    expect(reach.length >= 5 && reach.slice(1).every((n) => n === CLIENTS + 1),
      `the ticker reached all ${CLIENTS + 1} connections with each push`, reach);

    // SIGTERM: every client closed with 1001, the page says so.
    step(`SIGTERM to the server (pid ${serverPid})`);
    process.kill(Number(serverPid), 'SIGTERM');
    await waitFor('every client closed', async () => clients.filter((c) => c.closed !== null).length,
      (n) => n === CLIENTS);
    const codes = [...new Set(clients.map((c) => c.closed))];
    expect(codes.length === 1 && codes[0] === 1001, 'close code 1001 for every client', codes);
    const notice = await waitFor('the page noticing the shutdown',
      () => page.evaluate(() => ({ code: document.getElementById('state').dataset.code,
        notice: document.getElementById('notice').textContent })),
      (s) => s.code === '1001');
    expect(/the server is restarting/.test(notice.notice), 'the page says the server is restarting', notice);
    expect(errors.length === 0, 'no script errors on the page', errors);
    console.log(`PASS ${CLIENTS + 1} connections on shards ${perShard.join('+')}, ${Math.min(...inWindow)}-${Math.max(...inWindow)} pushes each in 5 s, all consecutive, closed 1001 on SIGTERM`);
  } finally {
    if (ticker) ticker.kill();
    await browser.close();
  }
}

main().then(() => process.exit(0), (e) => { console.log(`FAIL ${e.message}`); process.exit(1); });
