//! One connection's two tasks: a reader that decodes frames and reports
//! them, and a writer that encodes queued frames and writes them in batches.

use std::time::Duration;

use bytes::BytesMut;
use peerlink_core::wire::{encode_frame, FrameError, LineDecoder};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::net::Stream;

/// What a connection's reader reports, tagged with the connection's key.
#[derive(Debug)]
pub(crate) enum Inbound<F> {
    /// A well-formed frame.
    Frame(F),
    /// A line that is not a valid frame.
    Malformed(FrameError),
    /// The connection ended; no more reports follow.
    Closed(String),
}

/// What a connection's writer is asked to do.
#[derive(Debug)]
pub(crate) enum Outbound<F> {
    /// Write a frame.
    Frame(F),
    /// Write what is queued, then close the connection.
    Close,
}

/// The most bytes the writer gathers into one write.
const WRITE_BATCH: usize = 64 * 1024;

/// How long a write may block (a peer that stops reading) before the
/// connection is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Handles to a connection's tasks. Dropping it stops the reader; the writer
/// stops once its queue is closed and drained.
#[derive(Debug)]
pub(crate) struct Connection<O> {
    outbound: mpsc::UnboundedSender<Outbound<O>>,
    reader: JoinHandle<()>,
}

impl<O> Connection<O> {
    /// Queues a frame (or a close) for the writer. A connection whose writer
    /// has stopped is already reported closed by its reader, so a failed
    /// send needs no handling.
    pub(crate) fn send(&self, out: Outbound<O>) {
        let _ = self.outbound.send(out);
    }
}

impl<O> Drop for Connection<O> {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Spawns the reader and writer tasks of `stream` on the current `LocalSet`.
/// The reader sends `(key, Inbound)` to `inbound`, decoding each line with
/// `decode`, starting with the bytes already `buffered` (read past a
/// handshake); it waits when `inbound` is full, which pushes back on the
/// peer.
pub(crate) fn spawn<S, I, O, K>(
    stream: S,
    buffered: BytesMut,
    key: K,
    max_frame_len: usize,
    decode: fn(&[u8]) -> Result<I, FrameError>,
    inbound: mpsc::Sender<(K, Inbound<I>)>,
) -> Connection<O>
where
    S: Stream,
    I: 'static,
    O: Serialize + 'static,
    K: Clone + 'static,
{
    let (mut read_half, write_half) = tokio::io::split(stream);
    let (outbound, queue) = mpsc::unbounded_channel();
    let on_write_failure = (key.clone(), inbound.clone());
    let reader = tokio::task::spawn_local(async move {
        let mut decoder = LineDecoder::new(max_frame_len);
        let mut buf = buffered;
        buf.reserve(8 * 1024);
        let reason = loop {
            while let Some(line) = decoder.decode(&mut buf) {
                let report = match line.and_then(|line| decode(&line)) {
                    Ok(frame) => Inbound::Frame(frame),
                    Err(error) => Inbound::Malformed(error),
                };
                if inbound.send((key.clone(), report)).await.is_err() {
                    return;
                }
            }
            match read_half.read_buf(&mut buf).await {
                Ok(0) => break "closed by the peer".to_owned(),
                Ok(_) => {}
                Err(e) => break format!("read failed: {e}"),
            }
        };
        let _ = inbound.send((key, Inbound::Closed(reason))).await;
    });
    tokio::task::spawn_local(async move {
        if let Err(reason) = write_loop(write_half, queue).await {
            let (key, inbound) = on_write_failure;
            let _ = inbound.send((key, Inbound::Closed(reason))).await;
        }
    });
    Connection { outbound, reader }
}

/// Writes queued frames until the queue closes or a close is asked for.
/// Fails, with the reason, when a write fails or stalls.
async fn write_loop<W, O>(
    mut writer: W,
    mut queue: mpsc::UnboundedReceiver<Outbound<O>>,
) -> Result<(), String>
where
    W: tokio::io::AsyncWrite + Unpin,
    O: Serialize,
{
    let mut buf = BytesMut::with_capacity(WRITE_BATCH);
    while let Some(first) = queue.recv().await {
        let mut close = false;
        let mut next = Some(first);
        while let Some(out) = next.take() {
            match out {
                Outbound::Frame(frame) => encode_frame(&frame, &mut buf),
                Outbound::Close => {
                    close = true;
                    break;
                }
            }
            if buf.len() < WRITE_BATCH {
                next = queue.try_recv().ok();
            }
        }
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            writer.write_all(&buf).await?;
            writer.flush().await
        })
        .await;
        buf.clear();
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("write failed: {e}")),
            Err(_) => return Err(format!("write stalled for {} s", WRITE_TIMEOUT.as_secs())),
        }
        if close {
            let _ = writer.shutdown().await;
            return Ok(());
        }
    }
    Ok(())
}
