// The chat example over TLS in headless Chromium: the server starts with
// `--tls-cert/--tls-key` (a self-signed certificate made here with the openssl command
// the README gives), two pages open it over https://, their sockets go over wss://,
// and a message goes each way.
//
//   cargo build --release --features tls --examples -p switchboard
//   tests/browser/setup.sh
//   SWITCHBOARD_CHAT=target/release/examples/chat node --test tests/browser/
//
// Chromium is told to accept the self-signed certificate (`ignoreHTTPSErrors`): what is
// tested is that the server speaks TLS to a browser, page and socket both, not that a
// browser trusts a certificate made a second ago.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';
import { CHAT, CHROMIUM, CHROMIUM_ARGS, STEP_MS, freePort, message } from './harness.mjs';

const ROOM = 'tls-test';

/** A self-signed certificate for localhost and 127.0.0.1, as the README makes one. */
function selfSigned(dir) {
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
  ], { stdio: 'pipe' });
  return { cert, key };
}

/** Whether the TLS port answers a plaintext request with HTTP: it must not. */
async function answersPlaintext(port) {
  try {
    const response = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(3_000) });
    return response.ok;
  } catch {
    return false;
  }
}

describe('chat page over https and wss in headless Chromium', { timeout: 120_000 }, () => {
  let dir, proc, output = '', port, browser;
  const pages = [];
  const sockets = [];
  const pageErrors = [];

  before(async () => {
    assert.ok(existsSync(CHAT), `no chat binary at ${CHAT}: build it with --features tls or set SWITCHBOARD_CHAT`);
    assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: run tests/browser/setup.sh`);
    dir = mkdtempSync(path.join(os.tmpdir(), 'switchboard-tls-'));
    const { cert, key } = selfSigned(dir);
    port = await freePort();
    proc = spawn(CHAT, ['--addr', `127.0.0.1:${port}`, '--tls-cert', cert, '--tls-key', key], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    for (const stream of [proc.stdout, proc.stderr]) stream.on('data', (chunk) => (output += chunk));
    const deadline = Date.now() + STEP_MS;
    while (!output.includes('https://')) {
      assert.ok(proc.exitCode === null, `chat exited: ${output}`);
      assert.ok(Date.now() < deadline, `chat did not start: ${output}`);
      await sleep(50);
    }
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 30_000 });
  });

  after(async () => {
    await browser?.close().catch(() => {});
    proc?.kill('SIGKILL');
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  async function open(name) {
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await context.newPage();
    page.setDefaultTimeout(STEP_MS);
    page.on('pageerror', (error) => pageErrors.push(`${name}: ${error.message}`));
    page.on('websocket', (ws) => sockets.push(ws.url()));
    const response = await page.goto(`https://localhost:${port}/?room=${ROOM}&name=${name}`);
    assert.equal(response.status(), 200);
    const security = await response.securityDetails();
    assert.ok(security, 'the page did not come over TLS');
    assert.match(security.protocol, /^TLS 1\.[23]$/);
    assert.equal(security.subjectName, 'localhost');
    await page.locator('#status[data-state="online"]').waitFor();
    pages.push(page);
    return page;
  }

  it('serves no plaintext on its TLS port', async () => {
    assert.equal(await answersPlaintext(port), false);
  });

  it('two pages over https exchange messages over wss', async () => {
    const alice = await open('alice');
    const bob = await open('bob');
    await bob.locator('#members li[data-user="alice"]').waitFor();

    await alice.locator('#input').fill('hello over tls');
    await alice.locator('#send').click();
    await message(bob, 'alice', 'hello over tls').waitFor();
    await bob.locator('#input').fill('hi alice, wss here');
    await bob.locator('#send').click();
    await message(alice, 'bob', 'hi alice, wss here').waitFor();

    assert.ok(sockets.length >= 2, `sockets opened: ${sockets}`);
    for (const url of sockets) assert.match(url, new RegExp(`^wss://localhost:${port}/socket/`));
    assert.deepEqual(pageErrors, []);
  });
});
