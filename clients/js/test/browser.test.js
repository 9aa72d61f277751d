// The client in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core), imported as ESM straight from src/ by a page that a small Node
// server serves. The raw socket talks to the echo example directly (cross-origin: echo
// checks no Origin); the channels socket goes through the page's own origin, which
// passes upgrades on to the channels example untouched, as a reverse proxy would (the
// hub admits same-origin pages only).

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import net from 'node:net';
import { dirname, join, normalize } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { Socket } from '../src/index.js';
import { exampleBinary, freePort, hasExample, hasRedis, startExample, startRedis } from './helpers.js';

/**
 * A test's `skip` option: skipped by hand when `ok` is false, so that `npm test` runs
 * before the examples are built; never under CI (`CI=true`), where a missing part
 * fails the test instead of hiding it.
 */
function needs(ok, why) {
  return ok || process.env.CI === 'true' ? false : why;
}

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
];
const src = join(dirname(fileURLToPath(import.meta.url)), '..', 'src');

const PAGE = `<!DOCTYPE html>
<meta charset="utf-8">
<title>@switchboard/client test page</title>
<script type="module">
  import * as client from '/src/index.js';
  window.client = client;
  window.log = [];
  window.ready = true;
</script>`;

/**
 * Serves the page and src/, and passes WebSocket upgrades under /socket to
 * `channelsPort()` byte for byte (Host kept, so Origin and Host agree).
 */
async function startPageServer(channelsPort) {
  const upgraded = new Set();
  const server = createServer(async (req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    if (path === '/') return res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE);
    const file = normalize(join(src, path.replace(/^\/src\//, '')));
    if (!path.startsWith('/src/') || !file.startsWith(src) || !file.endsWith('.js') || !existsSync(file)) {
      return res.writeHead(404).end();
    }
    res.writeHead(200, { 'content-type': 'text/javascript' }).end(await readFile(file));
  });
  server.on('upgrade', (req, client, head) => {
    upgraded.add(client);
    const port = channelsPort();
    if (!req.url.startsWith('/socket/') || port === null) return client.destroy();
    const upstream = net.connect(port, '127.0.0.1');
    upgraded.add(upstream);
    const end = () => {
      client.destroy();
      upstream.destroy();
      upgraded.delete(client);
      upgraded.delete(upstream);
    };
    for (const socket of [client, upstream]) socket.on('error', end).on('close', end);
    upstream.on('connect', () => {
      let request = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) request += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      upstream.write(`${request}\r\n`);
      upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}/`,
    close: () => new Promise((resolve) => {
      for (const socket of upgraded) socket.destroy();
      server.close(resolve);
    }),
  };
}

describe('in headless Chromium', () => {
  let browser;
  let page;
  let pageServer;
  let channelsPort = null;
  const servers = [];

  before(async () => {
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium (tests/browser/setup.sh does)`);
    pageServer = await startPageServer(() => channelsPort);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 30_000 });
    page = await browser.newPage();
    page.setDefaultTimeout(10_000);
    await page.goto(pageServer.url);
    await page.waitForFunction(() => window.ready === true);
  });
  after(async () => {
    await page?.evaluate(() => window.cleanup?.forEach((close) => close())).catch(() => {});
    await browser?.close();
    await pageServer?.close();
    for (const server of servers) await server.stop();
  });

  test('raw socket: echo, then a server restart with a message queued while it was down', async () => {
    const port = await freePort();
    let echo = await startExample('echo', port);
    servers.push(echo);
    await page.evaluate((url) => {
      const socket = new window.client.ReconnectingSocket(url, { backoff: { baseMs: 50, maxMs: 400 } });
      (window.cleanup ??= []).push(() => socket.close());
      window.raw = socket;
      socket.on('open', () => window.log.push('open'));
      socket.on('close', ({ code, willReconnect }) => window.log.push(`close ${code} ${willReconnect}`));
      socket.on('message', ({ data }) => window.log.push(typeof data === 'string' ? `text ${data}` : `binary ${new Uint8Array(data).join(',')}`));
    }, `ws://127.0.0.1:${port}/`);
    await page.waitForFunction(() => window.log.includes('open'));
    assert.equal(await page.evaluate(() => window.raw.send('from chromium')), 'sent');
    assert.equal(await page.evaluate(() => window.raw.send(new Uint8Array([1, 2, 3]))), 'sent');
    await page.waitForFunction(() => window.log.includes('text from chromium') && window.log.includes('binary 1,2,3'));

    await echo.stop('SIGKILL');
    await page.waitForFunction(() => window.log.includes('close 1006 true'));
    assert.equal(await page.evaluate(() => window.raw.send('while down')), 'queued');
    echo = await startExample('echo', port);
    servers.push(echo);
    await page.waitForFunction(() => window.log.filter((entry) => entry === 'open').length === 2);
    await page.waitForFunction(() => window.log.includes('text while down'));
  });

  test('channels: join, presence, broadcast, binary reply, and a rejoin after a server restart', {
    skip: needs(hasExample('channels'), `${exampleBinary('channels')} is not built`),
  }, async () => {
    channelsPort = await freePort();
    let server = await startExample('channels', channelsPort);
    servers.push(server);
    await page.evaluate(() => {
      const { Socket, Presence } = window.client;
      // A relative endpoint: resolved against the page, as in an app.
      const socket = new Socket('/socket', { backoff: { baseMs: 50, maxMs: 400 }, rejoin: { baseMs: 50, maxMs: 400 } });
      (window.cleanup ??= []).push(() => socket.disconnect());
      socket.connect();
      const channel = socket.channel('room:browser', { user: 'chromium' });
      const presence = new Presence(channel);
      window.chat = { socket, channel, presence, joins: 0, messages: [], users: [] };
      presence.onSync(() => { window.chat.users = presence.list((user) => user); });
      channel.on('new_msg', (message) => window.chat.messages.push(message));
      channel.join().receive('ok', () => { window.chat.joins += 1; });
    });
    await page.waitForFunction(() => window.chat.joins === 1 && window.chat.users.join() === 'chromium');
    const replies = await page.evaluate(async () => {
      const { channel } = window.chat;
      const json = await channel.push('new_msg', { body: 'hello from the page' });
      const binary = await channel.push('ping', new Uint8Array([7, 8, 9]));
      return { json, binary: [...new Uint8Array(binary)] };
    });
    assert.deepEqual(replies, { json: {}, binary: [7, 8, 9] });
    await page.waitForFunction(() => window.chat.messages.some((m) => m.user === 'chromium' && m.body === 'hello from the page'));

    await server.stop('SIGKILL');
    await page.waitForFunction(() => window.chat.channel.state === 'errored');
    server = await startExample('channels', channelsPort);
    servers.push(server);
    await page.waitForFunction(() => window.chat.joins === 2 && window.chat.channel.state === 'joined');
    await page.waitForFunction(() => window.chat.users.join() === 'chromium');
    await page.evaluate(() => window.chat.channel.push('new_msg', { body: 'after restart' }));
    await page.waitForFunction(() => window.chat.messages.some((m) => m.body === 'after restart'));
  });
  test('channels auth: the token in Sec-WebSocket-Protocol, a refusal (3000) not retried, an expiry (4401) renewed', {
    skip: needs(hasExample('channels'), `${exampleBinary('channels')} is not built`),
  }, async () => {
    channelsPort = await freePort();
    servers.push(await startExample('channels', channelsPort, ['--token', 's3cret']));
    await page.evaluate(() => {
      const { Socket } = window.client;
      const fast = { backoff: { baseMs: 50, maxMs: 400 }, rejoin: { baseMs: 50, maxMs: 400 } };
      const auth = { events: [], contexts: [], joins: 0 };
      window.auth = auth;
      const refused = new Socket('/socket', { ...fast, authToken: 'wrong' });
      (window.cleanup ??= []).push(() => refused.disconnect());
      refused.on('unauthorized', ({ code, reason }) => auth.events.push(`unauthorized ${code} ${reason}`));
      refused.on('reconnecting', () => auth.events.push('reconnecting'));
      refused.connect();

      const socket = new Socket('/socket', {
        ...fast,
        authToken: async (context) => {
          auth.contexts.push(context.expired);
          return `s3cret.${Date.now() + (context.expired ? 60_000 : 500)}`;
        },
      });
      window.cleanup.push(() => socket.disconnect());
      auth.socket = socket;
      socket.on('close', ({ code }) => auth.events.push(`close ${code}`));
      socket.connect();
      socket.channel('room:auth', { user: 'chromium' }).join().receive('ok', () => { auth.joins += 1; });
    });
    await page.waitForFunction(() => window.auth.events.includes('unauthorized 3000 invalid token'));
    await page.waitForFunction(() => window.auth.joins === 2, null, { timeout: 5_000 });
    // The browser accepted the 101 only because the server selected `phoenix`.
    assert.equal(await page.evaluate(() => window.auth.socket.webSocket.protocol), 'phoenix');
    await new Promise((resolve) => setTimeout(resolve, 300));
    const { events, contexts } = await page.evaluate(() => ({ events: window.auth.events, contexts: window.auth.contexts }));
    assert.deepEqual(events, ['unauthorized 3000 invalid token', 'close 4401']);
    assert.deepEqual(contexts, [false, true]);
  });

  // Streams (docs/streams.md): the page's channel tracks its position and recovers on
  // the rejoin after its server restarts.
  const streamsSkip = needs(hasExample('channels'), `${exampleBinary('channels')} is not built`)
    || needs(hasRedis(), 'redis-server is not installed');

  /** The page joins `topic` as `user`, recording the broadcasts and recoveries. */
  async function joinInPage(topic) {
    await page.evaluate((topic) => {
      const { Socket } = window.client;
      window.stream?.socket.disconnect();
      // Every new_msg body as the server sent it, before the client drops duplicates.
      const raw = [];
      class Recording extends WebSocket {
        constructor(...args) {
          super(...args);
          this.addEventListener('message', ({ data }) => {
            const message = typeof data === 'string' ? JSON.parse(data) : null;
            if (message?.[3] === 'new_msg') raw.push(message[4].body);
          });
        }
      }
      const socket = new Socket('/socket', {
        WebSocket: Recording,
        backoff: { baseMs: 50, maxMs: 400 },
        rejoin: { baseMs: 50, maxMs: 400 },
      });
      (window.cleanup ??= []).push(() => socket.disconnect());
      socket.connect();
      const channel = socket.channel(topic, { user: 'page' });
      const stream = { socket, channel, joins: 0, bodies: [], raw, recoveries: [] };
      window.stream = stream;
      channel.on('new_msg', ({ body }) => stream.bodies.push(body));
      channel.onRecovery(({ recovered, position }) => stream.recoveries.push({ recovered, position }));
      channel.join().receive('ok', () => { stream.joins += 1; });
    }, topic);
    await page.waitForFunction(() => window.stream.joins === 1 && window.stream.recoveries.length === 1);
  }
  const pageStream = () => page.evaluate(() => ({
    bodies: window.stream.bodies,
    raw: window.stream.raw,
    recoveries: window.stream.recoveries,
    position: window.stream.channel.position,
    state: window.stream.channel.state,
  }));

  test('streams on Redis: every message once and in order across a restart, published elsewhere meanwhile', {
    skip: streamsSkip,
  }, async () => {
    const redis = await startRedis();
    try {
      const args = ['--history', 'room:*', '--redis', redis.url, '--prefix', `streams${Date.now()}`];
      channelsPort = await freePort();
      let server = await startExample('channels', channelsPort, args);
      servers.push(server);
      const other = await startExample('channels', await freePort(), args);
      servers.push(other);
      // The publisher: this client in Node, on the other server.
      const publisher = new Socket(`ws://127.0.0.1:${other.port}/socket`, { backoff: { baseMs: 50, maxMs: 400 } });
      publisher.connect();
      try {
        const publish = publisher.channel('room:stream', { user: 'publisher' });
        await publish.join();
        const send = async (from, to) => {
          for (let n = from; n <= to; n++) await publish.push('new_msg', { body: String(n) });
        };
        await joinInPage('room:stream');
        await send(1, 5);
        await page.waitForFunction(() => window.stream.bodies.length === 5);

        await server.stop('SIGKILL');
        await page.waitForFunction(() => window.stream.channel.state === 'errored');
        await send(6, 10);
        // Published while the server starts again and the page rejoins.
        const restarted = startExample('channels', channelsPort, args);
        await send(11, 15);
        server = await restarted;
        servers.push(server);
        await page.waitForFunction(() => window.stream.joins === 2);
        await send(16, 21);
        // 21 is the last: a duplicate the server sent would have come before it.
        await page.waitForFunction(() => window.stream.bodies.includes('21'));
        const { bodies, raw, recoveries, position } = await pageStream();
        const expected = Array.from({ length: 21 }, (_, i) => String(i + 1));
        assert.deepEqual(bodies, expected);
        assert.deepEqual(raw, expected, 'the server sent each once: nothing for the client to drop');
        assert.deepEqual(recoveries.map((r) => r.recovered), [false, true]);
        assert.equal(position.offset, 21, 'one offset per message of the topic');
        assert.equal(position.epoch, recoveries[0].position.epoch, 'the history survived the server in Redis');
      } finally {
        publisher.disconnect();
      }
    } finally {
      await redis.stop();
    }
  });

  test('streams in memory: a restart is a new epoch, and the page is told it did not recover', {
    skip: needs(hasExample('channels'), `${exampleBinary('channels')} is not built`),
  }, async () => {
    const args = ['--history', 'room:*'];
    channelsPort = await freePort();
    let server = await startExample('channels', channelsPort, args);
    servers.push(server);
    await joinInPage('room:memory');
    await page.evaluate(async () => {
      await window.stream.channel.push('new_msg', { body: 'before' });
    });
    await page.waitForFunction(() => window.stream.bodies.length === 1);
    const before = await pageStream();
    assert.equal(before.position.offset, 1);

    await server.stop('SIGKILL');
    await page.waitForFunction(() => window.stream.channel.state === 'errored');
    server = await startExample('channels', channelsPort, args);
    servers.push(server);
    await page.waitForFunction(() => window.stream.joins === 2);
    await page.evaluate(async () => {
      await window.stream.channel.push('new_msg', { body: 'after' });
    });
    await page.waitForFunction(() => window.stream.bodies.length === 2);
    const after = await pageStream();
    assert.deepEqual(after.bodies, ['before', 'after']);
    assert.deepEqual(after.recoveries.map((r) => r.recovered), [false, false]);
    assert.notEqual(after.recoveries[1].position.epoch, before.position.epoch, 'a new epoch');
    assert.deepEqual(after.position, { offset: 1, epoch: after.recoveries[1].position.epoch });
  });
});
