// Shared pieces of the browser drivers of the user examples (browser-login-timeout.cjs,
// browser-online-users.cjs): control requests through lib/control.py, a bounded command
// runner, headless Chromium, bounded polls of a page's DOM, and the step log on stderr.
// Environment: CHROMIUM (browser binary), PYTHON (runs control.py; default python3),
//              USERS_WAIT_S (bound of every wait, seconds, default 20).
'use strict';
const path = require('path');
const { spawn } = require('child_process');
const { chromium } = require('playwright-core');

const WAIT_MS = Number(process.env.USERS_WAIT_S || 20) * 1000;
const PYTHON = process.env.PYTHON || 'python3';
const CONTROL_PY = path.join(__dirname, 'control.py');
const t0 = Date.now();
const elapsed = () => ((Date.now() - t0) / 1000).toFixed(2);

function stepper(name) {
  return (text) => console.error(`[${name}] ${elapsed()}s ${text}`);
}

// Runs COMMAND ARGS... under timeout(1) (LIMIT_S seconds) with EXTRA_ENV; resolves to
// {code, out, err}; never rejects for a non-zero exit.
function run(limitS, command, args, extraEnv = {}, input = '') {
  return new Promise((resolve, reject) => {
    const child = spawn('timeout', ['--kill-after=2', String(limitS), command, ...args],
      { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...extraEnv } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out, err }));
    child.stdin.end(input);
  });
}

// Control requests on one connection, pipelined; resolves to the replies ({result} or {error}).
async function controlReplies(controlAddr, requests) {
  const { code, out, err } = await run(15, PYTHON, [CONTROL_PY, controlAddr], {},
    requests.map((r) => JSON.stringify(r) + '\n').join(''));
  let replies;
  try {
    replies = out.split('\n').filter(Boolean).map((l) => JSON.parse(l));
  } catch (e) {
    throw new Error(`control.py printed something other than JSON: ${out.slice(0, 200)}`);
  }
  if (replies.length !== requests.length || (code !== 0 && code !== 1)) {
    throw new Error(`control.py exited ${code}` + (err ? `: ${err.trim()}` : ''));
  }
  return replies;
}

// The same, for requests that must all succeed: resolves to the results.
async function control(controlAddr, requests) {
  const replies = await controlReplies(controlAddr, requests);
  const bad = replies.find((r) => !('result' in r));
  if (bad) throw new Error(`control request failed: ${JSON.stringify(bad)}`);
  return replies.map((r) => r.result);
}

// Bounded poll: evaluates `read()` until `ready(value)` holds; returns the value.
async function waitFor(what, read, ready, describe = JSON.stringify) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const value = await read();
    if (ready(value)) return value;
    if (Date.now() > deadline) {
      throw new Error(`no ${what} within ${WAIT_MS / 1000}s; last seen: ${describe(value)}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

// Fails with `what` and what was seen (a page's log: its last 4 lines).
function expect(cond, what, seen) {
  if (cond) return;
  const shown = seen && typeof seen === 'object' && Array.isArray(seen.log) ? { ...seen, log: seen.log.slice(-4) } : seen;
  throw new Error(`${what}` + (seen === undefined ? '' : `; seen: ${typeof shown === 'string' ? shown : JSON.stringify(shown)}`));
}

// Headless Chromium (the Debian package). The flags keep it off the network and out of the
// sandbox, which needs user namespaces a root CI job does not have (as the other smokes).
async function launch() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    timeout: 30000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  return browser;
}

// A new page in `context` whose console and script errors go to the step log; `errors`
// collects the script errors (a page with one fails the run).
async function newPage(context, label, errors, step) {
  const page = await context.newPage();
  page.on('console', (m) => step(`${label}: ${m.text()}`));
  page.on('pageerror', (e) => { errors.push(`${label}: ${e}`); step(`${label} error: ${e}`); });
  return page;
}

// A tag that keeps this run's users and channels apart from other runs on the same server.
const tag = `${process.pid.toString(36)}${Math.random().toString(36).slice(2, 6)}`;

module.exports = { WAIT_MS, elapsed, stepper, run, controlReplies, control, waitFor, expect,
  launch, newPage, tag };
