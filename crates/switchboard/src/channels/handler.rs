//! The server side of a client socket, as a hub [`Handler`]: it decodes each message
//! and runs the state machine of the socket's channels (join, leave, `handle_in`, and
//! the end of each channel, whatever ends it).
//!
//! The server's side of each exchange follows `Phoenix.Socket` (`handle_in` clauses)
//! and `Phoenix.Channel.Server`; each rule below names the clause it mirrors.

use super::{
    ChannelsConfig, DynChannel, Endpoint, HandleIn, Payload, Reply, Route, Socket, TerminateReason,
    heartbeat::Heartbeats,
    protocol::{self, ChannelMessage, DecodeError},
    room_name,
    socket::Params,
    state::{ConnState, Joined},
};
use crate::{
    Message,
    hub::{Connection, Handler, JoinResult, Panicked, Position, catch},
};
use serde_json::{Value, json};
use std::sync::Arc;

/// The hub handler of every socket of one endpoint.
pub(crate) struct SocketHandler {
    endpoint: Endpoint,
    routes: Vec<Route>,
    config: ChannelsConfig,
    heartbeats: Arc<Heartbeats>,
}

impl SocketHandler {
    pub(crate) fn new(endpoint: Endpoint, routes: Vec<Route>, config: ChannelsConfig) -> Self {
        let heartbeats = Heartbeats::new(endpoint.hub().clone(), config.heartbeat_timeout);
        Self {
            endpoint,
            routes,
            config,
            heartbeats,
        }
    }

    /// Whether `topic` keeps history ([`Channels::history`](super::Channels::history)):
    /// its joins recover from a `_position`. The hub's rules decide, as for its
    /// broadcasts.
    fn keeps_history(&self, topic: &str) -> bool {
        self.endpoint.hub().is_framed_stream(&room_name(topic))
    }

    /// The endpoint the sockets are on.
    pub(super) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The channel that serves `topic`, the topic's parameters, and the pattern
    /// that matched.
    fn route(&self, topic: &str) -> Option<(Arc<dyn DynChannel>, Params, &str)> {
        self.routes.iter().find_map(|route| {
            route
                .pattern
                .matches(topic)
                .map(|params| (route.channel.clone(), params, route.pattern.as_str()))
        })
    }

    /// Counts a join's result for its topic pattern (empty when none matched).
    fn count_join(&self, pattern: &str, result: JoinResult) {
        if let Some(instruments) = self.endpoint.hub().instruments() {
            instruments.channel_join(pattern, result);
        }
    }

    async fn dispatch(&self, conn: &Connection, state: &ConnState, message: ChannelMessage) {
        // Phoenix.Socket: `handle_in(_, %{topic: "phoenix", event: "heartbeat"})` answers
        // before any channel lookup.
        if message.topic == protocol::HEARTBEAT_TOPIC && message.event == protocol::HEARTBEAT {
            reply(
                conn,
                None,
                message.msg_ref.as_deref(),
                &message.topic,
                &Reply::ok(json!({})),
            );
            return;
        }
        match message.event.as_str() {
            protocol::JOIN => self.join(conn, state, message).await,
            protocol::LEAVE => self.leave(conn, state, message).await,
            _ => self.handle_in(conn, state, message).await,
        }
    }

    async fn join(&self, conn: &Connection, state: &ConnState, message: ChannelMessage) {
        let ChannelMessage {
            join_ref,
            msg_ref,
            topic,
            payload,
            ..
        } = message;
        let msg_ref = msg_ref.as_deref();
        let join_ref = join_ref.or_else(|| msg_ref.map(str::to_owned));
        let refuse = |reason: &str| {
            tracing::debug!(topic, reason, "channel join refused");
            let reason = json!({ "reason": reason });
            reply(
                conn,
                join_ref.as_deref(),
                msg_ref,
                &topic,
                &Reply::error(reason),
            );
        };
        // Checked first, so that a long topic costs nothing but this reply.
        if topic.len() > self.config.max_topic_len {
            self.count_join("", JoinResult::Refused);
            refuse("topic too long");
            return;
        }
        // Phoenix.Socket, join of a topic already joined: the old channel is shut down
        // and the client told with phx_close (its old join_ref) before the new join.
        if let Some(old) = state.remove(&topic) {
            self.end(
                conn,
                old,
                TerminateReason::DuplicateJoin,
                Some(protocol::CLOSE),
            )
            .await;
        }
        let Some((channel, params, pattern)) = self.route(&topic) else {
            tracing::debug!(topic, reason = "unmatched topic", "channel join refused");
            self.count_join("", JoinResult::Refused);
            // Phoenix.Socket `encode_ignore`: the reply carries no join_ref.
            let reason = json!({"reason": "unmatched topic"});
            reply(conn, None, msg_ref, &topic, &Reply::error(reason));
            return;
        };
        if state.len() >= self.config.max_channels {
            self.count_join(pattern, JoinResult::Refused);
            refuse("too many channels");
            return;
        }
        // phoenix.js sends the channel's params as a JSON object; a binary join has no
        // meaning in Phoenix (V2JSONSerializer decodes binary frames as pushes only).
        let Payload::Json(mut payload) = payload else {
            self.count_join(pattern, JoinResult::Refused);
            refuse("join payload must be json");
            return;
        };
        // On a topic with history, where the client was is the server's, not the
        // channel's: taken out before `join` sees the payload. Elsewhere the payload is
        // the channel's, whatever its keys.
        let history = self.keeps_history(&topic);
        let since = match history.then(|| protocol::take_position(&mut payload)) {
            Some(Err(error)) => {
                self.count_join(pattern, JoinResult::Refused);
                refuse(&error.to_string());
                return;
            }
            Some(Ok(since)) => since,
            None => None,
        };
        let socket = Socket::new(
            conn.clone(),
            topic.clone(),
            join_ref.clone(),
            params,
            self.endpoint.clone(),
        );
        self.endpoint.presence().joining(&socket);
        let result = catch(channel.join(&topic, payload, &socket)).await;
        let refs = (join_ref.as_deref(), msg_ref);
        let response = match result {
            Ok(Ok(response)) => response,
            Ok(Err(reason)) => {
                tracing::debug!(topic, %reason, "channel join refused");
                self.count_join(pattern, JoinResult::Error);
                self.fail_join(conn, &socket, refs, reason);
                return;
            }
            Err(Panicked) => {
                tracing::error!(topic, "channel join panicked");
                self.count_join(pattern, JoinResult::Error);
                // Phoenix.Channel.Server.join: a join that crashes answers this.
                self.fail_join(conn, &socket, refs, json!({"reason": "join crashed"}));
                return;
            }
        };
        let joined = Joined { socket, channel };
        let subscribed = match history {
            true => {
                self.join_stream(conn, state, joined, since, refs, response)
                    .await
            }
            false => self.join_live(conn, state, joined, refs, response),
        };
        // The hub refuses the room past `max_rooms_per_connection` (set below
        // `max_channels`, or rooms the application joined itself): the join fails as
        // one the channel refused, rather than succeed without its broadcasts.
        let result = match subscribed {
            true => JoinResult::Ok,
            false => JoinResult::Refused,
        };
        self.count_join(pattern, result);
    }

    /// The end of an accepted join of a topic without history: subscribes the socket
    /// (Phoenix.Channel.Server `init_join` subscribes before the reply leaves), then
    /// sends the ok reply. `false` when the hub refused the room.
    fn join_live(
        &self,
        conn: &Connection,
        state: &ConnState,
        joined: Joined,
        refs: (Option<&str>, Option<&str>),
        response: Value,
    ) -> bool {
        let socket = &joined.socket;
        let topic = socket.topic();
        if let Err(error) = self.endpoint.presence().subscribe(socket, conn) {
            tracing::debug!(topic, %error, "channel join refused");
            self.fail_join(conn, socket, refs, json!({"reason": error.to_string()}));
            return false;
        }
        state.insert(topic.to_owned(), joined.clone());
        tracing::debug!(topic, "channel joined");
        reply(conn, refs.0, refs.1, topic, &Reply::ok(response));
        socket.joined();
        true
    }

    /// The end of an accepted join of a topic with history: subscribes the socket from
    /// `since` and sends the ok reply with the stream's position (`stream`), then the
    /// socket's held pushes, then the broadcasts it missed, then live ones. `false`
    /// when the hub refused the room.
    async fn join_stream(
        &self,
        conn: &Connection,
        state: &ConnState,
        joined: Joined,
        since: Option<Position>,
        (join_ref, msg_ref): (Option<&str>, Option<&str>),
        response: Value,
    ) -> bool {
        let socket = &joined.socket;
        let topic = socket.topic();
        let presence = self.endpoint.presence();
        let subscribed = presence
            .subscribe_from(socket, conn, since, |recovery| {
                // Recovered only from a position the client sent (`since`).
                let reply = protocol::encode_join_reply(
                    join_ref,
                    msg_ref,
                    topic,
                    &response,
                    recovery.recovered,
                    recovery.position,
                );
                conn.send(reply);
                socket.joined();
            })
            .await;
        match subscribed {
            Ok(recovery) => {
                tracing::debug!(
                    topic,
                    recovered = recovery.recovered,
                    missed = recovery.missed,
                    "channel joined"
                );
                state.insert(topic.to_owned(), joined.clone());
                true
            }
            Err(error) => {
                tracing::debug!(topic, %error, "channel join refused");
                let reason = json!({"reason": error.to_string()});
                self.fail_join(conn, socket, (join_ref, msg_ref), reason);
                false
            }
        }
    }

    /// A join that does not stand (refused by the channel or the hub, or crashed): the
    /// socket closes, its presences are forgotten, and the client gets the error reply.
    fn fail_join(
        &self,
        conn: &Connection,
        socket: &Socket,
        (join_ref, msg_ref): (Option<&str>, Option<&str>),
        reason: Value,
    ) {
        socket.close();
        self.endpoint.presence().forget_socket(socket);
        reply(
            conn,
            join_ref,
            msg_ref,
            socket.topic(),
            &Reply::error(reason),
        );
    }

    async fn leave(&self, conn: &Connection, state: &ConnState, message: ChannelMessage) {
        let msg_ref = message.msg_ref.as_deref();
        let topic = &message.topic;
        let Some(joined) = state.get(topic) else {
            // Phoenix.Socket: a leave of a topic not joined is answered ok.
            let join_ref = message.join_ref.as_deref();
            reply(conn, join_ref, msg_ref, topic, &Reply::ok(json!({})));
            return;
        };
        // Phoenix.Socket: a leave with another join_ref raced a server close of that
        // join, whose phx_close already went out: no answer.
        if message.join_ref.is_some() && message.join_ref.as_deref() != joined.socket.join_ref() {
            return;
        }
        state.remove(topic);
        // Phoenix.Channel.Server: `{:stop, {:shutdown, :left}, :ok, socket}`, the reply
        // and then phx_close.
        conn.leave(&room_name(topic));
        reply(
            conn,
            joined.socket.join_ref(),
            msg_ref,
            topic,
            &Reply::ok(json!({})),
        );
        self.end(conn, joined, TerminateReason::Left, Some(protocol::CLOSE))
            .await;
    }

    async fn handle_in(&self, conn: &Connection, state: &ConnState, message: ChannelMessage) {
        let ChannelMessage {
            msg_ref,
            topic,
            event,
            payload,
            ..
        } = message;
        let msg_ref = msg_ref.as_deref();
        let Some(joined) = state.get(&topic) else {
            // Phoenix.Socket: a push to a topic not joined is `encode_ignore`d.
            let reason = json!({"reason": "unmatched topic"});
            reply(conn, None, msg_ref, &topic, &Reply::error(reason));
            return;
        };
        let socket = &joined.socket;
        let result = catch(joined.channel.handle_in(&event, payload, socket)).await;
        match result {
            Ok(HandleIn::NoReply) => {}
            Ok(HandleIn::Reply(answer)) => {
                reply(conn, socket.join_ref(), msg_ref, &topic, &answer);
            }
            Ok(HandleIn::Stop(answer)) => {
                if let Some(answer) = answer {
                    reply(conn, socket.join_ref(), msg_ref, &topic, &answer);
                }
                if let Some(joined) = state.remove(&topic) {
                    self.end(
                        conn,
                        joined,
                        TerminateReason::Stopped,
                        Some(protocol::CLOSE),
                    )
                    .await;
                }
            }
            Err(Panicked) => {
                tracing::error!(topic, event, "channel handle_in panicked");
                // Phoenix.Socket `encode_on_exit`: a channel that crashed sends
                // phx_error, and phoenix.js rejoins.
                if let Some(joined) = state.remove(&topic) {
                    self.end(
                        conn,
                        joined,
                        TerminateReason::Crashed,
                        Some(protocol::ERROR),
                    )
                    .await;
                }
            }
        }
    }

    /// Ends a channel already removed from the socket's table: unsubscribes it, tells
    /// the client (`notify`), leaves its presences, and runs `terminate`.
    async fn end(
        &self,
        conn: &Connection,
        joined: Joined,
        reason: TerminateReason,
        notify: Option<&str>,
    ) {
        let Joined { socket, channel } = joined;
        tracing::debug!(topic = socket.topic(), ?reason, "channel left");
        conn.leave(&room_name(socket.topic()));
        socket.close();
        if let Some(event) = notify {
            conn.send(protocol::encode_control(
                socket.join_ref(),
                socket.topic(),
                event,
            ));
        }
        self.endpoint.presence().untrack_socket(&socket);
        if catch(channel.terminate(reason, &socket)).await.is_err() {
            tracing::error!(topic = socket.topic(), "channel terminate panicked");
        }
    }

    /// A message that is not V2: an error reply when it says which message it was,
    /// otherwise a close that says why.
    fn malformed(&self, conn: &Connection, message: &Message, error: &DecodeError) {
        tracing::debug!(%error, "malformed channel message");
        let salvaged = match message {
            Message::Text(text) => protocol::salvage(text.as_str()),
            _ => None,
        };
        match salvaged {
            Some((join_ref, msg_ref, topic)) => {
                let reason = json!({"reason": format!("malformed message: {error}")});
                reply(
                    conn,
                    join_ref.as_deref(),
                    Some(&msg_ref),
                    &topic,
                    &Reply::error(reason),
                );
            }
            None => {
                conn.close_for(error.close_code(), format!("malformed message: {error}"));
            }
        }
    }
}

impl Handler for SocketHandler {
    async fn on_open(&self, conn: &Connection) {
        if let Some(state) = conn.internal::<Arc<ConnState>>() {
            self.heartbeats.watch(conn, state);
            state.expire(conn);
        }
    }

    async fn on_message(&self, conn: &Connection, message: Message) {
        let Some(state) = conn.internal::<Arc<ConnState>>() else {
            return;
        };
        state.heard(conn.hub());
        match protocol::decode(&message) {
            Some(Ok(decoded)) => self.dispatch(conn, state, decoded).await,
            Some(Err(error)) => self.malformed(conn, &message, &error),
            None => {}
        }
    }

    /// A client's WebSocket ping counts as a heartbeat, as every frame received resets
    /// Phoenix's transport timeout (cowboy's `idle_timeout`): the client chose to send
    /// it, unlike a pong, which answers the hub's own ping.
    async fn on_ping(&self, conn: &Connection, _payload: &[u8]) {
        if let Some(state) = conn.internal::<Arc<ConnState>>() {
            state.heard(conn.hub());
        }
    }

    async fn on_close(&self, conn: &Connection, _code: crate::CloseCode, _reason: &str) {
        self.heartbeats.unwatch(conn);
        let Some(state) = conn.internal::<Arc<ConnState>>() else {
            return;
        };
        state.stop_expiry();
        // Draining the table also breaks the cycle connection → state → socket →
        // connection.
        for joined in state.drain() {
            self.end(conn, joined, TerminateReason::Closed, None).await;
        }
    }
}

/// Sends a `phx_reply`; an encoding failure (a binary status or ref over 255 bytes) is
/// answered with an error reply in JSON instead, which always encodes.
fn reply(
    conn: &Connection,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    reply: &Reply,
) {
    let message = protocol::encode_reply(join_ref, msg_ref, topic, &reply.status, &reply.response)
        .unwrap_or_else(|error| {
            tracing::warn!(%error, topic, "reply could not be encoded");
            let reason = Payload::Json(json!({"reason": error.to_string()}));
            match protocol::encode_reply(join_ref, msg_ref, topic, "error", &reason) {
                Ok(message) => message,
                Err(_) => Message::text("[]"),
            }
        });
    conn.send(message);
}
