export { backoffDelay, COME_BACK_LATER, restartDelay, restartWindowHint, retryAfterHint } from './backoff.js';
export type { BackoffOptions, RestartWindow } from './backoff.js';
export { Channel } from './channel.js';
export type { ChannelState, Recovery } from './channel.js';
export { afterClose, CloseCodes } from './close-codes.js';
export { Socket } from './channel-socket.js';
export type { SocketEvents, SocketOptions } from './channel-socket.js';
export { Presence } from './presence.js';
export type { PresenceEntry, PresenceMeta, PresenceState, PresenceDiff } from './presence.js';
export { Push, PushError } from './push.js';
export { decode, encode } from './serializer.js';
export type { Message, Position } from './serializer.js';
export { ReconnectingSocket } from './socket.js';
export type {
  AttemptContext,
  CloseInfo,
  DropReason,
  HeartbeatOptions,
  QueueOptions,
  ReceivedData,
  ReconnectingSocketEvents,
  ReconnectingSocketOptions,
  SendData,
  SocketState,
  WebSocketConstructor,
  WebSocketLike,
} from './socket.js';
