// Drives examples/05-task-progress/ against its own server (tests/conformance/seeds.sh started
// it with the example's ringcast.toml pointed at a private redis-server, plus intake.php and
// worker.php): the page in headless Chromium, twice.
// usage: node seed-task-progress.cjs WS_URL CONTROL_ADDR PAGE_URL REDIS_PORT
// Checks what the user saw:
//   - page A (10 tasks): Start, every task goes queued -> running -> done, in that order, the
//     list ends all "done", and the page closes the socket (1000) with "All 10 tasks done";
//   - page B (5 tasks, autoclose=0): the same, and then the backend closes the socket (1000
//     "all tasks done") after the last status has arrived;
//   - the statuses came through Redis: ringcast holds one pattern subscription (ws:fid:*) and
//     counted every status in redis_input_messages;
//   - a bad task list (a Node client) gets the intake's error, and nothing is queued for it.
// Prints one "PASS ..." or "FAIL ..." line on stdout (steps on stderr); exit 0/1.
'use strict';
const WebSocket = require('ws');
const { stepper, run, control, waitFor, expect, launch, newPage } = require('./users-common.cjs');

const [wsUrl, controlAddr, pageBase, redisPort] = process.argv.slice(2);
if (!wsUrl || !controlAddr || !pageBase || !redisPort) {
  console.error('usage: node seed-task-progress.cjs WS_URL CONTROL_ADDR PAGE_URL REDIS_PORT');
  process.exit(2);
}
const step = stepper('seed-task-progress');
const errors = [];

async function openPage(browser, label, params) {
  const page = await newPage(await browser.newContext(), label, errors, step);
  const ws = new URL(wsUrl);
  const q = new URLSearchParams({ host: ws.hostname, port: ws.port, ...params });
  await page.goto(new URL(`index.html?${q}`, pageBase).href);
  // Every status change of every task, in the order the page showed them.
  await page.evaluate(() => {
    window.seen = [];
    new MutationObserver((records) => {
      for (const r of records) {
        if (r.attributeName === 'data-status') window.seen.push(`${r.target.dataset.id} ${r.target.dataset.status}`);
      }
    }).observe(document.getElementById('tasks'), { subtree: true, attributes: true, attributeFilter: ['data-status'] });
  });
  return page;
}

const readPage = (page) => page.evaluate(() => ({
  tasks: [...document.querySelectorAll('#tasks li')].map((li) => ({ id: li.dataset.id, status: li.dataset.status })),
  state: document.getElementById('summary').dataset.state,
  code: document.getElementById('summary').dataset.code,
  summary: document.getElementById('summary').textContent,
  log: [...document.getElementById('log').children].map((d) => d.textContent),
  seen: window.seen,
}));

function checkOrder(label, s) {
  for (const t of s.tasks) {
    const mine = s.seen.filter((x) => x.startsWith(`${t.id} `)).map((x) => x.split(' ').slice(1).join(' '));
    expect(JSON.stringify(mine) === JSON.stringify(['queued', 'running', 'done']),
      `${label}: task ${t.id} went queued, running, done`, mine);
  }
}

async function badList() {
  const ws = new WebSocket(wsUrl);
  const got = [];
  ws.on('message', (d) => {
    const msg = JSON.parse(String(d));
    got.push(msg);
    if (msg.op === 'welcome') ws.send(JSON.stringify({ op: 'send', data: { tasks: 'not a list' } }));
  });
  const push = await waitFor('the intake refusing a bad list', async () => got.find((m) => m.op === 'push'), (x) => x);
  ws.close();
  return push.data;
}

async function main() {
  const browser = await launch();
  try {
    const a = await openPage(browser, 'A', {});
    const b = await openPage(browser, 'B', { tasks: '5', autoclose: '0' });
    await a.click('#start');
    await b.click('#start');
    const sa = await waitFor('page A finished', () => readPage(a), (s) => s.state !== 'idle' && s.state !== 'working',
      (s) => JSON.stringify({ ...s, log: s.log.slice(0, 3) }));
    expect(sa.state === 'finished', 'page A finished', sa);
    expect(sa.tasks.length === 10 && sa.tasks.every((t) => t.status === 'done'), 'page A: every task done', sa.tasks);
    expect(sa.code === '1000' && /^All 10 tasks done; connection closed by the page\.$/.test(sa.summary),
      'page A closed its socket when all were done', sa.summary);
    checkOrder('page A', sa);
    const sb = await waitFor('page B closed by the backend', () => readPage(b), (s) => s.state !== 'idle' && s.state !== 'working');
    expect(sb.state === 'finished' && sb.tasks.length === 5 && sb.tasks.every((t) => t.status === 'done'),
      'page B: every task done before the close', sb);
    expect(sb.code === '1000' && /closed by the server \(1000 all tasks done\)/.test(sb.summary),
      'page B was closed by the backend', sb.summary);
    checkOrder('page B', sb);

    const refusal = await badList();
    expect(typeof refusal.error === 'string' && /tasks/.test(refusal.error), 'a bad list gets the intake error', refusal);

    // Shards publish their counters every few ticks: poll (bounded) rather than take one
    // snapshot that may predate the last statuses.
    const viaRedis = await waitFor('every status counted as Redis input', async () => {
      const [stats] = await control(controlAddr, [{ method: 'stats' }]);
      return stats.total.redis_input_messages;
    }, (n) => n >= 2 * (10 + 5));
    expect(viaRedis === 2 * (10 + 5), 'every status came through Redis (redis_input_messages)', viaRedis);
    const numpat = await run(10, 'redis-cli', ['-p', redisPort, 'PUBSUB', 'NUMPAT']);
    expect(numpat.out.trim() === '1', 'ringcast holds one pattern subscription in Redis', numpat.out);
    const queued = await run(10, 'redis-cli', ['-p', redisPort, 'LLEN', 'tasks:jobs']);
    expect(queued.out.trim() === '0', 'no job left in the queue', queued.out);
    expect(errors.length === 0, 'no script errors on the pages', errors);
    console.log(`PASS 15 tasks queued -> running -> done through Redis (${viaRedis} statuses), page closed 1000 by itself and by the backend, bad list refused`);
  } finally {
    await browser.close();
  }
}

main().then(() => process.exit(0), (e) => { console.log(`FAIL ${e.message}`); process.exit(1); });
