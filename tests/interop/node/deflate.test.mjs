// permessage-deflate against Node's `ws` with perMessageDeflate on, both directions:
// the `ws` client against our echo example (`--deflate` in each mode), and our
// `echo_client` example against a `ws` echo server. Messages from 0 bytes to 16 MiB,
// text and binary, must come back unchanged over a connection that negotiated
// permessage-deflate.
//
// Environment: SWITCHBOARD_ECHO is the echo example's binary; the client is
// `echo_client` beside it (or SWITCHBOARD_ECHO_CLIENT).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createConnection } from 'node:net';
import path from 'node:path';
import { WebSocket, WebSocketServer } from 'ws';

const SIZES = [0, 1, 125, 126, 65535, 65536, 1 << 20, 16 << 20];
const MAX = 64 << 20;
const ECHO = process.env.SWITCHBOARD_ECHO;
const CLIENT = process.env.SWITCHBOARD_ECHO_CLIENT ?? (ECHO && path.join(path.dirname(ECHO), 'echo_client'));
const skip = ECHO ? false : 'SWITCHBOARD_ECHO (the echo example binary) is not set';

function textOf(n) {
  const raw = Buffer.from('ünïcödé, ascii; '.repeat(Math.ceil(n / 8) + 1)).subarray(0, n);
  const text = raw.toString('utf8').replace(/\uFFFD+$/, '');
  return text + 'x'.repeat(n - Buffer.byteLength(text));
}

function* payloads() {
  for (const n of SIZES) {
    yield textOf(n);
    const bin = Buffer.alloc(n);
    for (let i = 0; i < n; i++) bin[i] = i % 13;
    yield bin;
  }
}

async function freePort() {
  const server = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await once(server, 'listening');
  const { port } = server.address();
  server.close();
  return port;
}

async function waitForPort(port, child) {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const socket = createConnection({ port, host: '127.0.0.1' }, () => { socket.destroy(); resolve(true); });
      socket.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline || child.exitCode !== null) throw new Error('echo server did not start');
    await new Promise((r) => setTimeout(r, 50));
  }
}

for (const mode of ['dedicated', 'shared']) {
  test(`ws client against our ${mode} server`, { skip, timeout: 120_000 }, async () => {
    const port = await freePort();
    const server = spawn(ECHO, ['--addr', `127.0.0.1:${port}`, '--deflate', mode, '--threshold', '0'], { stdio: 'ignore' });
    try {
      await waitForPort(port, server);
      const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: true, maxPayload: MAX });
      let answer = '';
      ws.on('upgrade', (response) => { answer = response.headers['sec-websocket-extensions'] ?? ''; });
      await once(ws, 'open');
      assert.equal(ws.extensions, 'permessage-deflate');
      if (mode === 'shared') assert.match(answer, /server_no_context_takeover/);
      for (const payload of payloads()) {
        const binary = typeof payload !== 'string';
        ws.send(payload, { binary });
        const [data, isBinary] = await once(ws, 'message');
        assert.equal(isBinary, binary);
        if (binary) assert.ok(Buffer.compare(data, payload) === 0, `binary ${payload.length}`);
        else assert.ok(data.toString('utf8') === payload, `text ${payload.length}`);
      }
      ws.close(1000, 'done');
      const [code] = await once(ws, 'close');
      assert.equal(code, 1000);
    } finally {
      server.kill();
    }
  });

  test(`our ${mode} client against a ws server`, { skip, timeout: 120_000 }, async () => {
    const wss = new WebSocketServer({
      port: 0,
      host: '127.0.0.1',
      maxPayload: MAX,
      perMessageDeflate: { threshold: 0 },
    });
    await once(wss, 'listening');
    let negotiated = null;
    wss.on('connection', (ws) => {
      negotiated = ws.extensions;
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    });
    try {
      const client = spawn(CLIENT, [`ws://127.0.0.1:${wss.address().port}/`, '--deflate', mode, '--sizes', SIZES.join(',')]);
      let out = '';
      let err = '';
      client.stdout.on('data', (d) => { out += d; });
      client.stderr.on('data', (d) => { err += d; });
      const [code] = await once(client, 'exit');
      assert.equal(code, 0, `${out}\n${err}`);
      assert.match(out.split('\n')[0], /^permessage-deflate/);
      assert.match(negotiated, /^permessage-deflate/);
    } finally {
      wss.close();
    }
  });
}
