/** Exponential backoff bounds: attempt n waits a random time in [0, min(maxMs, baseMs * 2^n)). */
export interface BackoffOptions {
  baseMs: number;
  maxMs: number;
}

/**
 * The delay before reconnect attempt `attempt` (0 for the first retry), with full
 * jitter. `random` is a source in [0, 1), injectable for tests.
 */
export function backoffDelay(attempt: number, options: BackoffOptions, random?: () => number): number;

/**
 * The earliest retry (ms) a close reason asks for: `retry-after=SECONDS` or
 * `Retry-After: SECONDS` anywhere in it; `undefined` when there is none.
 */
export function retryAfterHint(reason: string): number | undefined;

/** The close codes after which the client waits a restart window: 1001, 1012, 1013. */
export const COME_BACK_LATER: readonly number[];

/** A reconnect window in milliseconds: a client reconnects at a random moment in [minMs, maxMs). */
export interface RestartWindow {
  minMs: number;
  maxMs: number;
}

/**
 * The window a close reason suggests: `retry in MIN-MAXs` anywhere in it (seconds,
 * decimals allowed); `undefined` when there is none.
 */
export function restartWindowHint(reason: string): RestartWindow | undefined;

/** A uniformly random delay in [minMs, maxMs). `random` is a source in [0, 1). */
export function restartDelay(window: RestartWindow, random?: () => number): number;
