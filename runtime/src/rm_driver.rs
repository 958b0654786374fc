//! The replica manager's driver: accepts routers' (and `peerlink status`')
//! connections, runs the membership handshake on each
//! ([`cluster_link::accept`]), feeds the requests of those that pass it to
//! a [`ReplicaManager`], and persists each configuration through a
//! [`ConfigStore`] before the machine may announce it.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use peerlink_core::ids::{ConnId, ReplicaId};
use peerlink_core::rm::{ReplicaManager, RmInput, RmOutput};
use peerlink_core::wire::cluster::{Configuration, RmReply, RmRequest};
use peerlink_core::wire::decode_cluster_frame;
use peerlink_core::Machine;
use tokio::sync::mpsc;

use crate::cluster_link::{self, Authenticated, ClusterAuth, HandshakeError};
use crate::connection::{self, Connection, Inbound, Outbound};
use crate::net::Listener;
use crate::now;
use crate::router_driver::ACCEPT_BACKOFF;
use crate::sources::SourceCounts;
use crate::timer::sleep_until;

/// The `tracing` target of the event logged for every configuration the
/// replica manager saves, with fields `epoch`, `primary`, `backups` and
/// `candidates`.
pub const CONFIG_TARGET: &str = "peerlink::config";

/// The most connections at once, handshakes under way included; more are
/// closed at once. Each router holds one; `peerlink status` one while it
/// asks.
pub const MAX_RM_CONNECTIONS: usize = 256;

/// Each connection's limits: replies to one router are configurations,
/// small, and a router reads them as they come; one that does not is
/// disconnected once a few frames' worth wait.
fn rm_limits(max_frame_len: usize) -> connection::Limits {
    connection::Limits {
        max_frame_len,
        max_queued: 4 * max_frame_len,
    }
}

/// The most connections from one source address, handshakes included.
pub const MAX_RM_CONNECTIONS_PER_SOURCE: usize = 32;

/// A connection that sends nothing for this long is closed. Routers
/// heartbeat every 100 ms; `peerlink status` asks at once.
pub const RM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often idle connections are looked for.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// A connection of the replica manager.
struct RmConn {
    conn: Connection<RmReply>,
    source: IpAddr,
    heard: tokio::time::Instant,
}

/// A finished handshake.
type Handshake<S> = (
    SocketAddr,
    Result<(Authenticated<S>, Option<ReplicaId>), HandshakeError>,
);

/// How long the driver waits before retrying a failed persist.
const PERSIST_RETRY: Duration = Duration::from_millis(500);

/// Durable storage for the replica manager's configuration. The seam where
/// other storage (another disk layout, a simulated disk) slots in.
pub trait ConfigStore {
    /// The last configuration saved, or the empty one if none was.
    fn load(&mut self) -> io::Result<Configuration>;
    /// Saves `config` durably: once this returns `Ok`, a crash keeps it.
    fn save(&mut self, config: &Configuration) -> io::Result<()>;
}

/// A [`ConfigStore`] in one JSON file, replaced atomically (write a
/// temporary file, fsync it, rename it over the old one, fsync the folder).
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    /// The file name inside the data directory.
    pub const FILE: &'static str = "rm-config.json";

    /// A store in `dir`, which is created if missing.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self { dir: dir.to_owned() })
    }
}

impl ConfigStore for FileStore {
    fn load(&mut self) -> io::Result<Configuration> {
        let path = self.dir.join(Self::FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is corrupt: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Configuration::default()),
            Err(e) => Err(e),
        }
    }

    fn save(&mut self, config: &Configuration) -> io::Result<()> {
        let temporary = self.dir.join(format!("{}.tmp", Self::FILE));
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&serde_json::to_vec_pretty(config).expect("configurations serialize"))?;
        file.sync_all()?;
        std::fs::rename(&temporary, self.dir.join(Self::FILE))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

/// Saves `config`; once it is saved, records it as `saved`, logs it (under
/// [`CONFIG_TARGET`]) and tells `rm`, which announces it only then. Returns
/// whether it was saved: if not, the caller retries.
fn save_config<S: ConfigStore>(
    store: &mut S,
    rm: &mut ReplicaManager,
    saved: &mut Option<Configuration>,
    config: &Configuration,
) -> bool {
    if let Err(error) = store.save(config) {
        tracing::error!(%error, epoch = %config.epoch, "cannot save the configuration; retrying");
        return false;
    }
    crate::metrics::rm_configuration(config, saved.as_ref());
    tracing::info!(target: CONFIG_TARGET, epoch = config.epoch.0, primary = ?config.primary.as_ref().map(|p| &p.id),
        backups = ?config.backups.iter().map(|m| &m.id).collect::<Vec<_>>(),
        candidates = ?config.candidates.iter().map(|m| &m.id).collect::<Vec<_>>(),
        "configuration");
    rm.handle(now(), RmInput::Persisted(config.epoch));
    *saved = Some(config.clone());
    true
}

/// Runs the replica manager on connections accepted from `listener` that
/// prove membership with `auth`, until `shutdown` resolves. A configuration
/// that cannot be saved is retried; until it is saved it is not announced.
/// At most [`MAX_RM_CONNECTIONS`] connections are open, at most
/// [`MAX_RM_CONNECTIONS_PER_SOURCE`] from one address, and one silent for
/// [`RM_IDLE_TIMEOUT`] is closed.
pub async fn run_rm<L: Listener, S: ConfigStore>(
    mut rm: ReplicaManager,
    mut listener: L,
    mut auth: ClusterAuth,
    mut store: S,
    max_frame_len: usize,
    shutdown: impl Future<Output = ()>,
) {
    let (handshakes_tx, mut handshakes) = mpsc::channel::<Handshake<L::Stream>>(16);
    let mut handshaking = 0usize;
    let (inbound_tx, mut inbound) = mpsc::channel::<(ConnId, Inbound<RmRequest>)>(1024);
    let mut conns: BTreeMap<ConnId, RmConn> = BTreeMap::new();
    let mut sources = SourceCounts::default();
    let mut idle_check = tokio::time::interval(IDLE_CHECK);
    let mut next_conn = ConnId(0);
    let mut unsaved: Option<Configuration> = None;
    let mut saved: Option<Configuration> = None;
    let mut retry_at: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        while let Some(output) = rm.poll_output() {
            match output {
                RmOutput::Send(conn, reply) => {
                    if let Some(c) = conns.get(&conn) {
                        c.conn.send(Outbound::Frame(reply));
                    }
                }
                RmOutput::Persist(config) => unsaved = Some(config),
            }
            if let Some(config) = unsaved.take() {
                if !save_config(&mut store, &mut rm, &mut saved, &config) {
                    unsaved = Some(config);
                    retry_at = Some(tokio::time::Instant::now() + PERSIST_RETRY);
                    break;
                }
                retry_at = None;
            }
        }
        let deadline = rm.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            () = &mut shutdown => return,
            () = sleep_until(retry_at) => {
                retry_at = None;
                if let Some(config) = unsaved.take() {
                    if !save_config(&mut store, &mut rm, &mut saved, &config) {
                        unsaved = Some(config);
                        retry_at = Some(tokio::time::Instant::now() + PERSIST_RETRY);
                    }
                }
            }
            () = sleep_until(deadline) => rm.handle_timeout(now()),
            _ = idle_check.tick() => {
                let silent: Vec<ConnId> = conns
                    .iter()
                    .filter(|(_, c)| c.heard.elapsed() >= RM_IDLE_TIMEOUT)
                    .map(|(conn, _)| *conn)
                    .collect();
                for conn in silent {
                    if let Some(c) = conns.remove(&conn) {
                        tracing::debug!(?conn, source = %c.source, "closing a silent connection");
                        sources.remove(c.source);
                        c.conn.send(Outbound::Close);
                    }
                    rm.handle(now(), RmInput::Disconnected(conn));
                }
            }
            Some((conn, event)) = inbound.recv() => {
                if let Some(c) = conns.get_mut(&conn) {
                    c.heard = tokio::time::Instant::now();
                }
                let input = match event {
                    Inbound::Frame(request) => RmInput::Request(conn, request),
                    Inbound::Malformed(error) => RmInput::Malformed(conn, error),
                    Inbound::Closed(_) => {
                        if let Some(c) = conns.remove(&conn) {
                            sources.remove(c.source);
                        }
                        RmInput::Disconnected(conn)
                    }
                };
                rm.handle(now(), input);
            }
            Some((addr, outcome)) = handshakes.recv() => {
                handshaking -= 1;
                match outcome {
                    Ok((Authenticated { stream, buffered }, id)) => {
                        next_conn = next_conn.next();
                        tracing::debug!(conn = ?next_conn, %addr, ?id, "member connected");
                        let conn = connection::spawn(stream, buffered, next_conn, rm_limits(max_frame_len), decode_cluster_frame, inbound_tx.clone());
                        let heard = tokio::time::Instant::now();
                        conns.insert(next_conn, RmConn { conn, source: addr.ip(), heard });
                        rm.handle(now(), RmInput::Connected { conn: next_conn, id });
                    }
                    Err(error) => {
                        sources.remove(addr.ip());
                        tracing::warn!(%addr, %error, "refused a connection");
                    }
                }
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
                if handshaking + conns.len() >= MAX_RM_CONNECTIONS {
                    tracing::warn!(%addr, limit = MAX_RM_CONNECTIONS, "refusing a connection: too many");
                    continue;
                }
                if sources.held_by(addr.ip()) >= MAX_RM_CONNECTIONS_PER_SOURCE {
                    tracing::warn!(%addr, limit = MAX_RM_CONNECTIONS_PER_SOURCE, "refusing a connection: too many from one address");
                    continue;
                }
                sources.add(addr.ip());
                handshaking += 1;
                let (acceptor, handshakes_tx) = (auth.acceptor(), handshakes_tx.clone());
                tokio::task::spawn_local(async move {
                    let outcome = cluster_link::accept(stream, acceptor).await;
                    let _ = handshakes_tx.send((addr, outcome)).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use peerlink_core::cluster_auth::{ClusterKey, Connector, Nonce};
    use peerlink_core::rm::RmConfig;
    use peerlink_core::wire::DEFAULT_MAX_FRAME_LEN;
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::net::Network;
    use crate::tls::ProdNetwork;

    /// Keeps nothing.
    struct NoStore;

    impl ConfigStore for NoStore {
        fn load(&mut self) -> io::Result<Configuration> {
            Ok(Configuration::default())
        }
        fn save(&mut self, _: &Configuration) -> io::Result<()> {
            Ok(())
        }
    }

    /// Refuses the first `failures` saves.
    struct FlakyStore {
        failures: usize,
        saved: Vec<Configuration>,
    }

    impl ConfigStore for FlakyStore {
        fn load(&mut self) -> io::Result<Configuration> {
            Ok(Configuration::default())
        }
        fn save(&mut self, config: &Configuration) -> io::Result<()> {
            if self.failures > 0 {
                self.failures -= 1;
                return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left"));
            }
            self.saved.push(config.clone());
            Ok(())
        }
    }

    /// Counts the events logged under [`CONFIG_TARGET`].
    #[derive(Clone, Default)]
    struct ConfigEvents(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ConfigEvents {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            if event.metadata().target() == CONFIG_TARGET {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    /// A configuration saved only on a retry is logged and recorded as
    /// saved like one saved at once: the log (and the simulator, which
    /// reads it) must see every configuration the RM announces.
    #[test]
    fn a_configuration_saved_on_a_retry_is_logged_like_any_other() {
        use tracing_subscriber::layer::SubscriberExt;

        let events = ConfigEvents::default();
        let subscriber = tracing_subscriber::registry().with(events.clone());
        let _guard = tracing::subscriber::set_default(subscriber);
        let mut store = FlakyStore {
            failures: 1,
            saved: Vec::new(),
        };
        let mut rm = ReplicaManager::new(
            RmConfig::new(Duration::from_millis(500), 1),
            Configuration::default(),
            crate::now(),
        );
        let mut saved = None;
        let config = Configuration::default();
        assert!(!save_config(&mut store, &mut rm, &mut saved, &config));
        assert_eq!(
            (saved.as_ref(), events.0.load(std::sync::atomic::Ordering::SeqCst)),
            (None, 0)
        );
        assert!(save_config(&mut store, &mut rm, &mut saved, &config));
        assert_eq!(saved.as_ref(), Some(&config));
        assert_eq!(store.saved, vec![config]);
        assert_eq!(events.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_connection_silent_for_the_idle_timeout_is_closed() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let key = ClusterKey::new(vec![7; 32]).unwrap();
                let net = ProdNetwork::insecure();
                let listener = net.bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap().to_string();
                let rm = ReplicaManager::new(
                    RmConfig::new(Duration::from_millis(500), 1),
                    Configuration::default(),
                    crate::now(),
                );
                let auth = ClusterAuth::new(key.clone(), [1; 32]);
                tokio::task::spawn_local(run_rm(
                    rm,
                    listener,
                    auth,
                    NoStore,
                    DEFAULT_MAX_FRAME_LEN,
                    std::future::pending(),
                ));
                let stream = net.connect(&addr).await.unwrap();
                let connector = Connector::new(key, None, Nonce([2; 32]));
                let mut link = cluster_link::connect(stream, connector).await.unwrap();
                // Silent just short of the timeout: still open.
                tokio::time::sleep(RM_IDLE_TIMEOUT - Duration::from_secs(2)).await;
                let mut byte = [0u8; 1];
                let early =
                    tokio::time::timeout(Duration::from_millis(100), link.stream.read(&mut byte)).await;
                assert!(early.is_err(), "closed before the timeout: {early:?}");
                // Past it: closed.
                tokio::time::sleep(Duration::from_secs(4)).await;
                let read = tokio::time::timeout(Duration::from_secs(1), link.stream.read(&mut byte)).await;
                assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "still open: {read:?}");
            })
            .await;
    }
}
