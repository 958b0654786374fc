//! The client's driver: owns at most one connection to a router, feeds a
//! [`Client`] its frames, commands and timers, and hands its events to the
//! application.

use std::time::Duration;

use bytes::BytesMut;
use peerlink_core::client::{Client, ClientEvent, ClientInput, ClientOutput, Command};
use peerlink_core::wire::{decode_server_frame, ClientFrame, ServerFrame};
use peerlink_core::Machine;
use tokio::sync::mpsc;

use crate::connection::{self, Connection, Inbound, Outbound};
use crate::net::Network;
use crate::now;
use crate::timer::{sleep_until, Timer};

/// The client's connection limits: requests wait for the router only while
/// it reads them; a router that stops reading while sixteen frames' worth
/// wait is given up, and the client reconnects.
fn client_limits(max_frame_len: usize) -> connection::Limits {
    connection::Limits {
        max_frame_len,
        max_queued: 16 * max_frame_len,
    }
}

/// What the application tells the driver.
#[derive(Debug, Clone)]
pub enum Control {
    /// Pass a command to the client.
    Command(Command),
    /// No more commands: return once every command has been answered, or
    /// after `within`, whichever comes first.
    Finish {
        /// The longest wait for answers.
        within: Duration,
    },
}

/// The most queued frames handled in a row before the driver looks at its
/// timers and commands again.
const FRAME_BATCH: usize = 256;

/// Settings of the driver itself (the machine has its own).
#[derive(Debug, Clone)]
pub struct ClientDriverConfig {
    /// How long one connection attempt may take. Default 5 s.
    pub connect_timeout: Duration,
    /// The largest frame accepted from the router, in bytes.
    pub max_frame_len: usize,
}

/// How the driver ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientExit {
    /// Commands still unanswered when it returned.
    pub outstanding: usize,
    /// Whether the router ended the session for good (it was replaced).
    pub stopped: bool,
}

/// The outcome of a connection attempt.
enum Attempt<S> {
    Connected(S),
    Failed(String),
}

/// Runs `client` until the application sends [`Control::Finish`] and the
/// client has nothing outstanding (or the wait runs out), the control
/// channel closes, or the router ends the session for good.
///
/// Commands are taken from `controls` only while the client's outbox has
/// room, so a fast producer is slowed down instead of refused.
pub async fn run_client<N: Network>(
    net: N,
    mut client: Client,
    config: ClientDriverConfig,
    mut controls: mpsc::Receiver<Control>,
    events: mpsc::UnboundedSender<ClientEvent>,
    outbox_limit: usize,
) -> ClientExit {
    let (attempts_tx, mut attempts) = mpsc::channel::<(u64, Attempt<N::Stream>)>(16);
    let (frames_tx, mut frames) = mpsc::channel::<(u64, Inbound<ServerFrame>)>(1024);
    // The attempt most recently started; outcomes of older ones are dropped.
    let mut latest_attempt = 0;
    let mut current: Option<(u64, Connection<ClientFrame>)> = None;
    let mut finish_by: Option<tokio::time::Instant> = None;
    let mut timer = Timer::new();
    loop {
        while let Some(output) = client.poll_output() {
            match output {
                ClientOutput::Connect { attempt, router } => {
                    current = None;
                    latest_attempt = attempt;
                    let net = net.clone();
                    let attempts_tx = attempts_tx.clone();
                    let timeout = config.connect_timeout;
                    tokio::task::spawn_local(async move {
                        let outcome = match tokio::time::timeout(timeout, net.connect(&router)).await {
                            Ok(Ok(stream)) => Attempt::Connected(stream),
                            Ok(Err(e)) => Attempt::Failed(format!("connect to {router} failed: {e}")),
                            Err(_) => Attempt::Failed(format!(
                                "connect to {router} timed out after {} s",
                                timeout.as_secs_f64()
                            )),
                        };
                        let _ = attempts_tx.send((attempt, outcome)).await;
                    });
                }
                ClientOutput::Disconnect => current = None,
                ClientOutput::Transmit(frame) => {
                    if let Some((_, c)) = &current {
                        c.send(Outbound::Frame(frame));
                    }
                }
                ClientOutput::Event(event) => {
                    let _ = events.send(event);
                }
            }
        }
        if client.is_stopped() {
            return exit(&client);
        }
        if let Some(deadline) = finish_by {
            if client.outstanding() == 0 || tokio::time::Instant::now() >= deadline {
                return exit(&client);
            }
        }
        timer.set(client.poll_timeout().map(tokio::time::Instant::from_std));
        let room = finish_by.is_none() && client.outbox_len() < outbox_limit;
        tokio::select! {
            biased;
            () = timer.fired() => client.handle_timeout(now()),
            Some((attempt, outcome)) = attempts.recv() => {
                if attempt != latest_attempt {
                    continue;
                }
                let input = match outcome {
                    Attempt::Connected(stream) => {
                        let max = config.max_frame_len;
                        let c = connection::spawn(stream, BytesMut::new(), attempt, client_limits(max), decode_server_frame, frames_tx.clone());
                        current = Some((attempt, c));
                        ClientInput::Connected { attempt }
                    }
                    Attempt::Failed(reason) => ClientInput::ConnectFailed { attempt, reason },
                };
                client.handle(now(), input);
            }
            Some((attempt, inbound)) = frames.recv() => {
                let now = now();
                if let Some(input) = frame_input(&mut current, attempt, inbound) {
                    client.handle(now, input);
                }
                // Take what else has arrived without another trip through
                // `select!`.
                for _ in 1..FRAME_BATCH {
                    let Ok((attempt, inbound)) = frames.try_recv() else {
                        break;
                    };
                    if let Some(input) = frame_input(&mut current, attempt, inbound) {
                        client.handle(now, input);
                    }
                }
            }
            control = controls.recv(), if room => match control {
                Some(Control::Command(command)) => client.handle(now(), ClientInput::Command(command)),
                Some(Control::Finish { within }) => finish_by = Some(tokio::time::Instant::now() + within),
                None => return exit(&client),
            },
            () = sleep_until(finish_by) => {}
        }
    }
}

/// The client's input for what connection `attempt` reported, unless that
/// is no longer the current connection.
fn frame_input<C>(
    current: &mut Option<(u64, C)>,
    attempt: u64,
    inbound: Inbound<ServerFrame>,
) -> Option<ClientInput> {
    if current.as_ref().is_none_or(|(a, _)| *a != attempt) {
        return None;
    }
    Some(match inbound {
        Inbound::Frame(frame) => ClientInput::Frame(frame),
        Inbound::Malformed(error) => ClientInput::Malformed(error),
        Inbound::Closed(reason) => {
            *current = None;
            ClientInput::Disconnected { attempt, reason }
        }
    })
}

fn exit(client: &Client) -> ClientExit {
    ClientExit {
        outstanding: client.outstanding(),
        stopped: client.is_stopped(),
    }
}
