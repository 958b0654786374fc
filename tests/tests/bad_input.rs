//! Garbage, oversized frames and protocol misuse over a raw TCP socket get
//! error frames, while a connected pair of peers keeps talking.

use std::io::Read;
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
    raw.writer.shutdown(std::net::Shutdown::Write)?;
    let mut rest = Vec::new();
    raw.writer.set_read_timeout(Some(Duration::from_secs(5)))?;
    let _ = raw.reader.read_to_end(&mut rest);

    alice.send("SEND_MSG bob unharmed")?;
    bob.expect("received alice#1 from=alice to=bob: unharmed")?;
    Ok(())
}
