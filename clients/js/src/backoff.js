// Reconnect delays: exponential backoff with full jitter, and the server's hint.

/**
 * The delay before reconnect attempt `attempt` (0 for the first retry): a uniformly
 * random value in [0, min(maxMs, baseMs * 2^attempt)).
 *
 * Full jitter, as in "Exponential Backoff And Jitter" (AWS Architecture Blog, 2015):
 * after a server restart every client would otherwise come back in the same instant, and
 * a spread over the whole window is what flattens that herd best.
 *
 * @param {number} attempt
 * @param {{baseMs: number, maxMs: number}} options
 * @param {() => number} [random] a source in [0, 1), injectable for tests
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, { baseMs, maxMs }, random = Math.random) {
  // 2^attempt overflows to Infinity long after the cap applies, and min() handles that.
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt));
  return Math.floor(random() * ceiling);
}

const HINT = /retry-after\s*[=:]\s*(\d+(?:\.\d+)?)/i;

/**
 * The earliest retry a server asked for in its close frame, in milliseconds.
 *
 * A browser or Node WebSocket never shows the HTTP response of a refused handshake (a
 * 503's `Retry-After` is invisible: the page sees only `close` with 1006), so the only
 * hint a server can give is in a close frame, after accepting: any code (1012 Service
 * Restart and 1013 Try Again Later fit best) with a reason containing
 * `retry-after=SECONDS` (or `Retry-After: SECONDS`).
 *
 * @param {string} reason the close frame's reason
 * @returns {number | undefined}
 */
export function retryAfterHint(reason) {
  const match = typeof reason === 'string' ? HINT.exec(reason) : null;
  return match ? Math.round(Number(match[1]) * 1000) : undefined;
}
