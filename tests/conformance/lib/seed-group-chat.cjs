// Drives examples/03-group-chat/ against its own server (tests/conformance/seeds.sh started it
// with the example's ringcast.toml and two worker.php processes of one group): the page in
// headless Chromium, one browser context per user, and a Node `ws` client for the heartbeat.
// usage: node seed-group-chat.cjs WS_URL CONTROL_ADDR PAGE_URL DATA_DIR WORK_DIR
// Checks what the users saw:
//   - Alice and Bob (on different shards, behind different workers) log in and join thread 1
//     through a worker: each page gets code 100 and ringcast's `subscribed` for thread:1 (a
//     server-side join);
//   - Alice and Bob each send 6 messages, interleaved: both pages show the same 12 messages in
//     one order, each sender's in the order sent, with the speakers' names; messages.jsonl
//     holds exactly these 12, with the ids the pages show; both workers stored messages;
//   - the original's error codes: 104, 103, 102, 107 (Carol is not in class 1), 106 (send
//     before join), 108 (empty text), 101 (unknown action); nothing refused is stored;
//   - heartbeats: a client that does not answer pings is closed with 4004 while the pages,
//     whose browsers answer them, stay connected (seeds.sh runs this with 1 s pings);
//   - no leftovers: once the pages close, thread:1 has no subscriber left (control
//     `presence`, `channels`), and the workers logged each close.
// Prints one "PASS ..." or "FAIL ..." line on stdout (steps on stderr); exit 0/1.
'use strict';
const fs = require('fs');
const path = require('path');
const WebSocket = require('ws');
const { stepper, control, waitFor, expect, launch, newPage } = require('./users-common.cjs');

const [wsUrl, controlAddr, pageBase, dataDir, workDir] = process.argv.slice(2);
if (!wsUrl || !controlAddr || !pageBase || !dataDir || !workDir) {
  console.error('usage: node seed-group-chat.cjs WS_URL CONTROL_ADDR PAGE_URL DATA_DIR WORK_DIR');
  process.exit(2);
}
const step = stepper('seed-group-chat');
const errors = [];
const shardOf = (conn) => Number((BigInt(conn) >> 39n) & 63n); // id.rs: node (8) | shard (6) | slot (21) | generation (18)

const readPage = (page) => page.evaluate(() => ({
  state: document.getElementById('state').dataset.state,
  conn: document.getElementById('conn').dataset.conn,
  messages: [...document.querySelectorAll('#messages li')].map((li) => ({
    id: Number(li.dataset.id), speaker: Number(li.dataset.speaker), text: li.lastChild.textContent,
    name: li.firstChild.textContent })),
  answers: [...document.querySelectorAll('#answers li')].reverse().map((li) => ({
    op: li.dataset.op, status: li.dataset.status, code: Number(li.dataset.code), worker: li.dataset.worker })),
  log: [...document.getElementById('log').children].map((d) => d.textContent),
}));

async function login(browser, label, user) {
  const page = await newPage(await browser.newContext(), label, errors, step);
  const ws = new URL(wsUrl);
  await page.goto(new URL(`index.html?host=${ws.hostname}&port=${ws.port}`, pageBase).href);
  await page.selectOption('#user', String(user));
  await page.click('#login');
  const s = await waitFor(`${label} logged in`, () => readPage(page), (x) => x.state === 'open' && x.conn);
  return { page, label, conn: s.conn };
}

async function answered(tab, n) {
  return waitFor(`${n} answers on ${tab.label}'s page`, () => readPage(tab.page), (s) => s.answers.length >= n,
    (s) => JSON.stringify(s.answers));
}

async function main() {
  const browser = await launch();
  try {
    // Join thread 1 of class 1 (the page's default selection): code 100 from a worker, and
    // ringcast's `subscribed` (the worker's server-side join).
    const join = async (tab) => {
      await tab.page.click('#join');
      const s = await answered(tab, 1);
      expect(s.answers[0].op === 'join' && s.answers[0].code === 100, `${tab.label} joined with code 100`, s.answers);
      await waitFor(`${tab.label} in thread:1`, () => readPage(tab.page), (x) => x.log.some((l) => / in thread:1$/.test(l)));
      tab.worker = s.answers[0].worker;
    };
    const alice = await login(browser, 'alice', 1);
    await join(alice);
    // Bob must sit on the other shard and behind the other worker: cross-shard delivery and
    // two worker processes are part of the check (a new connection lands on either).
    let bob;
    for (let tries = 0; ; tries++) {
      bob = await login(browser, 'bob', 2);
      if (shardOf(bob.conn) !== shardOf(alice.conn)) {
        await join(bob);
        if (bob.worker !== alice.worker) break;
      }
      expect(tries < 40, 'a connection on the other shard and worker within 40 tries', bob.conn);
      await bob.page.context().close();
    }
    step(`alice conn ${alice.conn} (shard ${shardOf(alice.conn)}, ${alice.worker}), ` +
      `bob conn ${bob.conn} (shard ${shardOf(bob.conn)}, ${bob.worker})`);
    const [presence] = await control(controlAddr, [{ method: 'presence', channel: 'thread:1' }]);
    expect(presence.conns.length === 2 && presence.users['1'] && presence.users['2'], 'both in thread:1', presence);

    // Interleaved messages, each sender's in order.
    const sent = [];
    for (let k = 0; k < 6; k++) {
      for (const tab of [alice, bob]) {
        const text = `${tab.label} says ${k} "quoted" \\ ünïcödé`;
        sent.push({ speaker: tab === alice ? 1 : 2, text });
        await tab.page.fill('#text', text);
        await tab.page.click('#send');
      }
    }
    const views = [];
    for (const tab of [alice, bob]) {
      const s = await waitFor(`12 messages on ${tab.label}'s page`, () => readPage(tab.page), (x) => x.messages.length >= 12,
        (x) => JSON.stringify(x.messages.map((m) => m.id)));
      expect(s.messages.length === 12, `${tab.label} sees exactly 12 messages`, s.messages);
      views.push(s.messages);
      const oks = (await answered(tab, 7)).answers.filter((a) => a.op === 'send' && a.code === 105);
      expect(oks.length === 6, `${tab.label} got 6 answers 105`, oks);
    }
    expect(JSON.stringify(views[0]) === JSON.stringify(views[1]), 'both pages show the same messages in the same order',
      { alice: views[0].map((m) => m.id), bob: views[1].map((m) => m.id) });
    for (const speaker of [1, 2]) {
      const got = views[0].filter((m) => m.speaker === speaker).map((m) => m.text);
      const want = sent.filter((m) => m.speaker === speaker).map((m) => m.text);
      expect(JSON.stringify(got) === JSON.stringify(want), `user ${speaker}'s messages in the order sent`, got);
    }
    expect(views[0].every((m) => m.name === (m.speaker === 1 ? 'Alice' : 'Bob')), 'the speakers named from the tokens', views[0]);
    const stored = fs.readFileSync(path.join(dataDir, 'messages.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(stored.length === 12, 'messages.jsonl holds the 12 messages', stored.length);
    const storedIds = stored.map((m) => m.id).sort((x, y) => x - y);
    const shownIds = views[0].map((m) => m.id).sort((x, y) => x - y);
    expect(JSON.stringify(storedIds) === JSON.stringify(shownIds), 'the pages show the stored ids', { storedIds, shownIds });

    // The error codes, as the original numbered them.
    const carol = await login(browser, 'carol', 3);
    const bad = [
      [{ action: 'join', thread_id: 1 }, 104],
      [{ action: 'join', thread_id: 1, class_id: 7 }, 103],
      [{ action: 'join', thread_id: 9, class_id: 1 }, 102],
      [{ action: 'join', thread_id: 3, class_id: 1 }, 102],
      [{ action: 'join', thread_id: 1, class_id: 1 }, 107],
      [{ action: 'send', thread_id: 3, class_id: 2, text: 'hi' }, 106],
      [{ action: 'join', thread_id: 3, class_id: 2 }, 100],
      [{ action: 'send', thread_id: 3, class_id: 2, text: '   ' }, 108],
      [{ action: 'dance', thread_id: 3, class_id: 2 }, 101],
    ];
    for (const [req] of bad) await carol.page.evaluate((r) => window.chat.request(r), req);
    const cs = await answered(carol, bad.length);
    const codes = cs.answers.map((a) => a.code);
    expect(JSON.stringify(codes) === JSON.stringify(bad.map(([, c]) => c)), 'the error codes in order', codes);
    const after = fs.readFileSync(path.join(dataDir, 'messages.jsonl'), 'utf8').trim().split('\n');
    expect(after.length === 12, 'nothing refused was stored', after.length);

    // Heartbeats: a client that never answers a ping is closed with 4004.
    const silent = new WebSocket(wsUrl, { autoPong: false });
    const silentClose = new Promise((resolve) => silent.on('close', (code) => resolve(code)));
    const opened = Date.now();
    const code = await Promise.race([silentClose, new Promise((r) => setTimeout(() => r('none'), 20000))]);
    expect(code === 4004, 'a client that does not answer pings is closed with 4004', code);
    step(`silent client closed ${code} after ${Date.now() - opened} ms`);
    for (const tab of [alice, bob, carol]) {
      const s = await readPage(tab.page);
      expect(s.state === 'open' && s.conn === tab.conn, `${tab.label}'s page is still on its connection`, s);
    }

    // No leftovers after close.
    for (const tab of [alice, bob]) await tab.page.context().close();
    await waitFor('thread:1 empty', async () => (await control(controlAddr, [{ method: 'presence', channel: 'thread:1' }]))[0],
      (p) => p.conns.length === 0 && Object.keys(p.users).length === 0);
    const [channels] = await control(controlAddr, [{ method: 'channels' }]);
    expect(!('thread:1' in channels.channels), 'thread:1 is gone from the channel list', channels);
    const workerLogs = ['worker-1.log', 'worker-2.log'].map((f) => fs.readFileSync(path.join(workDir, f), 'utf8'));
    for (const tab of [alice, bob]) {
      expect(workerLogs.some((l) => l.includes(`close conn=${tab.conn} `)), `a worker logged ${tab.label}'s close`, tab.conn);
    }
    const busy = workerLogs.filter((l) => / message \d+ from user /.test(l)).length;
    expect(busy === 2, 'both workers stored messages', busy);
    expect(errors.length === 0, 'no script errors on the pages', errors);
    console.log(`PASS 12 messages in one order on shards ${shardOf(alice.conn)}+${shardOf(bob.conn)}, stored once, ` +
      `both workers storing, codes ${codes.join(',')}, silent client closed 4004, no leftovers`);
  } finally {
    await browser.close();
  }
}

main().then(() => process.exit(0), (e) => { console.log(`FAIL ${e.message}`); process.exit(1); });
