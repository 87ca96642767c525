#!/usr/bin/env node
// Publish one message to a ringcast channel through the control socket (docs/control.md).
//
// usage: RINGCAST_CONTROL=unix:/tmp/ringcast.sock node publish.js CHANNEL MESSAGE
//
// Node standard library only (net). The address is unix:PATH or tcp:HOST:PORT (default
// unix:/tmp/ringcast.sock); set RINGCAST_CONTROL_TOKEN when the server has a token.
// Prints the reply line; exit status 0 published, 1 error reply, 2 usage or connection problem.
'use strict';
const net = require('net');

if (process.argv.length !== 4) {
  console.error('usage: node publish.js CHANNEL MESSAGE');
  process.exit(2);
}
const [channel, message] = process.argv.slice(2);
const address = process.env.RINGCAST_CONTROL || 'unix:/tmp/ringcast.sock';
const token = process.env.RINGCAST_CONTROL_TOKEN;

let target;
if (address.startsWith('unix:')) {
  target = { path: address.slice('unix:'.length) };
} else if (address.startsWith('tcp:')) {
  const hostPort = address.slice('tcp:'.length);
  const colon = hostPort.lastIndexOf(':');
  const host = hostPort.slice(0, colon).replace(/^\[|\]$/g, ''); // [::1] -> ::1
  target = { host, port: Number(hostPort.slice(colon + 1)) };
} else {
  console.error('publish.js: RINGCAST_CONTROL must be unix:PATH or tcp:HOST:PORT');
  process.exit(2);
}

// One JSON object per line. "text" is delivered as is; use "data" for any JSON value.
const requests = [{ id: 1, method: 'publish', channel, text: message }];
if (token) requests.unshift({ method: 'auth', token });

const socket = net.connect(target);
socket.setEncoding('utf8');
socket.setTimeout(10000, () => fail('no reply within 10 s')); // milliseconds
socket.on('error', (e) => fail(e.message));
socket.on('end', () => fail('the server closed the connection'));
socket.write(requests.map((r) => JSON.stringify(r) + '\n').join(''));

// One reply line per request, in order: {"id":1,"result":{"offset":N,"epoch":E}}
// or {"id":1,"error":{"code":"...","message":"..."}}.
let buffered = '';
let replies = 0;
socket.on('data', (chunk) => {
  buffered += chunk;
  let newline;
  while ((newline = buffered.indexOf('\n')) >= 0) {
    const line = buffered.slice(0, newline);
    buffered = buffered.slice(newline + 1);
    let reply;
    try {
      reply = JSON.parse(line);
    } catch (e) {
      return fail(`not a JSON reply: ${line}`);
    }
    replies += 1;
    if (reply.error || replies === requests.length) {
      console.log(line);
      process.exitCode = reply.error ? 1 : 0;
      socket.destroy();
      return;
    }
  }
});

function fail(why) {
  console.error(`publish.js: ${address}: ${why}`);
  process.exitCode = 2;
  socket.destroy();
}
