// Presence sync (phoenix.js semantics), driven by a stand-in channel: presence only
// needs `on(event, callback)` and `joinRef` from it.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Presence } from '../src/index.js';

function fakeChannel() {
  const listeners = {};
  return {
    joinRef: '1',
    on(event, callback) {
      listeners[event] = callback;
      return () => delete listeners[event];
    },
    emit(event, payload) {
      listeners[event](payload);
    },
  };
}

const meta = (ref, extra = {}) => ({ phx_ref: ref, ...extra });

test('syncState reports joins and leaves against the previous state', () => {
  const joined = [];
  const left = [];
  const onJoin = (key, current, presence) => joined.push([key, current?.metas.length ?? 0, presence.metas.map((m) => m.phx_ref)]);
  const onLeave = (key, remaining, presence) => left.push([key, remaining.metas.length, presence.metas.map((m) => m.phx_ref)]);
  let state = Presence.syncState({}, { ann: { metas: [meta('a1')] }, bob: { metas: [meta('b1')] } }, onJoin, onLeave);
  assert.deepEqual(joined, [['ann', 0, ['a1']], ['bob', 0, ['b1']]]);
  joined.length = 0;
  state = Presence.syncState(state, { ann: { metas: [meta('a1'), meta('a2')] } }, onJoin, onLeave);
  assert.deepEqual(joined, [['ann', 1, ['a2']]]);
  assert.deepEqual(left, [['bob', 0, ['b1']]]);
  assert.deepEqual(Presence.list(state, (key, p) => [key, p.metas.map((m) => m.phx_ref)]), [['ann', ['a1', 'a2']]]);
});

test('syncDiff adds metas to a key and removes the key with its last meta', () => {
  const state = Presence.syncState({}, { ann: { metas: [meta('a1')] } });
  Presence.syncDiff(state, { joins: { ann: { metas: [meta('a2')] } }, leaves: {} });
  assert.deepEqual(state.ann.metas.map((m) => m.phx_ref), ['a1', 'a2']);
  Presence.syncDiff(state, { joins: {}, leaves: { ann: { metas: [meta('a1')] } } });
  assert.deepEqual(state.ann.metas.map((m) => m.phx_ref), ['a2']);
  Presence.syncDiff(state, { joins: {}, leaves: { ann: { metas: [meta('a2')] } } });
  assert.deepEqual(Presence.list(state), []);
  // A leave of an unknown key is ignored.
  Presence.syncDiff(state, { joins: {}, leaves: { zed: { metas: [meta('z')] } } });
  assert.deepEqual(Presence.list(state), []);
});

test('syncState does not modify the state it was given', () => {
  const before = Presence.syncState({}, { ann: { metas: [meta('a1')] } });
  const snapshot = JSON.stringify(before);
  Presence.syncState(before, { bob: { metas: [meta('b1')] } });
  assert.equal(JSON.stringify(before), snapshot);
});

test('diffs before the state of the current join wait for it', () => {
  const channel = fakeChannel();
  const presence = new Presence(channel);
  let syncs = 0;
  presence.onSync(() => syncs++);
  channel.emit('presence_diff', { joins: { bob: { metas: [meta('b1')] } }, leaves: {} });
  assert.equal(syncs, 0);
  assert.deepEqual(presence.list(), []);
  channel.emit('presence_state', { ann: { metas: [meta('a1')] } });
  assert.equal(syncs, 1);
  assert.deepEqual(presence.list((key) => key).sort(), ['ann', 'bob']);
  channel.emit('presence_diff', { joins: {}, leaves: { ann: { metas: [meta('a1')] } } });
  assert.equal(syncs, 2);
  assert.deepEqual(presence.list((key) => key), ['bob']);
});

test('after a rejoin, diffs wait again and the new state replaces the old', () => {
  const channel = fakeChannel();
  const presence = new Presence(channel);
  const events = [];
  presence.onJoin((key) => events.push(`+${key}`));
  presence.onLeave((key) => events.push(`-${key}`));
  channel.emit('presence_state', { ann: { metas: [meta('a1')] }, bob: { metas: [meta('b1')] } });
  channel.joinRef = '5'; // the channel rejoined
  channel.emit('presence_diff', { joins: { cy: { metas: [meta('c1')] } }, leaves: {} });
  assert.deepEqual(presence.list((key) => key).sort(), ['ann', 'bob'], 'held back until the new state');
  channel.emit('presence_state', { ann: { metas: [meta('a1')] } });
  assert.deepEqual(presence.list((key) => key).sort(), ['ann', 'cy']);
  assert.deepEqual(events, ['+ann', '+bob', '-bob', '+cy']);
});

test('malformed entries from the server are skipped; __proto__ is an ordinary key', () => {
  const channel = fakeChannel();
  const presence = new Presence(channel);
  channel.emit('presence_state', JSON.parse('{"ok":{"metas":[{"phx_ref":"1"}]},"bad":{"metas":3},"worse":null,"__proto__":{"metas":[{"phx_ref":"2"}]}}'));
  assert.deepEqual(presence.list((key) => key).sort(), ['__proto__', 'ok']);
  assert.equal({}.metas, undefined, 'no prototype was polluted');
  channel.emit('presence_diff', null);
  channel.emit('presence_diff', { joins: 'x', leaves: [1] });
  assert.deepEqual(presence.list((key) => key).sort(), ['__proto__', 'ok']);
});
