// Reconnect delays: exponential backoff with full jitter, the server's retry hint, and
// the randomized wait after a server restart.

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

/** Close codes that mean "the server is going away, come back later". */
export const COME_BACK_LATER = Object.freeze([
  1001, // Going Away (RFC 6455 section 7.4.1): a server shutting down
  1012, // Service Restart (IANA WebSocket close code registry)
  1013, // Try Again Later (IANA WebSocket close code registry)
]);

const WINDOW = /retry in\s+(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*s\b/i;

/**
 * The reconnect window a server suggested in its close reason, in milliseconds:
 * `retry in MIN-MAXs` anywhere in it (seconds, decimals allowed), as switchboard's hub
 * writes it on a restart (`server restarting; retry in 1-10s`). `undefined` when there
 * is none or it is empty or reversed.
 *
 * @param {string} reason the close frame's reason
 * @returns {{minMs: number, maxMs: number} | undefined}
 */
export function restartWindowHint(reason) {
  const match = typeof reason === 'string' ? WINDOW.exec(reason) : null;
  if (!match) return undefined;
  const [minMs, maxMs] = [match[1], match[2]].map((s) => Math.round(Number(s) * 1000));
  return minMs <= maxMs ? { minMs, maxMs } : undefined;
}

/**
 * A uniformly random delay in [minMs, maxMs): each client of a restarted server picks
 * its own moment in the window, so that the server sees them come back spread over it
 * rather than all in the same instant (a reconnect storm).
 *
 * @param {{minMs: number, maxMs: number}} window
 * @param {() => number} [random] a source in [0, 1), injectable for tests
 * @returns {number} milliseconds
 */
export function restartDelay({ minMs, maxMs }, random = Math.random) {
  return minMs + Math.floor(random() * Math.max(0, maxMs - minMs));
}
