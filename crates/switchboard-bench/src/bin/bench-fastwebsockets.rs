//! The fastwebsockets benchmark server.
//!
//! - echo: its `echo_server` example: the upgrade in a hyper 1 `http1` service, then a
//!   [`FragmentCollector`] reading and writing frames;
//! - broadcast: its `echo_server_split` shape (`split(tokio::io::split)` and a
//!   [`FragmentCollectorRead`]), with a room of unbounded senders: a loop over them for
//!   each message, and a writer task per connection writing what its channel holds
//!   (`write_frame` writes each frame at once: the API has no batching sink).

use bytes::Bytes;
use fastwebsockets::{
    FragmentCollector, FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError,
    upgrade::{UpgradeFut, upgrade},
};
use futures_channel::mpsc::{UnboundedSender, unbounded};
use futures_util::StreamExt;
use http_body_util::Empty;
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use std::{io, process::ExitCode, sync::Arc};
use switchboard_bench::server::{self, Mode, Room};
use tokio::net::TcpListener;

/// Each broadcast message, once copied out of the publisher's read buffer.
type Members = Room<UnboundedSender<(OpCode, Bytes)>>;

fn main() -> ExitCode {
    server::main(serve)
}

async fn serve(listener: TcpListener, mode: Mode) -> io::Result<()> {
    let room = Members::new();
    loop {
        let stream = server::accept(&listener).await;
        let room = room.clone();
        tokio::spawn(async move {
            let service = service_fn(move |mut request: Request<Incoming>| {
                let room = room.clone();
                async move {
                    let (response, upgrade) = upgrade(&mut request)?;
                    tokio::spawn(async move {
                        let _ = match mode {
                            Mode::Echo => echo(upgrade).await,
                            Mode::Broadcast => broadcast(upgrade, &room).await,
                        };
                    });
                    Ok::<Response<Empty<Bytes>>, WebSocketError>(response)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn echo(upgrade: UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = FragmentCollector::new(upgrade.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

async fn broadcast(upgrade: UpgradeFut, room: &Arc<Members>) -> Result<(), WebSocketError> {
    let ws = upgrade.await?;
    let (read, mut write) = ws.split(tokio::io::split);
    let mut read = FragmentCollectorRead::new(read);
    let (tx, mut rx) = unbounded::<(OpCode, Bytes)>();
    let id = room.join(tx);
    let writer = async move {
        while let Some((opcode, payload)) = rx.next().await {
            let frame = Frame::new(true, opcode, None, Payload::Borrowed(&payload));
            write.write_frame(frame).await?;
        }
        Ok::<(), WebSocketError>(())
    };
    let reader = async {
        loop {
            // Pongs and close answers are not needed here: the load generator sends
            // neither pings nor closes while a broadcast runs.
            let frame = read
                .read_frame::<_, WebSocketError>(&mut |_| async { Ok(()) })
                .await?;
            match frame.opcode {
                OpCode::Close => return Ok::<(), WebSocketError>(()),
                OpCode::Text | OpCode::Binary => {
                    let payload = Bytes::copy_from_slice(&frame.payload);
                    room.for_each_except(id, |tx| {
                        let _ = tx.unbounded_send((frame.opcode, payload.clone()));
                    });
                }
                _ => {}
            }
        }
    };
    let result = tokio::select! {
        result = writer => result,
        result = reader => result,
    };
    room.leave(id);
    result
}
