import type { Push } from './push.js';
import type { Position } from './serializer.js';

export type ChannelState = 'closed' | 'joining' | 'joined' | 'leaving' | 'errored';

/** What `onRecovery` callbacks get after each join of a topic with history. */
export interface Recovery {
  /**
   * True: the join carried the channel's position, and every broadcast missed since
   * follows, in order, before the live ones. False: a first join, or what was missed
   * cannot be known (history trimmed or lost); reload the state the broadcasts build.
   */
  recovered: boolean;
  /** The channel's position after the join (null when the topic keeps no history any more, or the server could not read the stream). */
  position: Position | null;
}

/** A topic on a channels Socket; made by `socket.channel(topic, params)`. */
export declare class Channel {
  private constructor();
  readonly topic: string;
  readonly state: ChannelState;
  /** The ref of the current join. */
  readonly joinRef: string | null;
  /**
   * Where the channel is in its topic's stream (topics with history); sent with every
   * rejoin. Forgotten when the channel closes: a later join() is a first join, unless the
   * params carry a `_position` (e.g. `() => ({_position: saved})` after a page reload),
   * which a channel without a position of its own joins from.
   */
  readonly position: Position | null;
  /** Joins; rejoins by itself after reconnects. Callbacks run for every (re)join outcome. */
  join(timeoutMs?: number): Push;
  /** Leaves; the channel closes when the server answers, at once offline, or on timeout. */
  leave(timeoutMs?: number): Push;
  /** Sends an event: an object as JSON, an ArrayBuffer or typed array as a binary frame. */
  push<R = any>(event: string, payload?: unknown, timeoutMs?: number): Push<R>;
  /** Listens to a server event; returns the function that removes the listener. */
  on<P = any>(event: string, callback: (payload: P, ref: string | null, joinRef: string | null) => void): () => void;
  off(event: string, callback?: (...args: any[]) => void): void;
  /** The channel errored (crash on the server, or disconnect) and will rejoin. */
  onError(callback: (reason: unknown) => void): () => void;
  /** After each join of a topic with history, and when a broadcast comes in a new epoch (`recovered: false`). */
  onRecovery(callback: (recovery: Recovery) => void): () => void;
  /** The channel closed for good. */
  onClose(callback: (reason: unknown) => void): () => void;
}
