//! Every limit on what one peer may make a router hold is hit, over real
//! connections to a real router, and answered with its error, while a
//! legitimate pair keeps talking and the router's memory stays within its
//! budget.

use anyhow::{ensure, Context, Result};
use peerlink_tests::{registered, Raw, Router, TempDir};

/// A raw session registered as `peer` with `secret`.
fn session(addr: &str, peer: &str, secret: &str) -> Result<Raw> {
    let mut raw = Raw::connect(addr)?;
    raw.write(
        format!("{{\"type\":\"register\",\"req\":1,\"peer\":\"{peer}\",\"secret\":\"{secret}\"}}\n")
            .as_bytes(),
    )?;
    let reply = raw.read()?;
    ensure!(
        reply["type"] == "registered",
        "{peer} could not register: {reply}"
    );
    Ok(raw)
}

/// Sends `frame` and returns the type of the answer, or its error code;
/// mail pushed meanwhile is skipped (and never acknowledged).
fn answer(raw: &mut Raw, frame: &str) -> Result<String> {
    raw.write(format!("{frame}\n").as_bytes())?;
    let reply = loop {
        let reply = raw.read()?;
        if reply["type"] != "message" && reply["type"] != "delivered" {
            break reply;
        }
    };
    let kind = reply["type"].as_str().context("an answer has a type")?;
    Ok(if kind == "error" {
        reply["code"].as_str().unwrap_or_default().to_owned()
    } else {
        kind.to_owned()
    })
}

/// Sends messages of `size` bytes from `raw` (whose next seq is `*seq`) to
/// `to` until one is refused; returns the refusal's code and how many were
/// accepted.
fn fill(raw: &mut Raw, seq: &mut u64, to: &str, size: usize) -> Result<(String, u64)> {
    let body = "x".repeat(size);
    let mut accepted = 0;
    loop {
        let code = answer(
            raw,
            &format!("{{\"type\":\"send\",\"req\":{seq},\"seq\":{seq},\"to\":\"{to}\",\"body\":\"{body}\"}}"),
        )?;
        *seq += 1;
        if code != "sent" {
            return Ok((code, accepted));
        }
        accepted += 1;
        ensure!(accepted < 100_000, "nothing stopped the messages to {to}");
    }
}

#[test]
fn every_limit_is_answered_with_its_error_and_others_keep_talking() -> Result<()> {
    let router = Router::start(&[
        "--mailbox-bytes",
        "1048576",
        "--storage-bytes",
        "2621440",
        "--max-groups-per-peer",
        "3",
        "--max-group-members",
        "3",
    ])?;
    let dir = TempDir::new()?;
    let mut alice = registered("alice", &router.addr, dir.path())?;
    let mut bob = registered("bob", &router.addr, dir.path())?;
    let before = router.process.peak_rss().unwrap_or_default();

    // Offline victims, and a sender that never stops.
    for victim in ["v1", "v2", "v3", "v4"] {
        drop(session(&router.addr, victim, "victim")?);
    }
    let mut mallory = session(&router.addr, "mallory", "m")?;
    let mut seq = 1;
    // One mailbox holds 1 MiB, receipts and overhead included.
    let (code, accepted) = fill(&mut mallory, &mut seq, "v1", 60_000)?;
    ensure!(code == "mailbox_full", "{code} after {accepted}");
    ensure!(
        (15..=17).contains(&accepted),
        "v1 took {accepted} messages of 60 kB"
    );
    // All mailboxes together hold 2.5 MiB.
    let (code, _) = fill(&mut mallory, &mut seq, "v2", 60_000)?;
    ensure!(code == "mailbox_full", "{code}");
    let (code, accepted) = fill(&mut mallory, &mut seq, "v3", 60_000)?;
    ensure!(code == "storage_full", "{code} after {accepted} more");

    // Groups: three per peer, three members per group.
    for g in ["g1", "g2", "g3"] {
        let code = answer(
            &mut mallory,
            &format!("{{\"type\":\"create_group\",\"req\":1,\"group\":\"{g}\"}}"),
        )?;
        ensure!(code == "ok", "create {g}: {code}");
    }
    let code = answer(
        &mut mallory,
        "{\"type\":\"create_group\",\"req\":1,\"group\":\"g4\"}",
    )?;
    ensure!(code == "too_many_groups", "{code}");
    for member in ["v1", "v2"] {
        let mut s = session(&router.addr, member, "victim")?;
        let code = answer(&mut s, "{\"type\":\"join_group\",\"req\":2,\"group\":\"g1\"}")?;
        ensure!(code == "ok", "{member} join: {code}");
    }
    let mut late = session(&router.addr, "v4", "victim")?;
    let code = answer(&mut late, "{\"type\":\"join_group\",\"req\":2,\"group\":\"g1\"}")?;
    ensure!(code == "group_full", "{code}");

    // Wrong secrets: the second guess at one ID waits.
    let mut guesser = Raw::connect(&router.addr)?;
    let code = answer(
        &mut guesser,
        "{\"type\":\"register\",\"req\":1,\"peer\":\"alice\",\"secret\":\"guess\"}",
    )?;
    ensure!(code == "wrong_secret", "{code}");
    let code = answer(
        &mut guesser,
        "{\"type\":\"register\",\"req\":2,\"peer\":\"alice\",\"secret\":\"guess2\"}",
    )?;
    ensure!(code == "too_many_attempts", "{code}");

    // Through all of it, alice and bob talk.
    alice.send("SEND_MSG bob still here")?;
    bob.expect("received alice#1 from=alice to=bob: still here")?;
    alice.expect("delivered alice#1")?;

    // 2.5 MiB of mail stored, in a router that started at `before`.
    let after = router.process.peak_rss().unwrap_or_default();
    ensure!(
        after < before + (48 << 20),
        "the router grew from {before} to {after} bytes"
    );
    Ok(())
}
