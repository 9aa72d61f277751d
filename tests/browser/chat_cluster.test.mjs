// The chat example as three processes on one Redis (`--redis`), in headless Chromium:
// three people, each on a different process, see the same list of who is online and
// each other's messages; when one process is killed (SIGKILL: no goodbye) its person
// leaves the others' lists within the hub's node timeout; when it comes back, its
// person's page reconnects to it and every list is whole again, with no ghost.
//
//   cargo build --release --examples -p switchboard --features tls
//   tests/browser/setup.sh
//   SWITCHBOARD_CHAT=target/release/examples/chat node --test tests/browser/
//
// The processes use the machine's Redis (SWITCHBOARD_REDIS, default
// redis://127.0.0.1:6379/) under a prefix of their own, so nothing else on it is
// disturbed and nothing of an earlier run is seen.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';
import {
  CHAT, CHROMIUM, CHROMIUM_ARGS, ChatServer, freePort, message, openPage, send, status,
  waitForMembers, within,
} from './harness.mjs';

const REDIS = process.env.SWITCHBOARD_REDIS || 'redis://127.0.0.1:6379/';
const ROOM = 'cluster-test';
/** The chat's hubs take a silent one for dead after 5 s (`HubConfig::node_timeout`). */
const DEAD_NODE_MS = 5_000;

describe('chat page on three processes over Redis', { timeout: 180_000 }, () => {
  const prefix = `chat-cluster-${randomBytes(6).toString('hex')}`;
  const servers = [];
  const people = [];
  const pageErrors = [];
  let browser;
  const killAll = () => servers.forEach((server) => server.proc?.kill('SIGKILL'));
  process.on('exit', killAll);

  const dump = (error) => {
    for (const [i, server] of servers.entries()) error.message += `\n--- chat ${i} ---\n${server.output}`;
    throw error;
  };

  before(async () => {
    assert.ok(existsSync(CHAT), `no chat binary at ${CHAT}`);
    assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: run tests/browser/setup.sh`);
    for (let i = 0; i < 3; i += 1) {
      const server = new ChatServer(CHAT, await freePort(), ['--redis', REDIS, '--redis-prefix', prefix]);
      servers.push(server);
      await server.start();
    }
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 30_000 });
  });

  after(async () => {
    await within(browser?.close(), 10_000).catch(() => {});
    for (const server of servers) await server.kill();
    process.off('exit', killAll);
  });

  it('three people on three processes see the same list and each other', async () => {
    try {
      for (const [i, name] of ['alice', 'bob', 'carol'].entries()) {
        const person = await openPage(browser, name, `${servers[i].url}/?room=${ROOM}&name=${name}`, pageErrors);
        await status(person.page, 'online').waitFor();
        people.push(person);
      }
      for (const { page } of people) await waitForMembers(page, ['alice', 'bob', 'carol']);
      await send(people[0].page, 'hello from process 0');
      await message(people[1].page, 'alice', 'hello from process 0').waitFor();
      await message(people[2].page, 'alice', 'hello from process 0').waitFor();
      await send(people[2].page, 'carol on process 2');
      await message(people[0].page, 'carol', 'carol on process 2').waitFor();
      assert.equal(await message(people[1].page, 'carol', 'carol on process 2').count(), 1);
    } catch (error) {
      dump(error);
    }
  });

  it("a killed process's person leaves every list within the node timeout", async (t) => {
    try {
      const killed = Date.now();
      await servers[2].kill('SIGKILL');
      await status(people[2].page, 'offline').waitFor();
      for (const { page } of people.slice(0, 2)) {
        await waitForMembers(page, ['alice', 'bob'], DEAD_NODE_MS + 10_000);
      }
      t.diagnostic(`carol left both lists ${((Date.now() - killed) / 1000).toFixed(1)} s after the kill`);
    } catch (error) {
      dump(error);
    }
  });

  it('the process comes back, its person reconnects, and the lists are whole with no ghost', async () => {
    try {
      await servers[2].start();
      await status(people[2].page, 'online').waitFor({ timeout: 30_000 });
      for (const { page } of people) await waitForMembers(page, ['alice', 'bob', 'carol']);
      await send(people[1].page, 'welcome back carol');
      await message(people[2].page, 'bob', 'welcome back carol').waitFor();
      assert.deepEqual(pageErrors, []);
    } catch (error) {
      dump(error);
    }
  });
});
