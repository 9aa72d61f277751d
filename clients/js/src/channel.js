// One topic on a channels socket: join, events, pushes with replies, leave, and rejoin
// after a disconnect or a server-side crash of the channel.

import { backoffDelay } from './backoff.js';
import { Emitter } from './emitter.js';
import { Push } from './push.js';
import { isPosition } from './serializer.js';

/**
 * A topic on a {@link import('./channel-socket.js').Socket}; made by `socket.channel()`.
 *
 * States: `closed` → `joining` → `joined`; `errored` after a disconnect, a join timeout
 * or a `phx_error` (the channel rejoins by itself, with backoff); `leaving` → `closed`
 * after `leave()`, a `phx_close` or a join refused with `error`.
 *
 * Unlike phoenix.js, a join refused with `error` is final (phoenix.js retries it
 * forever): the server said no, and asking again every few seconds rarely changes that.
 * Call `join()` again to retry.
 *
 * On a topic the server keeps history for (switchboard streams), the channel tracks its
 * position in the topic's stream (from each broadcast and from the join reply), sends it
 * with every rejoin, and so gets exactly the broadcasts it missed, in order, before the
 * live ones; or, when the server can no longer tell what was missed, a recovery event
 * with `recovered: false` (see `onRecovery`).
 */
export class Channel {
  #socket;
  #topic;
  #emitter = new Emitter();
  #options;
  /** @type {'closed' | 'joining' | 'joined' | 'leaving' | 'errored'} */
  #state = 'closed';
  #joinPush;
  #joinRef = null;
  #joinedOnce = false;
  #timeoutMs;
  /** @type {Map<string, Push>} sent, awaiting the reply with this ref */
  #pending = new Map();
  /** @type {Push[]} pushed before the join completed */
  #buffer = [];
  #rejoinTimer = undefined;
  #rejoinTries = 0;
  /** @type {{offset: number, epoch: string} | null} the last broadcast seen, or where the stream was at the join */
  #position = null;
  /** @type {{offset: number, epoch: string} | null} the position the pending join carries */
  #sentPosition = null;
  #recovery = new Emitter();

  /**
   * @internal Use `socket.channel(topic, params)`.
   * @param {string} topic
   * @param {object | (() => object)} params sent with every (re)join
   * @param {import('./channel-socket.js').Socket} socket
   * @param {{timeoutMs: number, rejoin: {baseMs: number, maxMs: number},
   *          maxBufferedPushes: number, random: () => number}} options
   */
  constructor(topic, params, socket, options) {
    this.#topic = topic;
    this.#socket = socket;
    this.#options = options;
    this.#timeoutMs = options.timeoutMs;
    this.#joinPush = new Push('phx_join', params ?? {});
  }

  get topic() {
    return this.#topic;
  }

  get state() {
    return this.#state;
  }

  /** The ref of the current join; messages carrying another one belong to an old join. */
  get joinRef() {
    return this.#joinRef;
  }

  /**
   * Where this channel is in its topic's stream: the position of the last broadcast it
   * delivered, or of the stream's newest message when it joined; `null` before the first
   * join of a topic with history (and on topics without). Sent with every rejoin.
   * Forgotten when the channel closes (`leave()`, `phx_close`, a refused join): a later
   * `join()` is a first join, unless the params carry a `_position` (say,
   * `() => ({_position: saved})` to resume after a page reload), which a channel
   * without a position of its own joins from.
   * @returns {{offset: number, epoch: string} | null}
   */
  get position() {
    return this.#position && { ...this.#position };
  }

  /**
   * Joins the topic; rejoins by itself after reconnects until `leave()`.
   * @param {number} [timeoutMs] for each join attempt
   * @returns {Push} its callbacks run for every (re)join outcome
   */
  join(timeoutMs = this.#timeoutMs) {
    if (this.#state !== 'closed') {
      throw new Error(`join: ${this.#topic} is already ${this.#state}; leave() first`);
    }
    this.#timeoutMs = timeoutMs;
    this.#joinedOnce = true;
    this.#socket._add(this);
    this.#rejoin();
    return this.#joinPush;
  }

  /**
   * Leaves the topic: tells the server, and closes the channel once it answers (or at
   * once when offline, or after the timeout).
   * @param {number} [timeoutMs]
   * @returns {Push}
   */
  leave(timeoutMs = this.#timeoutMs) {
    clearTimeout(this.#rejoinTimer);
    this.#forgetJoin();
    this.#state = 'leaving';
    const push = new Push('phx_leave', {});
    const close = () => this.#close('leave');
    push.receive('ok', close).receive('error', close).receive('timeout', close);
    if (this.#socket.isConnected()) this.#send(push, timeoutMs);
    else push._trigger('ok', {});
    return push;
  }

  /**
   * Sends an event; the returned push reports the server's reply. Before the join
   * completes, pushes wait (at most `maxBufferedPushes`; past that a push fails at once
   * with `error` / `{reason: "buffer_full"}`); a push that times out while waiting is
   * never sent.
   * @param {string} event
   * @param {unknown} [payload] an object (JSON) or an ArrayBuffer / typed array (binary)
   * @param {number} [timeoutMs]
   * @returns {Push}
   */
  push(event, payload = {}, timeoutMs = this.#timeoutMs) {
    if (!this.#joinedOnce) {
      throw new Error(`push: ${event} to ${this.#topic} before join()`);
    }
    const push = new Push(event, payload);
    if (this.#state === 'leaving' || this.#state === 'closed') {
      push._trigger('error', { reason: 'channel_closed' });
    } else if (this.#canPush()) {
      this.#send(push, timeoutMs);
    } else if (this.#buffer.length >= this.#options.maxBufferedPushes) {
      push._trigger('error', { reason: 'buffer_full' });
    } else {
      this.#buffer.push(push);
      push._startTimeout(timeoutMs, () => {
        this.#buffer = this.#buffer.filter((p) => p !== push);
        this.#pending.delete(push.ref);
        push._trigger('timeout', null);
      });
    }
    return push;
  }

  /**
   * Listens to a server event; returns the function that stops listening.
   * @param {string} event
   * @param {(payload: any, ref: string | null, joinRef: string | null) => void} callback
   */
  on(event, callback) {
    return this.#emitter.on(event, callback);
  }

  /**
   * @param {string} event
   * @param {Function} [callback] all of the event's callbacks when omitted
   */
  off(event, callback) {
    this.#emitter.off(event, callback);
  }

  /** The channel errored (server crash of the channel, or disconnect); it will rejoin. */
  onError(callback) {
    return this.#emitter.on('phx_error', callback);
  }

  /** The channel closed for good (left, closed by the server, or join refused). */
  onClose(callback) {
    return this.#emitter.on('phx_close', callback);
  }

  /**
   * After each successful join of a topic with history: `{recovered, position}`.
   * `recovered: true` when the join carried a position and the server is sending every
   * broadcast missed since, in order, before the live ones. `recovered: false` on a
   * first join, and when what was missed cannot be known (the history was trimmed, or
   * lost: a new epoch): reload the state the broadcasts build up. Also called with
   * `recovered: false` when a broadcast comes in another epoch than the channel's (the
   * server lost the history while the channel was joined).
   * @param {(event: {recovered: boolean, position: {offset: number, epoch: string} | null}) => void} callback
   * @returns {() => void} removes the callback
   */
  onRecovery(callback) {
    return this.#recovery.on('recovery', callback);
  }

  /** @internal The socket (re)connected. */
  _socketOpened() {
    clearTimeout(this.#rejoinTimer);
    if (this.#state === 'joining' || this.#state === 'errored') this.#rejoin();
  }

  /** @internal The socket lost its connection. */
  _socketClosed() {
    clearTimeout(this.#rejoinTimer);
    if (this.#state !== 'joined' && this.#state !== 'joining') return;
    this.#forgetJoin();
    this.#state = 'errored';
    this.#emitter.emit('phx_error', { reason: 'disconnected' });
  }

  /** @internal A message for this topic. */
  _handle({ join_ref, ref, event, payload, position }) {
    // A message of an earlier join (a late reply, a close of the old server-side
    // channel) must not act on this one.
    if (join_ref && join_ref !== this.#joinRef) return;
    switch (event) {
      case 'phx_reply':
        this.#reply(ref, payload);
        return;
      case 'phx_error':
        if (this.#state === 'leaving' || this.#state === 'closed') return;
        this.#forgetJoin();
        this.#state = 'errored';
        this.#emitter.emit('phx_error', payload);
        this.#scheduleRejoin();
        return;
      case 'phx_close':
        this.#close(payload);
        return;
      default:
        if (position && !this.#advance(position)) return;
        this.#emitter.emit(event, payload, ref, join_ref);
    }
  }

  /**
   * Moves the position to a broadcast's; false for one already delivered (at or before
   * the position, in the same epoch), which is dropped.
   */
  #advance(position) {
    const current = this.#position;
    if (current && current.epoch === position.epoch && position.offset <= current.offset) return false;
    this.#position = { offset: position.offset, epoch: position.epoch };
    // Another epoch under a joined channel: the history it continued was lost.
    if (current && current.epoch !== position.epoch) this.#recovered(false);
    return true;
  }

  #recovered(recovered) {
    this.#recovery.emit('recovery', { recovered, position: this.position });
  }

  /**
   * After an ok join reply: the position the server gave (`stream`), unless the join
   * recovered from the position it carried, whose missed broadcasts follow the reply
   * and advance it themselves.
   */
  #joinedStream(stream) {
    const sent = this.#sentPosition;
    this.#sentPosition = null;
    if (typeof stream?.recovered !== 'boolean') {
      // The topic keeps no history (any more): a position sent was not recovered from.
      if (sent) {
        this.#position = null;
        this.#recovered(false);
      }
      return;
    }
    const recovered = stream.recovered && sent !== null;
    // Without a position (`"epoch": null`: the server could not read the stream), the
    // channel starts from the first broadcast it gets.
    if (!recovered) this.#position = isPosition(stream) ? { offset: stream.offset, epoch: stream.epoch } : null;
    this.#recovered(recovered);
  }

  #canPush() {
    return this.#state === 'joined' && this.#socket.isConnected();
  }

  #rejoin() {
    if (this.#state === 'leaving') return;
    this.#socket._leaveOpenTopic(this);
    this.#state = 'joining';
    const push = this.#joinPush;
    push._reset();
    this.#pending.delete(this.#joinRef);
    // The timeout runs even while offline: `join()` reports `timeout` if the socket
    // cannot connect in time, and the rejoin on the next open starts a new one.
    this.#send(push, this.#timeoutMs);
    this.#joinRef = push.ref;
  }

  /**
   * Sends (or, offline, only registers) a push with a fresh ref, and starts its timeout
   * unless `timeoutMs` is null (a buffered push keeps the deadline it got in push()).
   */
  #send(push, timeoutMs) {
    const isJoin = push === this.#joinPush;
    const ref = this.#socket._makeRef();
    push.ref = ref;
    this.#pending.set(ref, push);
    if (timeoutMs !== null) {
      push._startTimeout(timeoutMs, () => {
        this.#pending.delete(ref);
        if (isJoin) this.#joinTimedOut();
        else push._trigger('timeout', null);
      });
    }
    if (this.#socket.isConnected()) {
      this.#socket._send({
        join_ref: isJoin ? ref : this.#joinRef,
        ref,
        topic: this.#topic,
        event: push.event,
        payload: isJoin ? this.#joinPayload(push._payload()) : push._payload(),
      });
    }
  }

  /** The join's params, with the channel's position once it has one. */
  #joinPayload(params) {
    this.#sentPosition = null;
    const plain = typeof params === 'object' && params !== null && !Array.isArray(params);
    if (!plain) return params;
    // A position the application gives (saved before a page reload, say) is where a
    // channel without one of its own starts: the join recovers from it.
    if (!this.#position && isPosition(params._position)) {
      this.#position = { offset: params._position.offset, epoch: params._position.epoch };
    }
    if (!this.#position) return params;
    this.#sentPosition = { ...this.#position };
    return { ...params, _position: this.#sentPosition };
  }

  #reply(ref, payload) {
    const push = ref === null ? undefined : this.#pending.get(ref);
    // A reply must say how it went; anything else from the server is ignored.
    if (!push || typeof payload?.status !== 'string') return;
    this.#pending.delete(ref);
    const isJoin = push === this.#joinPush;
    if (isJoin && payload.status === 'ok') {
      this.#state = 'joined';
      this.#rejoinTries = 0;
      for (const buffered of this.#buffer.splice(0)) this.#send(buffered, null);
    }
    push._trigger(payload.status, payload.response);
    if (isJoin && payload.status === 'ok') this.#joinedStream(payload.stream);
    if (isJoin && payload.status !== 'ok') this.#close('join refused');
  }

  #joinTimedOut() {
    // The join may still arrive at the server: leave, so it does not hold a member
    // that this client has given up on.
    if (this.#socket.isConnected()) {
      this.#socket._send({
        join_ref: this.#joinRef,
        ref: this.#socket._makeRef(),
        topic: this.#topic,
        event: 'phx_leave',
        payload: {},
      });
    }
    this.#state = 'errored';
    this.#joinPush._trigger('timeout', null);
    this.#scheduleRejoin();
  }

  #scheduleRejoin() {
    clearTimeout(this.#rejoinTimer);
    if (!this.#socket.isConnected()) return; // the next open rejoins
    const delay = backoffDelay(this.#rejoinTries++, this.#options.rejoin, this.#options.random);
    this.#rejoinTimer = setTimeout(() => {
      if (this.#state === 'errored' && this.#socket.isConnected()) this.#rejoin();
    }, delay);
  }

  /** Drops the current join attempt's timer and pending entry, if any. */
  #forgetJoin() {
    this.#joinPush._clearTimeout();
    this.#pending.delete(this.#joinRef);
  }

  #close(reason) {
    if (this.#state === 'closed') return;
    clearTimeout(this.#rejoinTimer);
    this.#forgetJoin();
    this.#state = 'closed';
    // A later join() starts afresh (as a first join), unless given a `_position`.
    this.#position = null;
    this.#sentPosition = null;
    this.#socket._remove(this);
    // Nothing buffered will be sent now; say so instead of letting each time out.
    for (const push of this.#buffer.splice(0)) push._trigger('error', { reason: 'channel_closed' });
    this.#emitter.emit('phx_close', reason);
  }
}
