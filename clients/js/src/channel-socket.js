// The channels socket: one reconnecting WebSocket to `{endpoint}/websocket?vsn=2.0.0`,
// carrying Phoenix V2 messages for any number of channels.

import { Channel } from './channel.js';
import { Emitter } from './emitter.js';
import { decode, encode } from './serializer.js';
import { ReconnectingSocket } from './socket.js';

const DEFAULTS = Object.freeze({
  // phoenix.js's defaults: a reply within 10 s, a heartbeat every 30 s.
  timeoutMs: 10_000,
  heartbeatIntervalMs: 30_000,
  // The server answers a heartbeat at once; 10 s covers a congested link, and a dead
  // one is noticed within 40 s of its last sign of life.
  heartbeatTimeoutMs: 10_000,
  // A channel that errored (its server process crashed) rejoins after 0-1 s, growing to
  // 0-10 s: quick for a one-off, gentle for a channel that keeps failing.
  rejoin: Object.freeze({ baseMs: 1_000, maxMs: 10_000 }),
  // Pushes waiting for a join, per channel; each also expires with its timeout.
  maxBufferedPushes: 100,
});

/**
 * A Phoenix V2 channels socket, compatible with servers that phoenix.js talks to.
 *
 * Events: `open`, `close`, `reconnecting`, `unauthorized` (as on
 * {@link ReconnectingSocket}), `message` (every decoded message), `error` (a frame that
 * is not a V2 message, which is dropped; or the `authToken` function failed).
 */
export class Socket {
  #endPoint;
  #params;
  #options;
  #emitter = new Emitter();
  /** @type {Channel[]} */
  #channels = [];
  #ref = 0;
  #raw;

  /**
   * @param {string} endPoint e.g. `wss://example.com/socket`, or `/socket` in a page;
   *   `/websocket?vsn=2.0.0` and the params are appended
   * @param {import('./channel-socket.js').SocketOptions} [options]
   */
  constructor(endPoint, options = {}) {
    this.#endPoint = endPoint;
    this.#params = options.params ?? {};
    this.#options = {
      timeoutMs: options.timeoutMs ?? DEFAULTS.timeoutMs,
      rejoin: { ...DEFAULTS.rejoin, ...options.rejoin },
      maxBufferedPushes: options.maxBufferedPushes ?? DEFAULTS.maxBufferedPushes,
      random: options.random ?? Math.random,
    };
    const authToken = options.authToken;
    this.#raw = new ReconnectingSocket(() => this.endPointURL(), {
      protocols: authToken === undefined ? undefined : (context) => tokenProtocols(authToken, context),
      WebSocket: options.WebSocket,
      backoff: options.backoff,
      connectTimeoutMs: options.connectTimeoutMs,
      closeTimeoutMs: options.closeTimeoutMs,
      stableAfterMs: options.stableAfterMs,
      maxRetryAfterMs: options.maxRetryAfterMs,
      restartWindow: options.restartWindow,
      shouldReconnect: options.shouldReconnect,
      random: options.random,
      now: options.now,
      binaryType: 'arraybuffer',
      // Channels hold their own pushes until joined, bounded per channel; the socket
      // sends only while connected and needs no queue of its own.
      queue: { maxMessages: 0, maxBytes: 0 },
      heartbeat: {
        intervalMs: options.heartbeatIntervalMs ?? DEFAULTS.heartbeatIntervalMs,
        timeoutMs: options.heartbeatTimeoutMs ?? DEFAULTS.heartbeatTimeoutMs,
        message: () => encode({ join_ref: null, ref: this._makeRef(), topic: 'phoenix', event: 'heartbeat', payload: {} }),
      },
      autoConnect: false,
    });
    this.#raw.on('open', (info) => {
      for (const channel of [...this.#channels]) channel._socketOpened();
      this.#emitter.emit('open', info);
    });
    this.#raw.on('close', (info) => {
      for (const channel of [...this.#channels]) channel._socketClosed();
      this.#emitter.emit('close', info);
    });
    this.#raw.on('reconnecting', (info) => this.#emitter.emit('reconnecting', info));
    this.#raw.on('unauthorized', (info) => this.#emitter.emit('unauthorized', info));
    this.#raw.on('error', ({ error }) => this.#emitter.emit('error', { error, data: undefined }));
    this.#raw.on('message', ({ data }) => this.#received(data));
  }

  /** The URL of the next attempt, with the current params. */
  endPointURL() {
    const url = new URL(`${absolute(this.#endPoint).replace(/\/+$/, '')}/websocket`);
    const params = typeof this.#params === 'function' ? this.#params() : this.#params;
    for (const [key, value] of Object.entries(params ?? {})) url.searchParams.set(key, String(value));
    url.searchParams.set('vsn', '2.0.0');
    return url.href;
  }

  /** Connects (again, after `disconnect()`); channels that were joined rejoin on open. */
  connect() {
    this.#raw.connect();
  }

  /**
   * Closes the connection without reconnecting; channels stay and rejoin on `connect()`.
   * @param {number} [code]
   * @param {string} [reason]
   */
  disconnect(code, reason) {
    this.#raw.close(code, reason);
  }

  isConnected() {
    return this.#raw.state === 'open';
  }

  /** `connecting`, `open`, `closing`, `reconnecting`, `closed` or `idle` (never connected). */
  get state() {
    return this.#raw.state;
  }

  /** The WebSocket of the current attempt, if any (phoenix.js `conn`): for `protocol`, `bufferedAmount`. */
  get webSocket() {
    return this.#raw.webSocket;
  }

  /** The channels that are joining, joined, errored or leaving. */
  get channels() {
    return [...this.#channels];
  }

  /**
   * A channel for `topic`; call `join()` on it.
   * @param {string} topic
   * @param {object | (() => object)} [params] join params, a function to renew them per join
   */
  channel(topic, params = {}) {
    return new Channel(topic, params, this, this.#options);
  }

  /**
   * Listens to a socket event; returns the function that stops listening.
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

  /** @internal Refs are unique per socket, so replies find their push across channels. */
  _makeRef() {
    this.#ref = this.#ref >= Number.MAX_SAFE_INTEGER ? 1 : this.#ref + 1;
    return String(this.#ref);
  }

  /** @internal */
  _send(message) {
    this.#raw.send(encode(message));
  }

  /** @internal */
  _add(channel) {
    if (!this.#channels.includes(channel)) this.#channels.push(channel);
  }

  /** @internal */
  _remove(channel) {
    this.#channels = this.#channels.filter((c) => c !== channel);
  }

  /** @internal A second channel on one topic replaces the first, as in phoenix.js. */
  _leaveOpenTopic(channel) {
    for (const other of this.#channels) {
      if (other !== channel && other.topic === channel.topic && (other.state === 'joined' || other.state === 'joining')) {
        other.leave();
      }
    }
  }

  #received(data) {
    let message;
    try {
      message = decode(data);
    } catch (error) {
      this.#emitter.emit('error', { error, data });
      return;
    }
    this.#emitter.emit('message', message);
    // Heartbeat replies: the raw socket already took them as a sign of life.
    if (message.topic === 'phoenix') return;
    for (const channel of [...this.#channels]) {
      if (channel.topic === message.topic) channel._handle(message);
    }
  }
}

// The subprotocol that carries the token (phoenix.js `AUTH_TOKEN_PREFIX`), offered
// beside `phoenix`, which the server selects: the token stays out of URLs and logs.
const AUTH_TOKEN_PREFIX = 'base64url.bearer.phx.';

/**
 * The subprotocols of an attempt: `phoenix` and the token, or none without a token.
 * A promise when the token function returns one.
 */
function tokenProtocols(authToken, context) {
  const token = typeof authToken === 'function' ? authToken(context) : authToken;
  const protocols = (value) => (value ? ['phoenix', AUTH_TOKEN_PREFIX + base64url(String(value))] : undefined);
  return typeof token?.then === 'function' ? token.then(protocols) : protocols(token);
}

/**
 * Base64url without padding of the token's UTF-8 bytes. phoenix.js 1.8 sends
 * `btoa(token)` unpadded, whose `+` and `/` are not allowed in a subprotocol (a browser
 * throws on them) and which fails on characters beyond Latin-1; the server reads both.
 */
function base64url(text) {
  let binary = '';
  for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

// `/socket` in a page means this page's host; `http(s)://` means `ws(s)://`.
function absolute(endPoint) {
  if (/^wss?:\/\//i.test(endPoint)) return endPoint;
  if (/^https?:\/\//i.test(endPoint)) return endPoint.replace(/^http/i, 'ws');
  const location = globalThis.location;
  if (!location?.host) {
    throw new TypeError(`endpoint ${endPoint} is relative, and there is no page to resolve it against`);
  }
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  if (endPoint.startsWith('//')) return `${scheme}${endPoint}`;
  return `${scheme}//${location.host}${endPoint.startsWith('/') ? '' : '/'}${endPoint}`;
}
