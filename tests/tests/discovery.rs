//! Discovery and presence with the real binary: lookups, the peer directory
//! page by page, group listings and members, and presence news that keeps
//! telling the truth across a primary kill.

use anyhow::{ensure, Context, Result};
use peerlink_tests::{registered, Cluster, Router, TempDir};

#[test]
fn lookups_listings_and_members_on_a_public_directory() -> Result<()> {
    let router = Router::start(&["--directory", "public"])?;
    let dir = TempDir::new()?;
    let mut alice = registered("alice", &router.addr, dir.path())?;
    let mut others = Vec::new();
    for id in ["al1", "al2", "al3", "bob"] {
        others.push(registered(id, &router.addr, dir.path())?);
    }
    // al3 goes offline.
    let mut al3 = others.remove(2);
    al3.send("quit")?;
    ensure!(al3.wait()?, "al3 quits cleanly");

    alice.send("WHO bob")?;
    alice.expect("who bob peer online")?;
    alice.send("WHO al3")?;
    let line = alice.expect("who al3 peer offline")?;
    ensure!(line.contains("last_seen="), "{line}");
    alice.send("WHO nobody")?;
    alice.expect("who nobody unknown")?;

    // The directory under "al", two at a time, following the cursor.
    alice.send("PEERS al limit=2")?;
    alice.expect("peers al1:online al2:online next=al2")?;
    alice.send("PEERS al after=al2 limit=2")?;
    let last = alice.expect("peers ")?;
    ensure!(last == "peers al3:offline alice:online", "{last}");
    alice.send("PEERS")?;
    alice.expect("peers al1:online al2:online al3:offline alice:online bob:online")?;

    alice.send("CREATE_GROUP devs")?;
    alice.expect("group create devs")?;
    alice.send("CREATE_GROUP ops")?;
    alice.expect("group create ops")?;
    let bob = &mut others[2];
    bob.send("JOIN_GROUP devs")?;
    bob.expect("group join devs")?;
    alice.expect("member devs bob joined")?;
    alice.send("GROUPS")?;
    alice.expect("groups devs:2 ops:1")?;
    alice.send("WHO devs")?;
    alice.expect("who devs group creator=alice members=2")?;
    alice.send("MEMBERS devs")?;
    alice.expect("members devs alice:online bob:online")?;
    let al1 = &mut others[0];
    al1.send("MEMBERS devs")?;
    al1.expect("query_failed MEMBERS devs code=not_a_member")?;
    al1.send("PEERS x y")?;
    al1.expect("error code=bad_command: usage: PEERS")?;
    Ok(())
}

#[test]
fn json_answers_are_one_object_a_line() -> Result<()> {
    let router = Router::start(&["--directory", "public"])?;
    let dir = TempDir::new()?;
    let dir_text = dir.path().to_str().context("UTF-8 temp dir")?;
    let mut carol = peerlink_tests::Process::start(
        "carol",
        &["client", "--id", "carol", "--router", &router.addr, "--json"],
        &[("PEERLINK_DATA_DIR", dir_text)],
    )?;
    carol.send("REGISTER")?;
    carol.expect("{\"event\":\"registered\"")?;
    for command in ["WHO carol", "PEERS", "GROUPS", "WATCH carol", "MEMBERS none"] {
        carol.send(command)?;
    }
    let kinds = ["who", "peers", "groups", "presence", "query_failed"];
    for kind in kinds {
        carol.expect_with(kind, |l| l.contains(&format!("\"event\":\"{kind}\"")))?;
    }
    for line in carol.seen() {
        let value: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{line:?}"))?;
        ensure!(value.is_object(), "{line}");
    }
    Ok(())
}

#[test]
fn presence_news_stays_true_across_a_primary_kill() -> Result<()> {
    let mut cluster = Cluster::start(3)?;
    let dir = TempDir::new()?;
    let routers = cluster.router_list();
    let mut alice = registered("alice", &routers, dir.path())?;
    let mut bob = registered("bob", &routers, dir.path())?;

    // The cluster's directory is private by default: lookups only.
    alice.send("PEERS")?;
    alice.expect("query_failed PEERS code=directory_private")?;
    alice.send("WATCH bob")?;
    alice.expect("presence bob online")?;

    let primary = cluster.status()?.primary().context("a primary")?;
    let number: usize = primary.trim_start_matches('r').parse()?;
    cluster.kill_router(number);
    cluster.wait_for(|s| s.primary().is_some_and(|p| p != primary))?;
    // Both reconnect to the new primary; alice's watch is renewed there.
    bob.send("WHO alice")?;
    bob.expect("who alice peer")?;
    alice.send("WHO bob")?;
    alice.expect("who bob peer online")?;

    bob.send("quit")?;
    ensure!(bob.wait()?, "bob quits cleanly");
    alice.expect("presence bob offline")?;
    let mut bob = registered("bob", &routers, dir.path())?;
    alice.expect("presence bob online")?;
    bob.send("UNWATCH alice")?;
    bob.expect("unwatched alice")?;
    Ok(())
}
