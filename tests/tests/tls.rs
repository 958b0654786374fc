//! Every link is TLS unless `--insecure` says otherwise: a client verifies
//! the router's certificate and refuses one it cannot trust, plain TCP to a
//! TLS port gets nowhere and harms nobody, and certificates issued with
//! `peerlink cert` work across (simulated) machines.

use std::io::Write;

use anyhow::{ensure, Result};
use peerlink_tests::{command, registered, Process, Raw, Router, TempDir};

/// Issues a certificate for `hosts` from the authority of the data home
/// `home` into `home/<name>`; returns that folder.
fn issue(home: &TempDir, name: &str, hosts: &[&str]) -> Result<std::path::PathBuf> {
    let out = home.path().join(name);
    let mut args = vec!["cert", "--out", out.to_str().expect("UTF-8 path")];
    for host in hosts {
        args.extend(["--host", host]);
    }
    let output = command(&args).env("XDG_DATA_HOME", home.path()).output()?;
    ensure!(
        output.status.success(),
        "peerlink cert failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(out)
}

#[test]
fn a_client_refuses_a_router_it_cannot_trust() -> Result<()> {
    let router = Router::start(&[])?;
    // Another user's (or machine's) authority.
    let stranger = TempDir::new()?;
    let theirs = issue(&stranger, "n", &["127.0.0.1"])?;
    let ca = theirs.join("ca.pem");
    let mut raw = Raw::connect_trusting(&router.addr, &ca)?;
    let refused = raw.write(b"{\"type\":\"ping\",\"req\":1}\n");
    let error = match refused {
        Err(e) => format!("{e:#}"),
        Ok(()) => format!(
            "{:#}",
            raw.read().expect_err("a pong through an untrusted router")
        ),
    };
    ensure!(error.contains("UnknownIssuer"), "{error}");

    // The real client, told to trust only that authority, never registers.
    let dir = TempDir::new()?;
    let mut child = command(&[
        "client",
        "--id",
        "alice",
        "--router",
        &router.addr,
        "--tls-ca",
        ca.to_str().expect("UTF-8 path"),
        "--wait",
        "2",
        "--connect-timeout",
        "1",
    ])
    .env("PEERLINK_DATA_DIR", dir.path())
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(b"REGISTER\n")?;
    let output = child.wait_with_output()?;
    ensure!(
        !output.status.success(),
        "a client registered through an untrusted router"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(!stdout.contains("registered"), "{stdout}");
    Ok(())
}

#[test]
fn plain_tcp_to_a_tls_port_gets_nothing_and_harms_nobody() -> Result<()> {
    let router = Router::start(&[])?;
    let dir = TempDir::new()?;
    let mut alice = registered("alice", &router.addr, dir.path())?;
    let mut bob = registered("bob", &router.addr, dir.path())?;
    let mut plain = Raw::connect_plain(&router.addr)?;
    plain.write(b"{\"type\":\"register\",\"req\":1,\"peer\":\"alice\",\"secret\":\"guess\"}\n")?;
    let rest = plain.rest();
    ensure!(!rest.contains("\"type\""), "a plain client got a frame: {rest:?}");
    alice.send("SEND_MSG bob still private")?;
    bob.expect("received alice#1 from=alice to=bob: still private")?;
    alice.expect("delivered alice#1")?;
    Ok(())
}

#[test]
fn insecure_is_plain_tcp_on_both_sides_only() -> Result<()> {
    let router = Router::start(&["--insecure"])?;
    // A TLS client refuses to talk in the clear...
    let mut raw = Raw::connect(&router.addr)?;
    ensure!(
        raw.write(b"{\"type\":\"ping\",\"req\":1}\n").is_err() || raw.read().is_err(),
        "a TLS client talked to a plain router"
    );
    // ...and an insecure one talks, warned.
    let mut plain = Raw::connect_plain(&router.addr)?;
    plain.write(b"{\"type\":\"ping\",\"req\":1}\n")?;
    ensure!(plain.read()?["type"] == "pong");
    let dir = TempDir::new()?;
    let output = command(&[
        "client",
        "--id",
        "alice",
        "--router",
        &router.addr,
        "--insecure",
        "--wait",
        "5",
    ])
    .env("PEERLINK_DATA_DIR", dir.path())
    .stdin(std::process::Stdio::null())
    .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(stderr.contains("--insecure: links are plain TCP"), "{stderr}");
    Ok(())
}

#[test]
fn certificates_from_peerlink_cert_carry_a_cluster_across_machines() -> Result<()> {
    // One machine issues a certificate per host; each "machine" below has
    // a data home of its own, so only the files passed tie them together.
    let issuer = TempDir::new()?;
    let node = issue(&issuer, "node", &["localhost"])?;
    let path = |name: &str| node.join(name).to_str().expect("UTF-8 path").to_owned();
    let (ca, cert, key) = (path("ca.pem"), path("cert.pem"), path("key.pem"));
    let elsewhere = TempDir::new()?;
    let home = elsewhere.path().to_str().expect("UTF-8 path");
    let mut router = Process::start(
        "router",
        &[
            "router",
            "--listen",
            "127.0.0.1:0",
            "--tls-ca",
            &ca,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        &[("XDG_DATA_HOME", home)],
    )?;
    let addr = peerlink_tests::listening_addr(&mut router)?;
    let port = addr.rsplit(':').next().unwrap_or_default();
    let by_name = format!("localhost:{port}");
    let client = |id: &str, router: &str| {
        Process::start(
            id,
            &["client", "--id", id, "--router", router, "--tls-ca", &ca],
            &[("XDG_DATA_HOME", home), ("PEERLINK_DATA_DIR", home)],
        )
    };
    let mut alice = client("alice", &by_name)?;
    alice.send("REGISTER")?;
    alice.expect("registered alice ")?;
    let mut bob = client("bob", &by_name)?;
    bob.send("REGISTER")?;
    bob.expect("registered bob ")?;
    alice.send("SEND_MSG bob across machines")?;
    bob.expect("received alice#1 from=alice to=bob: across machines")?;
    // The certificate names localhost only: the same router dialled by
    // its IP address is refused.
    let mut raw = Raw::connect_trusting(&addr, std::path::Path::new(&ca))?;
    ensure!(
        raw.write(b"{\"type\":\"ping\",\"req\":1}\n").is_err() || raw.read().is_err(),
        "a certificate for localhost was accepted for {addr}"
    );
    Ok(())
}
