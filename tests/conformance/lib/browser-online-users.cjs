// Drives examples/02-online-users/ (index.html with login.php and online.php, served by `php -S`
// with short tokens, ONLINE_TTL_S=5) in headless Chromium against a running server: three
// browser contexts are three users (alice, bob, carol, each with its own PHP session; a
// fourth, dave, comes in at the end).
// usage: node browser-online-users.cjs WS_URL CONTROL_ADDR PAGE_URL
//   WS_URL        the server's /ws endpoint, e.g. ws://127.0.0.1:9080/ws
//   CONTROL_ADDR  its control socket, unix:PATH or tcp:HOST:PORT
//   PAGE_URL      http://127.0.0.1:P/ serving the example
// Environment: CHROMIUM, PYTHON, USERS_WAIT_S (see users-common.cjs).
// Bob's page is the observer of a fresh room: the lists must show the users (names from the
// tokens' info), and Bob's news must be exactly: carol came, carol left, alice left, carol came
// — alice's second tab makes no join, closing her first tab no leave, her last tab one leave.
// Each "nothing came" is checked at a barrier: news sent later by the channel's owner (a
// third user's join or leave) has arrived, after the server's presence counted the change.
// Then the server closes Bob's connection (control `disconnect`): his page reconnects, loads
// the list again, and Carol sees him leave and come back. Last, the tokens expire (5 s): the
// pages must refresh them on the same connections, and the next news both get is Dave's join.
// Prints one "PASS ..." or "FAIL ..." line on stdout (steps and page logs on stderr); exit 0/1.
'use strict';
const { stepper, control, waitFor, expect, launch, newPage, tag } = require('./users-common.cjs');

const [wsUrl, controlAddr, pageBase] = process.argv.slice(2);
if (!wsUrl || !controlAddr || !pageBase) {
  console.error('usage: node browser-online-users.cjs WS_URL CONTROL_ADDR PAGE_URL');
  process.exit(2);
}
const ws = new URL(wsUrl);
const room = `t-${tag}`;
const channel = `online:${room}`;
const step = stepper('browser-online-users');
const errors = [];
const NAMES = { alice: `Alice ${tag}`, bob: `Bob ${tag}`, carol: `Carol ${tag}`, dave: `Dave ${tag}` };
const ID = { alice: `alice-${tag}`, bob: `bob-${tag}`, carol: `carol-${tag}`, dave: `dave-${tag}` };
const short = (user) => user.replace(`-${tag}`, ''); // alice-TAG -> alice, in messages

function readPage(page) {
  return page.evaluate(() => {
    const el = (id) => document.getElementById(id);
    return {
      state: el('state').dataset.state,
      me: el('me').textContent,
      conn: el('conn').textContent,
      count: Number(el('count').textContent),
      users: [...el('users').children].map((li) => ({ user: li.dataset.user, text: li.textContent })),
      news: [...el('news').children].map((li) => `${li.dataset.op} ${li.dataset.user}`),
      log: [...el('log').children].map((d) => d.textContent),
    };
  });
}
const brief = (s) => JSON.stringify({ ...s, users: s.users.map((u) => short(u.user)),
  news: s.news.map(short), log: s.log.slice(-3) });

const tabs = [];
async function open(context, label) {
  const page = await newPage(context, label, errors, step);
  const q = new URLSearchParams({ host: ws.hostname, port: ws.port || '80', room });
  await page.goto(new URL(`index.html?${q}`, pageBase).href);
  const tab = { page, label, closed: false };
  tabs.push(tab);
  return tab;
}

function waitTab(tab, what, ready) {
  return waitFor(`${what} on ${tab.label}`, () => readPage(tab.page), ready, brief).then((s) => {
    step(`${tab.label}: ${what}`);
    return s;
  });
}

const listOf = (s) => s.users.map((u) => short(u.user)).sort().join(',');
const newsOf = (s) => s.news.map(short).join(', ');

// The page is online with exactly the users `want` (short names, sorted, comma-separated).
async function expectList(tab, want) {
  const s = await waitTab(tab, `list ${want}`, (x) => x.state === 'online' && listOf(x) === want);
  for (const u of s.users) {
    const name = NAMES[short(u.user)];
    expect(u.text === name || u.text === `${name} (you)`, `${tab.label}: ${u.user} shown as "${u.text}"`, brief(s));
  }
  return s;
}

async function expectNews(tab, want) {
  const s = await waitTab(tab, `news [${want}]`, (x) => newsOf(x) === want || x.news.length > want.split(', ').length);
  expect(newsOf(s) === want, `${tab.label}: expected news [${want}], got [${newsOf(s)}]`, brief(s));
  return s;
}

// Logs in through the form (the first tab of a context) or through the session (later tabs).
async function enter(context, label, who) {
  const tab = await open(context, label);
  const s0 = await waitTab(tab, 'the login form or online', (x) => x.state === 'signed-out' || x.state === 'online');
  if (s0.state === 'signed-out') {
    await tab.page.fill('#name', NAMES[who]);
    await tab.page.click('#login-button');
  }
  const s = await waitTab(tab, `online as ${who}`, (x) => x.state === 'online' && /^[0-9]+$/.test(x.conn));
  expect(s.me === NAMES[who], `${label}: logged in as "${s.me}", expected ${NAMES[who]}`, brief(s));
  tab.conn = s.conn;
  tab.user = ID[who];
  tab.logMark = s.log.length;
  return tab;
}

async function presence() {
  const [r] = await control(controlAddr, [{ method: 'presence', channel }]);
  return r;
}
// Barrier: the channel's presence (its owner) counts `conns` connections of `who`.
async function waitPresence(who, conns) {
  await waitFor(`presence of ${who} with ${conns} connection(s)`, presence,
    (r) => (r.users[ID[who]] ? r.users[ID[who]].conns : 0) === conns);
  step(`presence: ${who} has ${conns} connection(s)`);
}

async function closeTab(tab) {
  await tab.page.close();
  tab.closed = true;
  step(`${tab.label} closed`);
}

(async () => {
  const t0 = Date.now();
  const browser = await launch();
  let rc = 1;
  try {
    step(`chromium ${browser.version()} started; room ${room}`);
    const [ctxA, ctxB, ctxC] = await Promise.all([browser.newContext(), browser.newContext(), browser.newContext()]);

    const a1 = await enter(ctxA, 'alice tab 1', 'alice');
    await expectList(a1, 'alice');
    const b1 = await enter(ctxB, 'bob tab 1', 'bob');
    await expectList(b1, 'alice,bob');
    await expectList(a1, 'alice,bob');
    await expectNews(a1, 'join bob');

    // Alice's second tab: no join for the others.
    const a2 = await enter(ctxA, 'alice tab 2', 'alice');
    await expectList(a2, 'alice,bob');
    await waitPresence('alice', 2);
    const c1 = await enter(ctxC, 'carol tab 1', 'carol');
    await expectList(c1, 'alice,bob,carol');
    await expectNews(b1, 'join carol');           // and not "join alice"
    await expectList(a1, 'alice,bob,carol');
    await expectList(a2, 'alice,bob,carol');

    // Alice closes one of two tabs: no leave.
    await closeTab(a1);
    await waitPresence('alice', 1);
    await closeTab(c1);
    await expectNews(b1, 'join carol, leave carol'); // and not "leave alice"
    await expectList(a2, 'alice,bob');

    // Her last tab: exactly one leave.
    await closeTab(a2);
    await expectList(b1, 'bob');
    const c2 = await enter(ctxC, 'carol tab 2', 'carol');
    await expectList(c2, 'bob,carol');
    await expectNews(b1, 'join carol, leave carol, leave alice, join carol');
    const stats = (await control(controlAddr, [{ method: 'presence_stats', channel }]))[0];
    expect(stats.users === 2 && stats.conns === 2 && stats.anonymous === 0,
      'presence_stats after alice left: expected 2 users, 2 connections', stats);

    // The server closes Bob's connection: his page reconnects and loads the list again.
    await control(controlAddr, [{ method: 'disconnect', conn: Number(b1.conn) }]);
    const b1again = await waitTab(b1, 'reconnected', (x) => x.state === 'online' && /^[0-9]+$/.test(x.conn) && x.conn !== b1.conn);
    b1.conn = b1again.conn;
    b1.logMark = b1again.log.length;
    await expectList(b1, 'bob,carol');
    await expectNews(c2, 'leave bob, join bob');

    // The 5-second tokens expire: both open pages refresh on the same connection, silently.
    for (const t of [b1, c2]) {
      const since = t.logMark;
      const s = await waitTab(t, 'token refreshed', (x) =>
        x.log.slice(since).some((l) => /< \{"op":"refreshed"/.test(l)) || x.state !== 'online');
      expect(s.state === 'online' && s.conn === t.conn, `${t.label}: lost its connection on the token's expiry`, brief(s));
    }
    // Barrier: Dave comes in; before his join, nothing else may have come (a refresh is silent).
    const ctxD = await browser.newContext();
    const d1 = await enter(ctxD, 'dave tab 1', 'dave');
    await expectList(d1, 'bob,carol,dave');
    const endB = await expectNews(b1, 'join carol, leave carol, leave alice, join carol, join dave');
    const endC = await expectNews(c2, 'leave bob, join bob, join dave');
    expect(endB.conn === b1.conn && endC.conn === c2.conn, 'the connections changed on refresh', { bob: endB.conn, carol: endC.conn });

    if (errors.length) throw new Error('script error on a page: ' + errors[0]);
    console.log(`PASS lists of 1-3 users with names from the token; bob saw exactly [${newsOf(endB)}] ` +
      `(no join for alice's 2nd tab, 1 leave after her last); reconnect reloaded the list; ` +
      `tokens refreshed with no news; ${((Date.now() - t0) / 1000).toFixed(1)}s, chromium ${browser.version()}`);
    rc = 0;
  } catch (e) {
    console.log('FAIL ' + String(e.message || e).split('\n')[0]);
  } finally {
    await browser.close();
  }
  process.exit(rc);
})().catch((e) => { console.log('FAIL ' + e); process.exit(1); });
