// What the browser tests share: Chromium's flags, a free port, a bounded wait, the chat
// example as a child process, and the page's landmarks.

import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

const here = path.dirname(fileURLToPath(import.meta.url));
export const CHAT = process.env.SWITCHBOARD_CHAT || path.resolve(here, '../../target/release/examples/chat');
export const CHROMIUM = process.env.SWITCHBOARD_CHROMIUM || '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless',
  // Containers and CI run as root, where Chromium's sandbox cannot start.
  '--no-sandbox',
  '--disable-gpu',
  // No traffic but the test's own: this machine reaches only localhost.
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];
/** Any single wait on a page. */
export const STEP_MS = 15_000;
/** Starting the server, including retries while the old process's port is released. */
const START_MS = 15_000;

/** Waits for `promise`, or `ms` at most; the timer does not outlive it. */
export async function within(promise, ms) {
  const timer = new AbortController();
  try {
    return await Promise.race([promise, sleep(ms, undefined, { signal: timer.signal })]);
  } finally {
    timer.abort();
  }
}

/** A free TCP port on the loopback interface. */
export async function freePort() {
  const server = net.createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** The chat example as a child process on a fixed port, restartable; `args` are added
 * to `--addr`. */
export class ChatServer {
  constructor(bin, port, args = []) {
    this.bin = bin;
    this.port = port;
    this.args = args;
    this.url = `http://127.0.0.1:${port}`;
    this.proc = null;
    this.output = '';
  }

  get running() {
    return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Starts the server and waits until it serves the chat page. */
  async start() {
    const deadline = Date.now() + START_MS;
    while (Date.now() < deadline) {
      const proc = spawn(this.bin, ['--addr', `127.0.0.1:${this.port}`, ...this.args], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      this.proc = proc;
      this.exited = new Promise((resolve) => proc.once('exit', resolve));
      proc.once('error', (e) => (this.output += `spawn failed: ${e.message}\n`));
      for (const stream of [proc.stdout, proc.stderr]) {
        stream.on('data', (chunk) => (this.output += chunk));
      }
      while (this.running && Date.now() < deadline) {
        if (await this.#servesPage()) return;
        await sleep(50);
      }
      // It exited (e.g. the port was not free yet): try again until the deadline.
      await this.kill();
      await sleep(200);
    }
    throw new Error(`chat server did not come up on ${this.url}; its output:\n${this.output}`);
  }

  async #servesPage() {
    try {
      const response = await fetch(`${this.url}/`, { signal: AbortSignal.timeout(1_000) });
      return response.ok && (await response.text()).includes('switchboard chat');
    } catch {
      return false;
    }
  }

  /** Kills the server (SIGKILL by default: a crash, no close frames) and waits for it. */
  async kill(signal = 'SIGKILL') {
    if (!this.running) return;
    this.proc.kill(signal);
    await within(this.exited, 5_000);
    if (this.running) {
      this.proc.kill('SIGKILL');
      await within(this.exited, 5_000);
    }
  }
}

/** One person's browser: a context of its own (no shared storage) and a page. */
export async function openPage(browser, who, url, pageErrors) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.setDefaultNavigationTimeout(STEP_MS);
  page.on('pageerror', (error) => pageErrors.push(`${who}: ${error.message}`));
  await page.goto(url);
  return { who, context, page };
}

export const notice = (page, text) => page.locator('#log [data-kind="notice"]', { hasText: text });
export const member = (page, name) => page.locator(`#members li[data-user="${name}"]`);
export const message = (page, from, text) =>
  page.locator(`#log [data-kind="message"][data-user="${from}"]`, { hasText: text });
export const status = (page, state) => page.locator(`#status[data-state="${state}"]`);
export const members = (page) =>
  page.locator('#members li').evaluateAll((lis) => lis.map((li) => li.dataset.user));

/** Waits until the page lists exactly `names` (sorted) as online. */
export async function waitForMembers(page, names, timeout = STEP_MS) {
  await page.waitForFunction(
    (want) => JSON.stringify([...document.querySelectorAll('#members li')].map((li) => li.dataset.user)) === want,
    JSON.stringify(names),
    { timeout },
  );
}

/** Types `text` into the page's input and clicks Send. */
export async function send(page, text) {
  await page.locator('#input').fill(text);
  await page.locator('#send').click();
}
