//! `peerlink client`: a peer, interactive on a terminal, one command and one
//! event a line otherwise.

use std::cell::{Cell, RefCell};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use peerlink_core::client::{Client, ClientConfig, ClientEvent, Command};
use peerlink_core::ids::{PeerId, Secret, MAX_SECRET_LEN};
use peerlink_core::wire::DEFAULT_MAX_FRAME_LEN;
use peerlink_runtime::client_driver::{run_client, ClientDriverConfig, Control};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use super::commands::{self, Line};
use super::tls_args::TlsArgs;
use super::{output, prompt, secret};

/// Flags of `peerlink client`.
#[derive(Debug, Args)]
#[command(after_help = "\
Commands are read from standard input, one a line: REGISTER, SEND_MSG <peer|group> <text>,
CREATE_GROUP <g>, JOIN_GROUP <g>, LEAVE_GROUP <g>, help, quit. Events are printed one a line.

Scripted use: at the end of input the client waits (see --wait) for the answers to what it
sent, then exits with status 0 only if every command succeeded:
  printf 'REGISTER\\nSEND_MSG peer2 hello\\n' | peerlink client --id peer1 --router 127.0.0.1:8008

Receiving in a script: --receive registers, prints every message waiting and every one that
arrives, and exits once none has arrived for --idle seconds (or after --count messages):
  peerlink client --id peer2 --receive --idle 2 --json
Exit status 0 if it registered (and, with --count, received that many); 1 otherwise.")]
pub(crate) struct ClientArgs {
    /// The peer ID to register as (1-64 characters of A-Z a-z 0-9 . _ -).
    #[arg(long)]
    id: PeerId,
    /// Router addresses (HOST:PORT), comma-separated; tried in turn.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:8008,127.0.0.1:8009,127.0.0.1:8010",
        value_parser = parse_router
    )]
    router: Vec<String>,
    /// The peer's secret. Without it (or PEERLINK_SECRET), a secret is
    /// generated once and kept in DATA_DIR/<id>.secret.
    #[arg(long, env = "PEERLINK_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Where generated secrets are kept [default: $XDG_DATA_HOME/peerlink
    /// or ~/.local/share/peerlink].
    #[arg(long, env = "PEERLINK_DATA_DIR", hide_env_values = true)]
    data_dir: Option<PathBuf>,
    /// Print events as JSON objects, one a line.
    #[arg(long)]
    json: bool,
    /// At the end of input, wait at most this many seconds for answers.
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    wait: f64,
    /// Receive instead of reading commands: register, print what is waiting
    /// and what arrives, and exit after --idle seconds without a message or
    /// after --count messages. Standard input is not read.
    #[arg(long)]
    receive: bool,
    /// With --receive: exit once no message has arrived for this many
    /// seconds (counted from the registration, then from each message).
    #[arg(long, default_value_t = 2.0, value_parser = parse_seconds, requires = "receive")]
    idle: f64,
    /// With --receive: exit once this many messages have arrived; fewer
    /// before the idle time makes the exit status 1.
    #[arg(long, requires = "receive", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Give up a connection attempt after this many seconds.
    #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
    connect_timeout: f64,
    #[command(flatten)]
    tls: TlsArgs,
}

/// A router address as a client dials it: `HOST:PORT`.
pub(crate) fn parse_router(s: &str) -> Result<String, String> {
    peerlink_core::wire::cluster::check_addr(s)?;
    Ok(s.to_owned())
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let value: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.0..=86_400.0).contains(&value) {
        return Err("must be between 0 and 86400 seconds".into());
    }
    Ok(value)
}

/// Runs the client until its input ends and its commands are answered.
pub(crate) async fn run(args: ClientArgs) -> anyhow::Result<ExitCode> {
    // Needed for a generated secret and the prompt's history only.
    let data_dir = match &args.data_dir {
        Some(dir) => Ok(dir.clone()),
        None => secret::default_data_dir(),
    };
    let secret = match args.secret {
        Some(text) => Secret::new(text).map_err(|_| {
            anyhow::anyhow!(
                "unusable --secret / PEERLINK_SECRET: a secret must be 1 to {MAX_SECRET_LEN} bytes long"
            )
        })?,
        None => {
            let dir = data_dir.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            secret::load_or_create(dir, &args.id)?
        }
    };
    let net = args.tls.network()?;
    let interactive = std::io::stdin().is_terminal();
    let wait = Duration::from_secs_f64(args.wait);
    let config = ClientConfig::new(args.id.clone(), secret, args.router.clone());
    let outbox_limit = config.outbox_limit;
    let client = Client::new(config, rand::random(), peerlink_runtime::now());
    let driver_config = ClientDriverConfig {
        connect_timeout: Duration::from_secs_f64(args.connect_timeout),
        max_frame_len: DEFAULT_MAX_FRAME_LEN,
    };
    let (controls, controls_rx) = mpsc::channel(1);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let driver = tokio::task::spawn_local(run_client(
        net,
        client,
        driver_config,
        controls_rx,
        events_tx,
        outbox_limit,
    ));
    if interactive && !args.receive {
        println!(
            "peerlink client {} -> {}. Type REGISTER to start, help for the commands.",
            args.id,
            args.router.join(",")
        );
    }
    let failures = Rc::new(Cell::new(0usize));
    let mut receiving = args.receive.then(|| Receiving::new(args.idle, args.count, wait));
    let out = Rc::new(RefCell::new(Out::Plain));
    let input = if receiving.is_some() {
        controls
            .send(Control::Command(Command::Register))
            .await
            .context("the client driver stopped")?;
        None
    } else {
        let lines = if interactive {
            let (lines, printer) = prompt::start(data_dir.as_ref().ok().map(PathBuf::as_path))?;
            *out.borrow_mut() = Out::Prompt(printer);
            lines
        } else {
            stdin_lines(Rc::clone(&failures))
        };
        Some(tokio::task::spawn_local(read_input(
            lines,
            controls.clone(),
            wait,
            Rc::clone(&failures),
            args.json,
            Rc::clone(&out),
        )))
    };
    loop {
        let event = match &mut receiving {
            Some(r) => match r.next(&mut events, &controls).await {
                Some(event) => event,
                None => break,
            },
            None => match events.recv().await {
                Some(event) => event,
                None => break,
            },
        };
        if output::is_failure(&event) {
            failures.set(failures.get() + 1);
        }
        let line = if args.json {
            output::json(&event)
        } else {
            output::text(&event)
        };
        out.borrow_mut().line(line);
    }
    drop(controls);
    let exit = driver.await.context("the client driver failed")?;
    if let Some(input) = input {
        input.abort();
    }
    if exit.outstanding > 0 {
        eprintln!(
            "peerlink: {} command(s) still unanswered after waiting {} s",
            exit.outstanding, args.wait
        );
    }
    let mut ok = exit.outstanding == 0 && failures.get() == 0 && !exit.stopped;
    if let Some(r) = &receiving {
        if let Some(short) = r.shortfall() {
            eprintln!("peerlink: {short}");
            ok = false;
        }
        ok &= r.registered;
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The state of `--receive`: what has arrived, and when to stop.
struct Receiving {
    idle: Duration,
    count: Option<u64>,
    wait: Duration,
    registered: bool,
    received: u64,
    finishing: bool,
}

impl Receiving {
    fn new(idle: f64, count: Option<u64>, wait: Duration) -> Self {
        Self {
            idle: Duration::from_secs_f64(idle),
            count,
            wait,
            registered: false,
            received: 0,
            finishing: false,
        }
    }

    /// The next event, asking the driver to finish once the idle time has
    /// passed with none (after the registration) or enough have arrived.
    async fn next(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<ClientEvent>,
        controls: &mpsc::Sender<Control>,
    ) -> Option<ClientEvent> {
        loop {
            if !self.registered || self.finishing {
                return self.note(events.recv().await?, controls).await;
            }
            match tokio::time::timeout(self.idle, events.recv()).await {
                Ok(event) => return self.note(event?, controls).await,
                Err(_) => self.finish(controls).await,
            }
        }
    }

    async fn note(&mut self, event: ClientEvent, controls: &mpsc::Sender<Control>) -> Option<ClientEvent> {
        match &event {
            ClientEvent::Registered { .. } => self.registered = true,
            ClientEvent::RegisterFailed { .. } => self.finish(controls).await,
            ClientEvent::Received { .. } => {
                self.received += 1;
                if self.count.is_some_and(|n| self.received >= n) {
                    self.finish(controls).await;
                }
            }
            _ => {}
        }
        Some(event)
    }

    async fn finish(&mut self, controls: &mpsc::Sender<Control>) {
        if !self.finishing {
            self.finishing = true;
            let _ = controls.send(Control::Finish { within: self.wait }).await;
        }
    }

    /// Why the run falls short of `--count`, if it does.
    fn shortfall(&self) -> Option<String> {
        let wanted = self.count?;
        (self.received < wanted).then(|| {
            format!(
                "received {} of the {wanted} messages asked for before {} s passed without one",
                self.received,
                self.idle.as_secs_f64()
            )
        })
    }
}

/// Where the lines for the person or the script go: standard output, or
/// above the prompt being edited.
enum Out {
    Plain,
    Prompt(prompt::Printer),
}

impl Out {
    fn line(&mut self, text: String) {
        match self {
            Out::Plain => println!("{text}"),
            Out::Prompt(printer) => printer.print(text),
        }
    }
}

/// Standard input's lines, read by a task; a read error counts as a failure
/// and ends them.
fn stdin_lines(failures: Rc<Cell<usize>>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    tokio::task::spawn_local(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => {
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    eprintln!("peerlink: cannot read standard input: {e}");
                    failures.set(failures.get() + 1);
                    return;
                }
            }
        }
    });
    rx
}

/// Runs the commands of `lines` until they end or say `quit`, then asks the
/// driver to finish within `wait`; a line it cannot parse is answered with
/// `bad_command`, as JSON if `json`.
async fn read_input(
    mut lines: mpsc::Receiver<String>,
    controls: mpsc::Sender<Control>,
    wait: Duration,
    failures: Rc<Cell<usize>>,
    json: bool,
    out: Rc<RefCell<Out>>,
) {
    while let Some(line) = lines.recv().await {
        match commands::parse(&line) {
            Ok(Line::Command(command)) => {
                if controls.send(Control::Command(command)).await.is_err() {
                    return;
                }
            }
            Ok(Line::Help) => out.borrow_mut().line(commands::HELP.to_owned()),
            Ok(Line::Quit) => break,
            Ok(Line::Blank) => {}
            Err(message) => {
                failures.set(failures.get() + 1);
                out.borrow_mut().line(output::bad_command(&message, json));
            }
        }
    }
    let _ = controls.send(Control::Finish { within: wait }).await;
}
