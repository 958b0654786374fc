//! The wire protocol: newline-delimited JSON frames and their codec.
//!
//! Every frame is one JSON object on one line, with a `"type"` field naming
//! it. Requests carry a `req` that the reply echoes. `docs/protocol.md`
//! documents each frame with examples. Decoding never panics: every way a
//! line can be wrong maps to a [`FrameError`] with a stable [`ErrorCode`].

pub mod cluster;
pub mod directory;
pub(crate) mod tagged;
mod unique_keys;

use std::fmt;

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use crate::ids::{DeliveryId, GroupName, NameError, NamePrefix, PeerId, ReqId, Secret, Seq, Target};
use directory::{Entry, GroupEntry, PeerEntry};
use tagged::tagged_serde;

/// The default maximum frame size in bytes, newline included: 1 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1024 * 1024;

/// The most messages a client may have sent and not yet seen answered.
/// The router remembers the outcome of a sender's last `MAX_IN_FLIGHT`
/// sequence numbers, so a resend within that window is answered exactly as
/// the first attempt was; an older one gets [`ErrorCode::InvalidSeq`].
pub const MAX_IN_FLIGHT: u64 = 1024;

/// Room reserved in a frame for everything but a message body: the frame
/// type, names (at most 64 bytes each), numbers and JSON punctuation.
pub const FRAME_OVERHEAD: usize = 512;

/// A frame a client sends to a router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Claims `peer` with `secret`, or proves ownership of it, and starts a
    /// session on this connection.
    Register {
        /// Request ID echoed in the reply.
        req: ReqId,
        /// The peer ID to register.
        peer: PeerId,
        /// The peer's secret.
        secret: Secret,
    },
    /// Sends `body` to a peer or group as message `(registered peer, seq)`.
    Send {
        /// Request ID echoed in the reply.
        req: ReqId,
        /// The sender's sequence number for this message.
        seq: Seq,
        /// The addressee: a peer ID or a group name.
        to: Target,
        /// The message text.
        body: String,
    },
    /// Creates a group with the sender as its first member.
    CreateGroup {
        /// Request ID echoed in the reply.
        req: ReqId,
        /// The group to create.
        group: GroupName,
    },
    /// Joins a group.
    JoinGroup {
        /// Request ID echoed in the reply.
        req: ReqId,
        /// The group to join.
        group: GroupName,
    },
    /// Leaves a group.
    LeaveGroup {
        /// Request ID echoed in the reply.
        req: ReqId,
        /// The group to leave.
        group: GroupName,
    },
    /// Confirms that the client has a mailbox item — or, with `through`,
    /// every item the router pushed to it on this connection from
    /// `delivery` to `through` — which the router may now forget.
    /// Acknowledging a message is what makes it Delivered. An item the
    /// router has not pushed on this connection is not acknowledged.
    Ack {
        /// The (first) mailbox item received.
        delivery: DeliveryId,
        /// The last item of a range, if this acknowledges more than one;
        /// not below `delivery`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        through: Option<DeliveryId>,
    },
    /// Keeps an idle connection alive; answered by `pong`.
    Ping {
        /// Request ID echoed in the reply.
        req: ReqId,
    },
    /// Looks a name up: a peer, a group, or neither. Answered by `who_is`.
    Who {
        /// Request ID echoed in the reply.
        req: ReqId,
        /// The name.
        name: Target,
    },
    /// Lists registered peers, sorted by ID, one page at a time; answered
    /// by `peer_list`, or refused with `directory_private`.
    Peers {
        /// Request ID echoed in the reply.
        req: ReqId,
        /// Only IDs that start with it.
        #[serde(default)]
        prefix: Option<NamePrefix>,
        /// Only IDs after it: the `next` of the previous page.
        #[serde(default)]
        after: Option<PeerId>,
        /// The most entries wanted (see [`directory::MAX_PAGE`]).
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Lists groups, sorted by name, one page at a time; answered by
    /// `group_list`.
    Groups {
        /// Request ID echoed in the reply.
        req: ReqId,
        /// Only names that start with it.
        #[serde(default)]
        prefix: Option<NamePrefix>,
        /// Only names after it: the `next` of the previous page.
        #[serde(default)]
        after: Option<GroupName>,
        /// The most entries wanted.
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Lists the members of a group the sender belongs to, sorted by ID,
    /// one page at a time; answered by `member_list`.
    Members {
        /// Request ID echoed in the reply.
        req: ReqId,
        /// The group.
        group: GroupName,
        /// Only IDs after it: the `next` of the previous page.
        #[serde(default)]
        after: Option<PeerId>,
        /// The most entries wanted.
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Subscribes this session to a peer's online and offline changes;
    /// answered by `presence` with the peer's state now.
    Watch {
        /// Request ID echoed in the reply.
        req: ReqId,
        /// The peer to watch.
        peer: PeerId,
    },
    /// Ends a subscription made with `watch`; answered by `ok`.
    Unwatch {
        /// Request ID echoed in the reply.
        req: ReqId,
        /// The peer no longer watched.
        peer: PeerId,
    },
}

tagged_serde!(
    ClientFrame,
    tag = "type",
    expecting = "internally tagged enum ClientFrame"
);

impl ClientFrame {
    /// The request ID this frame carries, if it is a request.
    pub fn req(&self) -> Option<ReqId> {
        match self {
            ClientFrame::Register { req, .. }
            | ClientFrame::Send { req, .. }
            | ClientFrame::CreateGroup { req, .. }
            | ClientFrame::JoinGroup { req, .. }
            | ClientFrame::LeaveGroup { req, .. }
            | ClientFrame::Ping { req }
            | ClientFrame::Who { req, .. }
            | ClientFrame::Peers { req, .. }
            | ClientFrame::Groups { req, .. }
            | ClientFrame::Members { req, .. }
            | ClientFrame::Watch { req, .. }
            | ClientFrame::Unwatch { req, .. } => Some(*req),
            ClientFrame::Ack { .. } => None,
        }
    }
}

/// A frame a router sends to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerFrame {
    /// The session is registered. The next message should use `next_seq`.
    Registered {
        /// The request answered.
        req: ReqId,
        /// The registered peer.
        peer: PeerId,
        /// One more than the highest sequence number the router has seen
        /// from this peer: a restarted client continues from here.
        next_seq: Seq,
    },
    /// Message `seq` is accepted (state Sent).
    Sent {
        /// The request answered.
        req: ReqId,
        /// The message's sequence number.
        seq: Seq,
        /// Its addressee.
        to: Target,
    },
    /// A group request succeeded.
    Ok {
        /// The request answered.
        req: ReqId,
    },
    /// The answer to a `ping`.
    Pong {
        /// The request answered.
        req: ReqId,
    },
    /// A request or frame was refused; nothing changed.
    Error {
        /// The request refused, when the frame could be read far enough to
        /// know it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<ReqId>,
        /// Stable machine-readable reason.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    /// A message from the mailbox. Acknowledge it with `ack`.
    Message {
        /// The mailbox item to acknowledge.
        delivery: DeliveryId,
        /// The sender.
        from: PeerId,
        /// The sender's sequence number: `(from, seq)` identifies the message.
        seq: Seq,
        /// The addressee: this peer, or the group the message was sent to.
        to: Target,
        /// The message text.
        body: String,
    },
    /// A receipt: recipient `by` has message `seq` sent by this peer (state
    /// Delivered). Acknowledge it with `ack`.
    Delivered {
        /// The mailbox item to acknowledge.
        delivery: DeliveryId,
        /// The message's sequence number.
        seq: Seq,
        /// The message's addressee.
        to: Target,
        /// The recipient that acknowledged it.
        by: PeerId,
    },
    /// This router is not the primary: reconnect to `primary` (if the router
    /// knows one) or to another router. The router closes the connection.
    Redirect {
        /// The primary's client address, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        primary: Option<String>,
    },
    /// The answer to `who`.
    WhoIs {
        /// The request answered.
        req: ReqId,
        /// The name looked up.
        name: Target,
        /// What the name is; absent when it is neither a peer nor a group.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entry: Option<Entry>,
    },
    /// A page of the peer directory.
    PeerList {
        /// The request answered.
        req: ReqId,
        /// The peers, sorted by ID.
        peers: Vec<PeerEntry>,
        /// Present when more follow: ask again with `after` set to it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<PeerId>,
    },
    /// A page of the group listing.
    GroupList {
        /// The request answered.
        req: ReqId,
        /// The groups, sorted by name.
        groups: Vec<GroupEntry>,
        /// Present when more follow: ask again with `after` set to it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<GroupName>,
    },
    /// A page of a group's members.
    MemberList {
        /// The request answered.
        req: ReqId,
        /// The group.
        group: GroupName,
        /// The members, sorted by ID.
        members: Vec<PeerEntry>,
        /// Present when more follow: ask again with `after` set to it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<PeerId>,
    },
    /// A watched peer's state: the answer to `watch` (with `req`), or a
    /// change since (without).
    Presence {
        /// The `watch` request answered, if this is its answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<ReqId>,
        /// The watched peer.
        peer: PeerId,
        /// Whether it has a session on the primary now.
        online: bool,
    },
    /// `peer` joined or left `group`, which this session's peer belongs to.
    Membership {
        /// The group.
        group: GroupName,
        /// The peer that joined or left.
        peer: PeerId,
        /// True for a join, false for a leave.
        joined: bool,
    },
    /// The router is closing this connection, and says why.
    Closing {
        /// Stable machine-readable reason.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
}

tagged_serde!(
    ServerFrame,
    tag = "type",
    expecting = "internally tagged enum ServerFrame"
);

/// Stable, machine-readable error codes. The wire form is the snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not valid UTF-8.
    BadUtf8,
    /// The line is not a JSON object.
    BadJson,
    /// The frame type is unknown.
    UnknownType,
    /// A field is missing, unexpected or of the wrong type.
    BadFrame,
    /// The line is longer than the maximum frame size.
    FrameTooLarge,
    /// A peer ID, group name or secret is malformed.
    InvalidName,
    /// The secret does not match the one the ID was registered with.
    WrongSecret,
    /// The name is taken (by a peer or group).
    NameTaken,
    /// The request needs a registered session.
    NotRegistered,
    /// This connection is already registered as another peer.
    AlreadyRegistered,
    /// The addressee is neither a registered peer nor a group.
    UnknownRecipient,
    /// The group does not exist.
    UnknownGroup,
    /// The sender is not a member of the group.
    NotAMember,
    /// The peer already created or belongs to the most groups one peer may
    /// have.
    TooManyGroups,
    /// The group has the most members a group may have.
    GroupFull,
    /// A recipient's mailbox is full; the message was not accepted.
    MailboxFull,
    /// The router's mailboxes together hold all it may store; the message
    /// was not accepted.
    StorageFull,
    /// The message body is too large to forward in one frame.
    BodyTooLarge,
    /// The sequence number is 0 or `u64::MAX`, skips past the next one
    /// expected, or is too far behind the newest to judge.
    InvalidSeq,
    /// The client's outbox is full (reported by the client machine only).
    OutboxFull,
    /// The connection sent nothing for too long.
    IdleTimeout,
    /// A newer session for the same peer replaced this one.
    Replaced,
    /// The router has too many connections; try again later.
    Busy,
    /// The request needs the primary of the current epoch.
    NotPrimary,
    /// The epoch named is not the current one.
    StaleEpoch,
    /// Too many wrong secrets for this ID in a row: the attempt was not
    /// judged; try again after the wait the message gives.
    TooManyAttempts,
    /// The request names a router other than the one this connection
    /// proved to be, or needs a router and the connection is an operator's
    /// tool.
    Unauthorized,
    /// The router cannot write to its disk and has stopped. A request it
    /// did not answer was not stored; the client resends it once a router
    /// serves again.
    StorageFailed,
    /// The router's peer directory is private: peers can be looked up by
    /// ID (`who`), not listed.
    DirectoryPrivate,
    /// The session already watches the most peers one session may watch.
    TooManyWatches,
}

impl ErrorCode {
    /// The code's wire name, e.g. `"wrong_secret"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::StorageFailed => "storage_failed",
            ErrorCode::DirectoryPrivate => "directory_private",
            ErrorCode::TooManyWatches => "too_many_watches",
            ErrorCode::BadUtf8 => "bad_utf8",
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::WrongSecret => "wrong_secret",
            ErrorCode::NameTaken => "name_taken",
            ErrorCode::NotRegistered => "not_registered",
            ErrorCode::AlreadyRegistered => "already_registered",
            ErrorCode::UnknownRecipient => "unknown_recipient",
            ErrorCode::UnknownGroup => "unknown_group",
            ErrorCode::NotAMember => "not_a_member",
            ErrorCode::TooManyGroups => "too_many_groups",
            ErrorCode::GroupFull => "group_full",
            ErrorCode::MailboxFull => "mailbox_full",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::InvalidSeq => "invalid_seq",
            ErrorCode::OutboxFull => "outbox_full",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::Replaced => "replaced",
            ErrorCode::Busy => "busy",
            ErrorCode::NotPrimary => "not_primary",
            ErrorCode::StaleEpoch => "stale_epoch",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TooManyAttempts => "too_many_attempts",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A line that could not be turned into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct FrameError {
    /// The request ID, if the line was readable far enough to find one.
    pub req: Option<ReqId>,
    /// Why the line was refused.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

/// The most characters of an error message; longer ones are cut, so an
/// error never echoes more than a short prefix of what caused it.
pub const MAX_ERROR_MESSAGE: usize = 200;

/// `message`, cut to [`MAX_ERROR_MESSAGE`] characters.
fn bounded(message: String) -> String {
    match message.char_indices().nth(MAX_ERROR_MESSAGE) {
        None => message,
        Some((end, _)) => format!("{}…", &message[..end]),
    }
}

impl FrameError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            req: None,
            code,
            message: bounded(message.into()),
        }
    }

    /// The error frame a router answers this error with.
    pub fn to_frame(&self) -> ServerFrame {
        ServerFrame::Error {
            req: self.req,
            code: self.code,
            message: self.message.clone(),
        }
    }
}

/// Splits a byte stream into lines of at most `max_len` bytes (newline
/// included). An oversized line yields one [`ErrorCode::FrameTooLarge`]
/// error and is skipped up to its newline without being buffered, so a
/// hostile peer cannot make the decoder hold more than `max_len` bytes.
/// Blank lines are skipped.
#[derive(Debug)]
pub struct LineDecoder {
    max_len: usize,
    /// How far the buffer has been searched for a newline already.
    scanned: usize,
    /// True while skipping the rest of an oversized line.
    discarding: bool,
}

impl LineDecoder {
    /// A decoder for lines of at most `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len,
            scanned: 0,
            discarding: false,
        }
    }

    /// Takes the next complete line out of `buf`, without its newline (or
    /// `\r\n`). Returns `None` when `buf` holds no complete line yet; call
    /// again after appending more bytes.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Result<BytesMut, FrameError>> {
        loop {
            let newline = buf[self.scanned..].iter().position(|b| *b == b'\n');
            let Some(offset) = newline else {
                if buf.len() >= self.max_len {
                    let _ = buf.split();
                    self.scanned = 0;
                    if !self.discarding {
                        self.discarding = true;
                        return Some(Err(self.too_large()));
                    }
                } else {
                    self.scanned = buf.len();
                }
                return None;
            };
            let end = self.scanned + offset;
            self.scanned = 0;
            let mut line = buf.split_to(end + 1);
            if self.discarding {
                self.discarding = false;
                continue;
            }
            if line.len() > self.max_len {
                return Some(Err(self.too_large()));
            }
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(Ok(line));
        }
    }

    fn too_large(&self) -> FrameError {
        FrameError::new(
            ErrorCode::FrameTooLarge,
            format!("frame longer than the limit of {} bytes", self.max_len),
        )
    }
}

/// Decodes one line (without its newline) as a [`ClientFrame`].
pub fn decode_client_frame(line: &[u8]) -> Result<ClientFrame, FrameError> {
    decode_frame(line)
}

/// Decodes one line as any frame type `T` of this protocol, with the same
/// error diagnosis as client frames.
pub fn decode_as<T: serde::de::DeserializeOwned>(line: &[u8]) -> Result<T, FrameError> {
    decode_frame(line)
}

/// Decodes one line of an authenticated cluster link (a replication stream
/// or a member's link to the replica manager) as `T`, with the same error
/// diagnosis as [`decode_as`] but without its second parse for duplicate
/// keys: the other end proved the cluster key, so what it sends was
/// written by PeerLink's encoder, which never repeats a key, and a member
/// holding the key could send any frame it liked anyway. Lines from
/// anyone else — clients, and cluster handshakes before the proof — go
/// through [`decode_client_frame`] or [`decode_as`].
pub fn decode_cluster_frame<T: serde::de::DeserializeOwned>(line: &[u8]) -> Result<T, FrameError> {
    match serde_json::from_slice::<T>(line) {
        Ok(frame) => Ok(frame),
        Err(_) => decode_frame(line),
    }
}

/// Decodes one line (without its newline) as a [`ServerFrame`].
pub fn decode_server_frame(line: &[u8]) -> Result<ServerFrame, FrameError> {
    decode_frame(line)
}

fn decode_frame<T: serde::de::DeserializeOwned>(line: &[u8]) -> Result<T, FrameError> {
    // The fast path parses once (and once more for duplicate keys); only a
    // failure pays for the diagnosis.
    let fast = serde_json::from_slice::<T>(line);
    let duplicate = unique_keys::first_duplicate(line);
    if let (Ok(frame), None) = (fast, &duplicate) {
        return Ok(frame);
    }
    let text = std::str::from_utf8(line)
        .map_err(|e| FrameError::new(ErrorCode::BadUtf8, format!("frame is not UTF-8: {e}")))?;
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| FrameError::new(ErrorCode::BadJson, format!("frame is not JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(FrameError::new(ErrorCode::BadJson, "frame must be a JSON object"));
    };
    let req = object.get("req").and_then(serde_json::Value::as_u64).map(ReqId);
    if let Some(duplicate) = duplicate {
        return Err(FrameError {
            req,
            ..FrameError::new(ErrorCode::BadFrame, duplicate)
        });
    }
    let Some(kind) = object.get("type").and_then(serde_json::Value::as_str) else {
        return Err(FrameError {
            req,
            ..FrameError::new(ErrorCode::BadFrame, "frame has no string field \"type\"")
        });
    };
    let kind = kind.to_owned();
    match serde_json::from_value::<T>(value) {
        Ok(frame) => Ok(frame),
        Err(e) => {
            let message = e.to_string();
            let code = if message.starts_with("unknown variant") {
                ErrorCode::UnknownType
            } else if message.starts_with(NameError::PREFIX) {
                ErrorCode::InvalidName
            } else {
                ErrorCode::BadFrame
            };
            Err(FrameError {
                req,
                code,
                message: bounded(format!("bad {kind:?} frame: {message}")),
            })
        }
    }
}

/// Appends `frame` as one JSON line to `buf`.
pub fn encode_frame<T: Serialize>(frame: &T, buf: &mut BytesMut) {
    let mut writer = buf.writer();
    serde_json::to_writer(&mut writer, frame).expect("frames always serialize");
    writer.into_inner().put_u8(b'\n');
}

/// The number of bytes `s` takes as a JSON string, quotes included.
pub fn json_string_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(decoder: &mut LineDecoder, buf: &mut BytesMut) -> Vec<Result<Vec<u8>, ErrorCode>> {
        std::iter::from_fn(|| decoder.decode(buf))
            .map(|r| r.map(|l| l.to_vec()).map_err(|e| e.code))
            .collect()
    }

    #[test]
    fn splits_lines_across_reads() {
        let mut d = LineDecoder::new(64);
        let mut buf = BytesMut::from(&b"{\"a\":1}\n{\"b\""[..]);
        assert_eq!(lines(&mut d, &mut buf), vec![Ok(b"{\"a\":1}".to_vec())]);
        buf.extend_from_slice(b":2}\r\n\n  \n");
        assert_eq!(lines(&mut d, &mut buf), vec![Ok(b"{\"b\":2}".to_vec())]);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_line_is_reported_once_and_skipped() {
        let mut d = LineDecoder::new(8);
        let mut buf = BytesMut::from(&b"0123456789"[..]);
        assert_eq!(lines(&mut d, &mut buf), vec![Err(ErrorCode::FrameTooLarge)]);
        assert!(buf.is_empty(), "an oversized line is not buffered");
        buf.extend_from_slice(b"0123456789abc");
        assert_eq!(lines(&mut d, &mut buf), vec![]);
        buf.extend_from_slice(b"def\nok\n");
        assert_eq!(lines(&mut d, &mut buf), vec![Ok(b"ok".to_vec())]);
    }

    #[test]
    fn oversized_complete_line_is_reported() {
        let mut d = LineDecoder::new(4);
        let mut buf = BytesMut::from(&b"abc\nabcdefgh\nxy\n"[..]);
        assert_eq!(
            lines(&mut d, &mut buf),
            vec![
                Ok(b"abc".to_vec()),
                Err(ErrorCode::FrameTooLarge),
                Ok(b"xy".to_vec())
            ]
        );
    }

    fn code_of(line: &str) -> (Option<ReqId>, ErrorCode) {
        let e = decode_client_frame(line.as_bytes()).unwrap_err();
        (e.req, e.code)
    }

    #[test]
    fn decode_errors_have_precise_codes() {
        assert_eq!(
            decode_client_frame(b"\xff\xfe").unwrap_err().code,
            ErrorCode::BadUtf8
        );
        assert_eq!(code_of("hello"), (None, ErrorCode::BadJson));
        assert_eq!(code_of("[1,2]"), (None, ErrorCode::BadJson));
        assert_eq!(code_of(r#"{"req":3}"#), (Some(ReqId(3)), ErrorCode::BadFrame));
        assert_eq!(
            code_of(r#"{"type":"fly","req":4}"#),
            (Some(ReqId(4)), ErrorCode::UnknownType)
        );
        assert_eq!(
            code_of(r#"{"type":"send","req":5,"seq":1,"to":"bob"}"#),
            (Some(ReqId(5)), ErrorCode::BadFrame)
        );
        assert_eq!(
            code_of(r#"{"type":"join_group","req":6,"group":"no spaces"}"#),
            (Some(ReqId(6)), ErrorCode::InvalidName)
        );
        assert_eq!(
            code_of(r#"{"type":"ping","req":7,"extra":1}"#),
            (Some(ReqId(7)), ErrorCode::BadFrame)
        );
    }

    #[test]
    fn frames_round_trip() {
        let frames = [
            ClientFrame::Register {
                req: ReqId(1),
                peer: PeerId::new("alice").unwrap(),
                secret: Secret::new("s").unwrap(),
            },
            ClientFrame::Send {
                req: ReqId(2),
                seq: Seq(1),
                to: Target::new("bob").unwrap(),
                body: "hi \"there\"\n".into(),
            },
            ClientFrame::Ack {
                delivery: DeliveryId(9),
                through: None,
            },
            ClientFrame::Ack {
                delivery: DeliveryId(9),
                through: Some(DeliveryId(12)),
            },
        ];
        for frame in frames {
            let mut buf = BytesMut::new();
            encode_frame(&frame, &mut buf);
            assert_eq!(buf.last(), Some(&b'\n'));
            let line = &buf[..buf.len() - 1];
            assert_eq!(decode_client_frame(line).unwrap(), frame);
        }
    }

    #[test]
    fn wire_form_is_the_documented_one() {
        let frame =
            decode_client_frame(br#"{"type":"send","req":2,"seq":1,"to":"bob","body":"hi"}"#).unwrap();
        assert!(matches!(frame, ClientFrame::Send { .. }));
        let mut buf = BytesMut::new();
        encode_frame(
            &ServerFrame::Error {
                req: None,
                code: ErrorCode::WrongSecret,
                message: "m".into(),
            },
            &mut buf,
        );
        assert_eq!(
            &buf[..],
            b"{\"type\":\"error\",\"code\":\"wrong_secret\",\"message\":\"m\"}\n"
        );
    }

    #[test]
    fn json_string_len_matches_serde() {
        for s in ["", "plain", "quote\"back\\slash", "ctl\u{1}\u{1f}\n\t", "é漢"] {
            assert_eq!(
                json_string_len(s),
                serde_json::to_string(s).unwrap().len(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn error_code_names_match_serde() {
        for code in [
            ErrorCode::BadUtf8,
            ErrorCode::NotAMember,
            ErrorCode::InvalidSeq,
            ErrorCode::DirectoryPrivate,
            ErrorCode::TooManyWatches,
        ] {
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{code}\""));
        }
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let twice = br#"{"type":"send","req":7,"seq":1,"to":"bob","to":"carol","body":"x"}"#;
        let error = decode_client_frame(twice).unwrap_err();
        assert_eq!((error.code, error.req), (ErrorCode::BadFrame, Some(ReqId(7))));
        assert!(
            error.message.contains("duplicate key \"to\""),
            "{}",
            error.message
        );
        let retyped = br#"{"type":"send","type":"ping","req":1}"#;
        assert_eq!(
            decode_client_frame(retyped).unwrap_err().code,
            ErrorCode::BadFrame
        );
        let once = br#"{"type":"send","req":7,"seq":1,"to":"bob","body":"x"}"#;
        assert!(decode_client_frame(once).is_ok());
    }

    #[test]
    fn errors_echo_only_a_short_prefix_of_the_input() {
        let junk = "\u{200b}".repeat(1 << 20);
        for line in [
            format!(r#"{{"type":"{junk}","req":1}}"#),
            format!(r#"{{"type":"register","req":1,"peer":"{junk}","secret":"s"}}"#),
            format!(r#"{{"type":"send","req":1,"seq":"{junk}"}}"#),
        ] {
            let error = decode_client_frame(line.as_bytes()).unwrap_err();
            assert!(
                error.message.chars().count() <= MAX_ERROR_MESSAGE + 1,
                "{} chars",
                error.message.len()
            );
            let frame = serde_json::to_string(&error.to_frame()).unwrap();
            assert!(frame.len() < 2_000, "an error frame of {} bytes", frame.len());
        }
    }

    #[test]
    fn cluster_frames_are_not_client_frames() {
        // The client port decodes client frames only: a follower's or a
        // router's frame there is an unknown type, never obeyed.
        for line in [
            &br#"{"type":"follow","id":"r2","epoch":3,"lsn":0,"stream_epoch":0}"#[..],
            br#"{"type":"applied","epoch":3,"lsn":7}"#,
            br#"{"type":"heartbeat","id":"r2","addr":"a:1","cluster_addr":"a:2","incarnation":1,"epoch":0,"lsn":0,"may_lead":true}"#,
        ] {
            let error = decode_client_frame(line).unwrap_err();
            assert_eq!(error.code, ErrorCode::UnknownType, "{}", String::from_utf8_lossy(line));
        }
    }
}
