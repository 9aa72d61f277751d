/** A Phoenix V2 message. */
export interface Message<P = unknown> {
  join_ref: string | null;
  ref: string | null;
  topic: string;
  event: string;
  payload: P;
}

/** Whether a payload goes out as a binary frame (ArrayBuffer or typed array). */
export function isBinary(payload: unknown): payload is ArrayBuffer | ArrayBufferView;

/** A JSON text frame, or a binary push for a binary payload. */
export function encode(message: Message): string | Uint8Array;

/** Decodes a server frame; throws a TypeError when it is not a V2 message. */
export function decode(frame: string | ArrayBuffer | ArrayBufferView): Message;
