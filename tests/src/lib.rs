//! Helpers for end-to-end tests: start the real `peerlink` binary as
//! processes, talk to them through their standard streams, and wait for the
//! lines they print — always with a timeout, never with a fixed sleep.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
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

/// A running `peerlink` process whose standard output is read line by line.
/// It is killed when dropped.
pub struct Process {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Process {
    /// Starts `peerlink` with `args`, its standard input piped.
    pub fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let mut child = Command::new(binary())
            .args(args)
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
                if tx.send(line).is_err() {
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
                Ok(line) => {
                    self.seen.push(line.clone());
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

    /// Reads every line already printed, without waiting.
    pub fn drain(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
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
        while let Ok(line) = self.lines.recv_timeout(WAIT) {
            self.seen.push(line);
        }
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

/// A standalone router on a free loopback port.
pub struct Router {
    /// Its process.
    pub process: Process,
    /// The address it listens on.
    pub addr: String,
}

impl Router {
    /// Starts a router with extra flags `args`.
    pub fn start(args: &[&str]) -> Result<Self> {
        let mut all = vec!["router", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut process = Process::start("router", &all, &[])?;
        let line = process.expect("router ")?;
        let addr = line
            .rsplit(' ')
            .next()
            .ok_or_else(|| anyhow!("unexpected first line {line:?}"))?
            .to_owned();
        Ok(Self { process, addr })
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
