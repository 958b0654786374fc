use std::sync::Arc;

use crate::ids::{DeliveryId, Epoch, Lsn, PeerId, ReqId, Seq, Target};
use crate::router::Change;
use crate::wire::cluster::PrimaryFrame;
use crate::wire::{decode_client_frame, decode_cluster_frame, ClientFrame, ErrorCode};

fn peer(name: &str) -> PeerId {
    PeerId::new(name).unwrap()
}

fn send() -> ClientFrame {
    ClientFrame::Send {
        req: ReqId(7),
        seq: Seq(3),
        to: Target::new("bob").unwrap(),
        body: "hi \"there\"".into(),
    }
}

fn entry() -> PrimaryFrame {
    PrimaryFrame::Entry {
        epoch: Epoch(2),
        lsn: Lsn(41),
        change: Change::Accepted {
            from: peer("alice"),
            seq: Seq(3),
            to: Target::new("bob").unwrap(),
            recipients: vec![peer("bob")],
            body: Arc::from("hi"),
        },
    }
}

#[test]
fn frames_are_written_tag_first_as_serde_wrote_them() {
    assert_eq!(
        serde_json::to_string(&send()).unwrap(),
        r#"{"type":"send","req":7,"seq":3,"to":"bob","body":"hi \"there\""}"#
    );
    assert_eq!(
        serde_json::to_string(&entry()).unwrap(),
        r#"{"type":"entry","epoch":2,"lsn":41,"change":{"change":"accepted","from":"alice","seq":3,"to":"bob","recipients":["bob"],"body":"hi"}}"#
    );
}

#[test]
fn a_tag_anywhere_reads_the_same_frame() {
    let lines = [
        r#"{"type":"send","req":7,"seq":3,"to":"bob","body":"hi \"there\""}"#,
        r#"{"req":7,"seq":3,"type":"send","to":"bob","body":"hi \"there\""}"#,
        r#"{"req":7,"seq":3,"to":"bob","body":"hi \"there\"","type":"send"}"#,
        r#"{"type":"s\u0065nd","req":7,"seq":3,"to":"bob","body":"hi \"there\""}"#,
        // Escaped keys are read as owned strings, on both paths.
        r#"{"typ\u0065":"send","r\u0065q":7,"seq":3,"to":"bob","body":"hi \"there\""}"#,
        r#"{"r\u0065q":7,"seq":3,"to":"bob","body":"hi \"there\"","typ\u0065":"s\u0065nd"}"#,
    ];
    for line in lines {
        assert_eq!(decode_client_frame(line.as_bytes()).unwrap(), send(), "{line}");
    }
    let nested = r#"{"epoch":2,"change":{"from":"alice","seq":3,"change":"accepted","to":"bob","recipients":["bob"],"body":"hi"},"lsn":41,"type":"entry"}"#;
    assert_eq!(
        decode_cluster_frame::<PrimaryFrame>(nested.as_bytes()).unwrap(),
        entry()
    );
    let acked = Change::Acked {
        peer: peer("bob"),
        delivery: DeliveryId(5),
        through: None,
    };
    let line = serde_json::to_string(&acked).unwrap();
    assert_eq!(serde_json::from_str::<Change>(&line).unwrap(), acked);
}

/// Every way an object can be wrong is refused whether its tag comes first
/// (read directly) or later (buffered).
#[test]
fn bad_objects_are_refused_on_both_paths() {
    let refused = [
        (r#"{"req":7}"#, ErrorCode::BadFrame, "no string field \"type\""),
        (r#"{}"#, ErrorCode::BadFrame, "no string field \"type\""),
        (
            r#"{"type":"sned","req":7}"#,
            ErrorCode::UnknownType,
            "unknown variant `sned`",
        ),
        (
            r#"{"req":7,"type":"sned"}"#,
            ErrorCode::UnknownType,
            "unknown variant `sned`",
        ),
        (
            r#"{"type":"ping","req":7,"type":"ping"}"#,
            ErrorCode::BadFrame,
            "duplicate",
        ),
        (
            r#"{"type":"ping","req":7,"typ\u0065":"ping"}"#,
            ErrorCode::BadFrame,
            "duplicate",
        ),
        (
            r#"{"req":7,"type":"ping","type":"ping"}"#,
            ErrorCode::BadFrame,
            "duplicate",
        ),
        (
            r#"{"type":"ping","req":7,"req":8}"#,
            ErrorCode::BadFrame,
            "duplicate",
        ),
        (
            r#"{"req":7,"req":8,"type":"ping"}"#,
            ErrorCode::BadFrame,
            "duplicate",
        ),
        (
            r#"{"type":"ping","req":7,"extra":1}"#,
            ErrorCode::BadFrame,
            "unknown field `extra`",
        ),
        (
            r#"{"req":7,"extra":1,"type":"ping"}"#,
            ErrorCode::BadFrame,
            "unknown field `extra`",
        ),
        (r#"{"type":"ping"}"#, ErrorCode::BadFrame, "missing field `req`"),
        (
            r#"{"req":"7","type":"ping"}"#,
            ErrorCode::BadFrame,
            "invalid type",
        ),
        (
            r#"{"type":"ping","req":"7"}"#,
            ErrorCode::BadFrame,
            "invalid type",
        ),
        (
            r#"{"type":7,"req":7}"#,
            ErrorCode::BadFrame,
            "no string field \"type\"",
        ),
        (
            r#"{"req":7,"type":7}"#,
            ErrorCode::BadFrame,
            "no string field \"type\"",
        ),
    ];
    for (line, code, message) in refused {
        assert!(serde_json::from_str::<ClientFrame>(line).is_err(), "{line}");
        let error = decode_client_frame(line.as_bytes()).unwrap_err();
        assert_eq!(error.code, code, "{line}: {error:?}");
        assert!(error.message.contains(message), "{line}: {error:?}");
        // The single parse of a cluster link refuses the same lines.
        let error = decode_cluster_frame::<ClientFrame>(line.as_bytes()).unwrap_err();
        assert_eq!(error.code, code, "{line}: {error:?}");
    }
    let missing = serde_json::from_str::<ClientFrame>(r#"{"req":7}"#).unwrap_err();
    assert!(missing.to_string().contains("missing field `type`"), "{missing}");
    let repeated = [
        r#"{"change":"acked","peer":"bob","delivery":5,"change":"acked"}"#,
        r#"{"peer":"bob","change":"acked","delivery":5,"change":"acked"}"#,
    ];
    for line in repeated {
        let error = serde_json::from_str::<Change>(line).unwrap_err();
        assert!(
            error.to_string().contains("duplicate field `change`"),
            "{line}: {error}"
        );
    }
}

#[test]
fn only_objects_are_frames() {
    for line in ["[]", "\"send\"", "7", "null"] {
        let error = serde_json::from_str::<ClientFrame>(line).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("expected internally tagged enum ClientFrame"),
            "{line}: {error}"
        );
        assert!(decode_client_frame(line.as_bytes()).is_err(), "{line}");
    }
}
