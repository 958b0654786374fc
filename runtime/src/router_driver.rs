//! The router's driver: accepts connections, feeds their frames to a
//! [`Router`], and carries out its outputs.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use peerlink_core::ids::ConnId;
use peerlink_core::router::{Router, RouterInput, RouterOutput};
use peerlink_core::wire::{decode_client_frame, ClientFrame, ServerFrame};
use peerlink_core::Machine;
use tokio::sync::mpsc;

use crate::connection::{self, Connection, Inbound, Outbound};
use crate::net::Listener;
use crate::now;

/// How many decoded frames may wait for the router before readers pause.
const INBOUND_QUEUE: usize = 4096;

/// How long the driver waits after a failed `accept` before the next.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Limits the driver enforces around the machine.
#[derive(Debug, Clone)]
pub struct RouterLimits {
    /// The largest frame accepted, in bytes, newline included.
    pub max_frame_len: usize,
    /// The most connections at once; further ones are refused with an error
    /// frame and closed.
    pub max_connections: usize,
}

/// Runs `router` on connections accepted from `listener` until `shutdown`
/// resolves. A failing `accept` (a connection reset, or running out of file
/// descriptors) is logged and retried after [`ACCEPT_BACKOFF`]; it never
/// stops the router.
pub async fn run_router<L: Listener>(
    mut router: Router,
    mut listener: L,
    limits: RouterLimits,
    shutdown: impl Future<Output = ()>,
) {
    let (inbound_tx, mut inbound) = mpsc::channel::<(ConnId, Inbound<ClientFrame>)>(INBOUND_QUEUE);
    let mut conns: BTreeMap<ConnId, Connection<ServerFrame>> = BTreeMap::new();
    let mut next_conn = ConnId(0);
    tokio::pin!(shutdown);
    loop {
        while let Some(output) = router.poll_output() {
            match output {
                RouterOutput::Send(conn, frame) => {
                    if let Some(c) = conns.get(&conn) {
                        c.send(Outbound::Frame(frame));
                    }
                }
                RouterOutput::Close(conn) => {
                    if let Some(c) = conns.remove(&conn) {
                        tracing::debug!(?conn, "closing connection");
                        c.send(Outbound::Close);
                    }
                }
            }
        }
        let deadline = router.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            () = &mut shutdown => return,
            () = sleep_until(deadline) => router.handle_timeout(now()),
            Some((conn, event)) = inbound.recv() => {
                let input = match event {
                    Inbound::Frame(frame) => RouterInput::Frame(conn, frame),
                    Inbound::Malformed(error) => {
                        tracing::debug!(?conn, %error, "malformed frame");
                        RouterInput::Malformed(conn, error)
                    }
                    Inbound::Closed(reason) => {
                        tracing::debug!(?conn, %reason, "connection ended");
                        conns.remove(&conn);
                        RouterInput::Disconnected(conn)
                    }
                };
                router.handle(now(), input);
            }
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                next_conn = next_conn.next();
                let conn = next_conn;
                let c = connection::spawn(stream, conn, limits.max_frame_len, decode_client_frame, inbound_tx.clone());
                if conns.len() >= limits.max_connections {
                    tracing::warn!(%addr, limit = limits.max_connections, "refusing connection: too many");
                    c.send(Outbound::Frame(ServerFrame::Closing {
                        code: peerlink_core::wire::ErrorCode::Busy,
                        message: format!("the router has its maximum of {} connections", limits.max_connections),
                    }));
                    c.send(Outbound::Close);
                    continue;
                }
                tracing::debug!(?conn, %addr, "connection accepted");
                conns.insert(conn, c);
                router.handle(now(), RouterInput::Connected(conn));
            }
        }
    }
}

/// Sleeps until `deadline`, or forever when there is none.
pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
