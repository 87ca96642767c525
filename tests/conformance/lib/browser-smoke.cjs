// Loads smoke.html in headless Chromium (the Debian package) through playwright-core and reports
// the outcome the page writes into its title.
// usage: node browser-smoke.cjs URL PROFILE_DIR
// Environment: CHROMIUM (browser binary), SMOKE_MODE, SMOKE_SEND, SMOKE_EXPECT, SMOKE_WANT,
//              SMOKE_TIMEOUT (seconds), SMOKE_OPEN_FILE (written once the page's socket is open).
// Prints one "PASS ..." or "FAIL ..." line on stdout (the page's log goes to stderr); exit 0 or 1.
'use strict';
const fs = require('fs');
const path = require('path');
const { pathToFileURL } = require('url');
const { chromium } = require('playwright-core');

const [url, profileDir] = process.argv.slice(2);
if (!url || !profileDir) { console.error('usage: node browser-smoke.cjs URL PROFILE_DIR'); process.exit(2); }
const timeoutS = Number(process.env.SMOKE_TIMEOUT || 10);
const q = new URLSearchParams({ url, mode: process.env.SMOKE_MODE || 'echo', timeout: String(timeoutS * 1000) });
if (process.env.SMOKE_SEND !== undefined) q.set('send', process.env.SMOKE_SEND);
if (process.env.SMOKE_EXPECT) q.set('expect', process.env.SMOKE_EXPECT);
if (process.env.SMOKE_WANT !== undefined) q.set('want', process.env.SMOKE_WANT);
const pageUrl = pathToFileURL(path.join(__dirname, 'smoke.html')).href + '?' + q.toString();

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
    page.on('console', (m) => {
      const text = m.text();
      console.error('page: ' + text);
      if (process.env.SMOKE_OPEN_FILE && text.startsWith('open')) fs.writeFileSync(process.env.SMOKE_OPEN_FILE, 'open\n');
    });
    await page.goto(pageUrl);
    await page.waitForFunction(() => document.title !== 'RUNNING', null, { timeout: (timeoutS + 5) * 1000 });
    const title = await page.title();
    console.log(title + (version && title.startsWith('PASS ') ? `, chromium ${version}` : ''));
    rc = title.startsWith('PASS ') ? 0 : 1;
  } catch (e) {
    console.log('FAIL ' + String(e.message || e).split('\n')[0]);
  } finally {
    await context.close();
  }
  process.exit(rc);
})().catch((e) => { console.log('FAIL ' + e); process.exit(1); });
