// Phoenix V2 wire format (`vsn=2.0.0`), as phoenix.js speaks it.
//
// Text frames carry JSON arrays `[join_ref, ref, topic, event, payload]`; a broadcast on
// a topic with history (switchboard streams) has a sixth element, its position in the
// topic's stream, `{offset, epoch}`, which phoenix.js ignores. Binary frames
// carry binary payloads behind a header of one-byte lengths:
//
//   push (client to server)  0 | join_ref len | ref len | topic len | event len | strings | payload
//   push (server to client)  0 | join_ref len | topic len | event len | strings | payload
//   reply                    1 | join_ref len | ref len | topic len | status len | strings | payload
//   broadcast                2 | topic len | event len | strings | payload
//
// Strings are UTF-8 (phoenix.js writes char codes, which agrees for ASCII; the server
// reads UTF-8). Everything decoded came from the network: it is checked, and a frame that
// does not fit this shape is an error, never a partial message.

const KIND_PUSH = 0;
const KIND_REPLY = 1;
const KIND_BROADCAST = 2;

const encoder = new TextEncoder();
// fatal: invalid UTF-8 in a header is a malformed frame, not U+FFFD.
const decoder = new TextDecoder('utf-8', { fatal: true });

/**
 * @typedef {object} Message
 * @property {string | null} join_ref
 * @property {string | null} ref
 * @property {string} topic
 * @property {string} event
 * @property {unknown} payload
 * @property {Position} [position] a broadcast's position in its topic's stream, when
 *   the topic keeps history (JSON broadcasts only)
 */

/**
 * @typedef {object} Position
 * @property {number} offset the message's number in its stream: 1, 2, 3…
 * @property {string} epoch the stream's incarnation, 16 hex digits
 */

/**
 * Whether a payload goes out as a binary frame.
 * @param {unknown} payload
 */
export function isBinary(payload) {
  return payload instanceof ArrayBuffer || ArrayBuffer.isView(payload);
}

/**
 * Encodes a message from client to server: a string (JSON) or, for a binary payload,
 * the bytes of a binary push.
 * @param {Message} message
 * @returns {string | Uint8Array}
 */
export function encode({ join_ref, ref, topic, event, payload }) {
  if (!isBinary(payload)) return JSON.stringify([join_ref, ref, topic, event, payload]);
  const strings = [join_ref ?? '', ref ?? '', topic, event].map((s) => encoder.encode(s));
  for (const bytes of strings) {
    if (bytes.length > 255) {
      throw new RangeError('join_ref, ref, topic and event must each fit in 255 bytes in a binary push');
    }
  }
  const body = ArrayBuffer.isView(payload)
    ? new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength)
    : new Uint8Array(payload);
  const headerLength = 1 + strings.length;
  const out = new Uint8Array(headerLength + strings.reduce((n, s) => n + s.length, 0) + body.length);
  out[0] = KIND_PUSH;
  let offset = headerLength;
  strings.forEach((bytes, i) => {
    out[1 + i] = bytes.length;
    out.set(bytes, offset);
    offset += bytes.length;
  });
  out.set(body, offset);
  return out;
}

/**
 * Decodes a frame from the server. Binary payloads come out as `ArrayBuffer`s; a binary
 * reply's payload is `{status, response: ArrayBuffer}`, as phoenix.js gives it.
 * @param {string | ArrayBuffer | ArrayBufferView} frame
 * @returns {Message}
 * @throws {TypeError} when the frame is not a V2 message
 */
export function decode(frame) {
  if (typeof frame === 'string') return decodeText(frame);
  const bytes = ArrayBuffer.isView(frame)
    ? new Uint8Array(frame.buffer, frame.byteOffset, frame.byteLength)
    : new Uint8Array(frame);
  return decodeBinary(bytes);
}

function decodeText(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch {
    throw new TypeError('malformed message: not JSON');
  }
  if (!Array.isArray(value) || (value.length !== 5 && value.length !== 6)) {
    throw new TypeError('malformed message: not a 5-element array (6 with a position)');
  }
  const [join_ref, ref, topic, event, payload, position] = value;
  if (!isRef(join_ref) || !isRef(ref) || typeof topic !== 'string' || typeof event !== 'string') {
    throw new TypeError('malformed message: refs must be strings or null, topic and event strings');
  }
  if (value.length === 5) return { join_ref, ref, topic, event, payload };
  if (!isPosition(position)) {
    throw new TypeError('malformed message: a position must be {offset: integer >= 0, epoch: hex string}');
  }
  return { join_ref, ref, topic, event, payload, position: { offset: position.offset, epoch: position.epoch } };
}

/**
 * Whether `value` is a stream position as the server writes it.
 * @param {unknown} value
 * @returns {value is Position}
 */
export function isPosition(value) {
  return (
    typeof value === 'object' && value !== null &&
    Number.isSafeInteger(value.offset) && value.offset >= 0 &&
    typeof value.epoch === 'string' && /^[0-9a-f]{1,16}$/i.test(value.epoch)
  );
}

function isRef(value) {
  return value === null || typeof value === 'string';
}

function decodeBinary(bytes) {
  const kind = bytes[0];
  // How many one-byte lengths follow the kind, per kind.
  const fields = { [KIND_PUSH]: 3, [KIND_REPLY]: 4, [KIND_BROADCAST]: 2 }[kind];
  if (fields === undefined) throw new TypeError(`malformed binary message: unknown kind ${kind}`);
  if (bytes.length < 1 + fields) throw new TypeError('malformed binary message: short header');
  let offset = 1 + fields;
  const strings = [];
  for (let i = 0; i < fields; i++) {
    const length = bytes[1 + i];
    if (offset + length > bytes.length) throw new TypeError('malformed binary message: lengths exceed the frame');
    try {
      strings.push(decoder.decode(bytes.subarray(offset, offset + length)));
    } catch {
      throw new TypeError('malformed binary message: header is not UTF-8');
    }
    offset += length;
  }
  // A copy, so the payload does not keep (or expose) the rest of the frame's buffer.
  const payload = bytes.slice(offset).buffer;
  switch (kind) {
    case KIND_PUSH: {
      const [join_ref, topic, event] = strings;
      return { join_ref, ref: null, topic, event, payload };
    }
    case KIND_REPLY: {
      const [join_ref, ref, topic, status] = strings;
      return { join_ref, ref, topic, event: 'phx_reply', payload: { status, response: payload } };
    }
    default: {
      const [topic, event] = strings;
      return { join_ref: null, ref: null, topic, event, payload };
    }
  }
}
