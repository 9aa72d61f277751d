#!/usr/bin/env node
// The reconnect storm of a server restart (issue 15, item 7): CLIENTS clients of the JS
// client (`ReconnectingSocket` from clients/js/src, or from another copy of it with
// --client-src, e.g. an older revision) connect to the chat example; the server gets
// SIGTERM (graceful shutdown: every socket gets its close frame), and as soon as it has
// exited a new one is started on the same port. Reports when each client got its close
// event and when it was back (milliseconds after the SIGTERM, and after its own close
// event: p0/p50/p90/p99/max), the connection attempts that failed while no server
// listened, and the handshakes the new server
// completed per 100 ms bucket (each client timestamps the 101 it got: on loopback, that
// is when the server answered). Stops by itself: every phase has a deadline, and the
// whole run ends within DEADLINE seconds with the clients and the server killed.
//
//   cargo build --release --examples -p switchboard
//   npm ci --prefix tests/interop/node          # the `ws` package: 5,000 clients in one process
//   ulimit -n 20000
//   node scripts/load/restart-storm.mjs --clients 5000                                  # 1001
//   node scripts/load/restart-storm.mjs --clients 5000 --server-args '--restart-window 1-10'  # 1012
//
// Options: --clients N (5000), --server PATH (target/release/examples/chat),
// --server-args 'ARGS' (''), --client-src DIR (clients/js/src), --deadline SECONDS (90),
// --ws PATH (tests/interop/node/node_modules/ws; Node's own WebSocket when missing),
// --json FILE (the raw numbers).

import { spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

function options(argv) {
  const defaults = {
    clients: '5000',
    server: join(repo, 'target', 'release', 'examples', 'chat'),
    'server-args': '',
    'client-src': join(repo, 'clients', 'js', 'src'),
    deadline: '90',
    ws: join(repo, 'tests', 'interop', 'node', 'node_modules', 'ws'),
    json: '',
  };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    if (!(key in defaults) || argv[i + 1] === undefined) throw new Error(`unknown or incomplete option ${argv[i]}`);
    defaults[key] = argv[i + 1];
  }
  return defaults;
}

const opts = options(process.argv.slice(2));
const CLIENTS = Number(opts.clients);
const SERVER_ARGS = opts['server-args'].split(' ').filter(Boolean);
const started = performance.now();
const deadline = setTimeout(() => finish('the deadline passed'), Number(opts.deadline) * 1000);
const now = () => performance.now();

/** The WebSocket class: `ws` (light enough for thousands in one process) or Node's own. */
function webSocketClass() {
  if (existsSync(opts.ws)) return createRequire(join(repo, 'package.json'))(opts.ws).WebSocket;
  if (typeof globalThis.WebSocket === 'function') return globalThis.WebSocket;
  throw new Error('no WebSocket: npm ci --prefix tests/interop/node, or Node >= 22');
}

/** The hub admits 1,000 connections per client address by default. */
const PER_ADDRESS = 500;

/**
 * Counts every dial (a connection attempt) with its time. With `ws`, the clients dial
 * from 127.0.0.2, 127.0.0.3, … (PER_ADDRESS each), as clients of many machines would,
 * so that the server's per-address limit holds with its default.
 */
function counted(Base, dials, spread) {
  return class extends Base {
    constructor(url, protocols) {
      // Client i (its `name=c{i}`) always dials from the same address.
      const i = Number(new URL(url).searchParams.get('name').slice(1));
      const localAddress = `127.0.0.${2 + Math.floor(i / PER_ADDRESS)}`;
      super(url, protocols, ...(spread ? [{ localAddress }] : []));
      dials.push(now());
    }
  };
}

let server;
let port;

function startServer() {
  const child = spawn(opts.server, ['--addr', `127.0.0.1:${port}`, ...SERVER_ARGS], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  child.exited = new Promise((resolve) => child.on('exit', resolve));
  return child;
}

/** Resolves once the port accepts TCP; the probe connection sends nothing. */
async function accepting(until) {
  while (now() < until) {
    const ok = await new Promise((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.on('connect', () => resolve(socket.destroy() || true));
      socket.on('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(5);
  }
  throw new Error('the server did not accept in time');
}

async function freePort() {
  const probe = net.createServer();
  await new Promise((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address();
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(check, what, ms) {
  const until = now() + ms;
  while (!check()) {
    if (now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** p0/p50/p90/p99/max of sorted milliseconds, rounded. */
function distribution(sorted) {
  const at = (p) => Math.round(percentile(sorted, p));
  return { p0: at(0), p50: at(50), p90: at(90), p99: at(99), max: Math.round(sorted[sorted.length - 1]) };
}

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** Events per `width` ms bucket after `from`. */
function buckets(times, from, width = 100) {
  const counts = [];
  for (const t of times) {
    if (t < from) continue;
    const i = Math.floor((t - from) / width);
    counts[i] = (counts[i] ?? 0) + 1;
  }
  return Array.from(counts, (n) => n ?? 0);
}

const sockets = [];
let result = null;

function finish(why) {
  clearTimeout(deadline);
  for (const socket of sockets) socket.close();
  server?.kill('SIGKILL');
  if (why) {
    console.error(`restart-storm: ${why}`);
    process.exitCode = 1;
  }
  if (result && opts.json) writeFileSync(opts.json, JSON.stringify(result, null, 2));
  // Sockets of the killed server may linger a moment; nothing of value remains.
  setTimeout(() => process.exit(), 200).unref();
}

async function main() {
  const { ReconnectingSocket } = await import(pathToFileURL(join(opts['client-src'], 'index.js')).href);
  const dials = [];
  const Base = webSocketClass();
  const WebSocket = counted(Base, dials, Base !== globalThis.WebSocket);
  port = await freePort();
  server = startServer();
  await accepting(now() + 10_000);

  // Each client: its opens (the 101s), the close it got from the server, its first wait.
  const clients = Array.from({ length: CLIENTS }, () => ({ opens: [], close: null, closedAt: null, delayMs: null }));
  for (let i = 0; i < CLIENTS; i++) {
    const record = clients[i];
    // Rooms of 10: each arrival is told to 9 others, as in a real chat, without making
    // the run a fan-out benchmark.
    const socket = new ReconnectingSocket(`ws://127.0.0.1:${port}/chat/r${i % (CLIENTS / 10 || 1)}?name=c${i}`, {
      WebSocket,
    });
    socket.on('open', () => record.opens.push(now()));
    socket.on('close', ({ code, reason }) => {
      record.close ??= { code, reason };
      record.closedAt ??= now();
    });
    socket.on('reconnecting', ({ delayMs }) => { record.delayMs ??= delayMs; });
    sockets.push(socket);
    // Connect in steps of 250 so that the first connect is not itself a storm.
    if (i % 250 === 249) await waitFor(() => clients.filter((c) => c.opens.length > 0).length > i - 250, 'connects', 30_000);
  }
  await waitFor(() => clients.every((c) => c.opens.length === 1), `${CLIENTS} clients connected`, 30_000);
  await sleep(1000);

  const dialsBefore = dials.length;
  const t0 = now();
  server.kill('SIGTERM');
  await server.exited;
  const exited = now();
  server = startServer();
  await accepting(now() + 10_000);
  const up = now();
  await waitFor(() => clients.every((c) => c.opens.length >= 2), 'every client back', Number(opts.deadline) * 1000);
  const done = now();

  const back = clients.map((c) => c.opens[1] - t0).sort((a, b) => a - b);
  // From the client's own close event: the wait its reconnect logic chose, plus the
  // handshake (and any failed attempts while the server was down).
  const afterClose = clients.map((c) => c.opens[1] - c.closedAt).sort((a, b) => a - b);
  const closedBy = clients.map((c) => c.closedAt - t0).sort((a, b) => a - b);
  const handshakes = buckets(clients.map((c) => c.opens[1]), t0);
  const attempts = buckets(dials.slice(dialsBefore), t0);
  const codes = {};
  for (const { close } of clients) {
    const key = close ? `${close.code} ${close.reason}` : 'none';
    codes[key] = (codes[key] ?? 0) + 1;
  }
  const round = (x) => Math.round(x);
  result = {
    clients: CLIENTS,
    serverArgs: SERVER_ARGS.join(' '),
    clientSrc: opts['client-src'],
    closes: codes,
    serverExitedMs: round(exited - t0),
    serverUpMs: round(up - t0),
    closeEventsMs: distribution(closedBy),
    reconnectMs: distribution(back),
    reconnectAfterCloseMs: distribution(afterClose),
    peakHandshakesPer100ms: Math.max(...handshakes),
    peakHandshakesPerSecond: Math.max(...handshakes) * 10,
    attemptsAfterRestart: dials.length - dialsBefore,
    failedAttempts: dials.length - dialsBefore - CLIENTS,
    peakAttemptsPer100ms: Math.max(...attempts),
    handshakesPer100ms: handshakes,
    allBackMs: round(done - t0),
    runSeconds: round((now() - started) / 1000),
  };
  const { handshakesPer100ms, ...summary } = result;
  console.log(JSON.stringify(summary, null, 2));
  console.log(`handshakes per 100 ms after the SIGTERM: ${handshakesPer100ms.join(' ')}`);
  finish();
}

main().catch((error) => finish(error.stack ?? String(error)));
