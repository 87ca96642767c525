// WebSocket smoke test with the npm `ws` client.
// usage: node smoke-client.cjs URL
// Environment: SMOKE_MODE (echo|push), SMOKE_SEND, SMOKE_EXPECT, SMOKE_TIMEOUT (seconds),
//              SMOKE_OPEN_FILE (written once the socket is open).
// echo: sends the messages of `plan` (text, non-ASCII text, binary, empty text, empty binary,
//       256 KiB text), expects each back unchanged and in order, closes with 1000, expects 1000.
// push: sends SMOKE_SEND once if set, waits for SMOKE_EXPECT messages (default 1), closes.
// Prints one "PASS ..." or "FAIL ..." line on stdout; exit 0 or 1.
'use strict';
const fs = require('fs');
const WebSocket = require('ws');

const url = process.argv[2];
if (!url) { console.error('usage: node smoke-client.cjs URL'); process.exit(2); }
const mode = process.env.SMOKE_MODE || 'echo';
const send = process.env.SMOKE_SEND;
const expect = Number(process.env.SMOKE_EXPECT || 1);
const timeoutS = Number(process.env.SMOKE_TIMEOUT || 10);
const openFile = process.env.SMOKE_OPEN_FILE;
const version = require('ws/package.json').version;

const plan = [
  'hello',
  'κόσμε — UTF-8 ✓ 🚀',
  Buffer.from(Array.from({ length: 300 }, (_, i) => i & 0xff)),
  '',
  Buffer.alloc(0),
  'x'.repeat(256 * 1024),
];
const need = mode === 'echo' ? plan.length : expect;

let done = false;
function finish(ok, msg) {
  if (done) return;
  done = true;
  console.log((ok ? 'PASS ' : 'FAIL ') + msg);
  process.exit(ok ? 0 : 1);
}
setTimeout(() => finish(false, `timeout after ${timeoutS} s (${received.length}/${need} messages)`), timeoutS * 1000).unref();

const ws = new WebSocket(url, { perMessageDeflate: true, maxPayload: 64 * 1024 * 1024, handshakeTimeout: 5000 });
const received = [];
ws.on('open', () => {
  console.error(`open, extensions=${JSON.stringify(ws.extensions)}`);
  if (openFile) fs.writeFileSync(openFile, 'open\n');
  if (mode === 'echo') for (const m of plan) ws.send(m, { binary: Buffer.isBuffer(m) });
  else if (send !== undefined) ws.send(send);
});
ws.on('message', (data, isBinary) => {
  received.push(data);
  if (mode === 'echo') {
    const i = received.length - 1;
    const want = plan[i];
    const same = Buffer.isBuffer(want)
      ? (isBinary && Buffer.compare(data, want) === 0)
      : (!isBinary && data.toString('utf8') === want);
    if (!same) { finish(false, `echo mismatch at message ${i} (got ${isBinary ? 'binary' : 'text'} of ${data.length} bytes)`); return; }
  } else {
    console.error(`message ${received.length}: ` + (isBinary ? `[binary ${data.length} bytes]` : data.toString('utf8').slice(0, 200)));
  }
  if (received.length === need) ws.close(1000, 'bye');
});
ws.on('unexpected-response', (req, res) => finish(false, `handshake refused: HTTP ${res.statusCode}`));
ws.on('error', (e) => finish(false, `error: ${e.message}`));
ws.on('close', (code, reason) => {
  if (received.length < need) { finish(false, `closed (code ${code} ${reason}) after ${received.length}/${need} messages`); return; }
  if (code !== 1000) { finish(false, `close code ${code} ${reason}, wanted 1000`); return; }
  finish(true, `${mode}: ${received.length} messages, clean close 1000, extensions=${JSON.stringify(ws.extensions)}, ws ${version}`);
});
