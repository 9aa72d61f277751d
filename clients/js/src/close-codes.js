// The close codes the client acts on, and what each asks of it: the one place where
// codes are told apart (the reconnect loop in socket.js asks `afterClose`).

/**
 * The codes switchboard's servers close with to say something about the client's
 * credentials (Rust: `CloseCode::UNAUTHORIZED`, `FORBIDDEN`, `TOKEN_EXPIRED`).
 *
 * A browser cannot see the HTTP status of a refused upgrade (a 401 or 403 arrives as
 * 1006, like a server that is down), so the server accepts and closes with one of these.
 */
export const CloseCodes = Object.freeze({
  /** 3000 (IANA "Unauthorized"): credentials missing or refused; retrying is futile. */
  UNAUTHORIZED: 3000,
  /** 3003 (IANA "Forbidden"): the client is known and not allowed. */
  FORBIDDEN: 3003,
  /** 4401 (private use): the token expired; reconnect with a fresh one. */
  TOKEN_EXPIRED: 4401,
});

/**
 * What the client does after a close it did not ask for:
 * `'stop'` (no retry; the app is told with `unauthorized`), `'renew'` (retry, and the
 * next attempt asks for a fresh token), or `'retry'` (retry with backoff).
 * @param {number} code
 * @returns {'stop' | 'renew' | 'retry'}
 */
export function afterClose(code) {
  switch (code) {
    case CloseCodes.UNAUTHORIZED:
    case CloseCodes.FORBIDDEN:
      return 'stop';
    case CloseCodes.TOKEN_EXPIRED:
      return 'renew';
    default:
      return 'retry';
  }
}
