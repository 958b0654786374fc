//! One connection's two tasks: a reader that decodes frames and reports
//! them, and a writer that encodes queued frames and writes them in batches.

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
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

/// Less room than this left in the staging buffer starts a new one.
const FRAME_ROOM: usize = 1024;

/// How much room a connection's frames are encoded into at a time: each
/// frame is then a slice of a shared buffer instead of an allocation of
/// its own (and the few more its growth would take). A buffer is given up
/// only once less than [`FRAME_ROOM`] is left, and frames are written in
/// order, so the buffers queued frames keep alive hold at most 16/15 of
/// the queued bytes plus two buffers (the one being filled, and the one
/// being written out).
const STAGING: usize = 16 * 1024;

/// How long a write may block (a peer that stops reading) before the
/// connection is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Handles to a connection's tasks. Dropping it stops the reader; the writer
/// stops once its queue is closed and drained.
pub(crate) struct Connection<O> {
    outbound: mpsc::UnboundedSender<Outbound<Bytes>>,
    /// Where frames are encoded before they are split off and queued.
    staging: RefCell<BytesMut>,
    /// Bytes encoded and not yet written.
    queued: Rc<Cell<usize>>,
    max_queued: usize,
    /// Set once the peer fell too far behind; later frames are dropped.
    overflowed: Cell<bool>,
    /// Reports the overflow as the connection's end.
    on_overflow: Box<dyn Fn(String)>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    frames: PhantomData<fn(O)>,
}

impl<O: Serialize> Connection<O> {
    /// Encodes and queues a frame (or a close) for the writer. A connection
    /// whose writer has stopped is already reported closed by its reader,
    /// so a failed send needs no handling. If more than the connection's
    /// `max_queued` bytes would wait to be written — the peer is not
    /// reading — the connection is dropped at once and reported closed,
    /// instead of growing memory without bound.
    pub(crate) fn send(&self, out: Outbound<O>) {
        if self.overflowed.get() {
            return;
        }
        let out = match out {
            Outbound::Frame(frame) => {
                let buf = {
                    let mut staging = self.staging.borrow_mut();
                    if staging.capacity() < FRAME_ROOM {
                        // The rest of the buffer may be shared with frames
                        // still queued; the next frames go into a new one.
                        *staging = BytesMut::with_capacity(STAGING);
                    }
                    encode_frame(&frame, &mut staging);
                    staging.split()
                };
                let queued = self.queued.get() + buf.len();
                if queued > self.max_queued {
                    self.overflowed.set(true);
                    self.reader.abort();
                    self.writer.abort();
                    let reason = format!(
                        "the peer is not reading: {queued} bytes would wait, more than the limit of {}",
                        self.max_queued
                    );
                    tracing::warn!(%reason, "dropping a connection");
                    (self.on_overflow)(reason);
                    return;
                }
                self.queued.set(queued);
                Outbound::Frame(buf.freeze())
            }
            Outbound::Close => Outbound::Close,
        };
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
/// peer. At most `max_queued` encoded bytes wait for the writer (see
/// [`Connection::send`]).
pub(crate) fn spawn<S, I, O, K>(
    stream: S,
    buffered: BytesMut,
    key: K,
    limits: Limits,
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
    let queued = Rc::new(Cell::new(0));
    let on_write_failure = (key.clone(), inbound.clone());
    let on_overflow = {
        let (key, inbound) = (key.clone(), inbound.clone());
        Box::new(move |reason: String| {
            let (key, inbound) = (key.clone(), inbound.clone());
            tokio::task::spawn_local(async move {
                let _ = inbound.send((key, Inbound::Closed(reason))).await;
            });
        })
    };
    let max_frame_len = limits.max_frame_len;
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
                Ok(0) => break "closed by the other end".to_owned(),
                Ok(_) => {}
                Err(e) => break format!("read failed: {e}"),
            }
        };
        let _ = inbound.send((key, Inbound::Closed(reason))).await;
    });
    let written = queued.clone();
    let writer = tokio::task::spawn_local(async move {
        if let Err(reason) = write_loop(write_half, queue, &written).await {
            let (key, inbound) = on_write_failure;
            let _ = inbound.send((key, Inbound::Closed(reason))).await;
        }
    });
    Connection {
        outbound,
        staging: RefCell::new(BytesMut::new()),
        queued,
        max_queued: limits.max_queued,
        overflowed: Cell::new(false),
        on_overflow,
        reader,
        writer,
        frames: PhantomData,
    }
}

/// How much one connection may hold, each way.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The longest line read, newline included.
    pub(crate) max_frame_len: usize,
    /// The most encoded bytes waiting to be written.
    pub(crate) max_queued: usize,
}

/// Writes queued frames until the queue closes or a close is asked for,
/// taking what it wrote off `queued`. Fails, with the reason, when a write
/// fails or stalls.
async fn write_loop<W>(
    mut writer: W,
    mut queue: mpsc::UnboundedReceiver<Outbound<Bytes>>,
    queued: &Cell<usize>,
) -> Result<(), String>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(WRITE_BATCH);
    while let Some(first) = queue.recv().await {
        let mut close = false;
        let mut next = Some(first);
        while let Some(out) = next.take() {
            match out {
                Outbound::Frame(frame) => buf.extend_from_slice(&frame),
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
        queued.set(queued.get().saturating_sub(buf.len()));
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
