//! Newtype identifiers. Every name or number that crosses an API or the wire
//! has its own type, validated when it is built, so a `PeerId` can never be
//! confused with a `GroupName` or a delivery number with a sequence number.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest peer ID or group name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// The longest secret, in bytes.
pub const MAX_SECRET_LEN: usize = 256;

/// Why a string is not a valid name or secret.
///
/// The `Display` text starts with [`NameError::PREFIX`], which the frame
/// decoder uses to report such failures with the `invalid_name` code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty or longer than [`MAX_NAME_LEN`] bytes.
    #[error("invalid name {0:?}: must be 1 to 64 bytes long")]
    Length(String),
    /// The name holds a character outside `A-Z a-z 0-9 . _ -`.
    #[error("invalid name {0:?}: only the characters A-Z a-z 0-9 . _ - are allowed")]
    Character(String),
    /// The secret is empty or longer than [`MAX_SECRET_LEN`] bytes.
    #[error("invalid name: a secret must be 1 to 256 bytes long")]
    SecretLength,
}

impl NameError {
    /// The text every `NameError` message starts with.
    pub const PREFIX: &'static str = "invalid name";
}

fn validate_name(s: &str) -> Result<(), NameError> {
    if s.is_empty() || s.len() > MAX_NAME_LEN {
        return Err(NameError::Length(s.to_owned()));
    }
    // Every allowed character is ASCII, so judging bytes is judging chars:
    // each byte of a multi-byte character is refused.
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if !s.bytes().all(allowed) {
        return Err(NameError::Character(s.to_owned()));
    }
    Ok(())
}

/// Defines a validated name newtype over `String`.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        // Written as the plain string, without the copy `into = "String"`
        // would make of every name on every frame.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl $name {
            /// Validates `s` as a name: 1 to 64 bytes of `A-Z a-z 0-9 . _ -`.
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                validate_name(&s)?;
                Ok(Self(s))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// The ID a peer registers and is addressed by.
    PeerId
);
name_type!(
    /// The name of a group. Groups and peers share one namespace.
    GroupName
);
name_type!(
    /// The name of a router in a replicated cluster (`r1`, `r2`, ...).
    ReplicaId
);
name_type!(
    /// The start of peer IDs or group names to list: the same characters and
    /// length as a name. A directory listing with prefix `al` holds `al`,
    /// `alice` and `al.b`, never `bal`.
    NamePrefix
);
name_type!(
    /// The addressee of a message: a peer or a group, which the router resolves.
    /// Because peers and groups share one namespace, it is never ambiguous.
    Target
);

impl From<PeerId> for Target {
    fn from(p: PeerId) -> Self {
        Target(p.0)
    }
}

impl From<GroupName> for Target {
    fn from(g: GroupName) -> Self {
        Target(g.0)
    }
}

impl Target {
    /// The same name read as a peer ID.
    pub fn as_peer(&self) -> PeerId {
        PeerId(self.0.clone())
    }

    /// The same name read as a group name.
    pub fn as_group(&self) -> GroupName {
        GroupName(self.0.clone())
    }
}

impl PeerId {
    /// The same name read as a message target.
    pub fn as_target(&self) -> Target {
        Target(self.0.clone())
    }
}

/// A peer's secret. Its `Debug` output is redacted so it never reaches a log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Secret(String);

impl Secret {
    /// Validates `s` as a secret: 1 to 256 bytes of any text.
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        if s.is_empty() || s.len() > MAX_SECRET_LEN {
            return Err(NameError::SecretLength);
        }
        Ok(Self(s))
    }

    /// The secret's bytes, for hashing.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl TryFrom<String> for Secret {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::new(s)
    }
}

impl From<Secret> for String {
    fn from(s: Secret) -> String {
        s.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Defines a numeric newtype over `u64`.
macro_rules! number_type {
    ($(#[$doc:meta])* $name:ident, $short:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The number after this one.
            pub fn next(self) -> Self {
                Self(self.0 + 1)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($short, "{}"), self.0)
            }
        }
    };
}

number_type!(
    /// A sender's message sequence number. The first is 1; each message a
    /// peer sends gets the next one, so `(sender, seq)` names it uniquely.
    Seq,
    "s"
);
number_type!(
    /// A request ID chosen by the client; the router echoes it in the reply.
    ReqId,
    "r"
);
number_type!(
    /// Numbers the items (messages and receipts) in one peer's mailbox, in
    /// the order they were stored. The client acknowledges items by it.
    DeliveryId,
    "d"
);
number_type!(
    /// A connection, as numbered by the driver that owns the sockets.
    ConnId,
    "c"
);
number_type!(
    /// A configuration's number. The replica manager bumps it on every
    /// configuration change and never reuses one; every replica refuses
    /// replication from an older epoch.
    Epoch,
    "e"
);
number_type!(
    /// A log sequence number: the position of a change in the primary's log.
    /// The first change is 1; 0 is the empty state.
    Lsn,
    "l"
);

/// A message's end-to-end identity: its sender and the sender's sequence number.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MsgId {
    /// The peer that sent the message.
    pub from: PeerId,
    /// The sender's sequence number for it.
    pub seq: Seq,
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.from, self.seq.0)
    }
}

impl fmt::Debug for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(PeerId::new("alice-1.b_c").is_ok());
        assert_eq!(PeerId::new(""), Err(NameError::Length(String::new())));
        assert!(matches!(PeerId::new("a".repeat(65)), Err(NameError::Length(_))));
        assert!(PeerId::new("a".repeat(64)).is_ok());
        assert!(matches!(GroupName::new("a b"), Err(NameError::Character(_))));
        assert!(matches!(Target::new("é"), Err(NameError::Character(_))));
    }

    #[test]
    fn name_errors_start_with_the_prefix() {
        for e in [
            PeerId::new("").unwrap_err(),
            PeerId::new("a b").unwrap_err(),
            Secret::new("").unwrap_err(),
        ] {
            assert!(e.to_string().starts_with(NameError::PREFIX), "{e}");
        }
    }

    #[test]
    fn secrets_are_bounded_and_redacted() {
        assert!(Secret::new("").is_err());
        assert!(Secret::new("x".repeat(257)).is_err());
        let s = Secret::new("hunter2").unwrap();
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }

    #[test]
    fn names_are_written_as_plain_strings() {
        assert_eq!(
            serde_json::to_string(&PeerId::new("a.b-c_1").unwrap()).unwrap(),
            r#""a.b-c_1""#
        );
        assert_eq!(
            serde_json::to_string(&Target::new("g").unwrap()).unwrap(),
            r#""g""#
        );
        let back: GroupName = serde_json::from_str(r#""g""#).unwrap();
        assert_eq!(back, GroupName::new("g").unwrap());
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<PeerId>("\"ok\"").is_ok());
        let err = serde_json::from_str::<PeerId>("\"not ok\"").unwrap_err();
        assert!(err.to_string().starts_with(NameError::PREFIX));
    }
}
