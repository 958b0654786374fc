//! The interactive client on a real terminal (a pty made by `script` from
//! util-linux): line editing, history, and incoming events printed above
//! the line being typed.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use peerlink_tests::{binary, registered, test_home, Router, TempDir};

/// A `peerlink client` on a pseudo-terminal, and everything it has shown.
struct Terminal {
    child: Child,
    keys: ChildStdin,
    screen: Arc<Mutex<String>>,
}

impl Terminal {
    fn start(args: &str) -> Result<Self> {
        let line = format!("{} {args}", binary().display());
        let mut child = Command::new("script")
            .args(["-qfec", &line, "/dev/null"])
            .env("XDG_DATA_HOME", test_home())
            .env("TERM", "xterm")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run script(1)")?;
        let keys = child.stdin.take().context("stdin is piped")?;
        let mut out = child.stdout.take().context("stdout is piped")?;
        let screen = Arc::new(Mutex::new(String::new()));
        let shown = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    return;
                }
                shown
                    .lock()
                    .expect("not poisoned")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Ok(Self { child, keys, screen })
    }

    fn type_keys(&mut self, keys: &str) -> Result<()> {
        self.keys.write_all(keys.as_bytes())?;
        self.keys.flush()?;
        // A terminal user types; give the editor time to draw.
        std::thread::sleep(Duration::from_millis(150));
        Ok(())
    }

    /// Waits until the screen shows `text`.
    fn shows(&self, text: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.screen.lock().expect("not poisoned").contains(text) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the terminal never showed {text:?}; it shows:\n{}",
            self.screen.lock().expect("not poisoned")
        )
    }

    fn screen(&self) -> String {
        self.screen.lock().expect("not poisoned").clone()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_prompt_edits_recalls_history_and_prints_events_above_the_line() -> Result<()> {
    let router = Router::start(&[])?;
    let dir = TempDir::new()?;
    let data = dir.path().to_str().context("UTF-8 path")?;
    let mut bob = registered("bob", &router.addr, dir.path())?;
    let mut alice = Terminal::start(&format!(
        "client --id alice --router {} --data-dir {data}",
        router.addr
    ))?;
    alice.shows("peerlink> ")?;
    alice.type_keys("REGISTER\r")?;
    alice.shows("registered alice")?;

    // Left arrow moves the cursor: "helo" becomes "hello".
    alice.type_keys("SEND_MSG bob helo\x1b[Dl\r")?;
    bob.expect("received alice#1 from=alice to=bob: hello")?;

    // Up recalls the last command.
    alice.type_keys("\x1b[A\r")?;
    bob.expect("received alice#2 from=alice to=bob: hello")?;
    alice.shows("sent alice#2")?;

    // A message arrives while alice is typing: it is printed above her
    // line, which she then finishes unharmed.
    alice.type_keys("SEND_MSG bob par")?;
    bob.send("SEND_MSG alice interrupting")?;
    alice.shows("received bob#1 from=bob to=alice: interrupting")?;
    alice.type_keys("tial\r")?;
    bob.expect("received alice#3 from=alice to=bob: partial")?;
    let screen = alice.screen();
    if screen.contains("unknown command") || screen.contains("bad_command") {
        bail!("a key reached the parser as text:\n{screen}");
    }

    // The history outlives the client.
    alice.type_keys("\x04")?;
    let history = std::fs::read_to_string(dir.path().join("history"))?;
    if !history.contains("SEND_MSG bob partial") {
        bail!("history not saved: {history:?}");
    }
    Ok(())
}
