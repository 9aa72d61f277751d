/** A Phoenix V2 message. */
export interface Message<P = unknown> {
  join_ref: string | null;
  ref: string | null;
  topic: string;
  event: string;
  payload: P;
  /** A broadcast's position in its topic's stream, when the topic keeps history (JSON broadcasts only). */
  position?: Position;
}

/** Where a message sits in a topic's stream (a topic the server keeps history for). */
export interface Position {
  /** The message's number in the stream: 1, 2, 3… (0: before the first). */
  offset: number;
  /** The stream's incarnation, 16 hex digits: a new epoch means the history was lost. */
  epoch: string;
}

/** Whether a payload goes out as a binary frame (ArrayBuffer or typed array). */
export function isBinary(payload: unknown): payload is ArrayBuffer | ArrayBufferView;

/** A JSON text frame, or a binary push for a binary payload. */
export function encode(message: Message): string | Uint8Array;

/** Decodes a server frame; throws a TypeError when it is not a V2 message. */
export function decode(frame: string | ArrayBuffer | ArrayBufferView): Message;
