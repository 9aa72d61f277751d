// Channel behaviour at the frame level, against an in-memory WebSocket stand-in: the
// cases a real server does not produce on demand (a reply that never comes, a stale
// join_ref, phx_error, garbage frames). Behaviour against the real server is in
// channels.test.js.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PushError, Socket } from '../src/index.js';
import { next, until } from './helpers.js';

/** A WebSocket class whose instances open at once and record what the client sends. */
function fakeWebSocket() {
  const instances = [];
  class FakeWebSocket {
    readyState = 0;
    sent = [];
    constructor(url) {
      this.url = url;
      instances.push(this);
      setTimeout(() => {
        this.readyState = 1;
        this.onopen?.({});
      }, 0);
    }
    send(data) {
      this.sent.push(typeof data === 'string' ? JSON.parse(data) : data);
    }
    close(code = 1000, reason = '') {
      if (this.readyState === 3) return;
      this.readyState = 3;
      setTimeout(() => this.onclose?.({ code, reason, wasClean: true }), 0);
    }
    /** Delivers a frame from the "server". */
    receive(message) {
      this.onmessage?.({ data: typeof message === 'string' ? message : JSON.stringify(message) });
    }
    /** The connection dies. */
    drop() {
      this.readyState = 3;
      this.onclose?.({ code: 1006, reason: '', wasClean: false });
    }
    /** Sent messages of one event, as [join_ref, ref, topic, event, payload] arrays. */
    sentOf(event) {
      return this.sent.filter((m) => Array.isArray(m) && m[3] === event);
    }
  }
  return { FakeWebSocket, instances, last: () => instances.at(-1) };
}

/** A socket on a fake WebSocket, disconnected when test `t` ends, pass or fail. */
function setup(t, options = {}) {
  const fake = fakeWebSocket();
  const socket = new Socket('ws://test/socket', {
    WebSocket: fake.FakeWebSocket,
    backoff: { baseMs: 1, maxMs: 5 },
    rejoin: { baseMs: 1, maxMs: 5 },
    heartbeatIntervalMs: 60_000,
    ...options,
  });
  t.after(() => socket.disconnect());
  return { socket, fake };
}

/** Answers the latest phx_join on `ws` with `status`. */
function answerJoin(ws, status = 'ok', response = {}) {
  const [joinRef, ref, topic] = ws.sentOf('phx_join').at(-1);
  ws.receive([joinRef, ref, topic, 'phx_reply', { status, response }]);
  return joinRef;
}

test('the URL carries the params and vsn=2.0.0', (t) => {
  const { socket } = setup(t, { params: { token: 'a b' } });
  assert.equal(socket.endPointURL(), 'ws://test/socket/websocket?token=a+b&vsn=2.0.0');
  const renewed = new Socket('http://test/socket/', { params: () => ({ n: 2 }) });
  assert.equal(renewed.endPointURL(), 'ws://test/socket/websocket?n=2&vsn=2.0.0');
});

test('pushes made before the join completes are sent after it, in order, with its join_ref', async (t) => {
  const { socket, fake } = setup(t);
  socket.connect();
  const channel = socket.channel('room:a', { user: 'ann' });
  const join = channel.join();
  const first = channel.push('one', { n: 1 });
  const second = channel.push('two', { n: 2 });
  await next(socket, 'open');
  const ws = fake.last();
  const [joinRef, ref, topic, , params] = ws.sentOf('phx_join')[0];
  assert.equal(joinRef, ref, 'a join carries its own ref as join_ref');
  assert.deepEqual([topic, params], ['room:a', { user: 'ann' }]);
  assert.equal(ws.sentOf('one').length, 0, 'nothing before the join reply');
  answerJoin(ws);
  assert.deepEqual(await join, {});
  assert.equal(channel.state, 'joined');
  const pushes = ws.sent.filter((m) => m[3] === 'one' || m[3] === 'two');
  assert.deepEqual(pushes.map((m) => [m[0], m[3]]), [[joinRef, 'one'], [joinRef, 'two']]);
  ws.receive([joinRef, pushes[1][1], 'room:a', 'phx_reply', { status: 'ok', response: { got: 2 } }]);
  assert.deepEqual(await second, { got: 2 });
  ws.receive([joinRef, pushes[0][1], 'room:a', 'phx_reply', { status: 'error', response: { reason: 'no' } }]);
  await assert.rejects(Promise.resolve(first), (e) => e instanceof PushError && e.status === 'error' && e.response.reason === 'no');
});

test('a push whose reply never comes times out; buffered pushes are bounded', async (t) => {
  const { socket, fake } = setup(t, { maxBufferedPushes: 1 });
  const opened = next(socket, 'open');
  socket.connect();
  const channel = socket.channel('room:a');
  channel.join();
  const waiting = channel.push('slow', {}, 30);
  const refused = channel.push('extra', {});
  await assert.rejects(Promise.resolve(refused), (e) => e.status === 'error' && e.response.reason === 'buffer_full');
  await assert.rejects(Promise.resolve(waiting), (e) => e.status === 'timeout');
  await opened;
  const ws = fake.last();
  answerJoin(ws);
  assert.equal(ws.sentOf('slow').length, 0, 'a push that timed out while buffered is never sent');
  const lost = channel.push('lost', {}, 30);
  assert.equal(ws.sentOf('lost').length, 1);
  await assert.rejects(Promise.resolve(lost), (e) => e.status === 'timeout');
});

test('a join without reply times out, leaves, and is retried', async (t) => {
  const { socket, fake } = setup(t);
  socket.connect();
  await next(socket, 'open');
  const channel = socket.channel('room:a');
  const outcomes = [];
  channel.join(30).receive('timeout', () => outcomes.push('timeout')).receive('ok', () => outcomes.push('ok'));
  const ws = fake.last();
  await until(() => ws.sentOf('phx_join').length === 2, { what: 'a second join' });
  assert.deepEqual(outcomes, ['timeout']);
  const [firstJoin] = ws.sentOf('phx_join')[0];
  assert.equal(ws.sentOf('phx_leave')[0][0], firstJoin, 'the timed-out join is left');
  answerJoin(ws);
  assert.deepEqual(outcomes, ['timeout', 'ok']);
  assert.equal(channel.state, 'joined');
});

test('after a reconnect the channel rejoins, and messages of the old join are ignored', async (t) => {
  const { socket, fake } = setup(t);
  socket.connect();
  const channel = socket.channel('room:a');
  let joins = 0;
  channel.join().receive('ok', () => joins++);
  const seen = [];
  channel.on('msg', (payload) => seen.push(payload.n));
  const errors = [];
  channel.onError((reason) => errors.push(reason));
  await next(socket, 'open');
  const oldRef = answerJoin(fake.last());
  fake.last().drop();
  assert.equal(channel.state, 'errored');
  assert.deepEqual(errors, [{ reason: 'disconnected' }]);
  await next(socket, 'open');
  const ws = fake.last();
  assert.equal(fake.instances.length, 2);
  const newRef = answerJoin(ws);
  assert.notEqual(newRef, oldRef);
  assert.equal(joins, 2, 'the join callbacks run for the rejoin too');
  ws.receive([oldRef, null, 'room:a', 'phx_close', {}]);
  ws.receive([oldRef, null, 'room:a', 'msg', { n: 1 }]);
  assert.equal(channel.state, 'joined', 'a phx_close of the old join does not close this one');
  ws.receive([newRef, null, 'room:a', 'msg', { n: 2 }]);
  ws.receive([null, null, 'room:a', 'msg', { n: 3 }]);
  assert.deepEqual(seen, [2, 3]);
});

test('phx_error: the channel errors and rejoins by itself', async (t) => {
  const { socket, fake } = setup(t, { random: () => 0 });
  socket.connect();
  const channel = socket.channel('room:a');
  channel.join();
  await next(socket, 'open');
  const ws = fake.last();
  const joinRef = answerJoin(ws);
  const errored = new Promise((resolve) => channel.onError(resolve));
  ws.receive([joinRef, null, 'room:a', 'phx_error', {}]);
  await errored;
  assert.equal(channel.state, 'errored');
  await until(() => ws.sentOf('phx_join').length === 2, { what: 'a rejoin' });
  answerJoin(ws);
  assert.equal(channel.state, 'joined');
});

test('a refused join closes the channel for good; join() may be called again', async (t) => {
  const { socket, fake } = setup(t);
  socket.connect();
  await next(socket, 'open');
  const channel = socket.channel('room:a');
  const closed = new Promise((resolve) => channel.onClose(resolve));
  const join = channel.join();
  answerJoin(fake.last(), 'error', { reason: 'nope' });
  await assert.rejects(Promise.resolve(join), (e) => e.status === 'error' && e.response.reason === 'nope');
  await closed;
  assert.equal(channel.state, 'closed');
  assert.deepEqual(socket.channels, []);
  await assert.rejects(Promise.resolve(channel.push('x')), (e) => e.response.reason === 'channel_closed');
  channel.join();
  answerJoin(fake.last());
  assert.equal(channel.state, 'joined');
});

test('garbage frames are reported as errors and change nothing', async (t) => {
  const { socket, fake } = setup(t);
  socket.connect();
  await next(socket, 'open');
  const channel = socket.channel('room:a');
  channel.join();
  const errors = [];
  socket.on('error', ({ error }) => errors.push(error.message));
  const ws = fake.last();
  ws.receive('{"not":"an array"}');
  ws.receive('[1,2,3]');
  ws.onmessage({ data: new Uint8Array([7, 0]).buffer });
  // A reply without a status is not a reply.
  const [joinRef, ref] = ws.sentOf('phx_join')[0];
  ws.receive([joinRef, ref, 'room:a', 'phx_reply', 'ok']);
  assert.equal(errors.length, 3);
  assert.equal(channel.state, 'joining');
  answerJoin(ws);
  assert.equal(channel.state, 'joined');
});

test('heartbeats go to topic phoenix; a missing answer ends the connection', async (t) => {
  const { socket, fake } = setup(t, { heartbeatIntervalMs: 20, heartbeatTimeoutMs: 30 });
  socket.connect();
  await next(socket, 'open');
  const ws = fake.last();
  await until(() => ws.sentOf('heartbeat').length === 1, { what: 'a heartbeat' });
  const [joinRef, ref, topic] = ws.sentOf('heartbeat')[0];
  assert.deepEqual([joinRef, topic], [null, 'phoenix']);
  ws.receive([null, ref, 'phoenix', 'phx_reply', { status: 'ok', response: {} }]);
  await until(() => ws.sentOf('heartbeat').length === 2, { what: 'a second heartbeat' });
  const close = await next(socket, 'close');
  assert.equal(close.reason, 'heartbeat timeout');
  await next(socket, 'open');
  assert.equal(fake.instances.length, 2);
});

// Streams: what a topic with history adds on the wire (see docs/streams.md).
const EPOCH = '00000000000000ab';
const at = (offset, epoch = EPOCH) => ({ offset, epoch });
/** Answers the latest phx_join with ok and a `stream` key. */
function answerStreamJoin(ws, recovered, position) {
  const [joinRef, ref, topic] = ws.sentOf('phx_join').at(-1);
  ws.receive([joinRef, ref, topic, 'phx_reply', { status: 'ok', response: {}, stream: { recovered, ...position } }]);
}
/** A broadcast with its position, as the server sends it on a topic with history. */
function broadcast(ws, topic, n, position) {
  ws.receive(JSON.stringify([null, null, topic, 'msg', { n }, position]));
}

test('streams: the position follows the join reply and each broadcast; duplicates are dropped', async (t) => {
  const { socket, fake } = setup(t);
  socket.connect();
  await next(socket, 'open');
  const channel = socket.channel('room:s', { user: 'ann' });
  const seen = [];
  const recoveries = [];
  channel.on('msg', ({ n }) => seen.push(n));
  channel.onRecovery((event) => recoveries.push(event));
  assert.equal(channel.position, null);
  channel.join();
  const ws = fake.last();
  assert.deepEqual(ws.sentOf('phx_join')[0][4], { user: 'ann' }, 'no position on a first join');
  answerStreamJoin(ws, false, at(4));
  assert.deepEqual(channel.position, at(4));
  assert.deepEqual(recoveries, [{ recovered: false, position: at(4) }]);
  broadcast(ws, 'room:s', 5, at(5));
  broadcast(ws, 'room:s', 6, at(6));
  broadcast(ws, 'room:s', 5, at(5));
  assert.deepEqual(seen, [5, 6], 'a broadcast at or before the position is not delivered again');
  assert.deepEqual(channel.position, at(6));
  // A broadcast without a position (binary, or a topic without history) moves nothing.
  ws.receive(JSON.stringify([null, null, 'room:s', 'msg', { n: 'plain' }]));
  assert.deepEqual(channel.position, at(6));
  // A new epoch under the joined channel: the history was lost, the app is told.
  broadcast(ws, 'room:s', 1, at(1, 'ff'));
  assert.deepEqual(seen, [5, 6, 'plain', 1]);
  assert.deepEqual(recoveries.at(-1), { recovered: false, position: at(1, 'ff') });
});

test('streams: a rejoin carries the position; recovered keeps it, not recovered takes the server’s', async (t) => {
  const { socket, fake } = setup(t);
  socket.connect();
  await next(socket, 'open');
  const channel = socket.channel('room:s', () => ({ user: 'ann' }));
  const seen = [];
  const recoveries = [];
  channel.on('msg', ({ n }) => seen.push(n));
  channel.onRecovery(({ recovered }) => recoveries.push(recovered));
  channel.join();
  let ws = fake.last();
  answerStreamJoin(ws, false, at(0));
  broadcast(ws, 'room:s', 1, at(1));

  ws.drop();
  await next(socket, 'open');
  ws = fake.last();
  assert.deepEqual(ws.sentOf('phx_join')[0][4], { user: 'ann', _position: at(1) });
  // Recovered: the reply's position is the stream's newest (3); the missed 2 and 3 follow.
  answerStreamJoin(ws, true, at(3));
  assert.deepEqual(channel.position, at(1), 'kept until the missed broadcasts come');
  broadcast(ws, 'room:s', 2, at(2));
  broadcast(ws, 'room:s', 3, at(3));
  assert.deepEqual(seen, [1, 2, 3]);
  assert.deepEqual(channel.position, at(3));

  ws.drop();
  await next(socket, 'open');
  ws = fake.last();
  assert.deepEqual(ws.sentOf('phx_join')[0][4], { user: 'ann', _position: at(3) });
  answerStreamJoin(ws, false, at(9, 'cd'));
  assert.deepEqual(channel.position, at(9, 'cd'), 'not recovered: where the stream is now');

  // A server that no longer keeps history for the topic: the position sent was not
  // recovered from, and is forgotten.
  ws.drop();
  await next(socket, 'open');
  ws = fake.last();
  assert.deepEqual(ws.sentOf('phx_join')[0][4]._position, at(9, 'cd'));
  answerJoin(ws);
  assert.equal(channel.position, null);
  assert.deepEqual(recoveries, [false, true, false, false]);
  ws.drop();
  await next(socket, 'open');
  assert.deepEqual(fake.last().sentOf('phx_join')[0][4], { user: 'ann' });
});

test('streams: "recovered" without a position sent counts as not recovered; a topic without history has no events', async (t) => {
  const { socket, fake } = setup(t);
  socket.connect();
  await next(socket, 'open');
  const channel = socket.channel('room:s');
  const recoveries = [];
  channel.onRecovery((event) => recoveries.push(event));
  channel.join();
  answerStreamJoin(fake.last(), true, at(2));
  assert.deepEqual(recoveries, [{ recovered: false, position: at(2) }]);
  const plain = socket.channel('room:plain');
  plain.onRecovery((event) => recoveries.push(event));
  plain.join();
  answerJoin(fake.last());
  assert.equal(plain.position, null);
  assert.equal(recoveries.length, 1);
});

test('streams: a `_position` in the params (saved across a reload) is joined from, and its recovery kept', async (t) => {
  const { socket, fake } = setup(t);
  socket.connect();
  await next(socket, 'open');
  const saved = at(5);
  const channel = socket.channel('room:s', () => ({ user: 'ann', _position: saved }));
  const seen = [];
  const recoveries = [];
  channel.on('msg', ({ n }) => seen.push(n));
  channel.onRecovery(({ recovered }) => recoveries.push(recovered));
  channel.join();
  const ws = fake.last();
  assert.deepEqual(ws.sentOf('phx_join')[0][4], { user: 'ann', _position: at(5) });
  answerStreamJoin(ws, true, at(7));
  assert.deepEqual(recoveries, [true], 'the server recovered from the position sent');
  broadcast(ws, 'room:s', 6, at(6));
  broadcast(ws, 'room:s', 7, at(7));
  assert.deepEqual(seen, [6, 7], 'the replay is delivered, not dropped as duplicates');
  assert.deepEqual(channel.position, at(7));
  // The channel's own position, newer, is what a rejoin carries.
  ws.drop();
  await next(socket, 'open');
  assert.deepEqual(fake.last().sentOf('phx_join')[0][4], { user: 'ann', _position: at(7) });
});

test('streams: a reply without a position (the stream could not be read) is not recovered, and stores none', async (t) => {
  const { socket, fake } = setup(t);
  socket.connect();
  await next(socket, 'open');
  const channel = socket.channel('room:s');
  const recoveries = [];
  channel.onRecovery((event) => recoveries.push(event));
  channel.join();
  const ws = fake.last();
  answerStreamJoin(ws, false, { epoch: null });
  assert.deepEqual(recoveries, [{ recovered: false, position: null }]);
  assert.equal(channel.position, null);
  broadcast(ws, 'room:s', 3, at(3, 'cd'));
  assert.deepEqual(channel.position, at(3, 'cd'));
  assert.equal(recoveries.length, 1, 'the first broadcast is no change of epoch');
});

test('streams: leave() forgets the position: a later join() is a first join', async (t) => {
  const { socket, fake } = setup(t);
  socket.connect();
  await next(socket, 'open');
  const channel = socket.channel('room:s', { user: 'ann' });
  channel.join();
  const ws = fake.last();
  answerStreamJoin(ws, false, at(4));
  channel.leave();
  const [joinRef, ref, topic] = ws.sentOf('phx_leave').at(-1);
  ws.receive([joinRef, ref, topic, 'phx_reply', { status: 'ok', response: {} }]);
  assert.equal(channel.state, 'closed');
  assert.equal(channel.position, null);
  channel.join();
  assert.deepEqual(ws.sentOf('phx_join').at(-1)[4], { user: 'ann' });
});
