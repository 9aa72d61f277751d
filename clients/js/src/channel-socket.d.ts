import type { BackoffOptions, RestartWindow } from './backoff.js';
import type { Channel } from './channel.js';
import type { Message } from './serializer.js';
import type { AttemptContext, CloseInfo, ReconnectingSocketEvents, SocketState, WebSocketConstructor, WebSocketLike } from './socket.js';

export interface SocketOptions {
  /** Query params of the connection; a function is called per attempt. */
  params?: Record<string, string | number | boolean> | (() => Record<string, string | number | boolean>);
  /**
   * The auth token, sent as phoenix.js 1.8 sends it: in `Sec-WebSocket-Protocol`
   * (`phoenix` and `base64url.bearer.phx.{token}`), not in the URL. A function is called
   * before every attempt and may return a promise; `expired` is true after the server
   * closed with 4401. Nothing (`null`, `undefined`, `''`) connects without a token.
   */
  authToken?: string | ((context: AttemptContext) => string | null | undefined | Promise<string | null | undefined>);
  /** Default timeout of joins and pushes. Default 10 000 ms. */
  timeoutMs?: number;
  /** Default 30 000 ms. */
  heartbeatIntervalMs?: number;
  /** Default 10 000 ms. */
  heartbeatTimeoutMs?: number;
  /** Rejoin delays of a channel that errored. Default `{baseMs: 1000, maxMs: 10_000}`. */
  rejoin?: Partial<BackoffOptions>;
  /** Pushes a channel holds until joined. Default 100. */
  maxBufferedPushes?: number;
  /** Reconnect delays. Default `{baseMs: 500, maxMs: 30_000}`. */
  backoff?: Partial<BackoffOptions>;
  connectTimeoutMs?: number;
  closeTimeoutMs?: number;
  stableAfterMs?: number;
  maxRetryAfterMs?: number;
  /** The wait after a server's 1001/1012/1013, as on `ReconnectingSocket`. Default `{minMs: 1_000, maxMs: 5_000}`. */
  restartWindow?: Partial<RestartWindow>;
  shouldReconnect?: (info: CloseInfo) => boolean;
  WebSocket?: WebSocketConstructor;
  random?: () => number;
  now?: () => number;
}

export interface SocketEvents {
  open: ReconnectingSocketEvents['open'];
  close: ReconnectingSocketEvents['close'];
  reconnecting: ReconnectingSocketEvents['reconnecting'];
  /** The server refused the credentials (3000 or 3003); no retry follows. */
  unauthorized: ReconnectingSocketEvents['unauthorized'];
  /** Every decoded message, heartbeat replies included. */
  message: Message;
  /** A frame that is not a V2 message (it was dropped), or the `authToken` function failed (`data` undefined; the attempt counts as failed). */
  error: { error: Error; data: unknown };
}

/** A Phoenix V2 channels socket. */
export declare class Socket {
  /** `endPoint`: e.g. `wss://host/socket`, or `/socket` in a page. */
  constructor(endPoint: string, options?: SocketOptions);
  readonly state: SocketState;
  readonly channels: Channel[];
  /** The WebSocket of the current attempt, if any (phoenix.js `conn`). */
  readonly webSocket: WebSocketLike | null;
  /** The URL of the next attempt: `{endPoint}/websocket?{params}&vsn=2.0.0`. */
  endPointURL(): string;
  connect(): void;
  /** Closes without reconnecting; channels rejoin on the next `connect()`. */
  disconnect(code?: number, reason?: string): void;
  isConnected(): boolean;
  channel(topic: string, params?: object | (() => object)): Channel;
  on<K extends keyof SocketEvents>(event: K, listener: (event: SocketEvents[K]) => void): () => void;
  off<K extends keyof SocketEvents>(event: K, listener?: (event: SocketEvents[K]) => void): void;
}
