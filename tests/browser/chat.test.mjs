// The chat example's page in headless Chromium, as two people use it. The page speaks
// Phoenix channels through our client (clients/js, served at /client/ by the chat
// server), with presence for "who's online": both join a room and see each other, a
// message goes each way, the server crashes and comes back on the same port while the
// pages stay open (the client must reconnect and rejoin by itself), and one of them
// leaves.
//
//   cargo build --release --examples -p switchboard --features tls
//   tests/browser/setup.sh
//   SWITCHBOARD_CHAT=target/release/examples/chat node --test tests/browser/
//
// It builds nothing: the server binary comes from SWITCHBOARD_CHAT (default: the release
// build in target/). Chromium is Debian's (/usr/bin/chromium, SWITCHBOARD_CHROMIUM to
// override). Screenshots go to tests/browser/screenshots/, and on failure
// failure-*.png shows each page as it was.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import {
  CHAT, CHROMIUM, CHROMIUM_ARGS, ChatServer, STEP_MS, freePort, member, members, message, notice,
  openPage, status, waitForMembers, within, send as typeAndSend,
} from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const SHOTS = path.join(here, 'screenshots');
const ROOM = 'browser-test';

/** Waiting for both pages to come back: the page's backoff is capped at 10 s (with jitter). */
const RECONNECT_MS = 30_000;

async function send(page, text) {
  await typeAndSend(page, text);
  assert.equal(await page.locator('#input').inputValue(), '', 'the input is cleared after sending');
}

async function screenshot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), timeout: STEP_MS });
}

describe('chat page in headless Chromium', { timeout: 180_000 }, () => {
  let server, browser, alice, bob;
  const pageErrors = [];
  // The steps build on each other: after a failure the rest are skipped, not failed again.
  let failed = null;

  const killServer = () => server?.proc?.kill('SIGKILL');
  process.on('exit', killServer);

  function step(name, fn, timeout = 60_000) {
    it(name, { timeout }, async (t) => {
      if (failed) return t.skip(`an earlier step failed: ${failed}`);
      failed = name;
      try {
        await fn(t);
        failed = null;
      } catch (error) {
        for (const person of [alice, bob]) {
          if (person && !person.page.isClosed()) {
            const file = `failure-${name.replace(/\W+/g, '-')}-${person.who}`;
            await screenshot(person.page, file).catch(() => {});
          }
        }
        if (server?.output) error.message += `\n--- chat server output ---\n${server.output}`;
        throw error;
      }
    });
  }

  before(async () => {
    assert.ok(
      existsSync(CHAT),
      `no chat binary at ${CHAT}: run \`cargo build --release --examples -p switchboard\` or set SWITCHBOARD_CHAT`,
    );
    assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: run tests/browser/setup.sh`);
    mkdirSync(SHOTS, { recursive: true });
    server = new ChatServer(CHAT, await freePort());
    await server.start();
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 30_000 });
  });

  after(async () => {
    await within(browser?.close(), 10_000).catch(() => {});
    await server?.kill();
    process.off('exit', killServer);
  });

  step('the server serves the client modules the page imports, and nothing else', async () => {
    const index = await fetch(`${server.url}/client/index.js`);
    assert.equal(index.status, 200);
    assert.match(index.headers.get('content-type'), /^text\/javascript/);
    assert.match(await index.text(), /export \{ Presence \} from '.\/presence.js'/);
    // Every module of the client, or an import of the page fails (the server lists them).
    const modules = readdirSync(path.join(here, '..', '..', 'clients', 'js', 'src')).filter((name) => name.endsWith('.js'));
    for (const name of modules) {
      assert.equal((await fetch(`${server.url}/client/${name}`)).status, 200, `/client/${name}`);
    }
    for (const name of ['nope.js', 'index.d.ts', '..%2Fmain.rs', '']) {
      const response = await fetch(`${server.url}/client/${name}`);
      assert.equal(response.status, 404, `/client/${name}`);
    }
  });

  step('two people join the same room and see each other', async () => {
    // Alice comes by a shared link with her name in it.
    alice = await openPage(browser, 'alice', `${server.url}/?room=${ROOM}&name=alice`, pageErrors);
    await status(alice.page, 'online').waitFor();
    await notice(alice.page, `You joined #${ROOM} as alice`).waitFor();
    assert.equal(await alice.page.locator('#room').inputValue(), ROOM);

    // Bob opens the room and types his name into the name field.
    bob = await openPage(browser, 'bob', `${server.url}/?room=${ROOM}`, pageErrors);
    await status(bob.page, 'online').waitFor();
    await bob.page.locator('#name').fill('bob');
    await bob.page.locator('#name').press('Enter');
    await notice(bob.page, `You joined #${ROOM} as bob`).waitFor();
    await status(bob.page, 'online').waitFor();

    await notice(alice.page, 'bob joined').waitFor();
    await member(alice.page, 'bob').waitFor();
    await member(bob.page, 'alice').waitFor();
    // Bob's first connection (before he typed his name) is gone from Alice's list.
    await alice.page.waitForFunction(() => document.querySelectorAll('#members li').length === 2);
    assert.deepEqual(await members(alice.page), ['alice', 'bob']);
    // Presence, on both pages.
    await waitForMembers(bob.page, ['alice', 'bob']);
    assert.match(await member(bob.page, 'bob').textContent(), /\(you\)/);
    await screenshot(bob.page, 'joined-bob');
  });

  step('a message sent with the Send button reaches the other page', async () => {
    await send(alice.page, 'hello from alice');
    await message(bob.page, 'alice', 'hello from alice').waitFor();
    await message(alice.page, 'alice', 'hello from alice').waitFor();
    assert.ok(
      await message(alice.page, 'alice', 'hello from alice').evaluate((el) => el.classList.contains('mine')),
      "alice's page shows the message as her own",
    );
    assert.ok(
      !(await message(bob.page, 'alice', 'hello from alice').evaluate((el) => el.classList.contains('mine'))),
      "bob's page shows it as someone else's",
    );

    await send(bob.page, 'hi alice, bob here');
    await message(alice.page, 'bob', 'hi alice, bob here').waitFor();
    await message(bob.page, 'bob', 'hi alice, bob here').waitFor();
    await screenshot(alice.page, 'exchange-alice');
    await screenshot(bob.page, 'exchange-bob');
  });

  step(
    'both pages reconnect by themselves when the server restarts',
    async (t) => {
      await server.kill('SIGKILL');
      await status(alice.page, 'offline').waitFor();
      await status(bob.page, 'offline').waitFor();
      assert.ok(await alice.page.locator('#send').isDisabled(), 'Send is disabled while offline');
      await notice(alice.page, 'Connection lost').waitFor();

      const down = Date.now();
      await server.start();
      for (const { page } of [alice, bob]) {
        await status(page, 'online').waitFor({ timeout: RECONNECT_MS });
        await notice(page, `Reconnected to #${ROOM}`).waitFor();
      }
      t.diagnostic(`both pages online ${((Date.now() - down) / 1000).toFixed(1)}s after the restart began`);
      // Presence is rebuilt by the rejoins: each page lists both again.
      await waitForMembers(alice.page, ['alice', 'bob']);
      await waitForMembers(bob.page, ['alice', 'bob']);
      await screenshot(alice.page, 'reconnected-alice');
      await screenshot(bob.page, 'reconnected-bob');
    },
    90_000,
  );

  step('messages flow again after the restart', async () => {
    await send(bob.page, 'still here after the restart');
    await message(alice.page, 'bob', 'still here after the restart').waitFor();
    await send(alice.page, 'me too');
    await message(bob.page, 'alice', 'me too').waitFor();
    // Each message arrives once: the page holds one socket, not one per reconnect.
    assert.equal(await message(alice.page, 'alice', 'me too').count(), 1);
    assert.equal(await message(bob.page, 'alice', 'me too').count(), 1);
  });

  step('switching rooms moves the page to the new room and back', async () => {
    await bob.page.locator('#room').selectOption('rust');
    await notice(bob.page, 'You joined #rust as bob').waitFor();
    await notice(alice.page, 'bob left').waitFor();
    await member(alice.page, 'bob').waitFor({ state: 'detached' });
    assert.equal(await bob.page.locator('#members li').count(), 1, 'bob is alone in #rust');

    // Alice's message stays in her room: bob's own message, sent after it, arrives while
    // hers does not.
    await send(alice.page, 'only for the browser-test room');
    await message(alice.page, 'alice', 'only for the browser-test room').waitFor();
    await send(bob.page, 'anyone in rust?');
    await message(bob.page, 'bob', 'anyone in rust?').waitFor();
    assert.equal(await message(bob.page, 'alice', 'only for the browser-test room').count(), 0);

    await bob.page.locator('#room').selectOption(ROOM);
    await notice(bob.page, `You joined #${ROOM} as bob`).waitFor();
    await member(alice.page, 'bob').waitFor();
    // One socket per page: a switch must not leave the old connection delivering too.
    await send(alice.page, 'welcome back');
    await message(bob.page, 'alice', 'welcome back').waitFor();
    await send(bob.page, 'thanks');
    await message(alice.page, 'bob', 'thanks').waitFor();
    assert.equal(await message(bob.page, 'alice', 'welcome back').count(), 1);
    assert.equal(await message(alice.page, 'bob', 'thanks').count(), 1);
    assert.equal(await bob.page.locator('#members li').count(), 2);
  });

  step('closing a page tells the others that person left', async () => {
    const before = await notice(alice.page, 'bob left').count();
    await bob.context.close();
    await alice.page.waitForFunction(
      (n) => [...document.querySelectorAll('#log [data-kind="notice"]')].filter((el) => el.textContent === 'bob left').length > n,
      before,
    );
    await waitForMembers(alice.page, ['alice']);
    await screenshot(alice.page, 'left-alice');
  });

  step('no page threw an uncaught error', async () => {
    assert.deepEqual(pageErrors, []);
  });
});
