// Test support: the Rust example servers as child processes, free ports, waiting for
// events with a deadline, and a minimal hand-written WebSocket peer for the cases no
// example server produces (a close frame with a retry hint).

import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** Every child still running; killed when the test process exits, whatever happened. */
const children = new Set();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

/**
 * Path of an example server: `$SWITCHBOARD_<NAME>` or `target/release/examples/<name>`.
 * @param {'echo' | 'chat' | 'channels'} name
 */
export function exampleBinary(name) {
  return process.env[`SWITCHBOARD_${name.toUpperCase()}`] ?? join(repo, 'target', 'release', 'examples', name);
}

/**
 * Whether tests of this example can run. A path given in the environment counts as
 * present: a run that names it (CI) fails when it is missing instead of skipping.
 */
export function hasExample(name) {
  return process.env[`SWITCHBOARD_${name.toUpperCase()}`] !== undefined || existsSync(exampleBinary(name));
}

/** A port nothing listens on right now (the kernel's pick, released at once). */
export async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * Starts an example server on 127.0.0.1:port and waits until it accepts TCP.
 * @param {'echo' | 'chat' | 'channels'} name
 * @param {number} port
 * @param {string[]} [args] more command-line arguments
 */
export async function startExample(name, port, args = []) {
  const binary = exampleBinary(name);
  if (!existsSync(binary)) {
    throw new Error(`${binary} is missing: cargo build --release --examples -p switchboard`);
  }
  const child = spawn(binary, ['--addr', `127.0.0.1:${port}`, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(child);
  let stderr = '';
  child.stderr.on('data', (chunk) => { stderr += chunk; });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => {
    children.delete(child);
    resolve({ code, signal });
  }));
  const deadline = Date.now() + 10_000;
  while (!(await accepts(port))) {
    if (child.exitCode !== null || child.signalCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${name} did not start on port ${port}: ${stderr}`);
    }
    await sleep(20);
  }
  return {
    port,
    /** Ends the process (SIGKILL by default: the connection dies without a close frame). */
    async stop(signal = 'SIGKILL') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
    /** SIGSTOP, resolved once every thread has stopped: the signal is asynchronous. */
    async pause() {
      child.kill('SIGSTOP');
      await until(() => processState(child.pid) === 'T', { what: `${name} stopped`, timeoutMs: 2_000 });
    },
    resume: () => child.kill('SIGCONT'),
  };
}

/**
 * A private Redis on a free port, without persistence (`--save ''`): the tests that put
 * servers on Redis touch no shared one. Resolves once it accepts TCP.
 */
export async function startRedis() {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--save', '', '--appendonly', 'no'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  children.add(child);
  let stderr = '';
  child.stderr.on('data', (chunk) => { stderr += chunk; });
  child.once('error', (error) => { stderr += String(error); });
  const exited = new Promise((resolve) => child.once('exit', () => {
    children.delete(child);
    resolve();
  }));
  const deadline = Date.now() + 10_000;
  while (!(await accepts(port))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`redis-server did not start on port ${port}: ${stderr}`);
    }
    await sleep(20);
  }
  return {
    url: `redis://127.0.0.1:${port}/`,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      return exited;
    },
  };
}

/** Whether `redis-server` is on the PATH. */
export function hasRedis() {
  return (process.env.PATH ?? '').split(':').some((dir) => dir && existsSync(join(dir, 'redis-server')));
}

// The state letter of /proc/PID/stat (R running, S sleeping, T stopped, …), after the
// command name in parentheses, which may itself contain spaces.
function processState(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
}

function accepts(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
  });
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * The next `event` from an emitter-like object (`on` returning an unsubscribe function)
 * that satisfies `predicate`, or a rejection after `timeoutMs`.
 */
export function next(target, event, { timeoutMs = 5_000, predicate = () => true } = {}) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${event} event within ${timeoutMs} ms`));
    }, timeoutMs);
    const off = target.on(event, (value) => {
      if (!predicate(value)) return;
      clearTimeout(timer);
      off();
      resolve(value);
    });
  });
}

/** Resolves when `check()` is true, polling; rejects after `timeoutMs`. */
export async function until(check, { timeoutMs = 5_000, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what} not met within ${timeoutMs} ms`);
    await sleep(10);
  }
}

/**
 * A WebSocket peer that completes each handshake and at once sends one close frame
 * (code, reason), then drops the connection: the RFC 6455 bytes written by hand, so the
 * test depends on no WebSocket server library.
 */
export async function startClosingPeer(code, reason) {
  const server = createServer((_req, res) => res.writeHead(426).end());
  let handshakes = 0;
  // Upgraded sockets leave the HTTP server's bookkeeping, but still hold close() open.
  const sockets = new Set();
  server.on('upgrade', (req, socket) => {
    handshakes += 1;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    // RFC 6455 section 4.2.2: the accept key is base64(SHA-1(key + GUID)).
    const accept = createHash('sha1')
      .update(`${req.headers['sec-websocket-key']}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`)
      .digest('base64');
    const reasonBytes = Buffer.from(reason);
    const payload = Buffer.concat([Buffer.from([code >> 8, code & 0xff]), reasonBytes]);
    // A close frame from a server: FIN + opcode 8, unmasked, payload <= 125 bytes.
    const frame = Buffer.concat([Buffer.from([0x88, payload.length]), payload]);
    socket.on('error', () => {});
    socket.write(
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        `Sec-WebSocket-Accept: ${accept}\r\n\r\n`,
    );
    socket.end(frame);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `ws://127.0.0.1:${server.address().port}/`,
    get handshakes() {
      return handshakes;
    },
    close: () => new Promise((resolve) => {
      for (const socket of sockets) socket.destroy();
      server.close(resolve);
    }),
  };
}
