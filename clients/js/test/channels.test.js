// The channels client against the real Rust server: the `channels` example (rooms
// `room:{name}`, join params `{user}`, `new_msg` broadcast, `ping` echoed as a reply,
// presence keyed by user) run as a process.

import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { Presence, PushError, Socket } from '../src/index.js';
import { exampleBinary, freePort, hasExample, next, sleep, startExample, until } from './helpers.js';

const skip = hasExample('channels') ? false : `${exampleBinary('channels')} is not built`;

// Quick reconnects and rejoins, so restarts are noticed within a test's patience.
const fast = {
  backoff: { baseMs: 50, maxMs: 400 },
  rejoin: { baseMs: 50, maxMs: 400 },
  connectTimeoutMs: 1_000,
  timeoutMs: 2_000,
};

describe('against the channels example', { skip }, () => {
  const servers = [];
  const sockets = [];
  after(async () => {
    for (const socket of sockets) socket.disconnect();
    for (const server of servers) await server.stop();
  });
  async function server(port, args) {
    const started = await startExample('channels', port ?? (await freePort()), args);
    servers.push(started);
    return started;
  }
  function connect(port, options = {}) {
    const socket = new Socket(`ws://127.0.0.1:${port}/socket`, { ...fast, ...options });
    sockets.push(socket);
    socket.connect();
    return socket;
  }
  const users = (presence) => presence.list((user) => user).sort();

  test('members join with presence, chat, and leave', async () => {
    const { port } = await server();
    const alice = connect(port).channel('room:lobby', { user: 'alice' });
    const alicePresence = new Presence(alice);
    const aliceSaw = [];
    alice.on('new_msg', (message) => aliceSaw.push(message));
    assert.deepEqual(await alice.join(), {});
    assert.equal(alice.state, 'joined');
    await until(() => users(alicePresence).join() === 'alice', { what: 'alice in her own presence' });

    const bobSocket = connect(port);
    const bob = bobSocket.channel('room:lobby', { user: 'bob' });
    const bobPresence = new Presence(bob);
    const bobSaw = [];
    bob.on('new_msg', (message) => bobSaw.push(message));
    await bob.join();
    await until(() => users(alicePresence).join() === 'alice,bob', { what: 'bob in alice’s presence' });
    await until(() => users(bobPresence).join() === 'alice,bob', { what: 'alice in bob’s presence' });
    const [aliceEntry] = alicePresence.list((user, { metas }) => (user === 'alice' ? metas : null)).filter(Boolean);
    assert.equal(typeof aliceEntry[0].phx_ref, 'string');

    assert.deepEqual(await bob.push('new_msg', { body: 'hi all' }), {});
    const expected = [{ user: 'bob', body: 'hi all' }];
    await until(() => aliceSaw.length === 1 && bobSaw.length === 1, { what: 'the broadcast at both' });
    assert.deepEqual(aliceSaw, expected);
    assert.deepEqual(bobSaw, expected, 'the sender gets the broadcast too');

    await bob.leave();
    assert.equal(bob.state, 'closed');
    assert.deepEqual(bobSocket.channels, []);
    await until(() => users(alicePresence).join() === 'alice', { what: 'bob gone from alice’s presence' });
  });

  test('refused joins reply error with the reason and close the channel', async () => {
    const { port } = await server();
    const socket = connect(port);
    const nameless = socket.channel('room:lobby', {});
    await assert.rejects(Promise.resolve(nameless.join()), (e) => {
      return e instanceof PushError && e.status === 'error' && e.response.reason === 'user required';
    });
    assert.equal(nameless.state, 'closed');
    const unknown = socket.channel('nowhere:1', { user: 'x' });
    const outcomes = [];
    unknown.join().receive('error', ({ reason }) => outcomes.push(reason));
    await until(() => outcomes.length === 1, { what: 'the error reply' });
    assert.deepEqual(outcomes, ['unmatched topic']);
  });

  test('replies: JSON, binary (as an ArrayBuffer), and errors', async () => {
    const { port } = await server();
    const channel = connect(port).channel('room:pings', { user: 'pat' });
    await channel.join();
    assert.deepEqual(await channel.push('ping', { n: 1, s: 'é' }), { n: 1, s: 'é' });
    const response = await channel.push('ping', new Uint8Array([0, 1, 2, 255]));
    assert.ok(response instanceof ArrayBuffer, 'a binary reply');
    assert.deepEqual([...new Uint8Array(response)], [0, 1, 2, 255]);
    await assert.rejects(Promise.resolve(channel.push('shout', {})), (e) => e.response.reason === 'unknown event');
    await assert.rejects(Promise.resolve(channel.push('new_msg', { body: '  ' })), (e) => e.response.reason === 'body required');
  });

  test('killed and restarted: the socket reconnects, the channel rejoins, presence resyncs', async () => {
    const port = await freePort();
    let running = await server(port);
    const socket = connect(port);
    const channel = socket.channel('room:restart', { user: 'rae' });
    const presence = new Presence(channel);
    let joins = 0;
    channel.join().receive('ok', () => joins++);
    const errors = [];
    channel.onError((reason) => errors.push(reason));
    await until(() => joins === 1 && users(presence).join() === 'rae', { what: 'joined with presence' });

    const closed = next(socket, 'close');
    await running.stop('SIGKILL');
    assert.equal((await closed).code, 1006);
    assert.equal(channel.state, 'errored');
    assert.deepEqual(errors, [{ reason: 'disconnected' }]);
    const whileDown = channel.push('ping', { queued: true }, 5_000);
    running = await server(port);
    await until(() => joins === 2, { what: 'the rejoin', timeoutMs: 5_000 });
    assert.equal(channel.state, 'joined');
    assert.deepEqual(await whileDown, { queued: true }, 'a push made while down goes out after the rejoin');
    await until(() => users(presence).join() === 'rae', { what: 'presence after the restart' });
    const seen = next(channel, 'new_msg');
    await channel.push('new_msg', { body: 'back' });
    assert.deepEqual(await seen, { user: 'rae', body: 'back' });
  });

  test('a stopped server: pushes time out, the heartbeat notices, the channel rejoins after SIGCONT', async () => {
    const running = await server();
    const socket = connect(running.port, { heartbeatIntervalMs: 100, heartbeatTimeoutMs: 300, connectTimeoutMs: 300 });
    const channel = socket.channel('room:stop', { user: 'sam' });
    let joins = 0;
    channel.join().receive('ok', () => joins++);
    await until(() => joins === 1, { what: 'the join' });

    const closed = next(socket, 'close', { timeoutMs: 3_000 });
    await running.pause();
    let close;
    let push;
    try {
      push = channel.push('ping', {}, 200).then(() => 'ok', (e) => e.status);
      close = await closed;
    } finally {
      running.resume();
    }
    assert.equal(await push, 'timeout');
    assert.equal(close.reason, 'heartbeat timeout');
    await until(() => joins === 2, { what: 'the rejoin', timeoutMs: 5_000 });
    assert.deepEqual(await channel.push('ping', { after: 'resume' }), { after: 'resume' });
  });

  test('a refused connection (wrong token) closes with 3000: reported, not retried; connect() with a good one gets in', async () => {
    const { port } = await server(undefined, ['--token', 's3cret']);
    let token = 'wrong';
    const socket = connect(port, { params: () => ({ token }), backoff: { baseMs: 20, maxMs: 100 } });
    const retries = [];
    socket.on('reconnecting', (retry) => retries.push(retry));
    assert.deepEqual(await next(socket, 'unauthorized'), { code: 3000, reason: 'invalid token' });
    assert.equal(socket.state, 'closed');
    await sleep(300);
    assert.deepEqual(retries, [], 'a refusal is not retried');
    token = 's3cret';
    const opened = next(socket, 'open');
    socket.connect();
    await opened;
    const channel = socket.channel('room:vip', { user: 'vic' });
    assert.deepEqual(await channel.join(), {});
  });

  test('authToken travels in Sec-WebSocket-Protocol, not the URL; the server selects phoenix', async () => {
    const { port } = await server(undefined, ['--token', 's3cret']);
    const socket = connect(port, { authToken: 's3cret' });
    assert.ok(!socket.endPointURL().includes('s3cret'), socket.endPointURL());
    await next(socket, 'open');
    assert.equal(socket.webSocket.protocol, 'phoenix');
    assert.deepEqual(await socket.channel('room:auth', { user: 'tok' }).join(), {});

    const refused = connect(port, { authToken: () => 'wrong' });
    assert.deepEqual(await next(refused, 'unauthorized'), { code: 3000, reason: 'invalid token' });
  });

  test('an expiring token: closed with 4401, the client asks for a fresh token and reconnects with it', async () => {
    const { port } = await server(undefined, ['--token', 's3cret']);
    const contexts = [];
    const socket = connect(port, {
      // The app's token service: a short-lived token first, then a fresh one when asked
      // because the last one expired.
      authToken: async (context) => {
        contexts.push(context);
        await sleep(5);
        return `s3cret.${Date.now() + (context.expired ? 60_000 : 500)}`;
      },
    });
    const closes = [];
    socket.on('close', ({ code, reason }) => closes.push(`${code} ${reason}`));
    const channel = socket.channel('room:expiry', { user: 'exp' });
    let joins = 0;
    channel.join().receive('ok', () => joins++);
    await until(() => joins === 1, { what: 'the join' });
    await until(() => joins === 2, { what: 'the rejoin with a fresh token', timeoutMs: 5_000 });
    assert.deepEqual(closes, ['4401 token expired']);
    assert.deepEqual(contexts.map(({ expired }) => expired), [false, true]);
    // The server took the fresh token: the old one would have been refused with 4401
    // at once, again and again.
    await sleep(700);
    assert.deepEqual(closes, ['4401 token expired']);
    assert.equal(socket.isConnected(), true);
  });
});
