import type { BackoffOptions, RestartWindow } from './backoff.js';

/** What `send` accepts (as `WebSocket.send` does). */
export type SendData = string | ArrayBufferLike | ArrayBufferView | Blob;

/** What a `message` event carries: text as a string, binary as an ArrayBuffer (or a Blob with `binaryType: "blob"`). */
export type ReceivedData = string | ArrayBuffer | Blob;

/** The part of the WebSocket API the client uses; browsers', Node's and `ws`'s all fit. */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  readonly extensions: string;
  readonly bufferedAmount: number;
  binaryType: string;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string; wasClean: boolean }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: SendData): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string | URL, protocols?: string | string[]) => WebSocketLike;

export interface QueueOptions {
  /** Messages held while offline. Default 100. */
  maxMessages?: number;
  /** Bytes held while offline (UTF-8 length of text). Default 1 MiB. */
  maxBytes?: number;
  /** How long a queued message stays worth sending. Default 30 000 ms. */
  ttlMs?: number;
}

export interface HeartbeatOptions {
  /** Send `message` this often while open. */
  intervalMs: number;
  /** No frame at all within this long after a heartbeat means the connection is dead. */
  timeoutMs: number;
  /** What to send; the server must answer it (or send something else) in time. */
  message: SendData | (() => SendData);
  /** Marks the server's answers, which are then not emitted as `message` events. */
  isReply?: (data: ReceivedData) => boolean;
}

/** What the `url` and `protocols` functions learn of the attempt. */
export interface AttemptContext {
  /** 0 for the first try, n for retry n. */
  attempt: number;
  /** The server said the token expired (close code 4401), and no connection opened since. */
  expired: boolean;
}

export interface ReconnectingSocketOptions {
  /** Subprotocols offered in the handshake; a function is called (and awaited) per attempt. */
  protocols?: string | string[] | ((context: AttemptContext) => string | string[] | undefined | Promise<string | string[] | undefined>);
  /** A WebSocket implementation; default `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Default `"arraybuffer"`. */
  binaryType?: 'arraybuffer' | 'blob';
  /** Default `{baseMs: 500, maxMs: 30_000}`. */
  backoff?: Partial<BackoffOptions>;
  /** An attempt whose handshake has not finished by then is abandoned. Default 10 000 ms. */
  connectTimeoutMs?: number;
  /** How long `close()` waits for the server's close frame before reporting 1006. Default 5 000 ms. */
  closeTimeoutMs?: number;
  /** A connection up this long resets the backoff. Default 5 000 ms. */
  stableAfterMs?: number;
  /** The longest wait a close reason's `retry-after` or `retry in MIN-MAXs` can impose. Default 300 000 ms. */
  maxRetryAfterMs?: number;
  /**
   * After the server closes with 1001, 1012 or 1013, the next attempt waits a random time
   * in this window, or in the one the close reason suggests (`retry in MIN-MAXs`).
   * Default `{minMs: 1_000, maxMs: 5_000}`.
   */
  restartWindow?: Partial<RestartWindow>;
  queue?: QueueOptions;
  /** Off by default: a plain endpoint needs to answer something. */
  heartbeat?: HeartbeatOptions | null;
  /** Whether to reconnect after this close (default: always, unless `close()` was called). */
  shouldReconnect?: (info: CloseInfo) => boolean;
  /** Connect from the constructor. Default true. */
  autoConnect?: boolean;
  /** A source in [0, 1) for the jitter; injectable for tests. */
  random?: () => number;
  /** A clock in ms for the queue's expiry and the stable-connection rule; injectable for tests. */
  now?: () => number;
}

export interface CloseInfo {
  /** The close code; 1006 when the connection died, timed out or never completed. */
  code: number;
  /** The close reason; `"heartbeat timeout"`, `"connect timeout"`, `"close timeout"` or `"attempt failed: …"` (a `url`/`protocols` promise rejected) for the client's own verdicts. */
  reason: string;
  wasClean: boolean;
}

export type DropReason = 'overflow' | 'expired' | 'closed';

export interface ReconnectingSocketEvents {
  /** `attempt`: how many retries it took (0: the first try). */
  open: { attempt: number };
  message: { data: ReceivedData };
  /** Only for connections that opened; `willReconnect` says whether a retry follows. */
  close: CloseInfo & { willReconnect: boolean };
  /** Before waiting `delayMs` for retry number `attempt`; `code`/`reason` of what ended the last try. */
  reconnecting: { attempt: number; delayMs: number; code: number; reason: string };
  /** A message that will never be sent. */
  drop: { data: SendData; reason: DropReason };
  /** The server refused the credentials: closed with 3000 (unauthorized) or 3003 (forbidden). No retry follows. */
  unauthorized: { code: number; reason: string };
  /** The `url` or `protocols` function threw or rejected; the attempt counts as failed. */
  error: { error: unknown };
}

export type SocketState = 'idle' | 'connecting' | 'open' | 'closing' | 'reconnecting' | 'closed';

/** A WebSocket to a plain endpoint that reconnects by itself. */
export declare class ReconnectingSocket {
  /** `url` is called (and awaited) before every attempt when it is a function. */
  constructor(
    url: string | URL | ((context: AttemptContext) => string | URL | Promise<string | URL>),
    options?: ReconnectingSocketOptions,
  );
  readonly state: SocketState;
  /** Messages in the offline queue. */
  readonly queued: number;
  /** Messages dropped so far; each also had a `drop` event. */
  readonly dropped: number;
  /** The WebSocket of the current attempt, if any. */
  readonly webSocket: WebSocketLike | null;
  /** Returns the function that removes the listener. */
  on<K extends keyof ReconnectingSocketEvents>(event: K, listener: (event: ReconnectingSocketEvents[K]) => void): () => void;
  off<K extends keyof ReconnectingSocketEvents>(event: K, listener?: (event: ReconnectingSocketEvents[K]) => void): void;
  /** Starts connecting (again, after `close()`). */
  connect(): void;
  /** Sends now when open; queues otherwise (bounded, expiring). */
  send(data: SendData, options?: { ttlMs?: number }): 'sent' | 'queued' | 'dropped';
  /** Closes without reconnecting; the queue is dropped. */
  close(code?: number, reason?: string): void;
}
