//! Garbage, oversized frames and protocol misuse over a raw TCP socket get
//! error frames, while a connected pair of peers keeps talking.

use std::time::Duration;

use anyhow::Result;
use peerlink_tests::{registered, Raw, Router, TempDir};

#[test]
fn bad_frames_get_clear_errors_and_the_router_keeps_serving() -> Result<()> {
    let router = Router::start(&["--max-frame-bytes", "4096"])?;
    let dir = TempDir::new()?;
    let mut alice = registered("alice", &router.addr, dir.path())?;
    let mut bob = registered("bob", &router.addr, dir.path())?;

    let mut raw = Raw::connect(&router.addr)?;
    assert_eq!(raw.error_code(b"\xff\xfe\xfd\n")?, "bad_utf8");
    assert_eq!(raw.error_code(b"this is not json\n")?, "bad_json");
    assert_eq!(raw.error_code(b"[1,2,3]\n")?, "bad_json");
    assert_eq!(
        raw.error_code(b"{\"type\":\"teleport\",\"req\":1}\n")?,
        "unknown_type"
    );
    assert_eq!(raw.error_code(b"{\"type\":\"send\",\"req\":2}\n")?, "bad_frame");
    assert_eq!(
        raw.error_code(b"{\"type\":\"register\",\"req\":3,\"peer\":\"bad id!\",\"secret\":\"s\"}\n")?,
        "invalid_name"
    );
    assert_eq!(
        raw.error_code(b"{\"type\":\"send\",\"req\":4,\"seq\":1,\"to\":\"bob\",\"body\":\"x\"}\n")?,
        "not_registered"
    );
    let mut huge = vec![b'x'; 100_000];
    huge.push(b'\n');
    assert_eq!(raw.error_code(&huge)?, "frame_too_large");
    assert_eq!(
        raw.error_code(b"{\"type\":\"register\",\"req\":5,\"peer\":\"alice\",\"secret\":\"guess\"}\n")?,
        "wrong_secret"
    );
    // The same connection still works after all that.
    raw.write(b"{\"type\":\"ping\",\"req\":6}\n")?;
    assert_eq!(raw.read()?["type"], "pong");

    // And the connected pair keeps talking.
    alice.send("SEND_MSG bob still here")?;
    bob.expect("received alice#1 from=alice to=bob: still here")?;
    alice.expect("delivered alice#1")?;
    Ok(())
}

#[test]
fn a_peer_that_disconnects_mid_frame_harms_nobody() -> Result<()> {
    let router = Router::start(&[])?;
    let dir = TempDir::new()?;
    let mut alice = registered("alice", &router.addr, dir.path())?;
    let mut bob = registered("bob", &router.addr, dir.path())?;
    for _ in 0..20 {
        let mut raw = Raw::connect(&router.addr)?;
        raw.write(b"{\"type\":\"register\",\"req\":1,\"pe")?;
    }
    let mut raw = Raw::connect(&router.addr)?;
    raw.write(&[0u8; 10_000])?;
    raw.close_write()?;
    raw.socket().set_read_timeout(Some(Duration::from_secs(5)))?;
    let _ = raw.rest();

    alice.send("SEND_MSG bob unharmed")?;
    bob.expect("received alice#1 from=alice to=bob: unharmed")?;
    Ok(())
}

#[test]
fn a_client_that_never_reads_is_disconnected_and_memory_stays_bounded() -> Result<()> {
    let router = Router::start(&["--max-frame-bytes", "16384", "--max-queued-bytes", "65536"])?;
    let dir = TempDir::new()?;
    let mut alice = registered("alice", &router.addr, dir.path())?;
    let mut bob = registered("bob", &router.addr, dir.path())?;
    let before = router.process.peak_rss().unwrap_or_default();

    // Up to 4,000,000 bad lines, each answered with an error frame, and
    // never a byte read: far more answers than socket buffers hold. The
    // router must hang up (our write fails) long before the flood ends,
    // instead of queueing the answers.
    let mut raw = Raw::connect(&router.addr)?;
    raw.socket().set_write_timeout(Some(Duration::from_secs(20)))?;
    let flood = b"{not json\n".repeat(10_000);
    let mut outcome = None;
    for _ in 0..400 {
        if let Err(e) = raw.write_all(&flood) {
            outcome = Some(e);
            break;
        }
    }
    match outcome {
        Some(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) => {}
        other => panic!("the router kept the connection of a client that never reads: {other:?}"),
    }

    let after = router.process.peak_rss().unwrap_or_default();
    assert!(
        after < before + (32 << 20),
        "the router grew from {before} to {after} bytes for one client"
    );
    alice.send("SEND_MSG bob unharmed")?;
    bob.expect("received alice#1 from=alice to=bob: unharmed")?;
    Ok(())
}

#[test]
fn one_address_cannot_take_every_connection() -> Result<()> {
    let router = Router::start(&["--max-connections-per-source", "5"])?;
    let dir = TempDir::new()?;
    let mut alice = registered("alice", &router.addr, dir.path())?;
    let mut bob = registered("bob", &router.addr, dir.path())?;
    // alice and bob hold two of loopback's five places; three more fit.
    let mut held: Vec<Raw> = (0..3)
        .map(|_| Raw::connect(&router.addr))
        .collect::<Result<_>>()?;
    for raw in &mut held {
        raw.write(b"{\"type\":\"ping\",\"req\":1}\n")?;
        let pong = raw.read()?;
        assert_eq!(pong["type"], "pong", "{pong}");
    }
    let mut refused = Raw::connect(&router.addr)?;
    let closing = refused.read()?;
    assert_eq!(closing["type"], "closing", "{closing}");
    assert_eq!(closing["code"], "busy", "{closing}");
    // One place frees when a connection goes.
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut again = Raw::connect(&router.addr)?;
    again.write(b"{\"type\":\"ping\",\"req\":2}\n")?;
    assert_eq!(again.read()?["type"], "pong");

    alice.send("SEND_MSG bob still here")?;
    bob.expect("received alice#1 from=alice to=bob: still here")?;
    Ok(())
}
