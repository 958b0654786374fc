//! Helpers for end-to-end tests: start the real `peerlink` binary as
//! processes, talk to them through their standard streams, and wait for the
//! lines they print — always with a timeout, never with a fixed sleep.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// How long a test waits for a line it expects.
pub const WAIT: Duration = Duration::from_secs(15);

/// The `peerlink` binary, built once per test process in the profile the
/// tests themselves were built in.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "peerlink-runtime", "--bin", "peerlink"]);
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        let status = build.status().expect("cargo can be run");
        assert!(status.success(), "building the peerlink binary failed");
        let exe = std::env::current_exe().expect("the test binary has a path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binaries live in target/<profile>/deps");
        profile_dir.join("peerlink")
    })
}

/// The data home (`XDG_DATA_HOME`) of every process the tests start, unless
/// a test says otherwise: it holds the local certificate authority and the
/// default cluster key, shared by all tests and kept between runs, as a
/// user's data directory would be.
pub fn test_home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| std::env::temp_dir().join("peerlink-tests-home"))
}

/// `peerlink <args>` in the tests' data home, ready to run.
pub fn command(args: &[&str]) -> Command {
    let mut command = Command::new(binary());
    command.args(args).env("XDG_DATA_HOME", test_home());
    command
}

/// A running `peerlink` process whose standard output is read line by line.
/// It is killed when dropped.
pub struct Process {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<(Instant, String)>,
    seen: Vec<String>,
    seen_at: Vec<Instant>,
}

impl Process {
    /// Starts `peerlink` with `args`, its standard input piped.
    pub fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let mut child = command(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send((Instant::now(), line)).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            seen_at: Vec::new(),
        })
    }

    /// Writes one line to the process's standard input.
    pub fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{}: input closed", self.name))?;
        writeln!(stdin, "{line}").with_context(|| format!("{}: cannot write input", self.name))
    }

    /// Closes the process's standard input (end of commands).
    pub fn close_input(&mut self) {
        self.stdin = None;
    }

    /// Waits for an output line for which `matches` holds; returns it.
    pub fn expect_with(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    self.seen.push(line.clone());
                    self.seen_at.push(at);
                    if matches(&line) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{}: no line {what} within {WAIT:?}; saw {:#?}",
                        self.name,
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!(
                        "{}: exited before printing a line {what}; saw {:#?}",
                        self.name,
                        self.seen
                    )
                }
            }
        }
    }

    /// Waits for an output line that starts with `prefix`.
    pub fn expect(&mut self, prefix: &str) -> Result<String> {
        self.expect_with(&format!("starting {prefix:?}"), |l| l.starts_with(prefix))
    }

    /// Every line read so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// When each line of [`seen`](Process::seen) was read.
    pub fn seen_at(&self) -> &[Instant] {
        &self.seen_at
    }

    /// Waits until `n` lines read so far start with `prefix`.
    pub fn expect_count(&mut self, prefix: &str, n: usize) -> Result<()> {
        let count = |seen: &[String]| seen.iter().filter(|l| l.starts_with(prefix)).count();
        let mut have = count(&self.seen);
        while have < n {
            self.expect(prefix)?;
            have += 1;
        }
        Ok(())
    }

    /// Reads every line already printed, without waiting.
    pub fn drain(&mut self) -> &[String] {
        while let Ok((at, line)) = self.lines.try_recv() {
            self.seen.push(line);
            self.seen_at.push(at);
        }
        &self.seen
    }

    /// Waits for the process to exit, at most [`WAIT`]; returns whether it
    /// succeeded.
    pub fn wait(&mut self) -> Result<bool> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.drain_until_closed();
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {WAIT:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn drain_until_closed(&mut self) {
        while let Ok((at, line)) = self.lines.recv_timeout(WAIT) {
            self.seen.push(line);
            self.seen_at.push(at);
        }
    }

    /// Sends the process a signal by name (`STOP`, `CONT`, ...).
    pub fn signal(&self, name: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{name} {} failed: {status}", self.name);
        }
        Ok(())
    }

    /// The process's peak resident set size in bytes (`VmHWM`, Linux only).
    pub fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A standalone router on a free loopback port, with its own data
/// directory.
pub struct Router {
    /// Its process.
    pub process: Process,
    /// The address it listens on.
    pub addr: String,
    /// Its data directory.
    pub data: TempDir,
}

impl Router {
    /// Starts a router with extra flags `args`.
    pub fn start(args: &[&str]) -> Result<Self> {
        let data = TempDir::new()?;
        let dir = data
            .path()
            .to_str()
            .ok_or_else(|| anyhow!("non-UTF-8 temp dir"))?;
        let mut all = vec!["router", "--listen", "127.0.0.1:0", "--data-dir", dir];
        all.extend_from_slice(args);
        let mut process = Process::start("router", &all, &[])?;
        let addr = listening_addr(&mut process)?;
        Ok(Self { process, addr, data })
    }
}

/// Waits for a `peerlink` process to print where it listens (`...
/// listening on ADDR`); returns that address.
pub fn listening_addr(process: &mut Process) -> Result<String> {
    let line = process.expect_with("saying where it listens", |l| l.contains(" listening on "))?;
    Ok(line.rsplit(' ').next().unwrap_or_default().to_owned())
}

/// A replicated cluster: a replica manager and routers, all on free
/// loopback ports.
pub struct Cluster {
    /// The replica manager.
    pub rm: Process,
    /// Its address.
    pub rm_addr: String,
    /// The routers, `r1`, `r2`, ... in order; `None` once killed.
    pub routers: Vec<Option<Process>>,
    /// Their client addresses.
    pub addrs: Vec<String>,
    /// The members' data directories: `rm`, and `r1`, `r2`, ... in it.
    pub data: TempDir,
}

impl Cluster {
    /// Starts a replica manager and `n` routers; waits until one is primary
    /// and the others are backups.
    pub fn start(n: usize) -> Result<Self> {
        let data = TempDir::new()?;
        let (rm, rm_addr) = Self::start_rm(&data.path().join("rm"), "127.0.0.1:0")?;
        let mut cluster = Self {
            rm,
            rm_addr,
            routers: Vec::new(),
            addrs: Vec::new(),
            data,
        };
        for i in 1..=n {
            let (router, addr) = cluster.start_router(i)?;
            cluster.routers.push(Some(router));
            cluster.addrs.push(addr);
        }
        cluster.wait_for(|s| s.backups().len() == n - 1)?;
        Ok(cluster)
    }

    fn start_rm(data: &Path, listen: &str) -> Result<(Process, String)> {
        let dir = data.to_str().ok_or_else(|| anyhow!("non-UTF-8 temp dir"))?;
        let mut rm = Process::start("rm", &["rm", "--listen", listen, "--data-dir", dir], &[])?;
        let addr = listening_addr(&mut rm)?;
        Ok((rm, addr))
    }

    /// Starts router `r<i>` on a free port.
    pub fn start_router(&self, i: usize) -> Result<(Process, String)> {
        self.start_router_at(i, "127.0.0.1:0")
    }

    /// Restarts the killed router `r<i>` on the address it had, so that
    /// followers and clients that knew it reconnect to the new process.
    pub fn restart_router_in_place(&mut self, i: usize) -> Result<()> {
        let addr = self.addrs[i - 1].clone();
        let (router, _) = self.start_router_at(i, &addr)?;
        self.routers[i - 1] = Some(router);
        Ok(())
    }

    /// The running router `r<i>`.
    pub fn router(&self, i: usize) -> Result<&Process> {
        self.routers[i - 1]
            .as_ref()
            .ok_or_else(|| anyhow!("r{i} is not running"))
    }

    /// Router `r<i>`'s data directory.
    pub fn router_dir(&self, i: usize) -> PathBuf {
        self.data.path().join(format!("r{i}"))
    }

    fn start_router_at(&self, i: usize, listen: &str) -> Result<(Process, String)> {
        let id = format!("r{i}");
        let dir = self.router_dir(i);
        let dir = dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 temp dir"))?;
        let args = [
            "router",
            "--id",
            &id,
            "--listen",
            listen,
            "--rm",
            &self.rm_addr,
            "--data-dir",
            dir,
        ];
        let mut router = Process::start(&id, &args, &[])?;
        let addr = listening_addr(&mut router)?;
        Ok((router, addr))
    }

    /// Removes the data directory of the killed router `r<i>`, as if its
    /// machine were replaced: it restarts empty, under a new storage
    /// identity.
    pub fn wipe_router(&self, i: usize) -> Result<()> {
        std::fs::remove_dir_all(self.router_dir(i))?;
        Ok(())
    }

    /// Kills router `r<i>` with SIGKILL.
    pub fn kill_router(&mut self, i: usize) {
        if let Some(mut router) = self.routers[i - 1].take() {
            router.kill();
        }
    }

    /// Restarts the killed router `r<i>` (on a new port).
    pub fn restart_router(&mut self, i: usize) -> Result<()> {
        let (router, addr) = self.start_router(i)?;
        self.routers[i - 1] = Some(router);
        self.addrs[i - 1] = addr;
        Ok(())
    }

    /// Kills the replica manager with SIGKILL.
    pub fn kill_rm(&mut self) {
        self.rm.kill();
    }

    /// Restarts the replica manager on its address, with its data.
    pub fn restart_rm(&mut self) -> Result<()> {
        let (rm, _) = Self::start_rm(&self.data.path().join("rm"), &self.rm_addr.clone())?;
        self.rm = rm;
        Ok(())
    }

    /// Every router address, comma-separated, for `--router`.
    pub fn router_list(&self) -> String {
        self.addrs.join(",")
    }

    /// The replica manager's view of the cluster, once.
    pub fn status(&self) -> Result<Status> {
        let output = command(&["status", "--json", "--rm", &self.rm_addr])
            .output()
            .context("cannot run peerlink status")?;
        if !output.status.success() {
            bail!(
                "peerlink status failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(Status(serde_json::from_slice(&output.stdout)?))
    }

    /// Polls the status until `ok` holds, at most [`WAIT`].
    pub fn wait_for(&self, ok: impl Fn(&Status) -> bool) -> Result<Status> {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self.status();
            if let Ok(status) = &status {
                if ok(status) {
                    return Ok(status.clone());
                }
            }
            if Instant::now() > deadline {
                bail!("the cluster did not reach the expected state; last status: {status:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `peerlink status --json` output.
#[derive(Debug, Clone)]
pub struct Status(pub serde_json::Value);

impl Status {
    /// The configuration's epoch.
    pub fn epoch(&self) -> u64 {
        self.0["config"]["epoch"].as_u64().unwrap_or_default()
    }

    /// The primary's name, if any.
    pub fn primary(&self) -> Option<String> {
        self.0["config"]["primary"]["id"].as_str().map(str::to_owned)
    }

    /// The backups' names.
    pub fn backups(&self) -> Vec<String> {
        self.0["config"]["backups"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The LSN a member last reported.
    pub fn lsn(&self, id: &str) -> Option<u64> {
        self.0["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == id)
            .and_then(|m| m["lsn"].as_u64())
    }
}

/// A raw protocol connection: newline-delimited JSON by hand, over TLS
/// (trusting the tests' local authority) unless made with
/// [`Raw::connect_plain`].
pub struct Raw {
    /// The connection, buffered for reading.
    pub reader: BufReader<Link>,
    /// The TCP socket under it, for socket options.
    socket: TcpStream,
}

/// The byte stream under a [`Raw`] connection.
pub enum Link {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Link::Plain(s) => s.read(buf),
            Link::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Link::Plain(s) => s.write(buf),
            Link::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Link::Plain(s) => s.flush(),
            Link::Tls(s) => s.flush(),
        }
    }
}

/// A TLS client configuration that trusts the certificates in `ca_pem`.
pub fn tls_config(ca_pem: &Path) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca_pem)
        .with_context(|| format!("cannot read {}", ca_pem.display()))?
    {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

impl Raw {
    /// Connects to `addr` over TLS, trusting the tests' local authority;
    /// reads time out after [`WAIT`].
    pub fn connect(addr: &str) -> Result<Self> {
        Self::connect_trusting(addr, &test_home().join("peerlink/tls/ca.pem"))
    }

    /// Connects to `addr` over TLS, trusting the authority in `ca_pem`.
    pub fn connect_trusting(addr: &str, ca_pem: &Path) -> Result<Self> {
        let socket = Self::tcp(addr)?;
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())?;
        let tls = rustls::ClientConnection::new(tls_config(ca_pem)?, name)?;
        Ok(Self {
            reader: BufReader::new(Link::Tls(Box::new(rustls::StreamOwned::new(
                tls,
                socket.try_clone()?,
            )))),
            socket,
        })
    }

    /// Connects to `addr` in plain TCP.
    pub fn connect_plain(addr: &str) -> Result<Self> {
        let socket = Self::tcp(addr)?;
        Ok(Self {
            reader: BufReader::new(Link::Plain(socket.try_clone()?)),
            socket,
        })
    }

    fn tcp(addr: &str) -> Result<TcpStream> {
        let socket = TcpStream::connect(addr).context("connect")?;
        socket.set_read_timeout(Some(WAIT))?;
        Ok(socket)
    }

    /// The TCP socket, for its options.
    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// Writes `bytes` as they are.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_all(bytes).context("write")
    }

    /// Writes `bytes`, returning the I/O error as it is.
    pub fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let link = self.reader.get_mut();
        link.write_all(bytes)?;
        link.flush()
    }

    /// Ends the writing side (with TLS, after saying so), keeping the
    /// reading side open.
    pub fn close_write(&mut self) -> Result<()> {
        if let Link::Tls(tls) = self.reader.get_mut() {
            tls.conn.send_close_notify();
            tls.flush()?;
        }
        self.socket.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    }

    /// Reads one frame.
    pub fn read(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        self.reader.read_line(&mut line).context("read a frame")?;
        serde_json::from_str(&line).with_context(|| format!("non-JSON {line:?}"))
    }

    /// Reads until the other side closes (or the link fails); returns
    /// everything it sent.
    pub fn rest(&mut self) -> String {
        let mut rest = String::new();
        loop {
            match self.reader.read_line(&mut rest) {
                Ok(0) | Err(_) => return rest,
                Ok(_) => {}
            }
        }
    }

    /// Sends `bytes` and returns the error code of the reply.
    pub fn error_code(&mut self, bytes: &[u8]) -> Result<String> {
        self.write(bytes)?;
        let reply = self.read()?;
        if reply["type"] != "error" {
            bail!("expected an error, got {reply}");
        }
        Ok(reply["code"].as_str().unwrap_or_default().to_owned())
    }
}

/// A scratch directory, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under the system's temporary directory.
    pub fn new() -> Result<Self> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("peerlink-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `peerlink client` process for peer `id`, keeping its generated secret
/// in `data_dir`.
pub fn client(id: &str, router: &str, data_dir: &Path) -> Result<Process> {
    let dir = data_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 temp dir"))?;
    Process::start(
        id,
        &["client", "--id", id, "--router", router],
        &[("PEERLINK_DATA_DIR", dir)],
    )
}

/// A client for `id` that has registered.
pub fn registered(id: &str, router: &str, data_dir: &Path) -> Result<Process> {
    let mut peer = client(id, router, data_dir)?;
    peer.send("REGISTER")?;
    peer.expect(&format!("registered {id} "))?;
    Ok(peer)
}
