//! [`TurmoilNetwork`]: the runtime's transport trait over `turmoil::net`.

use std::io;
use std::net::SocketAddr;

use peerlink_runtime::net::{Listener, Network};

/// turmoil's simulated TCP, for running the production drivers in a
/// simulation. Use only inside a turmoil host or client.
#[derive(Debug, Clone, Copy, Default)]
pub struct TurmoilNetwork;

/// A listener on the simulated network.
pub struct TurmoilListener(turmoil::net::TcpListener);

impl Listener for TurmoilListener {
    type Stream = turmoil::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        self.0.accept().await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Network for TurmoilNetwork {
    type Stream = turmoil::net::TcpStream;
    type Listener = TurmoilListener;

    async fn bind(&self, addr: &str) -> io::Result<Self::Listener> {
        turmoil::net::TcpListener::bind(addr).await.map(TurmoilListener)
    }

    async fn connect(&self, addr: &str) -> io::Result<Self::Stream> {
        turmoil::net::TcpStream::connect(addr).await
    }
}
