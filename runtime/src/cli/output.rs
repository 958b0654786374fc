//! How the client shows events: one line each, as text or as JSON.
//!
//! The text form is stable and documented in docs/protocol.md ("Client
//! output"); scripts may match on its first word.
//!
//! Everything a remote party chose — bodies, error messages, reasons,
//! addresses — is printed with its control characters (C0, DEL, C1) and
//! bidirectional-text controls escaped, in both forms: a peer cannot move
//! the cursor, clear the screen, recolour the terminal, or forge a line.

use peerlink_core::client::{ClientEvent, GroupOp, Query};
use peerlink_core::wire::directory::{Entry, PeerEntry};
use serde_json::json;

/// Whether an event reports that something the user asked for failed.
pub(crate) fn is_failure(event: &ClientEvent) -> bool {
    matches!(
        event,
        ClientEvent::Failed { .. }
            | ClientEvent::RegisterFailed { .. }
            | ClientEvent::GroupFailed { .. }
            | ClientEvent::QueryFailed { .. }
            | ClientEvent::Closed { .. }
    )
}

/// The query as the command that asks it.
fn query_text(query: &Query) -> String {
    let option = |key: &str, value: Option<String>| value.map(|v| format!(" {key}={v}")).unwrap_or_default();
    match query {
        Query::Who(name) => format!("WHO {name}"),
        Query::Peers { prefix, after, limit } => format!(
            "PEERS{}{}{}",
            prefix.as_ref().map(|p| format!(" {p}")).unwrap_or_default(),
            option("after", after.as_ref().map(ToString::to_string)),
            option("limit", limit.map(|l| l.to_string()))
        ),
        Query::Groups { prefix, after, limit } => format!(
            "GROUPS{}{}{}",
            prefix.as_ref().map(|p| format!(" {p}")).unwrap_or_default(),
            option("after", after.as_ref().map(ToString::to_string)),
            option("limit", limit.map(|l| l.to_string()))
        ),
        Query::Members { group, after, limit } => format!(
            "MEMBERS {group}{}{}",
            option("after", after.as_ref().map(ToString::to_string)),
            option("limit", limit.map(|l| l.to_string()))
        ),
        Query::Watch(peer) => format!("WATCH {peer}"),
        Query::Unwatch(peer) => format!("UNWATCH {peer}"),
    }
}

fn online_word(online: bool) -> &'static str {
    if online {
        "online"
    } else {
        "offline"
    }
}

/// A page of peers as `id:online id:offline ... [next=id]`.
fn peer_page(peers: &[PeerEntry], next: Option<&impl std::fmt::Display>) -> String {
    let mut line: String = peers
        .iter()
        .map(|p| format!(" {}:{}", p.id, online_word(p.online)))
        .collect();
    if let Some(next) = next {
        line.push_str(&format!(" next={next}"));
    }
    line
}

fn peer_page_json(peers: &[PeerEntry]) -> serde_json::Value {
    peers
        .iter()
        .map(|p| json!({"id": p.id, "online": p.online}))
        .collect()
}

fn op_name(op: GroupOp) -> &'static str {
    match op {
        GroupOp::Create => "create",
        GroupOp::Join => "join",
        GroupOp::Leave => "leave",
    }
}

/// Whether `c` could change how a terminal shows what follows it: a
/// control character, or a control of bidirectional text.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Text a remote party chose, made safe to print on one line: `\` becomes
/// `\\`, newlines and tabs `\n`, `\r`, `\t`, and every other unsafe
/// character `\u{…}`.
fn safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// The event as one line of text.
pub(crate) fn text(event: &ClientEvent) -> String {
    match event {
        ClientEvent::Connected { router } => format!("connected {}", safe(router)),
        ClientEvent::Disconnected { reason } => format!("disconnected: {}", safe(reason)),
        ClientEvent::Unreachable {
            router,
            attempts,
            reason,
            retry_in,
        } => format!(
            "unreachable {} attempts={attempts}: {}; retrying in {:.1} s",
            safe(router),
            safe(reason),
            retry_in.as_secs_f64()
        ),
        ClientEvent::Registered { peer, next_seq } => format!("registered {peer} next_seq={next_seq}"),
        ClientEvent::RegisterFailed { code, message } => {
            format!("register_failed code={code}: {}", safe(message))
        }
        ClientEvent::Sent { id, to } => format!("sent {id} to={to}"),
        ClientEvent::Delivered { id, to, by } => format!("delivered {id} to={to} by={by}"),
        ClientEvent::Failed {
            id,
            to,
            code,
            message,
        } => match id {
            Some(id) => format!("failed {id} to={to} code={code}: {}", safe(message)),
            None => format!("failed - to={to} code={code}: {}", safe(message)),
        },
        ClientEvent::Received { id, to, body } => {
            format!("received {id} from={} to={to}: {}", id.from, safe(body))
        }
        ClientEvent::GroupDone { op, group } => format!("group {} {group}", op_name(*op)),
        ClientEvent::GroupFailed {
            op,
            group,
            code,
            message,
        } => {
            format!(
                "group_failed {} {group} code={code}: {}",
                op_name(*op),
                safe(message)
            )
        }
        ClientEvent::Error { code, message } => format!("error code={code}: {}", safe(message)),
        ClientEvent::Closed { code, message } => format!("closed code={code}: {}", safe(message)),
        ClientEvent::Found { name, entry } => match entry {
            None => format!("who {name} unknown"),
            Some(Entry::Peer {
                online,
                last_seen_ms_ago,
            }) => {
                let seen = last_seen_ms_ago
                    .map(|ms| format!(" last_seen={:.1}s_ago", ms as f64 / 1000.0))
                    .unwrap_or_default();
                format!("who {name} peer {}{seen}", online_word(*online))
            }
            Some(Entry::Group { creator, members }) => {
                format!("who {name} group creator={creator} members={members}")
            }
        },
        ClientEvent::PeerPage { peers, next } => format!("peers{}", peer_page(peers, next.as_ref())),
        ClientEvent::GroupPage { groups, next } => {
            let mut line: String = groups
                .iter()
                .map(|g| format!(" {}:{}", g.name, g.members))
                .collect();
            if let Some(next) = next {
                line.push_str(&format!(" next={next}"));
            }
            format!("groups{line}")
        }
        ClientEvent::MemberPage { group, members, next } => {
            format!("members {group}{}", peer_page(members, next.as_ref()))
        }
        ClientEvent::Presence { peer, online } => format!("presence {peer} {}", online_word(*online)),
        ClientEvent::Unwatched { peer } => format!("unwatched {peer}"),
        ClientEvent::Membership { group, peer, joined } => {
            let what = if *joined { "joined" } else { "left" };
            format!("member {group} {peer} {what}")
        }
        ClientEvent::QueryFailed { query, code, message } => {
            format!(
                "query_failed {} code={code}: {}",
                query_text(query),
                safe(message)
            )
        }
    }
}

/// The event as one JSON object.
pub(crate) fn json(event: &ClientEvent) -> String {
    let value = match event {
        ClientEvent::Connected { router } => json!({"event": "connected", "router": router}),
        ClientEvent::Disconnected { reason } => json!({"event": "disconnected", "reason": reason}),
        ClientEvent::Unreachable {
            router,
            attempts,
            reason,
            retry_in,
        } => json!({
            "event": "unreachable", "router": router, "attempts": attempts, "reason": reason,
            "retry_in_ms": retry_in.as_millis() as u64
        }),
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
        ClientEvent::Found { name, entry } => json!({"event": "who", "name": name, "entry": entry}),
        ClientEvent::PeerPage { peers, next } => {
            json!({"event": "peers", "peers": peer_page_json(peers), "next": next})
        }
        ClientEvent::GroupPage { groups, next } => json!({
            "event": "groups",
            "groups": groups.iter().map(|g| json!({"name": g.name, "members": g.members})).collect::<Vec<_>>(),
            "next": next
        }),
        ClientEvent::MemberPage { group, members, next } => json!({
            "event": "members", "group": group, "members": peer_page_json(members), "next": next
        }),
        ClientEvent::Presence { peer, online } => {
            json!({"event": "presence", "peer": peer, "online": online})
        }
        ClientEvent::Unwatched { peer } => json!({"event": "unwatched", "peer": peer}),
        ClientEvent::Membership { group, peer, joined } => {
            json!({"event": "member", "group": group, "peer": peer, "joined": joined})
        }
        ClientEvent::QueryFailed { query, code, message } => json!({
            "event": "query_failed", "query": query_text(query), "code": code, "message": message
        }),
    };
    escape_unsafe_in_json(&value.to_string())
}

/// Escapes, as `\uXXXX`, the unsafe characters `serde_json` leaves as they
/// are (DEL, C1 controls, bidirectional controls). They can only occur
/// inside JSON strings, where the escape decodes to the same text.
/// The line for a command the client could not parse, `message` saying
/// why: an `error` event with code `bad_command`, as text or JSON.
pub(crate) fn bad_command(message: &str, as_json: bool) -> String {
    if as_json {
        let value = json!({"event": "error", "code": "bad_command", "message": message});
        escape_unsafe_in_json(&value.to_string())
    } else {
        format!("error code=bad_command: {}", safe(message))
    }
}

fn escape_unsafe_in_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if is_unsafe(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
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

    fn hostile(body: &str) -> ClientEvent {
        ClientEvent::Received {
            id: MsgId {
                from: PeerId::new("mallory").unwrap(),
                seq: Seq(1),
            },
            to: Target::new("bob").unwrap(),
            body: body.into(),
        }
    }

    #[test]
    fn no_byte_a_peer_sends_reaches_the_terminal_as_a_control() {
        let attacks = [
            "\u{1b}[2J\u{1b}[31mred",
            "ok\rreceived alice#9 from=alice to=bob: forged",
            "\u{9b}31m C1 CSI",
            "\u{7f}\u{7}\u{8}\u{0}",
            "abc\u{202e}gpj.exe",
            "tab\there",
        ];
        for body in attacks {
            for line in [text(&hostile(body)), json(&hostile(body))] {
                assert!(!line.chars().any(is_unsafe), "{line:?}");
            }
            let v: serde_json::Value = serde_json::from_str(&json(&hostile(body))).unwrap();
            assert_eq!(v["body"], body, "JSON keeps the exact body");
        }
        let bad = bad_command("unknown command \"\u{1b}[A\"", true);
        let parsed: serde_json::Value = serde_json::from_str(&bad).unwrap();
        assert_eq!(parsed["code"], "bad_command");
        assert!(!bad.contains('\u{1b}'), "{bad}");
        assert!(!bad_command("\u{1b}[2J", false).contains('\u{1b}'));
        let error = ClientEvent::Error {
            code: peerlink_core::wire::ErrorCode::BadFrame,
            message: "\u{1b}]0;title\u{7}".into(),
        };
        assert!(!text(&error).chars().any(is_unsafe));
        assert!(!json(&error).chars().any(is_unsafe));
        assert_eq!(
            text(&hostile("\u{1b}[2J")),
            r"received mallory#1 from=mallory to=bob: \u{1b}[2J"
        );
    }

    #[test]
    fn discovery_lines_are_stable() {
        use peerlink_core::ids::{GroupName, NamePrefix};
        use peerlink_core::wire::directory::GroupEntry;
        let peer = |s: &str| PeerId::new(s).unwrap();
        let entry = |id: &str, online| PeerEntry { id: peer(id), online };
        let cases = [
            (
                ClientEvent::Found {
                    name: Target::new("bob").unwrap(),
                    entry: Some(Entry::Peer {
                        online: false,
                        last_seen_ms_ago: Some(2_345),
                    }),
                },
                "who bob peer offline last_seen=2.3s_ago",
            ),
            (
                ClientEvent::Found {
                    name: Target::new("devs").unwrap(),
                    entry: Some(Entry::Group {
                        creator: peer("alice"),
                        members: 3,
                    }),
                },
                "who devs group creator=alice members=3",
            ),
            (
                ClientEvent::PeerPage {
                    peers: vec![entry("al", true), entry("al2", false)],
                    next: Some(peer("al2")),
                },
                "peers al:online al2:offline next=al2",
            ),
            (
                ClientEvent::GroupPage {
                    groups: vec![GroupEntry {
                        name: GroupName::new("devs").unwrap(),
                        members: 2,
                    }],
                    next: None,
                },
                "groups devs:2",
            ),
            (
                ClientEvent::Presence {
                    peer: peer("bob"),
                    online: true,
                },
                "presence bob online",
            ),
            (
                ClientEvent::QueryFailed {
                    query: Query::Peers {
                        prefix: Some(NamePrefix::new("al").unwrap()),
                        after: None,
                        limit: Some(5),
                    },
                    code: peerlink_core::wire::ErrorCode::DirectoryPrivate,
                    message: "private".into(),
                },
                "query_failed PEERS al limit=5 code=directory_private: private",
            ),
        ];
        for (event, line) in cases {
            assert_eq!(text(&event), line);
            let value: serde_json::Value = serde_json::from_str(&json(&event)).unwrap();
            assert!(value["event"].is_string(), "{value}");
        }
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
