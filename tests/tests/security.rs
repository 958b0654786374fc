//! The cluster protocol is closed to anyone without the cluster key: the
//! client port never obeys a cluster frame, and the replica manager's port
//! and each router's cluster port admit only processes that prove they hold
//! the key. Each attempt below is what an attacker who can reach every port,
//! but holds no key, would try; afterwards the cluster is exactly as before.

use std::time::Duration;

use anyhow::{ensure, Result};
use peerlink_tests::{registered, Cluster, Process, Raw, Status, TempDir};

const FOLLOW: &[u8] = b"{\"type\":\"follow\",\"id\":\"r2\",\"epoch\":99,\"lsn\":0,\"stream_epoch\":0}\n";

/// A hello that claims to be `r1` with a proof made up without the key.
const FORGED_HELLO: &[u8] = b"{\"type\":\"hello\",\"id\":\"r1\",\
\"nonce\":\"0000000000000000000000000000000000000000000000000000000000000000\",\
\"proof\":\"0000000000000000000000000000000000000000000000000000000000000000\"}\n";

/// What the cluster looks like, minus what changes by itself (heartbeat
/// ages, LSNs).
fn shape(status: &Status) -> serde_json::Value {
    status.0["config"].clone()
}

#[test]
fn the_client_port_never_obeys_cluster_frames() -> Result<()> {
    let cluster = Cluster::start(2)?;
    let primary = cluster.status()?.primary().expect("a primary");
    let addr = &cluster.addrs[primary[1..].parse::<usize>()? - 1];
    let mut raw = Raw::connect(addr)?;
    ensure!(raw.error_code(FOLLOW)? == "unknown_type");
    ensure!(raw.error_code(b"{\"type\":\"applied\",\"epoch\":1,\"lsn\":1000000}\n")? == "unknown_type");
    // No checkpoint or stream follows: the next frame answers the next
    // request.
    raw.write(b"{\"type\":\"ping\",\"req\":1}\n")?;
    let pong = raw.read()?;
    ensure!(pong["type"] == "pong", "{pong}");
    Ok(())
}

#[test]
fn without_the_cluster_key_nothing_joins_heartbeats_or_follows() -> Result<()> {
    let cluster = Cluster::start(2)?;
    let dir = TempDir::new()?;
    let mut alice = registered("alice", &cluster.router_list(), dir.path())?;
    let mut bob = registered("bob", &cluster.router_list(), dir.path())?;
    let before = cluster.status()?;

    // The replica manager speaks first, with a challenge; a heartbeat in
    // its place ends the connection with nothing learned.
    let mut rm = Raw::connect(&cluster.rm_addr)?;
    let challenge = rm.read()?;
    ensure!(challenge["type"] == "challenge", "{challenge}");
    rm.write(
        b"{\"type\":\"heartbeat\",\"id\":\"r1\",\"addr\":\"127.0.0.1:1\",\"cluster_addr\":\"127.0.0.1:2\",\
\"incarnation\":666,\"epoch\":0,\"lsn\":0,\"may_lead\":true,\"beat\":1}\n",
    )?;
    let rest = rm.rest();
    ensure!(
        !rest.contains("config"),
        "the RM answered a heartbeat without a handshake: {rest}"
    );

    // A hello with a proof made without the key is refused.
    let mut rm = Raw::connect(&cluster.rm_addr)?;
    rm.read()?;
    rm.write(FORGED_HELLO)?;
    let refused = rm.read()?;
    ensure!(refused["type"] == "refused", "{refused}");

    // The primary's cluster port: no stream without the key.
    let cluster_addr = before.0["config"]["primary"]["cluster_addr"]
        .as_str()
        .expect("the primary's cluster address")
        .to_owned();
    let mut port = Raw::connect(&cluster_addr)?;
    let challenge = port.read()?;
    ensure!(challenge["type"] == "challenge", "{challenge}");
    port.write(FOLLOW)?;
    let rest = port.rest();
    ensure!(
        !rest.contains("checkpoint"),
        "the primary streamed its state: {rest:.200}"
    );
    let mut port = Raw::connect(&cluster_addr)?;
    port.read()?;
    port.write(FORGED_HELLO)?;
    ensure!(port.read()?["type"] == "refused");

    // A real router with another key never becomes a member.
    let other = TempDir::new()?;
    let other_key = other.path().join("cluster.key");
    std::fs::write(&other_key, "ab".repeat(32))?;
    let other_key = other_key.to_str().expect("UTF-8 path");
    let _intruder = Process::start(
        "r9",
        &[
            "router",
            "--id",
            "r9",
            "--listen",
            "127.0.0.1:0",
            "--rm",
            &cluster.rm_addr,
            "--cluster-key",
            other_key,
        ],
        &[],
    )?;
    // `peerlink status` with that key is refused, with a clear message.
    let output = peerlink_tests::command(&["status", "--rm", &cluster.rm_addr, "--cluster-key", other_key])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "status with a wrong key succeeded");
    ensure!(stderr.contains("refused this cluster key"), "{stderr}");
    std::thread::sleep(Duration::from_secs(2));

    let after = cluster.status()?;
    ensure!(
        shape(&after) == shape(&before),
        "the configuration changed:\n{before:?}\n{after:?}"
    );
    ensure!(after.lsn("r9").is_none(), "the RM heard of r9: {after:?}");
    // And the peers never noticed.
    alice.send("SEND_MSG bob still private")?;
    bob.expect("received alice#1 from=alice to=bob: still private")?;
    alice.expect("delivered alice#1")?;
    Ok(())
}

/// Writes a key file of `byte` repeated into `dir`; returns its path.
fn key_file(dir: &TempDir, name: &str, byte: &str) -> Result<String> {
    let path = dir.path().join(name);
    std::fs::write(&path, byte.repeat(32))?;
    Ok(path.to_str().expect("UTF-8 path").to_owned())
}

#[test]
fn while_the_key_rotates_members_with_either_key_admit_each_other() -> Result<()> {
    let dir = TempDir::new()?;
    let (old, new, other) = (
        key_file(&dir, "old.key", "01")?,
        key_file(&dir, "new.key", "02")?,
        key_file(&dir, "other.key", "03")?,
    );
    let data = dir.path().join("rm");
    let data = data.to_str().expect("UTF-8 path");
    // Mid-rotation: the RM and r2 already prove the new key, r1 still the
    // old one; each also admits the other.
    let mut rm = Process::start(
        "rm",
        &[
            "rm",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data,
            "--cluster-key",
            &new,
            "--accept-cluster-key",
            &old,
        ],
        &[],
    )?;
    let rm_addr = peerlink_tests::listening_addr(&mut rm)?;
    let router = |id: &str, key: &str, also: &str| {
        Process::start(
            id,
            &[
                "router",
                "--id",
                id,
                "--listen",
                "127.0.0.1:0",
                "--rm",
                &rm_addr,
                "--cluster-key",
                key,
                "--accept-cluster-key",
                also,
            ],
            &[],
        )
    };
    let _r1 = router("r1", &old, &new)?;
    std::thread::sleep(Duration::from_millis(500));
    let _r2 = router("r2", &new, &old)?;
    let status = |key: &str| -> Result<(bool, String)> {
        let output = peerlink_tests::command(&["status", "--json", "--rm", &rm_addr, "--cluster-key", key])
            .output()?;
        Ok((
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ))
    };
    let deadline = std::time::Instant::now() + peerlink_tests::WAIT;
    loop {
        let (ok, json) = status(&old)?;
        let formed = ok
            && serde_json::from_str::<serde_json::Value>(&json).is_ok_and(|s| {
                s["config"]["primary"]["id"] == "r1" && s["config"]["backups"][0]["id"] == "r2"
            });
        if formed {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "r1 (old key) and r2 (new key) never formed a cluster: {json}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(status(&new)?.0, "status with the new key");
    ensure!(
        !status(&other)?.0,
        "status with a key that is neither was admitted"
    );
    Ok(())
}

#[test]
fn one_address_holds_at_most_32_connections_to_the_replica_manager() -> Result<()> {
    let cluster = Cluster::start(1)?;
    // The router already holds one; 31 more fit, each greeted with a
    // challenge it never answers.
    let mut held = Vec::new();
    for _ in 0..31 {
        let mut raw = Raw::connect(&cluster.rm_addr)?;
        let challenge = raw.read()?;
        ensure!(challenge["type"] == "challenge", "{challenge}");
        held.push(raw);
    }
    let mut refused = Raw::connect(&cluster.rm_addr)?;
    let rest = refused.rest();
    ensure!(rest.is_empty(), "the 33rd connection was greeted: {rest}");
    // Unanswered handshakes end after 5 s, and their places come back.
    std::thread::sleep(Duration::from_secs(6));
    ensure!(cluster.status().is_ok(), "status after the handshakes timed out");
    Ok(())
}
