// @switchboard/client: a reconnecting WebSocket for plain endpoints, and a Phoenix V2
// channels client with presence. No dependencies; runs in browsers and Node >= 20.10.

export { backoffDelay, COME_BACK_LATER, restartDelay, restartWindowHint, retryAfterHint } from './backoff.js';
export { Channel } from './channel.js';
export { afterClose, CloseCodes } from './close-codes.js';
export { Socket } from './channel-socket.js';
export { Presence } from './presence.js';
export { Push, PushError } from './push.js';
export { decode, encode } from './serializer.js';
export { ReconnectingSocket } from './socket.js';
