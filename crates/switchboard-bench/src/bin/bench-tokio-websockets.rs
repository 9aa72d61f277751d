//! The tokio-websockets benchmark server.
//!
//! - echo: `ServerBuilder::accept`, then `next`/`send` in a loop, as its echo example;
//! - broadcast: a room of unbounded senders, a loop over them for each message, and
//!   each connection forwarding its channel into its sink (as for tokio-tungstenite).

use futures_channel::mpsc::{UnboundedSender, unbounded};
use futures_util::{SinkExt, StreamExt};
use std::{io, process::ExitCode, sync::Arc};
use switchboard_bench::server::{self, Mode, Room};
use tokio::net::TcpListener;
use tokio_websockets::{Message, ServerBuilder};

fn main() -> ExitCode {
    server::main(|listener, mode| async move {
        match mode {
            Mode::Echo => echo(listener).await,
            Mode::Broadcast => broadcast(listener).await,
        }
    })
}

async fn echo(listener: TcpListener) -> io::Result<()> {
    loop {
        let stream = server::accept(&listener).await;
        tokio::spawn(async move {
            let Ok((_, mut ws)) = ServerBuilder::new().accept(stream).await else {
                return;
            };
            while let Some(Ok(message)) = ws.next().await {
                if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn broadcast(listener: TcpListener) -> io::Result<()> {
    let room: Arc<Room<UnboundedSender<Message>>> = Room::new();
    loop {
        let stream = server::accept(&listener).await;
        let room = room.clone();
        tokio::spawn(async move {
            let Ok((_, ws)) = ServerBuilder::new().accept(stream).await else {
                return;
            };
            let (tx, rx) = unbounded();
            let id = room.join(tx);
            let (outgoing, mut incoming) = ws.split();
            let forward = rx.map(Ok).forward(outgoing);
            let receive = async {
                while let Some(Ok(message)) = incoming.next().await {
                    if message.is_text() || message.is_binary() {
                        room.for_each_except(id, |tx| {
                            let _ = tx.unbounded_send(message.clone());
                        });
                    }
                }
            };
            tokio::select! {
                _ = forward => {}
                () = receive => {}
            }
            room.leave(id);
        });
    }
}
