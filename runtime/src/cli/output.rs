//! How the client shows events: one line each, as text or as JSON.
//!
//! The text form is stable and documented in docs/protocol.md ("Client
//! output"); scripts may match on its first word.

use peerlink_core::client::{ClientEvent, GroupOp};
use serde_json::json;

/// Whether an event reports that something the user asked for failed.
pub(crate) fn is_failure(event: &ClientEvent) -> bool {
    matches!(
        event,
        ClientEvent::Failed { .. }
            | ClientEvent::RegisterFailed { .. }
            | ClientEvent::GroupFailed { .. }
            | ClientEvent::Closed { .. }
    )
}

fn op_name(op: GroupOp) -> &'static str {
    match op {
        GroupOp::Create => "create",
        GroupOp::Join => "join",
        GroupOp::Leave => "leave",
    }
}

/// Escapes a message body so it stays on one line.
fn one_line(body: &str) -> String {
    body.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// The event as one line of text.
pub(crate) fn text(event: &ClientEvent) -> String {
    match event {
        ClientEvent::Connected { router } => format!("connected {router}"),
        ClientEvent::Disconnected { reason } => format!("disconnected: {reason}"),
        ClientEvent::Registered { peer, next_seq } => format!("registered {peer} next_seq={next_seq}"),
        ClientEvent::RegisterFailed { code, message } => format!("register_failed code={code}: {message}"),
        ClientEvent::Sent { id, to } => format!("sent {id} to={to}"),
        ClientEvent::Delivered { id, to, by } => format!("delivered {id} to={to} by={by}"),
        ClientEvent::Failed {
            id,
            to,
            code,
            message,
        } => match id {
            Some(id) => format!("failed {id} to={to} code={code}: {message}"),
            None => format!("failed - to={to} code={code}: {message}"),
        },
        ClientEvent::Received { id, to, body } => {
            format!("received {id} from={} to={to}: {}", id.from, one_line(body))
        }
        ClientEvent::GroupDone { op, group } => format!("group {} {group}", op_name(*op)),
        ClientEvent::GroupFailed {
            op,
            group,
            code,
            message,
        } => {
            format!("group_failed {} {group} code={code}: {message}", op_name(*op))
        }
        ClientEvent::Error { code, message } => format!("error code={code}: {message}"),
        ClientEvent::Closed { code, message } => format!("closed code={code}: {message}"),
    }
}

/// The event as one JSON object.
pub(crate) fn json(event: &ClientEvent) -> String {
    let value = match event {
        ClientEvent::Connected { router } => json!({"event": "connected", "router": router}),
        ClientEvent::Disconnected { reason } => json!({"event": "disconnected", "reason": reason}),
        ClientEvent::Registered { peer, next_seq } => {
            json!({"event": "registered", "peer": peer, "next_seq": next_seq})
        }
        ClientEvent::RegisterFailed { code, message } => {
            json!({"event": "register_failed", "code": code, "message": message})
        }
        ClientEvent::Sent { id, to } => {
            json!({"event": "sent", "id": id.to_string(), "from": id.from, "seq": id.seq, "to": to})
        }
        ClientEvent::Delivered { id, to, by } => json!({
            "event": "delivered", "id": id.to_string(), "from": id.from, "seq": id.seq, "to": to, "by": by
        }),
        ClientEvent::Failed {
            id,
            to,
            code,
            message,
        } => json!({
            "event": "failed", "id": id.as_ref().map(ToString::to_string), "to": to,
            "code": code, "message": message
        }),
        ClientEvent::Received { id, to, body } => json!({
            "event": "received", "id": id.to_string(), "from": id.from, "seq": id.seq, "to": to, "body": body
        }),
        ClientEvent::GroupDone { op, group } => json!({"event": "group", "op": op_name(*op), "group": group}),
        ClientEvent::GroupFailed {
            op,
            group,
            code,
            message,
        } => json!({
            "event": "group_failed", "op": op_name(*op), "group": group, "code": code, "message": message
        }),
        ClientEvent::Error { code, message } => json!({"event": "error", "code": code, "message": message}),
        ClientEvent::Closed { code, message } => json!({"event": "closed", "code": code, "message": message}),
    };
    value.to_string()
}

#[cfg(test)]
mod tests {
    use peerlink_core::ids::{MsgId, PeerId, Seq, Target};

    use super::*;

    fn received() -> ClientEvent {
        ClientEvent::Received {
            id: MsgId {
                from: PeerId::new("alice").unwrap(),
                seq: Seq(3),
            },
            to: Target::new("bob").unwrap(),
            body: "two\nlines \\ here".into(),
        }
    }

    #[test]
    fn text_lines_are_stable_and_single_line() {
        assert_eq!(
            text(&received()),
            r"received alice#3 from=alice to=bob: two\nlines \\ here"
        );
    }

    #[test]
    fn json_lines_carry_every_field() {
        let v: serde_json::Value = serde_json::from_str(&json(&received())).unwrap();
        assert_eq!(v["event"], "received");
        assert_eq!(v["id"], "alice#3");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["body"], "two\nlines \\ here");
    }
}
