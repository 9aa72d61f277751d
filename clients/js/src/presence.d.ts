import type { Channel } from './channel.js';

export interface PresenceMeta {
  phx_ref: string;
  [key: string]: unknown;
}

export interface PresenceEntry<M extends PresenceMeta = PresenceMeta> {
  metas: M[];
}

export type PresenceState<M extends PresenceMeta = PresenceMeta> = Record<string, PresenceEntry<M>>;

export interface PresenceDiff<M extends PresenceMeta = PresenceMeta> {
  joins: PresenceState<M>;
  leaves: PresenceState<M>;
}

export type OnJoin<M extends PresenceMeta> = (key: string, current: PresenceEntry<M> | undefined, joined: PresenceEntry<M>) => void;
export type OnLeave<M extends PresenceMeta> = (key: string, remaining: PresenceEntry<M>, left: PresenceEntry<M>) => void;

/** Who is on a channel, synced from `presence_state` / `presence_diff`, as phoenix.js's Presence. */
export declare class Presence<M extends PresenceMeta = PresenceMeta> {
  constructor(channel: Channel, options?: { events?: { state: string; diff: string } });
  onJoin(callback: OnJoin<M>): void;
  onLeave(callback: OnLeave<M>): void;
  onSync(callback: () => void): void;
  list(): PresenceEntry<M>[];
  list<T>(chooser: (key: string, presence: PresenceEntry<M>) => T): T[];
  static syncState<M extends PresenceMeta>(current: PresenceState<M>, next: PresenceState<M>, onJoin?: OnJoin<M>, onLeave?: OnLeave<M>): PresenceState<M>;
  static syncDiff<M extends PresenceMeta>(state: PresenceState<M>, diff: PresenceDiff<M>, onJoin?: OnJoin<M>, onLeave?: OnLeave<M>): PresenceState<M>;
  static list<M extends PresenceMeta, T = PresenceEntry<M>>(state: PresenceState<M>, chooser?: (key: string, presence: PresenceEntry<M>) => T): T[];
}
