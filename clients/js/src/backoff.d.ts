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
