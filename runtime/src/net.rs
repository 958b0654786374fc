//! The transport seam: drivers are generic over [`Network`], so the very same
//! driver code runs over TCP with TLS in production
//! ([`ProdNetwork`](crate::tls::ProdNetwork)) and over `turmoil::net` in the
//! simulator (crate `sim`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream between two endpoints.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + 'static> Stream for T {}

/// A bound listening socket.
pub trait Listener: 'static {
    /// The streams it accepts.
    type Stream: Stream;

    /// Waits for the next connection; returns it and the peer's address.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>>;

    /// The address the listener is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Something that can listen and connect: the only I/O a driver does.
pub trait Network: Clone + 'static {
    /// The stream type of both accepted and initiated connections.
    type Stream: Stream;
    /// The listener type.
    type Listener: Listener<Stream = Self::Stream>;

    /// Binds a listener to `addr` (`host:port`).
    fn bind(&self, addr: &str) -> impl Future<Output = io::Result<Self::Listener>>;

    /// Connects to `addr` (`host:port`). Callers bound it with a timeout.
    fn connect(&self, addr: &str) -> impl Future<Output = io::Result<Self::Stream>>;
}
