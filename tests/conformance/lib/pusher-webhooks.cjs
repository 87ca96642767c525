// Pusher webhooks with the real clients: a server of its own whose app posts its webhooks to
// an HTTP receiver in this process; pusher-js clients make the events; every webhook must pass
// the `pusher` server SDK's own check (`pusher.webhook({headers, rawBody}).isValid()`), as a
// Laravel or Node backend would run it.
//
// usage: node pusher-webhooks.cjs RINGCAST_BIN DRIVER WORK_DIR   (NODE_PATH: the test cache's
// node_modules)
// Checks: channel_occupied once for a presence channel two clients on two shards join;
// member_added per user; client_event with the sender's socket_id, user_id and data;
// member_removed and channel_vacated when they leave; each batch signed (X-Pusher-Key, a valid
// X-Pusher-Signature), a forged signature refused by the SDK; the server exits 0 on SIGTERM.
// Every wait is bounded by PUSHER_WAIT_S seconds (default 10).
// Prints "PASS ..." or "FAIL reason" as its last line.
'use strict';
const fs = require('fs');
const http = require('http');
const path = require('path');
const { spawn } = require('child_process');
const PusherClient = require('pusher-js');
const PusherServer = require('pusher');

const [bin, driver, work] = process.argv.slice(2);
const WAIT_MS = Number(process.env.PUSHER_WAIT_S || 10) * 1000;
const appId = '4242';
const key = 'hook-key';
const secret = 'hook-secret-for-tests-only';
let server = null;

function fail(why) {
  console.log(`FAIL ${why}`);
  if (server) server.kill('SIGKILL');
  process.exit(1);
}

async function waitFor(what, read) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const v = read();
    if (v) return v;
    if (Date.now() > deadline) fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function main() {
  const sdk = new PusherServer({ appId, key, secret, host: '127.0.0.1', port: '1', useTLS: false });
  const posts = [];
  const receiver = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      posts.push({ headers: req.headers, body, url: req.url });
      res.writeHead(200, { 'Content-Length': '0' });
      res.end();
    });
  });
  await new Promise((r) => receiver.listen(0, '127.0.0.1', r));
  const hookPort = receiver.address().port;
  const config = path.join(work, 'webhooks.toml');
  fs.writeFileSync(config, `[limits]
pusher_webhook_batch_ms = 50

[[pusher.apps]]
id = "${appId}"
key = "${key}"
secret = "${secret}"
client_events = "members"
webhook_url = "http://127.0.0.1:${hookPort}/pusher/webhook"
`);
  server = spawn(bin, ['serve', '--config', config, '--driver', driver, '--listen', '127.0.0.1:0',
    '--shards', '2', '--no-control', '--no-pin'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  server.stderr.on('data', (d) => { stderr += d; });
  const exited = new Promise((r) => server.on('exit', (code, signal) => r({ code, signal })));
  let out = '';
  server.stdout.on('data', (d) => { out += d; });
  const m = await waitFor('the readiness line', () => out.match(/ringcast ready listen=127\.0\.0\.1:(\d+) /));
  const wsPort = Number(m[1]);

  const client = (user) => new PusherClient(key, {
    wsHost: '127.0.0.1', wsPort, forceTLS: false, enabledTransports: ['ws'], disableStats: true,
    cluster: 'local',
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, cb) =>
        cb(null, sdk.authorizeChannel(socketId, channelName, { user_id: user, user_info: { n: user } })),
    },
  });
  const channel = 'presence-hooked';
  // Connections land on either shard; open more of user b until one is on the other shard
  // than a's (socket ids carry the shard in their high part: HIGH.LOW of the connection id).
  const shardOf = (socketId) => Number((BigInt(socketId.split('.')[0]) >> 7n) & 63n); // id.rs: bits 39-44
  const a = client('a');
  await waitFor('client a connected', () => a.connection.state === 'connected');
  let b;
  for (let i = 0; i < 40; i++) {
    b = client('b');
    await waitFor('client b connected', () => b.connection.state === 'connected');
    if (shardOf(b.connection.socket_id) !== shardOf(a.connection.socket_id)) break;
    b.disconnect();
    b = null;
  }
  if (!b) fail('no connection on the other shard in 40 tries');
  const subscribed = (c) => new Promise((resolve) => {
    const ch = c.subscribe(channel);
    ch.bind('pusher:subscription_succeeded', () => resolve(ch));
    ch.bind('pusher:subscription_error', (e) => fail(`subscription refused: ${JSON.stringify(e)}`));
  });
  const chA = await subscribed(a);
  await subscribed(b);
  const events = () => posts.flatMap((p) => JSON.parse(p.body).events);
  await waitFor('occupied and two members', () => events().filter((e) => e.name === 'member_added').length >= 2);
  chA.trigger('client-typing', { on: true, q: '"quoted"' });
  await waitFor('the client event', () => events().some((e) => e.name === 'client_event'));
  a.disconnect();
  b.disconnect();
  await waitFor('vacated', () => events().some((e) => e.name === 'channel_vacated'));

  // Every post is valid for the SDK; a forged signature is not.
  for (const p of posts) {
    const hook = sdk.webhook({ headers: p.headers, rawBody: p.body });
    if (!hook.isValid()) fail(`the SDK refused a webhook: ${JSON.stringify(p.headers)} ${p.body}`);
    if (p.url !== '/pusher/webhook' || p.headers['x-pusher-key'] !== key) fail(`bad post ${p.url} ${JSON.stringify(p.headers)}`);
    if (typeof hook.getTime() !== 'object') fail('no time_ms');
  }
  const forged = { ...posts[0].headers, 'x-pusher-signature': '0'.repeat(64) };
  if (sdk.webhook({ headers: forged, rawBody: posts[0].body }).isValid()) fail('a forged webhook passed');
  const names = events().map((e) => e.name);
  const want = ['channel_occupied', 'member_added', 'member_added', 'client_event', 'member_removed', 'member_removed', 'channel_vacated'];
  if (JSON.stringify(names) !== JSON.stringify(want)) fail(`events ${JSON.stringify(names)}, want ${JSON.stringify(want)}`);
  const all = events();
  const users = all.filter((e) => e.name === 'member_added').map((e) => e.user_id).sort();
  if (JSON.stringify(users) !== '["a","b"]') fail(`members ${users}`);
  const ce = all.find((e) => e.name === 'client_event');
  if (ce.event !== 'client-typing' || ce.channel !== channel || ce.user_id !== 'a'
      || JSON.stringify(JSON.parse(ce.data)) !== JSON.stringify({ on: true, q: '"quoted"' })
      || !/^\d+\.\d+$/.test(ce.socket_id)) {
    fail(`client_event ${JSON.stringify(ce)}`);
  }
  if (!all.every((e) => e.channel === channel)) fail('an event of another channel');
  server.kill('SIGTERM');
  const { code } = await Promise.race([exited, new Promise((r) => setTimeout(() => r({ code: 'hung' }), WAIT_MS))]);
  if (code !== 0) fail(`the server exited ${code} after SIGTERM: ${stderr.slice(-500)}`);
  receiver.close();
  console.log(`PASS ${posts.length} signed posts accepted by the pusher SDK, events ${names.join(',')}`);
  process.exit(0);
}

main().catch((e) => fail(e.stack || String(e)));
