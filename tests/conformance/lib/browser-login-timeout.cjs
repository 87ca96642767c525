// Drives examples/01-login-timeout/ (index.html served with login.php by `php -S`, logout.php run
// as a command) in headless Chromium against a running server.
// usage: node browser-login-timeout.cjs WS_URL CONTROL_ADDR SHORT_URL LONG_URL
//   WS_URL        the server's /ws endpoint, e.g. ws://127.0.0.1:9080/ws
//   CONTROL_ADDR  its control socket, unix:PATH or tcp:HOST:PORT
//   SHORT_URL     http://127.0.0.1:P/ serving the example with short logins (LOGIN_TTL_S=4)
//   LONG_URL      the same with long logins (60 s), for the backend-initiated cases
// Environment: CHROMIUM, PYTHON, USERS_WAIT_S (see users-common.cjs), PHP (default php; runs
//              logout.php with RINGCAST_CONTROL=CONTROL_ADDR).
// Cases:
//   expiry      three tabs of one user log in (two with {"op":"auth"}, one with ?token=);
//               when the login's exp passes each must show the "log in again" notice (not
//               before exp); two are left alone and must be closed with 4005 "token expired",
//               not before exp + grace_ms; the third logs in again within the grace and must
//               keep its connection (refresh, same connection id, still connected after its
//               first grace ended). Times are the page's log times (when it handled each).
//   push        two tabs of another user; `php logout.php USER push` (send_user) must reach both
//               ({"connections":2}), both must show "login timed out" and close themselves;
//   disconnect  two tabs of a third user; `php logout.php USER disconnect` (disconnect_user)
//               must close both with 4401 "logged out", and neither may reconnect.
// Prints one "PASS ..." or "FAIL ..." line on stdout (steps and page logs on stderr); exit 0/1.
'use strict';
const path = require('path');
const { stepper, run, control, waitFor, expect, launch, newPage, tag } =
  require('./users-common.cjs');

const [wsUrl, controlAddr, shortUrl, longUrl] = process.argv.slice(2);
if (!wsUrl || !controlAddr || !shortUrl || !longUrl) {
  console.error('usage: node browser-login-timeout.cjs WS_URL CONTROL_ADDR SHORT_URL LONG_URL');
  process.exit(2);
}
const PHP = process.env.PHP || 'php';
const LOGOUT_PHP = path.join(__dirname, '..', '..', '..', 'examples', '01-login-timeout', 'logout.php');
const ws = new URL(wsUrl);
const step = stepper('browser-login-timeout');
const errors = [];

// What the page shows, read from its DOM (the page has no test hooks).
function readPage(page) {
  return page.evaluate(() => {
    const el = (id) => document.getElementById(id);
    return {
      state: el('state').dataset.state,
      stateText: el('state').textContent,
      who: el('who').textContent,
      conn: el('conn').textContent,
      exp: Number(el('exp').dataset.exp || 0),
      closed: el('closed').textContent,
      notice: el('notice').hidden ? null : { reason: el('notice').dataset.reason, text: el('notice').textContent },
      formShown: !el('login').hidden,
      log: [...el('log').children].map((d) => d.textContent),
    };
  });
}
const brief = (s) => JSON.stringify({ ...s, log: s.log.slice(-4) });
const waitPage = (page, label, what, ready) =>
  waitFor(`${what} on ${label}`, () => readPage(page), ready, brief).then((s) => {
    step(`${label}: ${what}`);
    return s;
  });
// The page's log lines start with an ISO time: when the page handled what the line says.
function logged(s, re) {
  const line = s.log.find((l) => re.test(l));
  return line === undefined ? null : { at: Date.parse(line.slice(0, line.indexOf(' '))), line };
}

// Opens the page (not logged in yet).
async function openPage(context, base, label, via) {
  const page = await newPage(context, label, errors, step);
  const q = new URLSearchParams({ host: ws.hostname, port: ws.port || '80', via });
  await page.goto(new URL(`index.html?${q}`, base).href);
  await waitPage(page, label, 'the login form', (x) => x.formShown && x.state === 'signed-out');
  return { page, label, via };
}

// Logs in as `user` through the page's form; the tab must connect as that user. (On a loaded
// machine a short login may already have expired when the driver looks: `authed` is enough.)
async function logIn(tab, user) {
  await tab.page.fill('#user', user);
  await tab.page.click('#login-button');
  const s = await waitPage(tab.page, tab.label, `connected as ${user} (${tab.via})`,
    (x) => logged(x, /< \{"op":"authed"/) && /^[0-9]+$/.test(x.conn));
  expect(s.who === user && logged(s, new RegExp(`"user":"${user}"`)),
    `${tab.label}: the page after login`, s);
  tab.conn = s.conn;
  tab.exp = s.exp;
  return tab;
}

const openAndLogIn = async (context, base, label, user, via) =>
  logIn(await openPage(context, base, label, via), user);

// The server's list of the user's connections must be exactly the tabs' ids.
async function expectUserConns(user, tabs) {
  const [r] = await control(controlAddr, [{ method: 'user_conns', user }]);
  const got = r.conns.map(String).sort();
  const want = tabs.map((t) => t.conn).sort();
  expect(JSON.stringify(got) === JSON.stringify(want),
    `user_conns ${user}: expected ${JSON.stringify(want)}`, r);
}

async function waitNoConns(user) {
  await waitFor(`no connection of ${user} left (user_conns)`,
    () => control(controlAddr, [{ method: 'user_conns', user }]).then(([r]) => r),
    (r) => r.conns.length === 0);
}

// A tab's expiry notice: not before the login's exp, with the grace in it. Returns the grace.
async function expiryNotice(t) {
  const s = await waitPage(t.page, t.label, 'the expiry notice',
    (x) => x.state === 'expired' || x.closed !== '–');
  const got = logged(s, /< \{"op":"expired","grace_ms":[0-9]+\}/);
  expect(s.state === 'expired' && got && s.notice && s.notice.reason === 'expired' &&
    /within [0-9]+ s/.test(s.notice.text) && s.formShown,
  `${t.label}: expected the "log in again" notice with the grace`, s);
  expect(got.at >= t.exp * 1000 - 50, `${t.label}: "expired" came before the token's exp ${t.exp}`, s);
  expect(s.conn === t.conn, `${t.label}: the connection changed`, s);
  t.expiredAt = got.at;
  t.grace = Number(/"grace_ms":([0-9]+)/.exec(got.line)[1]);
  return s;
}

// A tab left alone after the notice: closed with 4005, not before exp + grace.
async function leftAlone(t) {
  await expiryNotice(t);
  const s = await waitPage(t.page, t.label, 'closed with 4005', (x) => x.closed !== '–');
  expect(s.closed === '4005 token expired', `${t.label}: expected close 4005 "token expired"`, s);
  expect(s.state === 'signed-out' && s.notice && s.notice.reason === 'closed' &&
    /timed out/.test(s.notice.text) && s.formShown,
  `${t.label}: expected the "log in again" notice after the close`, s);
  const closedAt = logged(s, /closed \(4005/).at;
  expect(closedAt >= t.exp * 1000 + t.grace - 50,
    `${t.label}: closed ${closedAt - t.exp * 1000} ms after exp, the grace is ${t.grace} ms`, s);
  return closedAt - t.expiredAt;
}

// A tab that logs in again after the notice: the page sends `refresh` on the same connection,
// which must outlive the first token's grace.
async function logsInAgain(t, user) {
  await expiryNotice(t);
  await t.page.fill('#user', user);
  await t.page.click('#login-button');
  let s = await waitPage(t.page, t.label, 'the login renewed (refreshed)',
    (x) => logged(x, /< \{"op":"refreshed"/) || x.closed !== '–');
  const renewed = logged(s, /< \{"op":"refreshed"/);
  expect(renewed && s.conn === t.conn && s.closed === '–',
    `${t.label}: expected "refreshed" on the same connection`, s);
  const graceEnd = t.expiredAt + t.grace + 300;
  while (Date.now() < graceEnd) await new Promise((r) => setTimeout(r, 50));
  s = await readPage(t.page);
  expect(s.conn === t.conn && s.closed === '–' && ['connected', 'expired'].includes(s.state),
    `${t.label}: the refreshed tab lost its connection`, s);
  return renewed.at - t.expiredAt;
}

async function expiryCase(browser) {
  const user = `amy-${tag}`;
  const context = await browser.newContext();
  // Loaded first, then logged in at the same time, so that the three logins end together.
  const tabs = await Promise.all([openPage(context, shortUrl, 'expiry tab 1', 'auth'),
    openPage(context, shortUrl, 'expiry tab 2', 'url'),
    openPage(context, shortUrl, 'expiry tab 3', 'auth')]);
  await Promise.all(tabs.map((t) => logIn(t, user)));
  await expectUserConns(user, tabs);
  const [one, two, three] = tabs;
  const [gap1, gap2, renewedAfter] = await Promise.all([leftAlone(one), leftAlone(two),
    logsInAgain(three, user)]);
  await expectUserConns(user, [three]);
  await context.close();
  const secs = (ms) => (ms / 1000).toFixed(1);
  return `expiry: 3 tabs got the notice; 2 closed 4005 ${secs(gap1)}/${secs(gap2)} s later ` +
    `(grace ${secs(one.grace)} s); 1 logged in again after ${secs(renewedAfter)} s, refreshed, stayed`;
}

// logout.php USER push|disconnect; resolves to its result.
async function logout(user, how) {
  const r = await run(20, PHP, [LOGOUT_PHP, user, how], { RINGCAST_CONTROL: controlAddr });
  if (r.code !== 0) throw new Error(`php logout.php ${user} ${how} exited ${r.code}: ${(r.err || r.out).trim()}`);
  step(`php logout.php ${how}: ${r.out.trim()}`);
  return JSON.parse(r.out);
}

async function pushCase(browser) {
  const user = `bo-${tag}`;
  const context = await browser.newContext();
  const tabs = await Promise.all([openAndLogIn(context, longUrl, 'push tab 1', user, 'auth'),
    openAndLogIn(context, longUrl, 'push tab 2', user, 'url')]);
  await expectUserConns(user, tabs);
  const result = await logout(user, 'push');
  expect(result.connections === 2, 'send_user should reach both tabs', result);
  await Promise.all(tabs.map(async (t) => {
    const s = await waitPage(t.page, t.label, 'the pushed "login timed out"', (x) => x.state === 'signed-out');
    expect(s.notice && s.notice.reason === 'push' && s.notice.text.startsWith('login timed out') &&
      s.formShown, `${t.label}: expected the pushed message in the notice`, s);
    expect(/"op":"push","data":\{"code":401,"message":"login timed out"\}/.test(s.log.join("\n")),
      `${t.label}: the push is not in the page's log`, s);
  }));
  await waitNoConns(user); // the pages closed their sockets themselves
  await context.close();
  return 'push: send_user reached 2 tabs, both showed it and closed';
}

async function disconnectCase(browser) {
  const user = `cy-${tag}`;
  const context = await browser.newContext();
  const tabs = await Promise.all([openAndLogIn(context, longUrl, 'disconnect tab 1', user, 'auth'),
    openAndLogIn(context, longUrl, 'disconnect tab 2', user, 'url')]);
  await expectUserConns(user, tabs);
  const result = await logout(user, 'disconnect');
  expect(result.connections === 2, 'disconnect_user should close both tabs', result);
  await Promise.all(tabs.map(async (t) => {
    const s = await waitPage(t.page, t.label, 'closed by disconnect_user', (x) => x.closed !== '–');
    expect(s.closed === '4401 logged out' && s.state === 'signed-out' && s.notice &&
      s.notice.reason === 'closed' && /logged out/.test(s.notice.text),
    `${t.label}: expected close 4401 "logged out" and the notice, no reconnect`, s);
  }));
  await waitNoConns(user);
  await context.close();
  return 'disconnect: disconnect_user closed 2 tabs with 4401, no reconnect';
}

(async () => {
  const t0 = Date.now();
  const browser = await launch();
  let rc = 1;
  try {
    step(`chromium ${browser.version()} started`);
    const results = [await expiryCase(browser), await pushCase(browser), await disconnectCase(browser)];
    if (errors.length) throw new Error('script error on a page: ' + errors[0]);
    console.log(`PASS ${results.join('; ')}; ${((Date.now() - t0) / 1000).toFixed(1)}s, ` +
      `chromium ${browser.version()}`);
    rc = 0;
  } catch (e) {
    console.log('FAIL ' + String(e.message || e).split('\n')[0]);
  } finally {
    await browser.close();
  }
  process.exit(rc);
})().catch((e) => { console.log('FAIL ' + e); process.exit(1); });
