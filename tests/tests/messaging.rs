//! User stories of direct messages, groups and registration, against the
//! real binary.

use anyhow::Result;
use peerlink_tests::{client, command, registered, Router, TempDir};

#[test]
fn a_direct_message_is_sent_then_delivered() -> Result<()> {
    let router = Router::start(&[])?;
    let dir = TempDir::new()?;
    let mut alice = registered("alice", &router.addr, dir.path())?;
    let mut bob = registered("bob", &router.addr, dir.path())?;
    alice.send("SEND_MSG bob hello bob")?;
    alice.expect("sent alice#1 to=bob")?;
    bob.expect("received alice#1 from=alice to=bob: hello bob")?;
    alice.expect("delivered alice#1 to=bob by=bob")?;
    Ok(())
}

#[test]
fn groups_with_create_join_leave_and_rejoin_across_three_overlapping_groups() -> Result<()> {
    let router = Router::start(&[])?;
    let dir = TempDir::new()?;
    let mut ann = registered("ann", &router.addr, dir.path())?;
    let mut ben = registered("ben", &router.addr, dir.path())?;
    let mut cal = registered("cal", &router.addr, dir.path())?;

    // g1 = {ann, ben}, g2 = {ben, cal}, g3 = {ann, ben, cal}.
    ann.send("CREATE_GROUP g1")?;
    ann.expect("group create g1")?;
    ben.send("CREATE_GROUP g2")?;
    ben.expect("group create g2")?;
    cal.send("CREATE_GROUP g3")?;
    cal.expect("group create g3")?;
    ben.send("JOIN_GROUP g1")?;
    ben.send("JOIN_GROUP g3")?;
    cal.send("JOIN_GROUP g2")?;
    ann.send("JOIN_GROUP g3")?;
    ben.expect("group join g1")?;
    ben.expect("group join g3")?;
    cal.expect("group join g2")?;
    ann.expect("group join g3")?;

    ann.send("SEND_MSG g1 one")?;
    ann.expect("sent ann#1 to=g1")?;
    ben.expect("received ann#1 from=ann to=g1: one")?;
    ann.expect("delivered ann#1 to=g1 by=ben")?;

    ben.send("SEND_MSG g2 two")?;
    cal.expect("received ben#1 from=ben to=g2: two")?;
    ben.expect("delivered ben#1 to=g2 by=cal")?;

    cal.send("SEND_MSG g3 three")?;
    ann.expect("received cal#1 from=cal to=g3: three")?;
    ben.expect("received cal#1 from=cal to=g3: three")?;
    cal.expect("delivered cal#1 to=g3 by=")?;
    cal.expect("delivered cal#1 to=g3 by=")?;

    // ben leaves g3: the next g3 message reaches only ann.
    ben.send("LEAVE_GROUP g3")?;
    ben.expect("group leave g3")?;
    cal.send("SEND_MSG g3 four")?;
    ann.expect("received cal#2 from=cal to=g3: four")?;
    cal.expect("delivered cal#2 to=g3 by=ann")?;
    // ben rejoins: the next one reaches both again, and ben never saw "four".
    ben.send("JOIN_GROUP g3")?;
    ben.expect("group join g3")?;
    cal.send("SEND_MSG g3 five")?;
    ann.expect("received cal#3 from=cal to=g3: five")?;
    ben.expect("received cal#3 from=cal to=g3: five")?;
    assert!(
        !ben.seen().iter().any(|l| l.contains("cal#2")),
        "ben received a message sent while he was out of g3: {:#?}",
        ben.seen()
    );

    // A non-member cannot send to a group; a sender does not get its own message.
    ann.send("SEND_MSG g2 not mine")?;
    ann.expect("failed ann#2 to=g2 code=not_a_member")?;
    assert!(!ann.seen().iter().any(|l| l.starts_with("received ann#")));
    Ok(())
}

#[test]
fn a_recipient_that_was_killed_gets_the_message_after_restarting() -> Result<()> {
    let router = Router::start(&[])?;
    let dir = TempDir::new()?;
    let mut alice = registered("alice", &router.addr, dir.path())?;
    let mut bob = registered("bob", &router.addr, dir.path())?;
    bob.kill();

    alice.send("SEND_MSG bob are you there")?;
    alice.expect("sent alice#1 to=bob")?;
    // Bob is gone: Sent is all alice may see until bob comes back. Proving
    // an absence needs some wait; the ping to alice's own ID bounds it.
    alice.send("SEND_MSG alice self-check")?;
    alice.expect("received alice#2 from=alice to=alice: self-check")?;
    assert!(
        !alice.drain().iter().any(|l| l.starts_with("delivered alice#1")),
        "Delivered reported for a recipient that is down: {:#?}",
        alice.seen()
    );

    let mut bob = client("bob", &router.addr, dir.path())?;
    bob.send("REGISTER")?;
    bob.expect("registered bob")?;
    bob.expect("received alice#1 from=alice to=bob: are you there")?;
    alice.expect("delivered alice#1 to=bob by=bob")?;
    Ok(())
}

#[test]
fn delivered_reaches_a_sender_that_was_offline_when_it_happened() -> Result<()> {
    let router = Router::start(&[])?;
    let dir = TempDir::new()?;
    let mut alice = registered("alice", &router.addr, dir.path())?;
    let bob = registered("bob", &router.addr, dir.path())?;
    drop(bob);
    alice.send("SEND_MSG bob later")?;
    alice.expect("sent alice#1")?;
    alice.kill();

    let mut bob = registered("bob", &router.addr, dir.path())?;
    bob.expect("received alice#1")?;
    let mut alice = registered("alice", &router.addr, dir.path())?;
    alice.expect("delivered alice#1 to=bob by=bob")?;
    Ok(())
}

#[test]
fn an_existing_id_cannot_be_registered_without_its_secret() -> Result<()> {
    let router = Router::start(&[])?;
    let owner_dir = TempDir::new()?;
    let thief_dir = TempDir::new()?;
    let _alice = registered("alice", &router.addr, owner_dir.path())?;
    let mut thief = client("alice", &router.addr, thief_dir.path())?;
    thief.send("REGISTER")?;
    thief.expect("register_failed code=wrong_secret")?;
    thief.send("SEND_MSG bob pretending")?;
    thief.expect("failed - to=bob code=not_registered")?;
    Ok(())
}

#[test]
fn a_newer_session_replaces_the_older_which_is_told_why() -> Result<()> {
    let router = Router::start(&[])?;
    let dir = TempDir::new()?;
    let mut first = registered("alice", &router.addr, dir.path())?;
    let _second = registered("alice", &router.addr, dir.path())?;
    first.expect("closed code=replaced")?;
    assert!(!first.wait()?, "a replaced client exits with a failure status");
    Ok(())
}

#[test]
fn a_script_exits_zero_once_everything_is_sent() -> Result<()> {
    let router = Router::start(&[])?;
    let dir = TempDir::new()?;
    let _bob = registered("bob", &router.addr, dir.path())?;
    let mut script = client("alice", &router.addr, dir.path())?;
    script.send("REGISTER")?;
    script.send("SEND_MSG bob one")?;
    script.send("SEND_MSG bob two")?;
    script.close_input();
    assert!(script.wait()?, "script failed: {:#?}", script.seen());
    let sent: Vec<&String> = script.seen().iter().filter(|l| l.starts_with("sent ")).collect();
    assert_eq!(sent.len(), 2, "{:#?}", script.seen());

    let mut failing = client("carol", &router.addr, dir.path())?;
    failing.send("REGISTER")?;
    failing.send("SEND_MSG nobody x")?;
    failing.send("NOT_A_COMMAND")?;
    failing.close_input();
    assert!(
        !failing.wait()?,
        "a refused message makes the exit status non-zero"
    );
    assert!(failing
        .seen()
        .iter()
        .any(|l| l.starts_with("error code=bad_command")));
    Ok(())
}

#[test]
fn a_script_receives_everything_waiting_with_receive() -> Result<()> {
    let router = Router::start(&[])?;
    let dir = TempDir::new()?;
    let dir_text = dir.path().to_str().expect("UTF-8 temp dir");
    // Carol registers once, then goes away; alice leaves her 600 messages.
    let mut carol = registered("carol", &router.addr, dir.path())?;
    carol.kill();
    let mut alice = registered("alice", &router.addr, dir.path())?;
    for n in 0..600 {
        alice.send(&format!("SEND_MSG carol m{n}"))?;
    }
    alice.expect_count("sent ", 600)?;
    let receive = |extra: &[&str]| -> Result<(bool, Vec<String>, String)> {
        let mut args = vec![
            "client",
            "--id",
            "carol",
            "--router",
            &router.addr,
            "--data-dir",
            dir_text,
            "--receive",
        ];
        args.extend_from_slice(extra);
        let output = command(&args).stdin(std::process::Stdio::null()).output()?;
        let lines = String::from_utf8(output.stdout)?
            .lines()
            .map(str::to_owned)
            .collect();
        Ok((output.status.success(), lines, String::from_utf8(output.stderr)?))
    };
    let (ok, lines, _) = receive(&["--idle", "2"])?;
    let received: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("received alice#"))
        .collect();
    assert!(ok, "{lines:#?}");
    assert_eq!(received.len(), 600, "every waiting message, once");
    for (n, line) in received.iter().enumerate() {
        assert!(line.ends_with(&format!(": m{n}")), "in order: {line}");
    }
    // Nothing is left: the next run receives nothing, and --count makes
    // that a failure.
    let (ok, lines, stderr) = receive(&["--idle", "1", "--count", "1"])?;
    assert!(!ok, "{lines:#?}");
    assert!(!lines.iter().any(|l| l.starts_with("received ")), "{lines:#?}");
    assert!(stderr.contains("received 0 of the 1 messages"), "{stderr}");
    Ok(())
}
