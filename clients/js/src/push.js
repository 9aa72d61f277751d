// One message to the server and what became of it: the server's reply (`ok`, `error`,
// or any status it chose) or `timeout`.

import { reportLater } from './emitter.js';

/** Rejection value of an awaited push whose outcome was not `ok`. */
export class PushError extends Error {
  /**
   * @param {string} event
   * @param {string} status
   * @param {unknown} response
   */
  constructor(event, status, response) {
    super(`${event}: ${status}`);
    this.name = 'PushError';
    this.status = status;
    this.response = response;
  }
}

/**
 * The handle `channel.push`, `channel.join` and `channel.leave` return.
 *
 * `receive(status, callback)` runs the callback for that outcome (at once if it already
 * happened). A join push is sent again on every rejoin, and its callbacks run again for
 * each outcome. Awaiting a push (it is a thenable) gives the `ok` response of the first
 * outcome, or rejects with a {@link PushError}.
 */
export class Push {
  #event;
  /** @type {{status: string, response: unknown} | null} */
  #received = null;
  /** @type {{status: string | null, callback: Function}[]} */
  #hooks = [];
  #timer = undefined;
  /** @type {Promise<unknown> | null} */
  #promise = null;

  /**
   * @param {string} event
   * @param {unknown | (() => unknown)} payload a function is called at each send
   */
  constructor(event, payload) {
    this.#event = event;
    this.payload = payload;
    /** The ref of the latest send, which the reply echoes; set by the channel. */
    this.ref = null;
  }

  get event() {
    return this.#event;
  }

  /**
   * @param {string} status `ok`, `error`, `timeout`, or another status the server uses
   * @param {(response: any) => void} callback
   * @returns {this}
   */
  receive(status, callback) {
    if (this.#received?.status === status) callback(this.#received.response);
    this.#hooks.push({ status, callback });
    return this;
  }

  /**
   * @param {(response: any) => any} [onFulfilled]
   * @param {(error: PushError) => any} [onRejected]
   */
  then(onFulfilled, onRejected) {
    // Created on demand: a push nobody awaits must not become an unhandled rejection.
    this.#promise ??= new Promise((resolve, reject) => {
      const settle = (status, response) => {
        if (status === 'ok') resolve(response);
        else reject(new PushError(this.#event, status, response));
      };
      if (this.#received) settle(this.#received.status, this.#received.response);
      else this.#hooks.push({ status: null, callback: settle });
    });
    return this.#promise.then(onFulfilled, onRejected);
  }

  /** @internal Records an outcome and runs its callbacks. */
  _trigger(status, response) {
    this._clearTimeout();
    this.#received = { status, response };
    for (const { status: wanted, callback } of this.#hooks) {
      if (wanted !== null && wanted !== status) continue;
      try {
        if (wanted === null) callback(status, response);
        else callback(response);
      } catch (error) {
        reportLater(error);
      }
    }
  }

  /** @internal Forgets the last outcome before the push is sent again. */
  _reset() {
    this._clearTimeout();
    this.#received = null;
    this.ref = null;
  }

  /** @internal */
  _startTimeout(ms, onTimeout) {
    this._clearTimeout();
    this.#timer = setTimeout(onTimeout, ms);
  }

  /** @internal */
  _clearTimeout() {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** @internal The payload to send now. */
  _payload() {
    return typeof this.payload === 'function' ? this.payload() : this.payload;
  }
}
