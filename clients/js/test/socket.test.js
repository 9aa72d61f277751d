// ReconnectingSocket against the real example servers (echo, chat) run as processes,
// and against a hand-written peer for close-frame hints no example sends.

import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { ReconnectingSocket } from '../src/index.js';
import { freePort, next, sleep, startClosingPeer, startExample, until } from './helpers.js';

// Quick retries, so restarts are noticed within a test's patience.
const fast = { backoff: { baseMs: 50, maxMs: 400 }, connectTimeoutMs: 1_000 };

/** Every socket a test made is closed at the end, pass or fail. */
const sockets = [];
function open(url, options = {}) {
  const socket = new ReconnectingSocket(url, { ...fast, ...options });
  sockets.push(socket);
  return socket;
}
after(() => {
  for (const socket of sockets) socket.close();
});

/** Collects `message` data, for assertions on order. */
function inbox(socket) {
  const messages = [];
  socket.on('message', ({ data }) => messages.push(data));
  return messages;
}

describe('against the echo example', () => {
  const servers = [];
  after(async () => {
    for (const server of servers) await server.stop();
  });
  async function echo(port) {
    const server = await startExample('echo', port ?? (await freePort()));
    servers.push(server);
    return server;
  }

  test('echoes text and binary; binary arrives as an ArrayBuffer', async () => {
    const server = await echo();
    const socket = open(`ws://127.0.0.1:${server.port}/`);
    await next(socket, 'open');
    assert.equal(socket.send('héllo'), 'sent');
    assert.equal((await next(socket, 'message')).data, 'héllo');
    socket.send(new Uint8Array([1, 2, 255]));
    const { data } = await next(socket, 'message');
    assert.ok(data instanceof ArrayBuffer);
    assert.deepEqual([...new Uint8Array(data)], [1, 2, 255]);
  });

  test('queues while the server is down and sends in order once it is up', async () => {
    const port = await freePort();
    const socket = open(`ws://127.0.0.1:${port}/`);
    const messages = inbox(socket);
    assert.deepEqual(['a', 'b', 'c'].map((m) => socket.send(m)), ['queued', 'queued', 'queued']);
    assert.equal(socket.queued, 3);
    await next(socket, 'reconnecting');
    // Subscribed first: the socket may open while echo() still waits for the port.
    const opened = next(socket, 'open', { timeoutMs: 5_000 });
    await echo(port);
    await opened;
    await until(() => messages.length === 3, { what: 'three echoes' });
    assert.deepEqual(messages, ['a', 'b', 'c']);
    assert.equal(socket.queued, 0);
  });

  test('listeners of open send before the queue is flushed', async () => {
    const port = await freePort();
    const socket = open(`ws://127.0.0.1:${port}/`);
    const messages = inbox(socket);
    socket.send('queued');
    socket.on('open', () => socket.send('hello first'));
    await echo(port);
    await until(() => messages.length === 2, { what: 'two echoes' });
    assert.deepEqual(messages, ['hello first', 'queued']);
  });

  test('expired messages are dropped, never sent', async () => {
    const port = await freePort();
    const socket = open(`ws://127.0.0.1:${port}/`);
    const messages = inbox(socket);
    const drops = [];
    socket.on('drop', (drop) => drops.push(drop));
    assert.equal(socket.send('stale', { ttlMs: 50 }), 'queued');
    await sleep(100);
    assert.equal(socket.send('fresh'), 'queued');
    assert.deepEqual(drops, [{ data: 'stale', reason: 'expired' }]);
    await echo(port);
    await until(() => messages.length === 1, { what: 'one echo' });
    await sleep(100);
    assert.deepEqual(messages, ['fresh']);
    assert.equal(socket.dropped, 1);
  });

  test('killed and restarted: close 1006, reconnect, queued messages delivered', async () => {
    const port = await freePort();
    let server = await echo(port);
    const socket = open(`ws://127.0.0.1:${port}/`);
    const messages = inbox(socket);
    await next(socket, 'open');
    const closed = next(socket, 'close');
    const retrying = next(socket, 'reconnecting');
    await server.stop('SIGKILL');
    const close = await closed;
    assert.equal(close.code, 1006);
    assert.equal(close.wasClean, false);
    assert.equal(close.willReconnect, true);
    const retry = await retrying;
    assert.equal(retry.attempt, 1);
    assert.ok(retry.delayMs >= 0 && retry.delayMs < 50, `first retry within baseMs, got ${retry.delayMs}`);
    assert.equal(socket.send('while down'), 'queued');
    await sleep(300); // a few failed attempts against the closed port
    const reopening = next(socket, 'open', { timeoutMs: 5_000 });
    server = await echo(port);
    const reopened = await reopening;
    assert.ok(reopened.attempt >= 1);
    await until(() => messages.includes('while down'), { what: 'queued echo' });
  });

  test('a stopped server (SIGSTOP) is detected by heartbeat, and found again after SIGCONT', async () => {
    const server = await echo();
    const heartbeat = { intervalMs: 100, timeoutMs: 300, message: '__hb__', isReply: (d) => d === '__hb__' };
    const socket = open(`ws://127.0.0.1:${server.port}/`, { heartbeat, connectTimeoutMs: 300 });
    const messages = inbox(socket);
    await next(socket, 'open');
    await sleep(350); // several beats answered
    socket.send('data');
    await until(() => messages.length === 1, { what: 'echo' });
    assert.deepEqual(messages, ['data'], 'heartbeat answers are not messages');

    const closed = next(socket, 'close', { timeoutMs: 2_000 });
    const stoppedAt = Date.now();
    await server.pause();
    let close;
    try {
      close = await closed;
    } finally {
      server.resume();
    }
    const detectedMs = Date.now() - stoppedAt;
    assert.equal(close.reason, 'heartbeat timeout');
    assert.equal(close.code, 1006);
    // At most one interval until the next beat, then the timeout, plus scheduling slack.
    assert.ok(detectedMs <= 100 + 300 + 700, `detected after ${detectedMs} ms`);
    await next(socket, 'open', { timeoutMs: 5_000 });
    socket.send('again');
    await until(() => messages.includes('again'), { what: 'echo after resume' });
  });

  test('close() on a stopped server still ends in a close event, after closeTimeoutMs', async () => {
    const server = await echo();
    const socket = open(`ws://127.0.0.1:${server.port}/`, { closeTimeoutMs: 200 });
    await next(socket, 'open');
    const closed = next(socket, 'close', { timeoutMs: 2_000 });
    await server.pause();
    let close;
    try {
      socket.close();
      socket.close(); // a second call while closing changes nothing
      close = await closed;
    } finally {
      server.resume();
    }
    assert.deepEqual(close, { code: 1006, reason: 'close timeout', wasClean: false, willReconnect: false });
    assert.equal(socket.state, 'closed');
  });

  test('close() stops reconnecting and drops what is queued', async () => {
    const server = await echo();
    const socket = open(`ws://127.0.0.1:${server.port}/`);
    await next(socket, 'open');
    const reconnecting = [];
    socket.on('reconnecting', (r) => reconnecting.push(r));
    const closed = next(socket, 'close');
    socket.close(1000, 'bye');
    const close = await closed;
    assert.equal(close.code, 1000);
    assert.equal(close.willReconnect, false);
    assert.equal(socket.state, 'closed');
    const drops = [];
    socket.on('drop', (drop) => drops.push(drop.reason));
    assert.equal(socket.send('late'), 'dropped');
    assert.deepEqual(drops, ['closed']);
    await sleep(200);
    assert.deepEqual(reconnecting, []);
  });
});

describe('offline queue bounds', () => {
  test('the newest message is refused when the count or byte bound is reached', async () => {
    const port = await freePort(); // nothing listens: the socket stays offline
    const socket = open(`ws://127.0.0.1:${port}/`, { queue: { maxMessages: 2, maxBytes: 8 } });
    const drops = [];
    socket.on('drop', (drop) => drops.push(drop));
    assert.equal(socket.send('1234'), 'queued');
    assert.equal(socket.send('é'.repeat(3)), 'dropped', '6 UTF-8 bytes exceed the 4 left');
    assert.equal(socket.send('5678'), 'queued');
    assert.equal(socket.send('9'), 'dropped', 'count bound');
    assert.deepEqual(drops.map((d) => [d.data, d.reason]), [['ééé', 'overflow'], ['9', 'overflow']]);
    assert.equal(socket.queued, 2);
    assert.equal(socket.dropped, 2);
    socket.close();
    assert.deepEqual(drops.slice(2).map((d) => [d.data, d.reason]), [['1234', 'closed'], ['5678', 'closed']]);
  });
});

describe('against the chat example', () => {
  const servers = [];
  after(async () => {
    for (const server of servers) await server.stop();
  });

  test('failed handshakes (404) back off, doubling up to the cap', async () => {
    const server = await startExample('chat', await freePort());
    servers.push(server);
    const socket = open(`ws://127.0.0.1:${server.port}/no-such-route`, {
      backoff: { baseMs: 40, maxMs: 200 },
      random: () => 0.999,
    });
    let opened = false;
    socket.on('open', () => { opened = true; });
    const delays = [];
    socket.on('reconnecting', ({ delayMs }) => delays.push(delayMs));
    await until(() => delays.length >= 5, { what: 'five retries', timeoutMs: 5_000 });
    assert.deepEqual(delays.slice(0, 5), [39, 79, 159, 199, 199]);
    assert.equal(opened, false);
  });

  test('two members chat; a graceful restart (1001) is followed by a rejoin', async () => {
    const port = await freePort();
    let server = await startExample('chat', port);
    servers.push(server);
    // 1001 says "come back later": the retry waits within restartWindow, kept short here.
    const restartWindow = { minMs: 100, maxMs: 300 };
    const alice = open(`ws://127.0.0.1:${port}/chat/lobby?name=alice`, { restartWindow });
    const bob = open(`ws://127.0.0.1:${port}/chat/lobby?name=bob`, { restartWindow });
    const parsed = (socket) => {
      const out = [];
      socket.on('message', ({ data }) => out.push(JSON.parse(data)));
      return out;
    };
    const aliceSaw = parsed(alice);
    const bobSaw = parsed(bob);
    await until(() => aliceSaw.some((m) => m.type === 'welcome') && bobSaw.some((m) => m.type === 'welcome'), {
      what: 'welcomes',
    });
    await until(() => aliceSaw.some((m) => m.type === 'joined' && m.user === 'bob') || bobSaw.some((m) => m.type === 'joined' && m.user === 'alice'), {
      what: 'a joined notice',
    });
    alice.send('hi bob');
    await until(() => bobSaw.some((m) => m.type === 'message' && m.user === 'alice' && m.body === 'hi bob'), {
      what: 'the message at bob',
    });

    const closed = next(alice, 'close', { timeoutMs: 8_000 });
    const retrying = next(alice, 'reconnecting', { timeoutMs: 8_000 });
    await server.stop('SIGTERM');
    const close = await closed;
    assert.equal(close.code, 1001, `graceful shutdown sends 1001, got ${close.code} ${close.reason}`);
    assert.equal(close.reason, 'server shutting down');
    assert.equal(close.willReconnect, true);
    const { delayMs } = await retrying;
    assert.ok(delayMs >= 100 && delayMs < 300, `waits within restartWindow, got ${delayMs}`);
    const welcomes = aliceSaw.filter((m) => m.type === 'welcome').length;
    server = await startExample('chat', port);
    servers.push(server);
    await until(() => aliceSaw.filter((m) => m.type === 'welcome').length === welcomes + 1, {
      what: 'a second welcome',
      timeoutMs: 5_000,
    });
  });
});

describe('restarts (1012 with a reconnect window) against the chat example', () => {
  const servers = [];
  after(async () => {
    for (const server of servers) await server.stop();
  });

  test('each client waits its own random delay within the window, then comes back', async () => {
    const port = await freePort();
    let server = await startExample('chat', port, ['--restart-window', '0.5-2']);
    servers.push(server);
    // Real randomness: distinct clients must pick distinct delays.
    const clients = Array.from({ length: 6 }, (_, i) => open(`ws://127.0.0.1:${port}/chat/lobby?name=c${i}`));
    await Promise.all(clients.map((socket) => next(socket, 'open')));
    const retries = clients.map((socket) => {
      const closed = next(socket, 'close', { timeoutMs: 8_000 });
      const retrying = next(socket, 'reconnecting', { timeoutMs: 8_000 });
      return Promise.all([closed, retrying]).then(([close, retry]) => ({ close, retry, at: Date.now() }));
    });
    await server.stop('SIGTERM');
    const seen = await Promise.all(retries);
    server = await startExample('chat', port);
    servers.push(server);
    const reopened = await Promise.all(
      clients.map((socket) => next(socket, 'open', { timeoutMs: 8_000 }).then(() => Date.now())),
    );
    const delays = seen.map(({ close, retry }, i) => {
      assert.equal(close.code, 1012);
      assert.equal(close.reason, 'server restarting; retry in 0.5-2s');
      assert.ok(retry.delayMs >= 500 && retry.delayMs < 2000, `client ${i}: delay ${retry.delayMs}`);
      // Not before its delay (the timer), whatever the server's state.
      const waited = reopened[i] - seen[i].at;
      assert.ok(waited >= retry.delayMs - 20, `client ${i}: back after ${waited} ms, delay ${retry.delayMs}`);
      return retry.delayMs;
    });
    assert.equal(new Set(delays).size, delays.length, `distinct delays: ${delays}`);
  });
});

describe('close-frame hints (hand-written peer)', () => {
  test('1012 with a window: the delay is drawn in the window, not from the backoff', async () => {
    const peer = await startClosingPeer(1012, 'server restarting; retry in 1-10s');
    try {
      for (const [draw, expected] of [[0, 1000], [0.5, 5500], [1 - Number.EPSILON, 9999]]) {
        const socket = open(peer.url, { random: () => draw });
        assert.equal((await next(socket, 'reconnecting')).delayMs, expected);
        socket.close();
      }
    } finally {
      await peer.close();
    }
  });

  test('1001 and 1013 without a window wait within restartWindow; other codes back off', async () => {
    for (const [code, expected] of [[1001, 1_250], [1013, 1_250], [1011, 25]]) {
      const peer = await startClosingPeer(code, 'bye');
      try {
        const socket = open(peer.url, { random: () => 0.5, restartWindow: { minMs: 1_000, maxMs: 1_500 } });
        assert.equal((await next(socket, 'reconnecting')).delayMs, expected, `code ${code}`);
        socket.close();
      } finally {
        await peer.close();
      }
    }
  });

  test('a suggested window is capped by maxRetryAfterMs', async () => {
    const peer = await startClosingPeer(1012, 'retry in 600-3600s');
    try {
      const socket = open(peer.url, { random: () => 0.5, maxRetryAfterMs: 250 });
      assert.equal((await next(socket, 'reconnecting')).delayMs, 250);
      socket.close();
    } finally {
      await peer.close();
    }
  });

  test('a retry-after hint in the close reason sets the least delay', async () => {
    const peer = await startClosingPeer(1013, 'full; retry-after=1');
    try {
      const socket = open(peer.url, { random: () => 0 });
      const closed = next(socket, 'close');
      const retrying = next(socket, 'reconnecting'); // emitted right after close
      assert.equal((await closed).code, 1013);
      const retry = await retrying;
      assert.equal(retry.delayMs, 1000);
      assert.equal(peer.handshakes, 1);
      await sleep(500);
      assert.equal(peer.handshakes, 1, 'no attempt before the hint allows');
      await until(() => peer.handshakes === 2, { what: 'the retry', timeoutMs: 2_000 });
      socket.close();
    } finally {
      await peer.close();
    }
  });

  test('a hint is capped by maxRetryAfterMs', async () => {
    const peer = await startClosingPeer(1013, 'retry-after=3600');
    try {
      const socket = open(peer.url, { random: () => 0, maxRetryAfterMs: 250 });
      assert.equal((await next(socket, 'reconnecting')).delayMs, 250);
      socket.close();
    } finally {
      await peer.close();
    }
  });

  test('connections that close at once keep growing the backoff; stable ones reset it', async () => {
    const peer = await startClosingPeer(1011, 'crash');
    try {
      const top = () => 1 - Number.EPSILON;
      const flapping = open(peer.url, { random: top, backoff: { baseMs: 20, maxMs: 1000 } });
      const attempts = [];
      flapping.on('reconnecting', ({ attempt, delayMs }) => attempts.push([attempt, delayMs]));
      await until(() => attempts.length >= 3, { what: 'three retries' });
      flapping.close();
      assert.deepEqual(attempts.slice(0, 3), [[1, 19], [2, 39], [3, 79]]);

      const stable = open(peer.url, { random: top, backoff: { baseMs: 20, maxMs: 1000 }, stableAfterMs: 0 });
      const delays = [];
      stable.on('reconnecting', ({ delayMs }) => delays.push(delayMs));
      await until(() => delays.length >= 3, { what: 'three retries' });
      stable.close();
      assert.deepEqual(delays.slice(0, 3), [19, 19, 19]);
    } finally {
      await peer.close();
    }
  });
});

describe('credentials: the close codes of the server (hand-written peer)', () => {
  for (const [code, reason] of [[3000, 'unauthorized'], [3003, 'forbidden']]) {
    test(`a close with ${code} stops reconnecting and is reported as unauthorized`, async () => {
      const peer = await startClosingPeer(code, reason);
      try {
        const socket = open(peer.url);
        const unauthorized = next(socket, 'unauthorized');
        const closed = next(socket, 'close');
        const retries = [];
        socket.on('reconnecting', (retry) => retries.push(retry));
        assert.deepEqual(await unauthorized, { code, reason });
        assert.equal((await closed).willReconnect, false);
        assert.equal(socket.state, 'closed');
        await sleep(300);
        assert.equal(peer.handshakes, 1, 'no retry');
        assert.deepEqual(retries, []);
        // The app may come back, e.g. after a new login.
        socket.connect();
        await until(() => peer.handshakes === 2, { what: 'the connect after the refusal' });
      } finally {
        await peer.close();
      }
    });
  }

  test('a close with 4401 (token expired) reconnects, asking the url function for a fresh token', async () => {
    const peer = await startClosingPeer(4401, 'token expired');
    try {
      const contexts = [];
      // Async, as a token fetched from the app's server is.
      const socket = open(async (context) => {
        contexts.push(context);
        await sleep(10);
        return `${peer.url}?token=t${contexts.length}`;
      }, { backoff: { baseMs: 20, maxMs: 40 } });
      const unauthorized = [];
      socket.on('unauthorized', (info) => unauthorized.push(info));
      await until(() => peer.handshakes >= 3, { what: 'two reconnects' });
      socket.close();
      assert.deepEqual(contexts.slice(0, 3), [
        { attempt: 0, expired: false },
        { attempt: 1, expired: true },
        { attempt: 2, expired: true },
      ]);
      assert.deepEqual(unauthorized, []);
    } finally {
      await peer.close();
    }
  });

  test('a url function that rejects is a failed attempt: reported by error, retried with backoff', async () => {
    const peer = await startClosingPeer(1000, 'bye');
    try {
      let calls = 0;
      const socket = open(() => {
        calls += 1;
        return calls === 1 ? Promise.reject(new Error('token service down')) : Promise.resolve(peer.url);
      });
      const error = next(socket, 'error');
      const retry = next(socket, 'reconnecting');
      assert.equal((await error).error.message, 'token service down');
      assert.deepEqual(
        { ...(await retry), delayMs: 0 },
        { attempt: 1, delayMs: 0, code: 1006, reason: 'attempt failed: token service down' },
      );
      await until(() => peer.handshakes === 1, { what: 'the second attempt' });
    } finally {
      await peer.close();
    }
  });

  test('close() while the url function is pending: no attempt follows', async () => {
    const peer = await startClosingPeer(1000, 'bye');
    try {
      let resolve;
      const socket = open(() => new Promise((r) => { resolve = r; }));
      assert.equal(socket.state, 'connecting');
      socket.close();
      assert.equal(socket.state, 'closed');
      resolve(peer.url);
      await sleep(100);
      assert.equal(peer.handshakes, 0);
      assert.equal(socket.webSocket, null);
    } finally {
      await peer.close();
    }
  });
});
