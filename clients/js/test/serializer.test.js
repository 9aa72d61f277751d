// The Phoenix V2 serializer, byte for byte (layouts from phoenix.js serializer.js).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decode, encode } from '../src/index.js';

const bytes = (...parts) => new Uint8Array(parts.flatMap((p) => (typeof p === 'string' ? [...Buffer.from(p)] : p)));

test('JSON messages are the five-element array', () => {
  const text = encode({ join_ref: '1', ref: '2', topic: 'room:lobby', event: 'new_msg', payload: { body: 'hi' } });
  assert.equal(text, '["1","2","room:lobby","new_msg",{"body":"hi"}]');
  assert.equal(encode({ join_ref: null, ref: '7', topic: 'phoenix', event: 'heartbeat', payload: {} }), '[null,"7","phoenix","heartbeat",{}]');
  assert.deepEqual(decode(text), { join_ref: '1', ref: '2', topic: 'room:lobby', event: 'new_msg', payload: { body: 'hi' } });
});

test('a binary payload goes out as a kind-0 push with four lengths', () => {
  const expected = bytes([0, 1, 2, 4, 4], '1', '12', 'room', 'ping', [9, 8, 7]);
  const message = { join_ref: '1', ref: '12', topic: 'room', event: 'ping' };
  assert.deepEqual(encode({ ...message, payload: new Uint8Array([9, 8, 7]) }), expected);
  assert.deepEqual(encode({ ...message, payload: new Uint8Array([9, 8, 7]).buffer }), expected);
  // A view into a larger buffer contributes only its own bytes.
  const view = new Uint8Array([0, 9, 8, 7, 0]).subarray(1, 4);
  assert.deepEqual(encode({ ...message, payload: view }), expected);
  assert.deepEqual(encode({ ...message, payload: new DataView(view.buffer, 1, 3) }), expected);
});

test('binary header strings are UTF-8 and limited to 255 bytes', () => {
  const out = encode({ join_ref: '1', ref: '2', topic: 'room:café', event: 'e', payload: new Uint8Array() });
  assert.equal(out[3], 10, 'é is two bytes');
  assert.throws(
    () => encode({ join_ref: '1', ref: '2', topic: 'x'.repeat(256), event: 'e', payload: new Uint8Array() }),
    RangeError,
  );
});

test('binary replies decode to {status, response: ArrayBuffer}', () => {
  const frame = bytes([1, 1, 2, 4, 2], '3', '14', 'room', 'ok', [1, 2]);
  const message = decode(frame.buffer);
  assert.equal(message.event, 'phx_reply');
  assert.deepEqual([message.join_ref, message.ref, message.topic], ['3', '14', 'room']);
  assert.equal(message.payload.status, 'ok');
  assert.ok(message.payload.response instanceof ArrayBuffer);
  assert.deepEqual([...new Uint8Array(message.payload.response)], [1, 2]);
});

test('binary broadcasts and server pushes decode with null refs', () => {
  const broadcast = decode(bytes([2, 4, 3], 'room', 'img', [5, 6, 7]).buffer);
  assert.deepEqual({ ...broadcast, payload: [...new Uint8Array(broadcast.payload)] }, {
    join_ref: null, ref: null, topic: 'room', event: 'img', payload: [5, 6, 7],
  });
  const push = decode(bytes([0, 1, 4, 3], '9', 'room', 'img', [5]).buffer);
  assert.deepEqual({ ...push, payload: [...new Uint8Array(push.payload)] }, {
    join_ref: '9', ref: null, topic: 'room', event: 'img', payload: [5],
  });
});

test('a decoded binary payload is a copy, not a window on the frame', () => {
  const frame = bytes([2, 1, 1], 't', 'e', [1, 2, 3]);
  const { payload } = decode(frame);
  assert.equal(payload.byteLength, 3);
  frame[5] = 99;
  assert.deepEqual([...new Uint8Array(payload)], [1, 2, 3]);
});

test('a broadcast on a topic with history carries its position as a sixth element', () => {
  const message = decode('[null,null,"room:a","new_msg",{"body":"hi"},{"offset":7,"epoch":"00000000000000ab"}]');
  assert.deepEqual(message, {
    join_ref: null, ref: null, topic: 'room:a', event: 'new_msg', payload: { body: 'hi' },
    position: { offset: 7, epoch: '00000000000000ab' },
  });
  // Only the position's own fields are kept.
  assert.deepEqual(decode('[null,null,"t","e",{},{"offset":0,"epoch":"1","x":1}]').position, { offset: 0, epoch: '1' });
});

test('malformed text frames are TypeErrors', () => {
  const badPositions = [
    '[null,null,"t","e",{},null]', '[null,null,"t","e",{},{"offset":-1,"epoch":"ab"}]',
    '[null,null,"t","e",{},{"offset":1.5,"epoch":"ab"}]', '[null,null,"t","e",{},{"offset":1,"epoch":"xyz"}]',
    '[null,null,"t","e",{},{"offset":1,"epoch":"00000000000000000"}]', '[null,null,"t","e",{},{"offset":"1","epoch":"ab"}]',
    '[null,null,"t","e",{},{"offset":1,"epoch":"ab"},7]',
  ];
  for (const text of ['not json', '{}', '["1","2","t","e"]', '[1,"2","t","e",{}]', '["1","2",3,"e",{}]', '["1","2","t",null,{}]', ...badPositions]) {
    assert.throws(() => decode(text), TypeError, text);
  }
});

test('malformed binary frames are TypeErrors, never partial messages', () => {
  const cases = {
    empty: [],
    'unknown kind': [3, 0, 0],
    'short header': [1, 1, 1],
    'lengths past the end': [2, 10, 1, 0x74],
    'invalid UTF-8 in a header': [2, 1, 1, 0xff, 0x65],
  };
  for (const [name, frame] of Object.entries(cases)) {
    assert.throws(() => decode(new Uint8Array(frame).buffer), TypeError, name);
  }
});
