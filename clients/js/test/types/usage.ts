// Compiled (never run) by types.test.js: the declarations accept what the README shows,
// and reject misuse (each @ts-expect-error must be an error, or tsc fails).

import {
  afterClose,
  backoffDelay,
  CloseCodes,
  decode,
  encode,
  Presence,
  PushError,
  ReconnectingSocket,
  restartDelay,
  restartWindowHint,
  retryAfterHint,
  Socket,
  type Message,
  type Position,
  type PresenceMeta,
  type Recovery,
  type SendData,
} from '@switchboard/client';

const raw = new ReconnectingSocket(() => `wss://example.com/ws?t=${Date.now()}`, {
  backoff: { baseMs: 250 },
  queue: { maxMessages: 10, ttlMs: 5_000 },
  heartbeat: { intervalMs: 15_000, timeoutMs: 5_000, message: 'ping', isReply: (data) => data === 'pong' },
  shouldReconnect: ({ code }) => code !== 4401,
  restartWindow: { maxMs: 10_000 },
});
const off: () => void = raw.on('message', ({ data }) => {
  if (typeof data === 'string') data.toUpperCase();
});
off();
raw.on('close', ({ code, reason, wasClean, willReconnect }) => [code, reason, wasClean, willReconnect]);
raw.on('reconnecting', ({ attempt, delayMs }) => attempt + delayMs);
raw.on('drop', ({ reason }) => {
  const r: 'overflow' | 'expired' | 'closed' = reason;
  return r;
});
const result: 'sent' | 'queued' | 'dropped' = raw.send(new Uint8Array([1]), { ttlMs: 100 });
const state: string = raw.state;
const counts: number = raw.queued + raw.dropped;
raw.close(4000, 'bye');
// @ts-expect-error: not an event
raw.on('opened', () => {});
// @ts-expect-error: a number is not sendable
raw.send(42);

const socket = new Socket('/socket', { params: () => ({ token: 't' }), heartbeatIntervalMs: 10_000 });
socket.connect();
socket.on('error', ({ error }) => error.message);
const channel = socket.channel('room:lobby', { user: 'ann' });
channel
  .join()
  .receive('ok', (response) => response)
  .receive('error', ({ reason }) => reason)
  .receive('timeout', () => {});
channel.on<{ user: string; body: string }>('new_msg', ({ user, body }) => user + body);
async function chat(): Promise<void> {
  const reply = await channel.push<{ id: number }>('new_msg', { body: 'hi' });
  const id: number = reply.id;
  try {
    await channel.push('ping', new Uint8Array([1, 2]), 1_000);
  } catch (error) {
    if (error instanceof PushError) error.status.toLowerCase();
  }
  void id;
}
void chat;

interface Meta extends PresenceMeta {
  online_at: string;
}
const presence = new Presence<Meta>(channel);
presence.onSync(() => {
  const names: string[] = presence.list((user, { metas }) => `${user} (${metas.length}) ${metas[0]?.online_at}`);
  return names;
});
presence.onJoin((key, current, joined) => [key, current?.metas, joined.metas]);

// Streams: the channel's position, the recovery signal, a broadcast's position.
const where: Position | null = channel.position;
const offRecovery: () => void = channel.onRecovery(({ recovered, position }: Recovery) => {
  if (!recovered) return position?.epoch.toUpperCase();
  return position?.offset.toFixed();
});
offRecovery();
const positioned: Position | undefined = decode('[null,null,"t","e",{},{"offset":1,"epoch":"ab"}]').position;
// @ts-expect-error: the position is read-only
channel.position = null;
void [where, positioned];

const message: Message = decode('[null,"1","phoenix","phx_reply",{}]');
const frame: string | Uint8Array = encode(message);
const delay: number = backoffDelay(3, { baseMs: 500, maxMs: 30_000 }, Math.random);
const hint: number | undefined = retryAfterHint('retry-after=5');
const window = restartWindowHint('server restarting; retry in 1-10s');
const wait: number = restartDelay(window ?? { minMs: 1_000, maxMs: 5_000 });
const data: SendData = 'text';

void [result, state, counts, frame, delay, hint, wait, data];

// Credentials: a token function per attempt, the close codes, the unauthorized event.
const authed = new Socket('/socket', {
  authToken: async ({ expired, attempt }) => (expired ? `fresh-${attempt}` : 'cached'),
});
authed.on('unauthorized', ({ code, reason }) => `${code} ${reason}`);
const codes: readonly number[] = [CloseCodes.UNAUTHORIZED, CloseCodes.FORBIDDEN, CloseCodes.TOKEN_EXPIRED];
const action: 'stop' | 'renew' | 'retry' = afterClose(CloseCodes.TOKEN_EXPIRED);
const protocol: string | undefined = authed.webSocket?.protocol;
new ReconnectingSocket(async ({ expired }) => `wss://example.com/ws?renew=${expired}`, {
  protocols: () => ['chat'],
}).on('error', ({ error }) => error);
// @ts-expect-error: a token is a string
new Socket('/socket', { authToken: 42 });
