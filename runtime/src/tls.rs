//! The production network with TLS on every link: [`ProdNetwork`], a
//! [`Network`] over `tokio::net` TCP that wraps each connection in TLS
//! (rustls, with the `ring` provider), or — only when asked for with
//! `insecure` — leaves it in the clear.
//!
//! Connectors verify the server's certificate against the configured roots
//! and the host they dialled; listeners present their certificate. An
//! accepted connection runs its TLS handshake lazily, on its first read or
//! write, inside the connection's own task: a peer that never finishes its
//! handshake holds up nobody else's accept.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{client, server, Accept, TlsAcceptor, TlsConnector};

use crate::net::{Listener, Network};

/// TCP, with TLS unless built [`ProdNetwork::insecure`].
#[derive(Clone)]
pub struct ProdNetwork {
    tls: Option<Tls>,
}

#[derive(Clone)]
struct Tls {
    connector: TlsConnector,
    /// `None` for a process that only connects (a client, `status`).
    acceptor: Option<TlsAcceptor>,
}

impl std::fmt::Debug for ProdNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match &self.tls {
            None => "insecure",
            Some(Tls { acceptor: None, .. }) => "tls (connect only)",
            Some(_) => "tls",
        };
        write!(f, "ProdNetwork({mode})")
    }
}

impl ProdNetwork {
    /// TLS: connections made are verified with `client`; listeners present
    /// the certificate of `server` (a process that only connects passes
    /// `None`, and cannot bind).
    pub fn tls(client: Arc<rustls::ClientConfig>, server: Option<Arc<rustls::ServerConfig>>) -> Self {
        Self {
            tls: Some(Tls {
                connector: TlsConnector::from(client),
                acceptor: server.map(TlsAcceptor::from),
            }),
        }
    }

    /// Plain TCP: anyone on the path reads and changes everything.
    pub fn insecure() -> Self {
        Self { tls: None }
    }

    /// Whether links are encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// The host part of `host:port` (without an IPv6 address's brackets), as
/// the name a certificate must carry.
fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is not a host name: {e}"),
        )
    })
}

impl Network for ProdNetwork {
    type Stream = ProdStream;
    type Listener = ProdListener;

    async fn bind(&self, addr: &str) -> io::Result<ProdListener> {
        let acceptor = match &self.tls {
            None => None,
            Some(Tls {
                acceptor: Some(acceptor),
                ..
            }) => Some(acceptor.clone()),
            Some(Tls { acceptor: None, .. }) => {
                return Err(io::Error::other("this process has no certificate to listen with"))
            }
        };
        Ok(ProdListener {
            tcp: TcpListener::bind(addr).await?,
            acceptor,
        })
    }

    async fn connect(&self, addr: &str) -> io::Result<ProdStream> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(ProdStream::Plain(tcp)),
            Some(tls) => {
                let name = server_name(addr)?;
                let stream = tls.connector.connect(name, tcp).await?;
                Ok(ProdStream::Client(Box::new(stream)))
            }
        }
    }
}

/// A listener of [`ProdNetwork`].
pub struct ProdListener {
    tcp: TcpListener,
    acceptor: Option<TlsAcceptor>,
}

impl std::fmt::Debug for ProdListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ProdListener({:?}, tls: {})",
            self.tcp.local_addr().ok(),
            self.acceptor.is_some()
        )
    }
}

impl Listener for ProdListener {
    type Stream = ProdStream;

    async fn accept(&mut self) -> io::Result<(ProdStream, SocketAddr)> {
        let (tcp, addr) = self.tcp.accept().await?;
        // Frames are small and latency matters more than packet count; the
        // writer already batches whatever is queued into one write.
        tcp.set_nodelay(true)?;
        let stream = match &self.acceptor {
            None => ProdStream::Plain(tcp),
            Some(acceptor) => ProdStream::Accepting(Box::pin(acceptor.accept(tcp))),
        };
        Ok((stream, addr))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// A connection of [`ProdNetwork`].
pub enum ProdStream {
    /// In the clear (`insecure`).
    Plain(TcpStream),
    /// Made by this process, after its TLS handshake.
    Client(Box<client::TlsStream<TcpStream>>),
    /// Accepted, TLS handshake under way.
    Accepting(Pin<Box<Accept<TcpStream>>>),
    /// Accepted, after its TLS handshake.
    Server(Box<server::TlsStream<TcpStream>>),
    /// Accepted, and its TLS handshake failed.
    Failed(io::ErrorKind),
}

impl std::fmt::Debug for ProdStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self {
            ProdStream::Plain(_) => "plain",
            ProdStream::Client(_) => "tls client",
            ProdStream::Accepting(_) => "tls handshake",
            ProdStream::Server(_) => "tls server",
            ProdStream::Failed(_) => "tls failed",
        };
        write!(f, "ProdStream({state})")
    }
}

impl ProdStream {
    /// Drives an accepted connection's handshake; `Ready(Ok)` once it is
    /// done (or there is none).
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ProdStream::Accepting(accept) => match ready!(accept.as_mut().poll(cx)) {
                Ok(stream) => {
                    *self = ProdStream::Server(Box::new(stream));
                    Poll::Ready(Ok(()))
                }
                Err(e) => {
                    *self = ProdStream::Failed(e.kind());
                    Poll::Ready(Err(e))
                }
            },
            ProdStream::Failed(kind) => Poll::Ready(Err(io::Error::new(*kind, "the TLS handshake failed"))),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// Forwards a poll to whichever stream the connection now is.
macro_rules! forward {
    ($self:ident, $cx:ident, $method:ident $(, $arg:expr)*) => {{
        let this = $self.get_mut();
        ready!(this.poll_handshake($cx))?;
        match this {
            ProdStream::Plain(s) => Pin::new(s).$method($cx $(, $arg)*),
            ProdStream::Client(s) => Pin::new(s.as_mut()).$method($cx $(, $arg)*),
            ProdStream::Server(s) => Pin::new(s.as_mut()).$method($cx $(, $arg)*),
            ProdStream::Accepting(_) | ProdStream::Failed(_) => unreachable!("the handshake is over"),
        }
    }};
}

impl AsyncRead for ProdStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        forward!(self, cx, poll_read, buf)
    }
}

impl AsyncWrite for ProdStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        forward!(self, cx, poll_write, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        forward!(self, cx, poll_flush)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        forward!(self, cx, poll_shutdown)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::certs::{client_config, server_config, LocalCa};

    fn ca(name: &str) -> (LocalCa, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("peerlink-tls-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (LocalCa::load_or_create(&dir.join("tls")).unwrap(), dir)
    }

    fn network(ca: &LocalCa, trusted: &LocalCa) -> ProdNetwork {
        let (chain, key) = ca.issue(&["127.0.0.1".into(), "localhost".into()]).unwrap();
        ProdNetwork::tls(
            client_config(trusted.pem()).unwrap(),
            Some(server_config(chain, key).unwrap()),
        )
    }

    /// Accepts one connection on `listener` and echoes five bytes, or
    /// returns the error its stream gives.
    async fn echo_once(mut listener: ProdListener) -> io::Result<()> {
        let (mut stream, _) = listener.accept().await?;
        let mut buf = [0; 5];
        stream.read_exact(&mut buf).await?;
        stream.write_all(&buf).await?;
        stream.flush().await
    }

    #[tokio::test]
    async fn a_client_that_trusts_the_authority_talks_and_others_are_refused() {
        let (local, dir) = ca("a");
        let (other, other_dir) = ca("b");
        // The server's certificate comes from the authority as a later
        // process loads it; the client trusts the certificate first written.
        let reloaded = LocalCa::load_or_create(&dir.join("tls")).unwrap();
        let server = network(&reloaded, &local);
        let listener = server.bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let echo = tokio::spawn(echo_once(listener));
        let mut stream = server.connect(&addr).await.unwrap();
        stream.write_all(b"hello").await.unwrap();
        let mut buf = [0; 5];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        echo.await.unwrap().unwrap();

        // A client trusting another authority refuses the server.
        let listener = server.bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let echo = tokio::spawn(echo_once(listener));
        let stranger = network(&other, &other);
        assert!(
            stranger.connect(&addr).await.is_err(),
            "a server of another authority was trusted"
        );
        assert!(echo.await.unwrap().is_err());

        // Plain TCP to a TLS port gets nowhere: the server's stream fails.
        let listener = server.bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let echo = tokio::spawn(echo_once(listener));
        let mut plain = ProdNetwork::insecure().connect(&addr).await.unwrap();
        plain.write_all(b"{\"type\":\"ping\",\"req\":1}\n").await.unwrap();
        assert!(echo.await.unwrap().is_err(), "a plain client got through");
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_dir_all(other_dir).unwrap();
    }

    #[test]
    fn the_local_authority_is_created_once_and_reused() {
        let (first, dir) = ca("c");
        let again = LocalCa::load_or_create(&dir.join("tls")).unwrap();
        assert_eq!(first.pem(), again.pem());
        // A certificate issued after a reload chains to the first one.
        let (chain, _) = again.issue(&["127.0.0.1".into()]).unwrap();
        assert_eq!(chain.len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("tls/ca.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
