// A minimal typed event emitter shared by the socket, channel and presence classes.
// Not EventTarget: listeners get plain objects, `on` hands back its own unsubscribe
// function, and one throwing listener neither stops the others nor corrupts the state
// machine that is emitting.

export class Emitter {
  /** @type {Map<string, Set<Function>>} */
  #listeners = new Map();

  /**
   * @param {string} event
   * @param {Function} listener
   * @returns {() => void} removes this listener
   */
  on(event, listener) {
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => this.off(event, listener);
  }

  /**
   * @param {string} event
   * @param {Function} [listener] all of the event's listeners when omitted
   */
  off(event, listener) {
    if (listener === undefined) this.#listeners.delete(event);
    else this.#listeners.get(event)?.delete(listener);
  }

  /**
   * @param {string} event
   * @param {...unknown} args
   */
  emit(event, ...args) {
    const set = this.#listeners.get(event);
    if (!set) return;
    // A copy, so that listeners may unsubscribe (or subscribe) while being called.
    for (const listener of [...set]) {
      try {
        listener(...args);
      } catch (error) {
        reportLater(error);
      }
    }
  }
}

/**
 * Reports an error without throwing into the caller: it still surfaces (console in
 * browsers, 'uncaughtException' in Node, as EventTarget does), but only after the code
 * that caught it has finished its own bookkeeping.
 * @param {unknown} error
 */
export function reportLater(error) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(error);
  else setTimeout(() => { throw error; }, 0);
}
