//! What a person or a script sees from the command line: bad arguments are
//! refused at once with a clear message, `--json` output is JSON on every
//! line, and logs redirected to a file carry no colour codes.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use peerlink_tests::{command, Cluster, Process, Router, TempDir};

#[test]
fn a_malformed_router_address_is_refused_at_start() -> Result<()> {
    // Built (once) before the clock starts.
    peerlink_tests::binary();
    for bad in [
        "8009",
        "127.0.0.1",
        " 127.0.0.1:8009",
        "127.0.0.1:0",
        "host:99999",
    ] {
        let started = Instant::now();
        let output = command(&["client", "--id", "alice", "--router", bad])
            .stdin(Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            output.status.code() == Some(2),
            "{bad:?}: {:?} {stderr}",
            output.status
        );
        ensure!(stderr.contains("--router"), "{bad:?}: {stderr}");
        ensure!(
            started.elapsed() < Duration::from_secs(2),
            "{bad:?} took {:?}",
            started.elapsed()
        );
    }
    Ok(())
}

#[test]
fn every_json_line_is_a_json_object_errors_included() -> Result<()> {
    let router = Router::start(&[])?;
    let dir = TempDir::new()?;
    let mut child = command(&[
        "client",
        "--id",
        "jason",
        "--router",
        &router.addr,
        "--json",
        "--wait",
        "5",
    ])
    .env("PEERLINK_DATA_DIR", dir.path())
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()?;
    child
        .stdin
        .take()
        .context("stdin is piped")?
        .write_all(b"FOO\nREGISTER\nSEND_MSG nobody hi\nSEND_MSG jason \x1b[2J\n")?;
    let output = child.wait_with_output()?;
    let stdout = String::from_utf8(output.stdout)?;
    let mut events = Vec::new();
    for line in stdout.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not JSON: {line:?}"))?;
        ensure!(value.is_object(), "{line}");
        ensure!(!line.contains('\u{1b}'), "a raw control character: {line:?}");
        events.push(value["event"].as_str().unwrap_or_default().to_owned());
    }
    for expected in ["error", "registered", "failed", "received"] {
        ensure!(events.iter().any(|e| e == expected), "no {expected} in {stdout}");
    }
    Ok(())
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() -> Result<()> {
    let data = TempDir::new()?;
    let dir = data.path().to_str().context("UTF-8 path")?;
    let mut child = command(&["router", "--listen", "127.0.0.1:0", "--data-dir", dir])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr is piped")?;
    let mut lines = Vec::new();
    for line in BufReader::new(stderr).lines().take(5) {
        let line = line?;
        let started = line.contains("router started");
        lines.push(line);
        if started {
            break;
        }
    }
    child.kill()?;
    child.wait()?;
    ensure!(lines.iter().any(|l| l.contains("router started")), "{lines:?}");
    ensure!(
        lines.iter().all(|l| !l.contains('\u{1b}')),
        "colour codes in a log file: {lines:?}"
    );
    Ok(())
}

#[test]
fn status_shows_a_killed_router_as_down_within_two_seconds() -> Result<()> {
    let mut cluster = Cluster::start(3)?;
    let killed_at = Instant::now();
    cluster.kill_router(3);
    let state = |text: &str, id: &str| -> Option<String> {
        let line = text.lines().find(|l| l.split_whitespace().next() == Some(id))?;
        line.split_whitespace().nth(2).map(str::to_owned)
    };
    loop {
        let output = command(&["status", "--rm", &cluster.rm_addr]).output()?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if state(&text, "r3").as_deref() == Some("down") {
            ensure!(state(&text, "r1").as_deref() == Some("up"), "{text}");
            ensure!(state(&text, "r2").as_deref() == Some("up"), "{text}");
            return Ok(());
        }
        ensure!(
            killed_at.elapsed() < Duration::from_secs(2),
            "r3 is not shown down 2 s after its kill:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn up_says_where_its_data_is_and_names_each_childs_log_lines() -> Result<()> {
    let base = 30_000 + (std::process::id() % 2_000) as u16 * 4;
    let data = TempDir::new()?;
    let dir = data.path().to_str().context("UTF-8 path")?;
    let mut up = command(&["up", "--base-port", &base.to_string(), "--data-dir", dir])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = BufReader::new(up.stdout.take().context("stdout is piped")?);
    let stderr = BufReader::new(up.stderr.take().context("stderr is piped")?);
    let mut said_data = false;
    for line in stdout.lines() {
        let line = line?;
        said_data |= line.contains(&format!("state: {dir} "));
        if line.starts_with("Connect peers") {
            break;
        }
    }
    let mut named = Vec::new();
    for line in stderr.lines().take(50) {
        let line = line?;
        if let Some((name, _)) = line.split_once(" | ") {
            if !named.contains(&name.trim().to_owned()) {
                named.push(name.trim().to_owned());
            }
        }
        if ["rm", "r1", "r2", "r3"]
            .iter()
            .all(|n| named.iter().any(|m| m == n))
        {
            break;
        }
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status();
    up.wait()?;
    ensure!(said_data, "up did not say where its data is");
    named.sort();
    ensure!(named == ["r1", "r2", "r3", "rm"], "log lines named {named:?}");
    Ok(())
}

#[test]
fn a_body_too_large_is_refused_once_and_never_sent() -> Result<()> {
    let router = Router::start(&[])?;
    let dir = TempDir::new()?;
    let mut child = command(&["client", "--id", "olga", "--router", &router.addr, "--wait", "5"])
        .env("PEERLINK_DATA_DIR", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut input = child.stdin.take().context("stdin is piped")?;
    input.write_all(b"REGISTER\nSEND_MSG olga ")?;
    input.write_all(&vec![b'"'; 600_000])?;
    input.write_all(b"\nSEND_MSG olga small\n")?;
    drop(input);
    let started = Instant::now();
    let output = child.wait_with_output()?;
    let stdout = String::from_utf8(output.stdout)?;
    let refusals = stdout.lines().filter(|l| l.contains("at most")).count();
    ensure!(refusals == 1, "refused {refusals} times:\n{stdout}");
    ensure!(
        stdout.contains("sent olga#1"),
        "the next message was not sent:\n{stdout}"
    );
    ensure!(
        !stdout.contains("olga#2"),
        "the large message got a number:\n{stdout}"
    );
    ensure!(!output.status.success(), "a refused command exited 0");
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

/// The pid `up` printed for child `name` (`  r2  pid 1234`).
fn child_pid(up: &Process, name: &str) -> Option<String> {
    up.seen().iter().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some(name) && words.next() == Some("pid"))
            .then(|| words.next().unwrap_or_default().to_owned())
    })
}

#[test]
fn up_restarts_a_killed_router_with_its_state_unless_told_not_to() -> Result<()> {
    for (offset, no_restart) in [(0u16, false), (4, true)] {
        let base = 44_000 + (std::process::id() % 1_000) as u16 * 8 + offset;
        let data = TempDir::new()?;
        let dir = data.path().to_str().context("UTF-8 path")?;
        let base = base.to_string();
        let mut args = vec!["up", "--base-port", &base, "--data-dir", dir];
        if no_restart {
            args.push("--no-restart");
        }
        let mut up = Process::start("up", &args, &[])?;
        up.expect_with("the cluster up", |l| {
            l.starts_with("epoch ") && l.contains("backups r")
        })?;
        let pid = child_pid(&up, "r2").context("up printed no pid for r2")?;
        std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()?;
        let exited = up.expect("r2 exited")?;
        if no_restart {
            ensure!(exited.contains("not restarted (--no-restart)"), "{exited}");
            let command = up.expect("  peerlink router")?;
            ensure!(
                command.contains("--data-dir"),
                "the restart command keeps the data: {command}"
            );
        } else {
            ensure!(exited.contains("restarting it in 0.5 s"), "{exited}");
            let restarted = up.expect("r2 restarted (pid ")?;
            ensure!(
                !restarted.contains(&format!("pid {pid})")),
                "a new process: {restarted}"
            );
        }
        up.signal("INT")?;
        up.wait()?;
    }
    Ok(())
}

#[test]
fn completions_and_manual_pages_cover_every_subcommand() -> Result<()> {
    let subcommands = ["up", "router", "rm", "status", "client", "bench", "cert"];
    for shell in ["bash", "zsh", "fish"] {
        let output = command(&["completions", shell]).output()?;
        ensure!(output.status.success(), "completions {shell} failed");
        let script = String::from_utf8(output.stdout)?;
        for sub in subcommands {
            ensure!(script.contains(sub), "{shell} completions lack {sub}");
        }
        ensure!(script.contains("data-dir"), "{shell} completions lack flags");
    }
    let bad = command(&["completions", "cmd.exe"]).output()?;
    ensure!(bad.status.code() == Some(2), "an unknown shell is a usage error");
    let out = TempDir::new()?;
    let dir = out.path().join("man1");
    let dir_text = dir.to_str().context("UTF-8 path")?;
    let status = command(&["man", "--out", dir_text])
        .stdout(Stdio::null())
        .status()?;
    ensure!(status.success(), "man failed");
    for page in
        std::iter::once("peerlink.1".to_owned()).chain(subcommands.iter().map(|s| format!("peerlink-{s}.1")))
    {
        let text = std::fs::read_to_string(dir.join(&page)).with_context(|| format!("no {page}"))?;
        ensure!(text.contains(".TH"), "{page} is not a manual page");
    }
    Ok(())
}

#[test]
fn status_watch_repeats_and_survives_an_unreachable_replica_manager() -> Result<()> {
    let mut cluster = Cluster::start(2)?;
    let mut watch = Process::start(
        "status",
        &["status", "--rm", &cluster.rm_addr, "--watch", "1"],
        &[],
    )?;
    watch.expect("epoch ")?;
    watch.expect("epoch ")?;
    cluster.kill_rm();
    let line = watch.expect_with("the RM unreachable", |l| l.contains("asking again in 1 s"))?;
    ensure!(line.contains("replica manager"), "{line}");
    cluster.restart_rm()?;
    watch.expect("epoch ")?;
    watch.signal("INT")?;
    ensure!(watch.wait()?, "status --watch did not stop cleanly on Ctrl-C");
    Ok(())
}

#[test]
fn an_unreachable_router_is_reported_within_two_seconds() -> Result<()> {
    // A port nothing listens on: bind one, note it, and let it go.
    let free = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let dir = TempDir::new()?;
    let dir_text = dir.path().to_str().context("UTF-8 temp dir")?;
    let mut client = Process::start(
        "lonely",
        &["client", "--id", "lonely", "--router", &free],
        &[("PEERLINK_DATA_DIR", dir_text)],
    )?;
    let started = Instant::now();
    client.send("REGISTER")?;
    let line = client.expect("unreachable ")?;
    ensure!(
        started.elapsed() < Duration::from_secs(2),
        "reported after {:?}",
        started.elapsed()
    );
    ensure!(line.contains(&free) && line.contains("retrying in"), "{line}");
    Ok(())
}

#[test]
fn a_second_register_is_answered() -> Result<()> {
    let router = Router::start(&[])?;
    let dir = TempDir::new()?;
    let mut alice = peerlink_tests::registered("alice", &router.addr, dir.path())?;
    alice.send("REGISTER")?;
    alice.expect("registered alice next_seq=1")?;
    Ok(())
}

#[test]
fn a_config_file_takes_effect_and_flags_override_it() -> Result<()> {
    let dir = TempDir::new()?;
    let file = dir.path().join("router.toml");
    std::fs::write(
        &file,
        "directory = \"public\"\nmax_watches = 1\nmailbox-limit = 7\n",
    )?;
    let file = file.to_str().context("UTF-8 temp dir")?;

    let printed = command(&["router", "--config", file, "--max-watches", "2", "--print-config"]).output()?;
    ensure!(printed.status.success(), "{printed:?}");
    let text = String::from_utf8(printed.stdout)?;
    for line in [
        "directory = \"public\"  # configuration file",
        "max-watches = 2  # command line",
        "mailbox-limit = 7  # configuration file",
        "# idle-timeout = 60  # default",
    ] {
        ensure!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }

    let router = Router::start(&["--config", file, "--max-watches", "2"])?;
    let mut alice = peerlink_tests::registered("alice", &router.addr, dir.path())?;
    for id in ["bob", "carol", "dave"] {
        peerlink_tests::registered(id, &router.addr, dir.path())?;
    }
    alice.send("PEERS")?;
    alice.expect("peers alice:online")?;
    for id in ["bob", "carol"] {
        alice.send(&format!("WATCH {id}"))?;
        alice.expect(&format!("presence {id} "))?;
    }
    alice.send("WATCH dave")?;
    alice.expect("query_failed WATCH dave code=too_many_watches")?;

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "mailbox-limit = \"lots\"\n")?;
    let output = command(&["router", "--config", bad.to_str().context("UTF-8")?]).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.code() == Some(2), "{output:?}");
    ensure!(
        stderr.contains("bad.toml") && stderr.contains("--mailbox-limit"),
        "{stderr}"
    );
    Ok(())
}

/// The body of `GET path` from the admin listener at `addr`, with its
/// status line.
fn http_get(addr: &str, path: &str) -> Result<(String, String)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("an HTTP response")?;
    Ok((
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    ))
}

/// The value of the metric line starting with `name` (labels included).
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_metrics_endpoint_serves_counters_that_move_with_traffic() -> Result<()> {
    let admin = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let router = Router::start(&["--admin-listen", &admin])?;
    let (status, body) = http_get(&admin, "/health")?;
    ensure!(status.contains("200") && body == "ok\n", "{status} {body:?}");
    ensure!(http_get(&admin, "/nothing")?.0.contains("404"));

    let dir = TempDir::new()?;
    let mut alice = peerlink_tests::registered("alice", &router.addr, dir.path())?;
    let _bob = peerlink_tests::registered("bob", &router.addr, dir.path())?;
    for n in 1..=3 {
        alice.send(&format!("SEND_MSG bob m{n}"))?;
    }
    alice.send("SEND_MSG nobody hello")?;
    alice.expect_count("delivered ", 3)?;
    alice.expect_count("failed ", 1)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = http_get(&admin, "/metrics")?;
        let accepted = metric(&body, "peerlink_messages_accepted_total");
        let refused = metric(&body, "peerlink_refused_total{code=\"unknown_recipient\"}");
        let delivered = metric(&body, "peerlink_messages_delivered_total");
        let peers = metric(&body, "peerlink_peers");
        let sessions = metric(&body, "peerlink_sessions");
        if accepted == Some(3.0)
            && refused == Some(1.0)
            && delivered == Some(3.0)
            && peers == Some(2.0)
            && sessions == Some(2.0)
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "accepted {accepted:?} refused {refused:?} delivered {delivered:?} peers {peers:?} sessions {sessions:?} in:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[test]
fn status_asks_the_routers_directly_when_the_rm_is_down() -> Result<()> {
    let mut cluster = Cluster::start(3)?;
    let primary = cluster.status()?.primary().context("a primary")?;
    let primary_addr = cluster.addrs[primary.trim_start_matches('r').parse::<usize>()? - 1].clone();
    let dead = if primary == "r3" { 2 } else { 3 };
    cluster.kill_router(dead);
    cluster.kill_rm();
    let routers = cluster.router_list();
    let output = command(&["status", "--rm", &cluster.rm_addr, "--routers", &routers]).output()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(output.status.code() == Some(1), "{output:?}");
    ensure!(text.contains("asked directly"), "{text}");
    let line = |addr: &str| {
        text.lines()
            .find(|l| l.starts_with(addr))
            .unwrap_or_default()
            .to_owned()
    };
    ensure!(line(&primary_addr).contains("serves clients"), "{text}");
    ensure!(line(&cluster.addrs[dead - 1]).contains("unreachable"), "{text}");
    let others = (1..=3).filter(|i| *i != dead && cluster.addrs[i - 1] != primary_addr);
    for i in others {
        let l = line(&cluster.addrs[i - 1]);
        ensure!(l.contains(&format!("sends clients to {primary_addr}")), "{text}");
    }
    let json = command(&[
        "status",
        "--rm",
        &cluster.rm_addr,
        "--routers",
        &routers,
        "--json",
    ])
    .output()?;
    let value: serde_json::Value = serde_json::from_slice(&json.stdout)?;
    ensure!(value["routers"].as_array().map(Vec::len) == Some(3), "{value}");
    Ok(())
}
