// Presence: the set of who is on a topic, kept in sync from the server's
// `presence_state` (the whole set, after each join) and `presence_diff` (joins and
// leaves since) events. Same state shape and callbacks as phoenix.js:
//
//   { [key]: { metas: [{ phx_ref, ...meta }, ...] } }
//
// One key (a user) may have several metas (tabs, devices); a key is gone when its last
// meta leaves.

/**
 * Presence on one channel.
 *
 * Diffs that arrive before the state of the current join are held back and applied on
 * top of it, so a rejoin never shows a half-updated list.
 */
export class Presence {
  #channel;
  #state = dict([]);
  #pendingDiffs = [];
  #joinRef = null;
  #onJoin = () => {};
  #onLeave = () => {};
  #onSync = () => {};

  /**
   * @param {import('./channel.js').Channel} channel
   * @param {{events?: {state: string, diff: string}}} [options] event names, when the
   *   server uses others
   */
  constructor(channel, options = {}) {
    const events = options.events ?? { state: 'presence_state', diff: 'presence_diff' };
    this.#channel = channel;
    channel.on(events.state, (newState) => {
      this.#joinRef = channel.joinRef;
      this.#state = Presence.syncState(this.#state, newState, this.#onJoin, this.#onLeave);
      for (const diff of this.#pendingDiffs) {
        this.#state = Presence.syncDiff(this.#state, diff, this.#onJoin, this.#onLeave);
      }
      this.#pendingDiffs = [];
      this.#onSync();
    });
    channel.on(events.diff, (diff) => {
      if (this.#inPendingSyncState()) {
        this.#pendingDiffs.push(diff);
      } else {
        this.#state = Presence.syncDiff(this.#state, diff, this.#onJoin, this.#onLeave);
        this.#onSync();
      }
    });
  }

  /** Called for each key that gained metas: `(key, current | undefined, joined)`. */
  onJoin(callback) {
    this.#onJoin = callback;
  }

  /** Called for each key that lost metas: `(key, remaining, left)`. */
  onLeave(callback) {
    this.#onLeave = callback;
  }

  /** Called after every state or diff has been applied. */
  onSync(callback) {
    this.#onSync = callback;
  }

  /**
   * The presences, one entry per key, mapped through `chooser` (default: the presence).
   * @template T
   * @param {(key: string, presence: {metas: object[]}) => T} [chooser]
   * @returns {T[]}
   */
  list(chooser) {
    return Presence.list(this.#state, chooser);
  }

  // The state so far belongs to an earlier join (or none): diffs must wait for the
  // state that the current join brings.
  #inPendingSyncState() {
    return this.#joinRef === null || this.#joinRef !== this.#channel.joinRef;
  }

  /**
   * Replaces `current` by `next` (a `presence_state`), calling onJoin/onLeave for the
   * differences. Returns the new state; `current` is not modified.
   */
  static syncState(current, next, onJoin, onLeave) {
    const state = dict(Object.entries(clone(current) ?? {}));
    const incoming = presences(next);
    const joins = dict([]);
    const leaves = dict([]);
    for (const [key, presence] of Object.entries(state)) {
      if (!Object.hasOwn(incoming, key)) leaves[key] = presence;
    }
    for (const [key, newPresence] of Object.entries(incoming)) {
      const currentPresence = state[key];
      if (!currentPresence) {
        joins[key] = newPresence;
        continue;
      }
      const newRefs = new Set(newPresence.metas.map((m) => m.phx_ref));
      const currentRefs = new Set(currentPresence.metas.map((m) => m.phx_ref));
      const joined = newPresence.metas.filter((m) => !currentRefs.has(m.phx_ref));
      const left = currentPresence.metas.filter((m) => !newRefs.has(m.phx_ref));
      if (joined.length > 0) joins[key] = { ...newPresence, metas: joined };
      if (left.length > 0) leaves[key] = { ...clone(currentPresence), metas: left };
    }
    return Presence.syncDiff(state, { joins, leaves }, onJoin, onLeave);
  }

  /**
   * Applies a `presence_diff` (`{joins, leaves}`) to `state`, in place, calling
   * onJoin/onLeave. Returns the state.
   */
  static syncDiff(state, diff, onJoin = () => {}, onLeave = () => {}) {
    const joins = presences(clone(diff?.joins));
    const leaves = presences(clone(diff?.leaves));
    for (const [key, newPresence] of Object.entries(joins)) {
      const currentPresence = state[key];
      state[key] = clone(newPresence);
      if (currentPresence) {
        const joinedRefs = new Set(state[key].metas.map((m) => m.phx_ref));
        const kept = currentPresence.metas.filter((m) => !joinedRefs.has(m.phx_ref));
        state[key].metas.unshift(...kept);
      }
      onJoin(key, currentPresence, newPresence);
    }
    for (const [key, leftPresence] of Object.entries(leaves)) {
      const currentPresence = state[key];
      if (!currentPresence) continue;
      const leftRefs = new Set(leftPresence.metas.map((m) => m.phx_ref));
      currentPresence.metas = currentPresence.metas.filter((m) => !leftRefs.has(m.phx_ref));
      onLeave(key, currentPresence, leftPresence);
      if (currentPresence.metas.length === 0) delete state[key];
    }
    return state;
  }

  /**
   * @template T
   * @param {Record<string, {metas: object[]}>} state
   * @param {(key: string, presence: {metas: object[]}) => T} [chooser]
   * @returns {T[]}
   */
  static list(state, chooser = (_key, presence) => presence) {
    return Object.entries(state).map(([key, presence]) => chooser(key, presence));
  }
}

// The well-formed entries of a state or diff half from the server: an object whose values
// have a `metas` array of objects. Anything else is skipped rather than crashing the
// callbacks that read `metas`.
function presences(value) {
  const out = dict([]);
  if (value === null || typeof value !== 'object') return out;
  for (const [key, presence] of Object.entries(value)) {
    if (Array.isArray(presence?.metas)) {
      out[key] = { ...presence, metas: presence.metas.filter((m) => m !== null && typeof m === 'object') };
    }
  }
  return out;
}

// Keys are the server's (user names): a prototype-less object keeps a key such as
// `__proto__` an ordinary entry.
function dict(entries) {
  const out = Object.create(null);
  for (const [key, value] of entries) out[key] = value;
  return out;
}

function clone(value) {
  return value === undefined ? undefined : structuredClone(value);
}
