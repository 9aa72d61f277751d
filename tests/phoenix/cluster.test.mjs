// The official phoenix.js client's `Presence` against three channels example servers
// joined over Redis (the machine's, 127.0.0.1:6379, under a prefix of this run's
// own): every client lists the same users whichever server it is on, and a server
// killed with SIGKILL leaves every list within its --node-timeout.
//
//   cargo build --release --examples -p switchboard
//   (cd tests/phoenix && npm ci)
//   SWITCHBOARD_CHANNELS=target/release/examples/channels node --test tests/phoenix/

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Presence, Socket } from "phoenix";
import { WebSocket } from "ws";

const here = path.dirname(fileURLToPath(import.meta.url));
const BINARY =
  process.env.SWITCHBOARD_CHANNELS ??
  path.join(here, "..", "..", "target", "release", "examples", "channels");
const REDIS = process.env.SWITCHBOARD_REDIS ?? "redis://127.0.0.1:6379/";
const STEP_MS = 10_000;
/** The servers' --node-timeout: how long a killed server's users may stay listed. */
const NODE_TIMEOUT_MS = 1_000;

const running = new Set();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.unref();
    probe.on("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** Starts one server of the cluster `prefix`; resolves with it once it listens. */
async function startServer(prefix) {
  assert.ok(existsSync(BINARY), `channels example not found at ${BINARY}`);
  const port = await freePort();
  const args = ["--addr", `127.0.0.1:${port}`, "--redis", REDIS, "--prefix", prefix];
  args.push("--node-timeout", String(NODE_TIMEOUT_MS));
  const child = spawn(BINARY, args, { stdio: ["ignore", "pipe", "inherit"] });
  running.add(child);
  child.once("exit", () => running.delete(child));
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("server did not start")), STEP_MS);
    let out = "";
    child.stdout.on("data", (chunk) => {
      out += chunk;
      if (out.includes("channels server on")) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening`));
    });
  });
  return { child, url: `ws://127.0.0.1:${port}/socket` };
}

function killServer(server) {
  if (server.child.exitCode !== null || server.child.signalCode !== null) {
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    server.child.once("exit", resolve);
    server.child.kill("SIGKILL");
  });
}

async function until(what, predicate, limitMs = STEP_MS) {
  const deadline = Date.now() + limitMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Three servers of one cluster and a way to join a user on one of them. */
async function withCluster(body) {
  const prefix = `sbtest:phoenix:${process.pid}:${Date.now()}`;
  const servers = [];
  const sockets = [];
  try {
    for (let i = 0; i < 3; i++) servers.push(await startServer(prefix));
    // The servers find each other by their heartbeats (a fifth of node_timeout).
    await new Promise((resolve) => setTimeout(resolve, NODE_TIMEOUT_MS / 2));
    const join = async (server, user) => {
      const socket = new Socket(server.url, { transport: WebSocket, timeout: 5_000 });
      sockets.push(socket);
      socket.connect();
      const channel = socket.channel("room:cluster", { user });
      const presence = new Presence(channel);
      const member = { user, socket, presence, listed: "", leaves: {} };
      presence.onSync(() => {
        member.listed = presence
          .list((key, { metas }) => `${key}:${metas.length}`)
          .sort()
          .join(",");
      });
      presence.onLeave((key, _current, left) => {
        for (const meta of left.metas) {
          member.leaves[meta.phx_ref] = (member.leaves[meta.phx_ref] ?? 0) + 1;
        }
      });
      await new Promise((resolve, reject) => {
        channel.join().receive("ok", resolve).receive("error", reject).receive("timeout", reject);
      });
      return member;
    };
    await body({ servers, join });
  } finally {
    for (const socket of sockets) socket.disconnect();
    await Promise.all(servers.map(killServer));
  }
}

test("presence lists the same users on every server of a cluster", async () => {
  await withCluster(async ({ servers, join }) => {
    const members = [
      await join(servers[0], "ann"),
      await join(servers[1], "bob"),
      await join(servers[2], "cid"),
      // A second tab of ann's, on another server: one key, two metas.
      await join(servers[2], "ann"),
    ];
    const everyone = "ann:2,bob:1,cid:1";
    await until("every client lists everyone", () => members.every((m) => m.listed === everyone));
    // bob leaves: every other client sees his leave once.
    members[1].socket.disconnect();
    const rest = [members[0], members[2], members[3]];
    await until("bob's leave reaches every server", () =>
      rest.every((m) => m.listed === "ann:2,cid:1"),
    );
    for (const member of rest) {
      assert.deepEqual(Object.values(member.leaves), [1], `${member.user}'s leaves`);
    }
  });
});

test("a server killed with SIGKILL leaves every list within its node timeout", async () => {
  await withCluster(async ({ servers, join }) => {
    const members = [
      await join(servers[0], "ann"),
      await join(servers[1], "bob"),
      await join(servers[2], "cid"),
      await join(servers[2], "dan"),
    ];
    await until("every client lists everyone", () =>
      members.every((m) => m.listed === "ann:1,bob:1,cid:1,dan:1"),
    );
    const killed = Date.now();
    await killServer(servers[2]);
    const [ann, bob] = members;
    await until("the killed server's users are gone", () =>
      [ann, bob].every((m) => m.listed === "ann:1,bob:1"),
    );
    const took = Date.now() - killed;
    console.log(`presence of a SIGKILLed server left every list in ${took} ms`);
    // node_timeout, plus a heartbeat to notice, plus slack for a loaded machine.
    assert.ok(took < NODE_TIMEOUT_MS * 1.2 + 500, `took ${took} ms`);
    for (const member of [ann, bob]) {
      assert.deepEqual(Object.values(member.leaves), [1, 1], `${member.user}'s leaves`);
    }
  });
});
