//! The membership handshake on a byte stream: the I/O half of
//! [`peerlink_core::cluster_auth`]. Every connection to a cluster port runs
//! [`accept`] (on the listening side) or [`connect`] (on the connecting
//! side) before any cluster frame is read; a connection that fails it, or
//! does not finish it within [`HANDSHAKE_TIMEOUT`], is closed having been
//! read at most [`MAX_HANDSHAKE_FRAME`] bytes.

use std::time::Duration;

use bytes::BytesMut;
use peerlink_core::cluster_auth::{
    Acceptor, AuthError, AuthFrame, ClusterKey, Connector, Nonce, MAX_HANDSHAKE_FRAME, NONCE_LEN,
};
use peerlink_core::ids::ReplicaId;
use peerlink_core::wire::{decode_as, encode_frame, LineDecoder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::Stream;

/// How long a handshake may take, from accept or connect to the last frame.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a cluster process needs to take part in handshakes: the cluster
/// key, older keys it still admits, and a source of nonces.
#[derive(Debug)]
pub struct ClusterAuth {
    key: ClusterKey,
    also_accepted: Vec<ClusterKey>,
    nonces: ChaCha20Rng,
}

impl ClusterAuth {
    /// Credentials with `key`, drawing nonces from a generator seeded with
    /// `seed`: from the OS in production, from the simulation's seed in `sim`.
    pub fn new(key: ClusterKey, seed: [u8; 32]) -> Self {
        Self {
            key,
            also_accepted: Vec::new(),
            nonces: ChaCha20Rng::from_seed(seed),
        }
    }

    /// Also admits connections that prove one of `keys` (see
    /// [`Acceptor::also_accepting`]); this process still proves `key`.
    pub fn also_accepting(mut self, keys: Vec<ClusterKey>) -> Self {
        self.also_accepted = keys;
        self
    }

    /// The accepting side of a new handshake.
    pub fn acceptor(&mut self) -> Acceptor {
        Acceptor::new(self.key.clone(), self.nonce()).also_accepting(self.also_accepted.clone())
    }

    /// The connecting side of a new handshake, as router `id` (`None`: an
    /// operator's tool).
    pub fn connector(&mut self, id: Option<ReplicaId>) -> Connector {
        Connector::new(self.key.clone(), id, self.nonce())
    }

    fn nonce(&mut self) -> Nonce {
        let mut bytes = [0; NONCE_LEN];
        self.nonces.fill(&mut bytes);
        Nonce(bytes)
    }
}

/// A stream that passed the handshake, with what was read past it.
#[derive(Debug)]
pub struct Authenticated<S> {
    /// The stream.
    pub stream: S,
    /// Bytes read after the handshake's last frame: the start of the first
    /// cluster frames.
    pub buffered: BytesMut,
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer failed the handshake itself.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The stream failed or closed.
    #[error("{0}")]
    Io(String),
    /// The handshake took longer than [`HANDSHAKE_TIMEOUT`].
    #[error("no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs())]
    TimedOut,
}

/// Runs the accepting side: challenges the peer and checks its proof.
/// Returns the identity it proved (`None`: an operator's tool).
pub async fn accept<S: Stream>(
    stream: S,
    acceptor: Acceptor,
) -> Result<(Authenticated<S>, Option<ReplicaId>), HandshakeError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async move {
        let mut io = Framed::new(stream);
        io.write(&acceptor.challenge()).await?;
        let hello = io.read().await?;
        match acceptor.on_hello(hello) {
            Ok((id, welcome)) => {
                io.write(&welcome).await?;
                Ok((io.into_authenticated(), id))
            }
            Err(error) => {
                let refused = AuthFrame::Refused {
                    message: "this cluster does not know you".into(),
                };
                let _ = io.write(&refused).await;
                Err(error.into())
            }
        }
    })
    .await
    .map_err(|_| HandshakeError::TimedOut)?
}

/// Runs the connecting side: answers the challenge and checks the
/// acceptor's proof.
pub async fn connect<S: Stream>(
    stream: S,
    mut connector: Connector,
) -> Result<Authenticated<S>, HandshakeError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async move {
        let mut io = Framed::new(stream);
        let challenge = io.read().await?;
        let hello = connector.on_challenge(challenge)?;
        io.write(&hello).await?;
        connector.on_welcome(io.read().await?)?;
        Ok(io.into_authenticated())
    })
    .await
    .map_err(|_| HandshakeError::TimedOut)?
}

/// A stream read and written one handshake frame at a time.
struct Framed<S> {
    stream: S,
    decoder: LineDecoder,
    buf: BytesMut,
}

impl<S: Stream> Framed<S> {
    fn new(stream: S) -> Self {
        Self {
            stream,
            decoder: LineDecoder::new(MAX_HANDSHAKE_FRAME),
            buf: BytesMut::with_capacity(MAX_HANDSHAKE_FRAME),
        }
    }

    async fn write(&mut self, frame: &AuthFrame) -> Result<(), HandshakeError> {
        let mut out = BytesMut::new();
        encode_frame(frame, &mut out);
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| HandshakeError::Io(format!("write failed: {e}")))?;
        self.stream
            .flush()
            .await
            .map_err(|e| HandshakeError::Io(format!("write failed: {e}")))
    }

    async fn read(&mut self) -> Result<AuthFrame, HandshakeError> {
        loop {
            if let Some(line) = self.decoder.decode(&mut self.buf) {
                let line = line.map_err(|e| HandshakeError::Io(e.message))?;
                return decode_as::<AuthFrame>(&line)
                    .map_err(|e| HandshakeError::Io(format!("bad handshake frame: {}", e.message)));
            }
            if self.buf.len() >= MAX_HANDSHAKE_FRAME {
                return Err(HandshakeError::Io("handshake frame too long".into()));
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => return Err(HandshakeError::Io("closed during the handshake".into())),
                Ok(_) => {}
                Err(e) => return Err(HandshakeError::Io(format!("read failed: {e}"))),
            }
        }
    }

    fn into_authenticated(self) -> Authenticated<S> {
        Authenticated {
            stream: self.stream,
            buffered: self.buf,
        }
    }
}
