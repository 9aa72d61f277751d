/** The close codes of switchboard's servers about the client's credentials. */
export declare const CloseCodes: Readonly<{
  /** 3000 (IANA "Unauthorized"): credentials missing or refused; the client stops. */
  UNAUTHORIZED: 3000;
  /** 3003 (IANA "Forbidden"): the client is not allowed; the client stops. */
  FORBIDDEN: 3003;
  /** 4401: the token expired; the client reconnects with a fresh one. */
  TOKEN_EXPIRED: 4401;
}>;

/** What the client does after a close it did not ask for. */
export declare function afterClose(code: number): 'stop' | 'renew' | 'retry';
