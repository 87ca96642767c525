// The Pusher endpoint with the real clients: pusher-js (the client Laravel Echo wraps) on
// /app/{key}, and the `pusher` server SDK publishing through the HTTP API with its own signing.
//
// usage: node pusher-check.cjs WS_HOST WS_PORT HTTP_HOST HTTP_PORT APP_ID KEY SECRET
// (NODE_PATH must name the test cache's node_modules.)
//
// Checks, in order, each wait bounded by PUSHER_WAIT_S seconds (default 10):
//   connect       two pusher-js clients connect; their socket ids match ^\d+\.\d+$ and differ
//   subscribe     public, private (authorized by the SDK's authorizeChannel) and presence
//                 (authorizeChannel with presence data) subscriptions succeed
//   presence      the first client's members are itself; the second sees both; the first gets
//                 member_added for the second's user; later member_removed when it disconnects
//   trigger       an event the SDK triggers arrives with the exact data; with socket_id the
//                 sender is skipped (it gets the next event, not that one); a trigger with
//                 info=subscription_count answers the channel's count; a batch arrives, and a
//                 batch with info on an item answers that item's count
//   api           GET /channels (filter_by_prefix=presence-, info=user_count), GET
//                 /channels/NAME (info=subscription_count), GET /channels/NAME/users answer
//                 as the Pusher API does
//   refusals      a request signed with a wrong secret gets 401; a subscription with a bad
//                 authorization gets pusher:subscription_error and the connection stays
//   cache         a cache channel replays its last event to a new subscriber; an empty one
//                 sends pusher:cache_miss
//   users         pusher:signin through authenticateUser, sendToUser reaches the user,
//                 terminateUserConnections closes its connection
//   client event  a client-* event on the presence channel reaches the other client with the
//                 sender's user_id, and not the sender
// Prints "PASS n checks" or "FAIL reason" as its last line.
'use strict';

const PusherClient = require('pusher-js');
const PusherServer = require('pusher');

const [wsHost, wsPort, httpHost, httpPort, appId, key, secret] = process.argv.slice(2);
const WAIT_MS = Number(process.env.PUSHER_WAIT_S || 10) * 1000;
let checks = 0;

function ok(what) {
  checks += 1;
  console.error(`ok ${checks} ${what}`);
}

function fail(why) {
  console.log(`FAIL ${why}`);
  process.exit(1);
}

function expect(cond, what) {
  if (!cond) fail(what);
  ok(what);
}

// Resolves with the first value `register(resolve)` delivers, or fails after WAIT_MS.
function waitFor(what, register) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => fail(`timed out waiting for ${what}`), WAIT_MS);
    register((value) => {
      clearTimeout(timer);
      resolve(value);
    });
  });
}

const server = new PusherServer({ appId, key, secret, host: httpHost, port: httpPort, useTLS: false });

// A pusher-js client authorizing through the SDK in-process, as a Laravel backend would.
function client(user) {
  return new PusherClient(key, {
    wsHost,
    wsPort: Number(wsPort),
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    cluster: 'local',
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        if (channelName.startsWith('private-bad')) {
          return callback(null, { auth: `${key}:${'0'.repeat(64)}` });
        }
        const presence = channelName.startsWith('presence-')
          ? { user_id: user, user_info: { name: `User ${user}` } }
          : undefined;
        callback(null, server.authorizeChannel(socketId, channelName, presence));
      },
    },
  });
}

// A pusher-js client that signs in as `user` through the SDK's authenticateUser.
function signedIn(user) {
  return new PusherClient(key, {
    wsHost,
    wsPort: Number(wsPort),
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    cluster: 'local',
    userAuthentication: {
      customHandler: ({ socketId }, callback) =>
        callback(null, server.authenticateUser(socketId, { id: user, name: `User ${user}` })),
    },
  });
}

function connected(c, name) {
  return waitFor(`${name} to connect`, (done) => {
    if (c.connection.state === 'connected') return done();
    c.connection.bind('connected', () => done());
    c.connection.bind('failed', () => fail(`${name} failed to connect`));
  });
}

function subscribed(c, channel) {
  return waitFor(`the subscription to ${channel}`, (done) => {
    const ch = c.subscribe(channel);
    ch.bind('pusher:subscription_succeeded', (data) => done({ ch, data }));
    ch.bind('pusher:subscription_error', (e) => fail(`subscription to ${channel} refused: ${JSON.stringify(e)}`));
  });
}

function next(ch, event, what) {
  return waitFor(what, (done) => ch.bind(event, (data) => done(data)));
}

async function main() {
  const tag = `${process.pid}-${Date.now() % 100000}`;
  const pub = `pub-${tag}`;
  const priv = `private-${tag}`;
  const pres = `presence-${tag}`;

  const a = client('u1');
  const b = client('u2');
  await connected(a, 'client a');
  await connected(b, 'client b');
  const idA = a.connection.socket_id;
  const idB = b.connection.socket_id;
  expect(/^\d+\.\d+$/.test(idA) && /^\d+\.\d+$/.test(idB), `socket ids ${idA} ${idB} look like Pusher's`);
  expect(idA !== idB, 'socket ids differ');

  const pubA = (await subscribed(a, pub)).ch;
  ok('public subscription');
  const privA = (await subscribed(a, priv)).ch;
  const privB = (await subscribed(b, priv)).ch;
  ok('private subscriptions authorized by authorizeChannel');

  const presA = await subscribed(a, pres);
  expect(presA.data.count === 1 && presA.data.me.id === 'u1', `presence: a alone (count ${presA.data.count})`);
  const addedOnA = next(presA.ch, 'pusher:member_added', 'member_added on a');
  const presB = await subscribed(b, pres);
  const idsB = [];
  presB.data.each((m) => idsB.push(m.id));
  expect(presB.data.count === 2 && idsB.sort().join(',') === 'u1,u2', `presence: b sees ${idsB}`);
  const added = await addedOnA;
  expect(added.id === 'u2' && added.info.name === 'User u2', `member_added ${JSON.stringify(added)}`);

  // An event with data of every awkward kind.
  const payload = { text: 'h\u00e9llo "quoted" \\ back', n: 42, list: [1, null, true], nested: { a: { b: 'c' } } };
  const gotPub = next(pubA, 'greeting', 'the triggered event');
  const res = await server.trigger(pub, 'greeting', payload);
  expect(res.status === 200, `trigger answered ${res.status}`);
  const data = await gotPub;
  // PUSHER_WRONG=1: one deliberately wrong expectation, to see the step fail.
  const want = process.env.PUSHER_WRONG === '1' ? { ...payload, n: 43 } : payload;
  expect(JSON.stringify(data) === JSON.stringify(want), `event data arrived exact: ${JSON.stringify(data)}`);

  // socket_id: b gets the excluded event, a gets only the next one.
  const seenA = [];
  privA.bind('excl', (d) => seenA.push(d.n));
  const gotB = next(privB, 'excl', 'the excluded event on b');
  await server.trigger(priv, 'excl', { n: 1 }, { socket_id: idA });
  expect((await gotB).n === 1, 'b got the event a was excluded from');
  const secondA = waitFor('the second event on a', (done) => {
    const check = () => (seenA.length > 0 ? done() : setTimeout(check, 20));
    check();
  });
  await server.trigger(priv, 'excl', { n: 2 });
  await secondA;
  expect(seenA.join(',') === '2', `a got only the event not excluded: [${seenA}]`);

  // A trigger with info: the channel's counts right after the event.
  const withInfo = await server.trigger(priv, 'counted', {}, { info: 'subscription_count' });
  const counted = await withInfo.json();
  expect(counted.channels && counted.channels[priv] && counted.channels[priv].subscription_count === 2,
    `trigger info: ${JSON.stringify(counted)}`);

  const batchSeen = next(pubA, 'batched', 'the batch event');
  await server.triggerBatch([
    { channel: pub, name: 'batched', data: { i: 1 } },
    { channel: priv, name: 'batched', data: { i: 2 } },
  ]);
  expect((await batchSeen).i === 1, 'batch event arrived');
  // A batch with info on an item answers it, item by item.
  const batchInfo = await (await server.triggerBatch([
    { channel: priv, name: 'batched', data: { i: 3 }, info: 'subscription_count' },
    { channel: pub, name: 'batched', data: { i: 4 } },
  ])).json();
  expect(Array.isArray(batchInfo.batch) && batchInfo.batch.length === 2
    && batchInfo.batch[0].subscription_count === 2 && Object.keys(batchInfo.batch[1]).length === 0,
    `batch info: ${JSON.stringify(batchInfo)}`);

  // Cache channels: the last event for a new subscriber, else pusher:cache_miss.
  const cache = `cache-${tag}`;
  await server.trigger(cache, 'cached', { v: 'kept' });
  const cachedEvent = waitFor('the cached event', (done) => a.subscribe(cache).bind('cached', (d) => done(d)));
  expect((await cachedEvent).v === 'kept', 'a cache channel replays its last event');
  const miss = waitFor('pusher:cache_miss', (done) => a.subscribe(`cache-none-${tag}`).bind('pusher:cache_miss', () => done()));
  await miss;
  ok('an empty cache channel says pusher:cache_miss');

  let r = await server.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } });
  let body = await r.json();
  expect(r.status === 200 && body.channels[pres] && body.channels[pres].user_count === 2,
    `GET /channels: ${JSON.stringify(body)}`);
  r = await server.get({ path: `/channels/${priv}`, params: { info: 'subscription_count' } });
  body = await r.json();
  expect(body.occupied === true && body.subscription_count === 2, `GET /channels/${priv}: ${JSON.stringify(body)}`);
  r = await server.get({ path: `/channels/${pres}/users` });
  body = await r.json();
  const users = body.users.map((u) => u.id).sort().join(',');
  expect(users === 'u1,u2', `GET /channels/${pres}/users: ${JSON.stringify(body)}`);

  const wrong = new PusherServer({ appId, key, secret: `${secret}-wrong`, host: httpHost, port: httpPort, useTLS: false });
  let status = 0;
  try {
    await wrong.trigger(pub, 'nope', {});
  } catch (e) {
    status = e.status;
  }
  expect(status === 401, `a wrong secret gets 401 (got ${status})`);

  const refused = waitFor('the subscription error', (done) => {
    const ch = a.subscribe(`private-bad-${tag}`);
    ch.bind('pusher:subscription_error', (e) => done(e));
    ch.bind('pusher:subscription_succeeded', () => fail('a bad authorization was accepted'));
  });
  const err = await refused;
  expect(err && err.status === 401, `bad authorization refused: ${JSON.stringify(err)}`);
  expect(a.connection.state === 'connected', 'the connection stays open');

  // A client event (the app has client_events = "members"): to b with a's user_id, not to a.
  const echoed = [];
  presA.ch.bind('client-typing', (d) => echoed.push(d));
  const typing = waitFor('the client event on b', (done) =>
    presB.ch.bind('client-typing', (d, meta) => done({ d, meta })));
  presA.ch.trigger('client-typing', { on: true });
  const got = await typing;
  expect(got.d.on === true && got.meta && got.meta.user_id === 'u1',
    `client event relayed with user_id: ${JSON.stringify(got)}`);
  expect(echoed.length === 0, 'the client event is not echoed to its sender');

  const removed = next(presA.ch, 'pusher:member_removed', 'member_removed on a');
  b.disconnect();
  const gone = await removed;
  expect(gone.id === 'u2', `member_removed ${JSON.stringify(gone)}`);
  expect(presA.ch.members.count === 1, 'a sees one member again');

  // pusher:signin, an event to the user, then terminate_connections.
  const user = `user-${tag}`;
  const c = signedIn(user);
  await connected(c, 'client c');
  const signinDone = waitFor('the signin', (done) => {
    c.connection.bind('message', (m) => {
      if (m.event === 'pusher:signin_success') done();
    });
  });
  c.signin();
  await signinDone;
  ok('pusher:signin with authenticateUser');
  // The user's channel subscription (pusher-js makes it after the signin) is in place once
  // an event sent to the user arrives; resend until then, boundedly.
  const note = waitFor('the event to the user', (done) => c.user.bind('note', (d) => done(d)));
  let sent = true;
  const resend = setInterval(() => {
    if (sent) server.sendToUser(user, 'note', { to: user }).catch((e) => fail(`sendToUser: ${e.status} ${e.body}`));
  }, 200);
  const noteData = await note;
  sent = false;
  clearInterval(resend);
  expect(noteData.to === user, `sendToUser reached the signed-in client: ${JSON.stringify(noteData)}`);
  const closed = waitFor('the terminated connection', (done) => {
    c.connection.bind('state_change', ({ current }) => {
      if (current !== 'connected') done(current);
    });
  });
  const t = await server.terminateUserConnections(user);
  expect(t.status === 200, `terminate_connections answered ${t.status}`);
  const state = await closed;
  ok(`terminate_connections closed the user's connection (${state})`);

  a.disconnect();
  c.disconnect();
  console.log(`PASS ${checks} checks`);
  process.exit(0);
}

main().catch((e) => fail(`error: ${e && e.stack ? e.stack.split('\n')[0] : e}`));
