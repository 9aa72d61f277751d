// The official phoenix.js client (npm `phoenix`, pinned in package.json) against the
// channels example server (crates/switchboard/examples/channels.rs).
//
//   cargo build --release --examples -p switchboard
//   (cd tests/phoenix && npm ci)
//   SWITCHBOARD_CHANNELS=target/release/examples/channels node --test tests/phoenix/
//
// Node 20 has no global WebSocket (only behind --experimental-websocket), so every
// Socket gets the `ws` package as its `transport`, which phoenix.js documents as the
// way to supply one. Each test starts its own server on a free port and kills it when
// it ends, passed or failed.

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
const STEP_MS = 10_000;

// Servers still running when this process exits (a crash, a cancelled run) are
// killed too, so that none outlives the tests.
const running = new Set();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/** A free port on the loopback interface. */
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

/** Starts the example server on `port` with more `args`; resolves once it listens. */
function startServer(port, args = []) {
  assert.ok(
    existsSync(BINARY),
    `channels example not found at ${BINARY}: build it with ` +
      "`cargo build --release --examples -p switchboard` or set SWITCHBOARD_CHANNELS",
  );
  const child = spawn(BINARY, ["--addr", `127.0.0.1:${port}`, ...args], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  running.add(child);
  child.once("exit", () => running.delete(child));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error("server did not start"));
    }, STEP_MS);
    let out = "";
    child.stdout.on("data", (chunk) => {
      out += chunk;
      if (out.includes("channels server on")) {
        clearTimeout(timer);
        resolve(child);
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening`));
    });
  });
}

/** Stops a server and waits for it to exit (SIGTERM: graceful, sockets get 1001). */
function stopServer(child, signal = "SIGTERM") {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const force = setTimeout(() => child.kill("SIGKILL"), STEP_MS);
    child.once("exit", () => {
      clearTimeout(force);
      resolve();
    });
    child.kill(signal);
  });
}

/**
 * Runs `body` with a fresh server and a socket factory; the sockets are disconnected
 * and the server stopped afterwards, whatever the outcome.
 */
async function withServer(body, args = []) {
  const port = await freePort();
  const servers = [await startServer(port, args)];
  const sockets = [];
  const ctx = {
    port,
    url: `ws://127.0.0.1:${port}/socket`,
    socket(params = {}, opts = {}) {
      const socket = new Socket(ctx.url, {
        transport: WebSocket,
        params,
        timeout: 5_000,
        reconnectAfterMs: () => 50,
        rejoinAfterMs: () => 50,
        ...opts,
      });
      sockets.push(socket);
      socket.connect();
      return socket;
    },
    async restart() {
      await stopServer(servers[servers.length - 1]);
      servers.push(await startServer(port, args));
    },
  };
  try {
    await body(ctx);
  } finally {
    for (const socket of sockets) socket.disconnect();
    await Promise.all(servers.map((server) => stopServer(server, "SIGKILL")));
  }
}

/** Resolves with what `register(resolve)` passes to its callback, within STEP_MS. */
function waitFor(what, register) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), STEP_MS);
    register((value) => {
      clearTimeout(timer);
      resolve(value);
    });
  });
}

/** A Push's outcome: ["ok" | "error" | "timeout", response]. */
function outcome(push) {
  return new Promise((resolve) => {
    push
      .receive("ok", (response) => resolve(["ok", response]))
      .receive("error", (response) => resolve(["error", response]))
      .receive("timeout", () => resolve(["timeout", null]));
  });
}

/** Polls `predicate` until it holds. */
async function until(what, predicate) {
  const deadline = Date.now() + STEP_MS;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

test("join ok and join error", async () => {
  await withServer(async (ctx) => {
    const socket = ctx.socket();
    const lobby = socket.channel("room:lobby", { user: "ann" });
    assert.deepEqual(await outcome(lobby.join()), ["ok", {}]);
    const anonymous = socket.channel("room:lobby2", {});
    assert.deepEqual(await outcome(anonymous.join()), ["error", { reason: "user required" }]);
    anonymous.leave();
  });
});

test("push with reply", async () => {
  await withServer(async (ctx) => {
    const channel = ctx.socket().channel("room:ping", { user: "ann" });
    await outcome(channel.join());
    assert.deepEqual(await outcome(channel.push("ping", { n: 1, s: "é" })), [
      "ok",
      { n: 1, s: "é" },
    ]);
    assert.deepEqual(await outcome(channel.push("nope", {})), [
      "error",
      { reason: "unknown event" },
    ]);
    assert.deepEqual(await outcome(channel.push("new_msg", { body: "  " })), [
      "error",
      { reason: "body required" },
    ]);
  });
});

test("broadcast reaches every member, sender included", async () => {
  await withServer(async (ctx) => {
    const ann = ctx.socket().channel("room:chat", { user: "ann" });
    const bob = ctx.socket().channel("room:chat", { user: "bob" });
    const elsewhere = ctx.socket().channel("room:other", { user: "cid" });
    await Promise.all([outcome(ann.join()), outcome(bob.join()), outcome(elsewhere.join())]);
    let leaked = null;
    elsewhere.on("new_msg", (msg) => (leaked = msg));
    const annGot = waitFor("ann's new_msg", (done) => ann.on("new_msg", done));
    const bobGot = waitFor("bob's new_msg", (done) => bob.on("new_msg", done));
    assert.deepEqual(await outcome(ann.push("new_msg", { body: "hello" })), ["ok", {}]);
    assert.deepEqual(await annGot, { user: "ann", body: "hello" });
    assert.deepEqual(await bobGot, { user: "ann", body: "hello" });
    assert.equal(leaked, null);
  });
});

test("presence syncs across two clients, several sockets per key", async () => {
  await withServer(async (ctx) => {
    const names = (presence) =>
      presence
        .list((key, { metas }) => `${key}:${metas.length}`)
        .sort()
        .join(",");
    const annChannel = ctx.socket().channel("room:presence", { user: "ann" });
    const annPresence = new Presence(annChannel);
    let annSynced = "";
    annPresence.onSync(() => (annSynced = names(annPresence)));
    await outcome(annChannel.join());
    await until("ann sees herself", () => annSynced === "ann:1");

    const bobSocket = ctx.socket();
    const bobChannel = bobSocket.channel("room:presence", { user: "bob" });
    const bobPresence = new Presence(bobChannel);
    let bobSynced = "";
    bobPresence.onSync(() => (bobSynced = names(bobPresence)));
    await outcome(bobChannel.join());
    await until("both see both", () => annSynced === "ann:1,bob:1" && bobSynced === "ann:1,bob:1");

    // A second tab of ann's: one key, two metas.
    const annTab = ctx.socket().channel("room:presence", { user: "ann" });
    await outcome(annTab.join());
    await until("two metas for ann", () => bobSynced === "ann:2,bob:1");
    const left = waitFor("onLeave bob", (done) =>
      annPresence.onLeave((key, current) => {
        if (key === "bob" && current.metas.length === 0) done(key);
      }),
    );
    bobSocket.disconnect();
    assert.equal(await left, "bob");
    await until("bob gone for ann", () => annSynced === "ann:2");
  });
});

test("heartbeats are answered", async () => {
  await withServer(async (ctx) => {
    const socket = ctx.socket({}, { heartbeatIntervalMs: 100 });
    const replies = [];
    socket.onMessage((msg) => {
      if (msg.topic === "phoenix" && msg.event === "phx_reply") replies.push(msg.payload);
    });
    await until("three heartbeat replies", () => replies.length >= 3);
    assert.deepEqual(replies[0], { status: "ok", response: {} });
    const rtt = await waitFor("ping", (done) => socket.ping(done));
    assert.ok(rtt >= 0);
    assert.ok(socket.isConnected(), "no heartbeat timed out");
  });
});

test("channels rejoin after a server restart", async () => {
  await withServer(async (ctx) => {
    const socket = ctx.socket();
    const channel = socket.channel("room:restart", { user: "ann" });
    const presence = new Presence(channel);
    let joins = 0;
    channel.join().receive("ok", () => (joins += 1));
    await until("first join", () => joins === 1);
    let closes = 0;
    socket.onClose(() => (closes += 1));
    await ctx.restart();
    await until("rejoined on the new server", () => joins === 2);
    assert.ok(closes >= 1, "the socket saw the old server go");
    assert.deepEqual(await outcome(channel.push("ping", { after: "restart" })), [
      "ok",
      { after: "restart" },
    ]);
    await until("presence from the new server", () =>
      presence.list((key) => key).join() === "ann",
    );
  });
});

test("binary push gets a binary reply", async () => {
  await withServer(async (ctx) => {
    const channel = ctx.socket().channel("room:binary", { user: "ann" });
    await outcome(channel.join());
    const bytes = new Uint8Array([0, 1, 2, 127, 128, 255]);
    const [status, response] = await outcome(channel.push("ping", bytes.buffer));
    assert.equal(status, "ok");
    assert.ok(response instanceof ArrayBuffer, `got ${response}`);
    assert.deepEqual([...new Uint8Array(response)], [...bytes]);
  });
});

// Auth: phoenix.js 1.8 sends `authToken` as the subprotocols ["phoenix",
// "base64url.bearer.phx." + btoa(token) unpadded]; the example (`--token s3cret`)
// accepts `s3cret` or `s3cret.UNTIL` (Unix ms), refuses others with close code 3000 and
// closes with 4401 when a token expires. phoenix.js reconnects after any close it did
// not ask for, whatever the code: these tests follow the recipe of docs/channels.md.

test("authToken reaches connect; a refusal (3000) is stopped by the documented onClose", async () => {
  await withServer(async (ctx) => {
    const socket = ctx.socket({}, { authToken: "s3cret" });
    const lobby = socket.channel("room:lobby", { user: "ann" });
    assert.deepEqual(await outcome(lobby.join()), ["ok", {}]);
    assert.equal(socket.conn.protocol, "phoenix");
    assert.ok(!socket.endPointURL().includes("s3cret"));

    const refused = ctx.socket({}, { authToken: "wrong" });
    const closes = [];
    // The recipe: stop on 3000 (unauthorized) and 3003 (forbidden).
    refused.onClose((event) => {
      closes.push([event.code, event.reason]);
      if (event.code === 3000 || event.code === 3003) refused.disconnect();
    });
    await until("the refusal", () => closes.length === 1);
    assert.deepEqual(closes, [[3000, "invalid token"]]);
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(closes.length, 1, "no reconnect after disconnect()");
    assert.equal(refused.isConnected(), false);
  }, ["--token", "s3cret"]);
});

test("an expiring token: 4401, then the documented refresh and reconnect", async () => {
  await withServer(async (ctx) => {
    let token = `s3cret.${Date.now() + 500}`;
    // phoenix.js calls a function authToken on every connect, synchronously.
    const socket = ctx.socket({}, { authToken: () => token });
    const closes = [];
    socket.onClose((event) => {
      closes.push(event.code);
      if (event.code === 4401) {
        // The recipe: hold the reconnect until a fresh token is there.
        socket.disconnect();
        const refresh = new Promise((resolve) => setTimeout(resolve, 20));
        refresh.then(() => {
          token = `s3cret.${Date.now() + 60_000}`;
          socket.connect();
        });
      }
    });
    const channel = socket.channel("room:expiry", { user: "exp" });
    let joins = 0;
    channel.join().receive("ok", () => joins++);
    await until("the join", () => joins === 1);
    await until("the rejoin with the fresh token", () => joins === 2);
    assert.deepEqual(closes, [4401]);
    await new Promise((resolve) => setTimeout(resolve, 700));
    assert.deepEqual(closes, [4401], "the fresh token was taken");
    assert.ok(socket.isConnected());
  }, ["--token", "s3cret"]);
});

// Streams (docs/streams.md): on a topic with history the server adds a sixth element
// to broadcasts and a `stream` key to the join reply. phoenix.js reads only the first
// five and `status`/`response`, so it works as before, without recovery.
test("a topic with history: joins without recovery data, chat, presence and rejoin work as before", async () => {
  await withServer(async (ctx) => {
    const frames = [];
    // The frames as they came, before phoenix.js decodes them: the history is there.
    const raw = [];
    class Recording extends WebSocket {
      constructor(...args) {
        super(...args);
        this.addEventListener("message", ({ data }) => {
          if (typeof data === "string") raw.push(JSON.parse(data));
        });
      }
    }
    const socket = ctx.socket({}, { transport: Recording });
    socket.onMessage((message) => frames.push(message));
    const ann = socket.channel("room:kept", { user: "ann" });
    const bob = ctx.socket().channel("room:kept", { user: "bob" });
    const presence = new Presence(ann);
    assert.deepEqual(await outcome(ann.join()), ["ok", {}]);
    assert.deepEqual(await outcome(bob.join()), ["ok", {}]);
    await until("both in presence", () =>
      presence.list((key) => key).sort().join() === "ann,bob",
    );
    const annGot = [];
    ann.on("new_msg", (msg) => annGot.push(msg));
    for (const body of ["one", "two", "three"]) {
      assert.deepEqual(await outcome(bob.push("new_msg", { body })), ["ok", {}]);
    }
    await until("three broadcasts", () => annGot.length === 3);
    assert.deepEqual(annGot.map((msg) => msg.body), ["one", "two", "three"]);
    assert.deepEqual(annGot[0], { user: "bob", body: "one" }, "the payload is untouched");
    // phoenix.js's onMessage sees the decoded five fields only.
    const broadcast = frames.find((m) => m.event === "new_msg");
    assert.deepEqual(Object.keys(broadcast).sort(), ["event", "join_ref", "payload", "ref", "topic"]);
    // On the wire, the server did keep history: the join reply's `stream` and each
    // broadcast's position, which phoenix.js left out.
    const reply = raw.find((m) => m[2] === "room:kept" && m[3] === "phx_reply");
    assert.equal(reply[4].stream.recovered, false, JSON.stringify(reply));
    const epoch = reply[4].stream.epoch;
    assert.match(epoch, /^[0-9a-f]{16}$/);
    const positions = raw.filter((m) => m[3] === "new_msg").map((m) => m[5]);
    const first = reply[4].stream.offset;
    assert.deepEqual(positions, [1, 2, 3].map((n) => ({ offset: first + n, epoch })));

    // The join push's "ok" hook runs at once for the join already made, then per rejoin.
    let joins = 0;
    ann.joinPush.receive("ok", () => (joins += 1));
    assert.equal(joins, 1);
    await ctx.restart();
    await until("rejoined after the restart", () => joins === 2 && ann.state === "joined");
    assert.deepEqual(await outcome(ann.push("ping", { after: "restart" })), [
      "ok",
      { after: "restart" },
    ]);
    const after = waitFor("a broadcast after the restart", (done) => ann.on("new_msg", done));
    assert.deepEqual(await outcome(ann.push("new_msg", { body: "back" })), ["ok", {}]);
    assert.deepEqual(await after, { user: "ann", body: "back" });
  }, ["--history", "room:*"]);
});
