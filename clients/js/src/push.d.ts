/** Rejection of an awaited push whose outcome was not `ok`. */
export declare class PushError extends Error {
  readonly status: 'error' | 'timeout' | string;
  readonly response: unknown;
}

/**
 * A message to the server and its outcome: `ok`, `error` (or another status the server
 * chose) with the reply's response, or `timeout`. Awaitable: resolves with the `ok`
 * response of the first outcome, rejects with a PushError otherwise.
 */
export declare class Push<R = any> implements PromiseLike<R> {
  readonly event: string;
  /** The ref of the latest send, which the reply echoes. */
  readonly ref: string | null;
  /** Runs `callback` for that outcome (at once if it already happened). */
  receive(status: 'ok', callback: (response: R) => void): this;
  receive(status: 'timeout', callback: (response: null) => void): this;
  receive(status: string, callback: (response: any) => void): this;
  then<T = R, E = never>(
    onFulfilled?: ((response: R) => T | PromiseLike<T>) | null,
    onRejected?: ((error: PushError) => E | PromiseLike<E>) | null,
  ): Promise<T | E>;
}
