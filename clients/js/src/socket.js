// A WebSocket that reconnects: backoff with full jitter, the server's retry hint, a
// randomized wait within the server's window after a restart, a bounded offline queue with per-message expiry, and heartbeat-based detection of dead
// connections.

import { backoffDelay, COME_BACK_LATER, restartDelay, restartWindowHint, retryAfterHint } from './backoff.js';
import { afterClose } from './close-codes.js';
import { Emitter, reportLater } from './emitter.js';

// WebSocket.readyState values; the constants are not on every implementation's
// instances (nor on test doubles), so they are spelled out here.
const CONNECTING = 0;
const OPEN = 1;

const DEFAULTS = Object.freeze({
  binaryType: 'arraybuffer',
  // 0.5 s doubles to the 30 s cap in six steps: a restarted server is found again
  // within about a second, and a long outage costs one attempt per 15 s on average.
  backoff: Object.freeze({ baseMs: 500, maxMs: 30_000 }),
  // A handshake that has not finished by then is abandoned: a server that accepts TCP
  // but never answers (stopped, overloaded) would otherwise hold the client forever.
  connectTimeoutMs: 10_000,
  // A connection must stay up this long before the attempt counter resets; a server
  // that accepts and at once closes (crash loop) still meets a growing backoff.
  stableAfterMs: 5_000,
  // A hostile or misconfigured server cannot park the client for more than this.
  maxRetryAfterMs: 5 * 60_000,
  // After a server's 1001/1012/1013 without a window in the reason: a restarted server
  // is usually back within a second or so, and 10,000 clients spread over 4 s come
  // back at some 2,500 handshakes/s rather than all in one instant.
  restartWindow: Object.freeze({ minMs: 1_000, maxMs: 5_000 }),
  // Messages sent while offline: enough for a burst of user input, bounded in count and
  // bytes (unlike Socket.IO's unbounded buffer), and stale after 30 s by default.
  queue: Object.freeze({ maxMessages: 100, maxBytes: 1 << 20, ttlMs: 30_000 }),
  // How long close() waits for the server's close frame: a dead peer never sends one,
  // and the `close` event must come all the same. The hub's own close timeout is 5 s.
  closeTimeoutMs: 5_000,
});

/**
 * A WebSocket to a plain endpoint that reconnects by itself.
 *
 * Events: `open`, `message`, `close` (only for connections that opened), `reconnecting`
 * (before each wait), `drop` (a message that will never be sent, and why),
 * `unauthorized` (the server refused the credentials: no retry follows), `error` (the
 * `url` or `protocols` function failed; the attempt counts as failed).
 */
export class ReconnectingSocket {
  #emitter = new Emitter();
  #url;
  #protocols;
  #WebSocket;
  #binaryType;
  #backoff;
  #connectTimeoutMs;
  #closeTimeoutMs;
  #stableAfterMs;
  #maxRetryAfterMs;
  #restartWindow;
  #queueLimits;
  #heartbeat;
  #shouldReconnect;
  #random;
  #now;

  /** @type {'idle' | 'connecting' | 'open' | 'closing' | 'reconnecting' | 'closed'} */
  #state = 'idle';
  /** @type {WebSocket | null} */
  #ws = null;
  #attempt = 0;
  #openedAt = 0;
  #userClosed = false;
  /** The last close said the token expired: the next attempts ask for a fresh one. */
  #expired = false;
  /** The attempt waiting for the `url` or `protocols` function's promise. */
  #pending = null;
  #retryTimer = undefined;
  /** The deadline of the opening or the closing handshake in progress. */
  #handshakeTimer = undefined;
  #heartbeatTimer = undefined;
  #heartbeatDeadline = undefined;
  /** @type {{data: unknown, size: number, expiresAt: number}[]} */
  #queue = [];
  #queuedBytes = 0;
  #dropped = 0;

  /**
   * @param {string | URL | ((context: {attempt: number, expired: boolean}) => string | URL | Promise<string | URL>)} url
   *   called again before every attempt when a function (so that a token in the query
   *   can be renewed), and awaited when it returns a promise
   * @param {import('./socket.js').ReconnectingSocketOptions} [options]
   */
  constructor(url, options = {}) {
    this.#url = url;
    this.#protocols = options.protocols;
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== 'function') {
      throw new TypeError(
        'no WebSocket implementation: use a browser, Node >= 22, Node 20 with ' +
          '--experimental-websocket, or pass options.WebSocket (e.g. the `ws` package)',
      );
    }
    this.#binaryType = options.binaryType ?? DEFAULTS.binaryType;
    this.#backoff = { ...DEFAULTS.backoff, ...options.backoff };
    this.#connectTimeoutMs = options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs;
    this.#closeTimeoutMs = options.closeTimeoutMs ?? DEFAULTS.closeTimeoutMs;
    this.#stableAfterMs = options.stableAfterMs ?? DEFAULTS.stableAfterMs;
    this.#maxRetryAfterMs = options.maxRetryAfterMs ?? DEFAULTS.maxRetryAfterMs;
    this.#restartWindow = { ...DEFAULTS.restartWindow, ...options.restartWindow };
    this.#queueLimits = { ...DEFAULTS.queue, ...options.queue };
    this.#heartbeat = options.heartbeat ?? null;
    if (this.#heartbeat && !(this.#heartbeat.intervalMs > 0 && this.#heartbeat.timeoutMs > 0)) {
      throw new RangeError('heartbeat.intervalMs and heartbeat.timeoutMs must be positive');
    }
    this.#shouldReconnect = options.shouldReconnect ?? (() => true);
    this.#random = options.random ?? Math.random;
    this.#now = options.now ?? Date.now;
    if (options.autoConnect ?? true) this.connect();
  }

  /** Where the socket is in its life; `reconnecting` means waiting out a backoff. */
  get state() {
    return this.#state;
  }

  /** Messages waiting in the offline queue. */
  get queued() {
    return this.#queue.length;
  }

  /** Messages dropped so far (queue full, expired, or closed); each also had a `drop` event. */
  get dropped() {
    return this.#dropped;
  }

  /** The WebSocket of the current attempt, if any: for `protocol`, `extensions`, `bufferedAmount`. */
  get webSocket() {
    return this.#ws;
  }

  /**
   * Listens to an event; returns the function that stops listening.
   * @param {string} event
   * @param {Function} listener
   */
  on(event, listener) {
    return this.#emitter.on(event, listener);
  }

  /**
   * @param {string} event
   * @param {Function} [listener]
   */
  off(event, listener) {
    this.#emitter.off(event, listener);
  }

  /**
   * Starts connecting (again, after `close()`); a no-op while connecting or open.
   * Throws what the WebSocket constructor throws for a malformed URL.
   */
  connect() {
    this.#userClosed = false;
    // While closing, the coming `close` event starts the reconnect (see #lost).
    if (this.#state !== 'idle' && this.#state !== 'closed') return;
    this.#attempt = 0;
    const error = this.#dial();
    if (error) throw error;
  }

  /**
   * Sends now when open; otherwise queues, within the queue's bounds and expiry.
   *
   * @param {string | ArrayBufferLike | ArrayBufferView | Blob} data
   * @param {{ttlMs?: number}} [options] this message's expiry, instead of `queue.ttlMs`
   * @returns {'sent' | 'queued' | 'dropped'}
   */
  send(data, options = {}) {
    if (this.#state === 'closed' || this.#state === 'closing') {
      this.#drop(data, 'closed');
      return 'dropped';
    }
    if (this.#state === 'open' && this.#ws?.readyState === OPEN) {
      this.#ws.send(data);
      return 'sent';
    }
    const now = this.#now();
    this.#expire(now);
    const size = byteLength(data);
    const { maxMessages, maxBytes } = this.#queueLimits;
    if (this.#queue.length >= maxMessages || this.#queuedBytes + size > maxBytes) {
      // The newest message is the one refused: the caller learns it from the result,
      // and what was queued earlier keeps its order.
      this.#drop(data, 'overflow');
      return 'dropped';
    }
    this.#queue.push({ data, size, expiresAt: now + (options.ttlMs ?? this.#queueLimits.ttlMs) });
    this.#queuedBytes += size;
    return 'queued';
  }

  /**
   * Closes for good (until `connect()`): no reconnect, queued messages are dropped.
   * @param {number} [code] 1000 or 3000-4999, as the WebSocket API allows
   * @param {string} [reason]
   */
  close(code = 1000, reason = '') {
    const ws = this.#ws;
    // First, so that a code the WebSocket API refuses throws before anything changed.
    if (ws && this.#state === 'open') ws.close(code, reason);
    this.#userClosed = true;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    // Already closing: that close reports itself, once.
    if (this.#state === 'closing') return;
    if (ws && this.#state === 'open') {
      // The `close` event comes with the server's answer (#lost), or without it.
      this.#state = 'closing';
      this.#stopHeartbeat();
      this.#handshakeTimer = setTimeout(() => this.#lost(ws, 1006, 'close timeout', false), this.#closeTimeoutMs);
    } else {
      if (ws) this.#abandon(ws);
      this.#cancelPending();
      this.#state = 'closed';
    }
    this.#dropQueue('closed');
  }

  /**
   * Starts an attempt; returns the error when the URL is unusable. The `url` and
   * `protocols` functions get the attempt's context: `expired` after a close that said
   * the token expired, until a connection opens.
   */
  #dial() {
    this.#state = 'connecting';
    const context = { attempt: this.#attempt, expired: this.#expired };
    let url;
    let protocols;
    try {
      url = typeof this.#url === 'function' ? this.#url(context) : this.#url;
      protocols = typeof this.#protocols === 'function' ? this.#protocols(context) : this.#protocols;
    } catch (error) {
      return this.#unusable(error);
    }
    if (!isThenable(url) && !isThenable(protocols)) return this.#open(url, protocols);
    // The app is fetching a token: the connect timeout covers that wait too, so that a
    // token service that never answers cannot hold the client.
    const pending = {};
    this.#pending = pending;
    this.#handshakeTimer = setTimeout(
      () => this.#pendingFailed(pending, 'connect timeout'),
      this.#connectTimeoutMs,
    );
    Promise.all([url, protocols]).then(
      ([resolvedUrl, resolvedProtocols]) => {
        if (this.#pending !== pending) return;
        this.#cancelPending();
        const error = this.#open(resolvedUrl, resolvedProtocols);
        if (error) reportLater(error);
      },
      (error) => {
        if (this.#pending !== pending) return;
        this.#emitter.emit('error', { error });
        this.#pendingFailed(pending, `attempt failed: ${error?.message ?? error}`);
      },
    );
    return undefined;
  }

  /** A failure that every attempt would meet (a malformed URL): stop rather than spin. */
  #unusable(error) {
    this.#state = 'closed';
    this.#dropQueue('closed');
    return error;
  }

  /** The waiting attempt failed before it had a WebSocket: backoff, as a refused one. */
  #pendingFailed(pending, reason) {
    if (this.#pending !== pending) return;
    this.#cancelPending();
    this.#ended({ code: 1006, reason, wasClean: false }, false);
  }

  #cancelPending() {
    if (this.#pending === null) return;
    this.#pending = null;
    clearTimeout(this.#handshakeTimer);
  }

  #open(url, protocols) {
    let ws;
    try {
      ws = new this.#WebSocket(url, protocols);
    } catch (error) {
      return this.#unusable(error);
    }
    ws.binaryType = this.#binaryType;
    this.#ws = ws;
    this.#handshakeTimer = setTimeout(
      () => this.#lost(ws, 1006, 'connect timeout', false),
      this.#connectTimeoutMs,
    );
    ws.onopen = () => this.#opened(ws);
    ws.onmessage = (event) => this.#received(ws, event.data);
    ws.onclose = (event) => this.#lost(ws, event.code, event.reason, event.wasClean);
    // The standard says a `close` event follows every `error`, with all it could say.
    // Node 20's WebSocket (undici) sends none after a refused handshake (a non-101
    // answer): it stays CONNECTING for good. An error before open therefore ends the
    // attempt; once open, the `close` event (and its code) is waited for.
    ws.onerror = () => {
      if (this.#state === 'connecting') this.#lost(ws, 1006, '', false);
    };
    return undefined;
  }

  #opened(ws) {
    if (ws !== this.#ws) return;
    clearTimeout(this.#handshakeTimer);
    this.#openedAt = this.#now();
    this.#state = 'open';
    this.#expired = false;
    this.#startHeartbeat(ws);
    this.#emitter.emit('open', { attempt: this.#attempt });
    // Listeners of `open` go first, so that a listener can authenticate before the
    // queued messages follow; one may also have closed the socket.
    if (this.#ws !== ws || this.#state !== 'open') return;
    const now = this.#now();
    for (const item of this.#queue.splice(0)) {
      if (item.expiresAt <= now) this.#drop(item.data, 'expired');
      else ws.send(item.data);
    }
    this.#queuedBytes = 0;
  }

  #received(ws, data) {
    if (ws !== this.#ws) return;
    // Any frame proves the path works, not only the heartbeat's answer.
    clearTimeout(this.#heartbeatDeadline);
    this.#heartbeatDeadline = undefined;
    if (this.#heartbeat?.isReply?.(data)) return;
    this.#emitter.emit('message', { data });
  }

  /** The connection ended or failed: report it, then wait and dial again. */
  #lost(ws, code, reason, wasClean) {
    if (ws !== this.#ws) return;
    const wasOpen = this.#state === 'open' || this.#state === 'closing';
    this.#abandon(ws);
    this.#ended({ code, reason, wasClean }, wasOpen);
  }

  /** An attempt or a connection ended: report it, then wait and dial again. */
  #ended(info, wasOpen) {
    const { code, reason } = info;
    if (wasOpen && this.#now() - this.#openedAt >= this.#stableAfterMs) this.#attempt = 0;
    const action = this.#userClosed ? 'retry' : afterClose(code);
    if (action === 'renew') this.#expired = true;
    const willReconnect = !this.#userClosed && action !== 'stop' && this.#shouldReconnect(info);
    this.#state = willReconnect ? 'reconnecting' : 'closed';
    if (!willReconnect) this.#dropQueue('closed');
    if (wasOpen) this.#emitter.emit('close', { ...info, willReconnect });
    if (action === 'stop') this.#emitter.emit('unauthorized', { code, reason });
    // A `close` listener may have called close() or connect().
    if (this.#state !== 'reconnecting' || this.#ws !== null || this.#retryTimer !== undefined) {
      return;
    }
    let delayMs = this.#retryDelay(code, reason);
    const hint = retryAfterHint(reason);
    if (hint !== undefined) delayMs = Math.max(delayMs, Math.min(hint, this.#maxRetryAfterMs));
    this.#attempt += 1;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      const error = this.#dial();
      if (error) reportLater(error);
    }, delayMs);
    this.#emitter.emit('reconnecting', { attempt: this.#attempt, delayMs, code, reason });
  }

  /**
   * How long to wait before the next attempt. A server that says it is going away or
   * restarting (1001, 1012, 1013) gets a random moment in the window its reason
   * suggests (`retry in MIN-MAXs`, capped by `maxRetryAfterMs`), or in `restartWindow`:
   * its clients then come back spread out instead of all at once. Any other close
   * meets the backoff.
   */
  #retryDelay(code, reason) {
    if (!COME_BACK_LATER.includes(code)) return backoffDelay(this.#attempt, this.#backoff, this.#random);
    const suggested = restartWindowHint(reason) ?? this.#restartWindow;
    const cap = this.#maxRetryAfterMs;
    const window = { minMs: Math.min(suggested.minMs, cap), maxMs: Math.min(suggested.maxMs, cap) };
    return restartDelay(window, this.#random);
  }

  /** Forgets a WebSocket for good: no more of its events reach this object. */
  #abandon(ws) {
    clearTimeout(this.#handshakeTimer);
    this.#stopHeartbeat();
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    if (ws.readyState === CONNECTING || ws.readyState === OPEN) {
      // Best effort: on a dead connection the closing handshake never completes, and
      // the close event is not waited for (the handlers are gone).
      try {
        ws.close();
      } catch {
        // Some implementations throw when closing a socket still connecting.
      }
    }
    this.#ws = null;
  }

  #startHeartbeat(ws) {
    const heartbeat = this.#heartbeat;
    if (!heartbeat) return;
    this.#heartbeatTimer = setInterval(() => {
      // Still waiting for an answer to the previous beat: its deadline decides.
      if (this.#heartbeatDeadline !== undefined) return;
      const message = typeof heartbeat.message === 'function' ? heartbeat.message() : heartbeat.message;
      ws.send(message);
      this.#heartbeatDeadline = setTimeout(
        () => this.#lost(ws, 1006, 'heartbeat timeout', false),
        heartbeat.timeoutMs,
      );
    }, heartbeat.intervalMs);
  }

  #stopHeartbeat() {
    clearInterval(this.#heartbeatTimer);
    clearTimeout(this.#heartbeatDeadline);
    this.#heartbeatTimer = this.#heartbeatDeadline = undefined;
  }

  #expire(now) {
    // A scan, not a look at the head: per-message TTLs leave the queue unordered by
    // expiry, and it holds at most `maxMessages` entries.
    const live = [];
    for (const item of this.#queue) {
      if (item.expiresAt > now) {
        live.push(item);
      } else {
        this.#queuedBytes -= item.size;
        this.#drop(item.data, 'expired');
      }
    }
    this.#queue = live;
  }

  #dropQueue(reason) {
    for (const item of this.#queue.splice(0)) this.#drop(item.data, reason);
    this.#queuedBytes = 0;
  }

  #drop(data, reason) {
    this.#dropped += 1;
    this.#emitter.emit('drop', { data, reason });
  }
}

function isThenable(value) {
  return typeof value?.then === 'function';
}

/** The bytes a message takes on the wire (its payload), without encoding strings. */
function byteLength(data) {
  if (typeof data === 'string') {
    let bytes = 0;
    for (let i = 0; i < data.length; i++) {
      const unit = data.charCodeAt(i);
      if (unit < 0x80) bytes += 1;
      else if (unit < 0x800) bytes += 2;
      // A surrogate pair (4 bytes in UTF-8) counts 2 + 2; a lone surrogate becomes
      // U+FFFD (3 bytes), which 2 under-counts by one: harmless for a bound.
      else if (unit >= 0xd800 && unit <= 0xdfff) bytes += 2;
      else bytes += 3;
    }
    return bytes;
  }
  if (typeof data?.byteLength === 'number') return data.byteLength;
  if (typeof data?.size === 'number') return data.size;
  return 0;
}
