//! Cluster membership: the challenge–response that every connection to a
//! cluster port (the replica manager's, and a router's cluster listener)
//! must pass before any cluster frame is read.
//!
//! Every member holds the same [`ClusterKey`]. The side that accepted the
//! connection (the *acceptor*) speaks first with a fresh random challenge;
//! the side that connected (the *connector*) answers with its own nonce,
//! the identity it claims, and an HMAC-SHA256 proof over both nonces and
//! that identity; the acceptor checks the proof in constant time and
//! answers with its own proof, which the connector checks. Neither proof
//! can be replayed (each covers the other side's fresh nonce), neither side
//! learns anything about the key, and the identity claimed is bound to the
//! connection: the replica manager and a primary hold every frame that
//! names a router to the identity proven here.
//!
//! The handshake proves membership; it does not encrypt. Links run it
//! inside TLS (docs/security.md), so an on-path attacker can neither read
//! the stream nor take it over after the proof.
//!
//! Everything here is pure: the drivers draw the nonces (from the OS in
//! production, from the seed in the simulator) and move the frames.

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::ids::ReplicaId;

/// The fewest bytes a cluster key may have.
pub const MIN_KEY_LEN: usize = 16;

/// The most bytes a cluster key may have.
pub const MAX_KEY_LEN: usize = 1024;

/// The longest handshake frame, in bytes, newline included: a connection
/// that sends more before it has proven membership is dropped.
pub const MAX_HANDSHAKE_FRAME: usize = 512;

/// Bytes in a nonce.
pub const NONCE_LEN: usize = 32;

/// Why a key, or a handshake, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The key file does not hold what a key must be.
    #[error("a cluster key must be {MIN_KEY_LEN} to {MAX_KEY_LEN} bytes, written as hex; found {0}")]
    BadKey(String),
    /// The peer sent a frame other than the one the handshake expects.
    #[error("unexpected handshake frame: expected {expected}")]
    Unexpected {
        /// The frame that was expected.
        expected: &'static str,
    },
    /// The peer's proof does not match: it does not hold the cluster key.
    #[error("the peer's proof is wrong: it does not hold this cluster's key")]
    WrongProof,
    /// The acceptor refused the connector.
    #[error("refused: {0}")]
    Refused(String),
}

/// The secret every member of one cluster holds. Its `Debug` form never
/// shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey(Vec<u8>);

impl ClusterKey {
    /// A key of these bytes: [`MIN_KEY_LEN`] to [`MAX_KEY_LEN`] of them.
    pub fn new(bytes: Vec<u8>) -> Result<Self, AuthError> {
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&bytes.len()) {
            return Err(AuthError::BadKey(format!("{} bytes", bytes.len())));
        }
        Ok(Self(bytes))
    }

    /// Parses a key file's text: the key in hex, surrounding whitespace
    /// ignored.
    pub fn from_hex(text: &str) -> Result<Self, AuthError> {
        let bytes = hex::decode(text.trim()).map_err(|e| AuthError::BadKey(format!("bad hex ({e})")))?;
        Self::new(bytes)
    }

    /// The key as a key file holds it: hex, with a final newline.
    pub fn to_hex(&self) -> String {
        format!("{}\n", hex::encode(&self.0))
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey({} bytes)", self.0.len())
    }
}

/// A fresh random value, drawn by a driver for each handshake.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Nonce(pub [u8; NONCE_LEN]);

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({})", hex::encode(self.0))
    }
}

impl TryFrom<String> for Nonce {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let mut bytes = [0; NONCE_LEN];
        hex::decode_to_slice(&s, &mut bytes).map_err(|e| format!("bad nonce: {e}"))?;
        Ok(Self(bytes))
    }
}

impl From<Nonce> for String {
    fn from(n: Nonce) -> String {
        hex::encode(n.0)
    }
}

/// An HMAC-SHA256 proof of holding the cluster key, as hex on the wire.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Proof(Vec<u8>);

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proof({})", hex::encode(&self.0))
    }
}

impl TryFrom<String> for Proof {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.len() != 64 {
            return Err(format!("a proof is 64 hex digits, not {}", s.len()));
        }
        hex::decode(&s).map(Proof).map_err(|e| format!("bad proof: {e}"))
    }
}

impl From<Proof> for String {
    fn from(p: Proof) -> String {
        hex::encode(p.0)
    }
}

/// The frames of the handshake, newline-delimited JSON like every frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthFrame {
    /// Acceptor → connector, first: prove you hold the key, over this.
    Challenge {
        /// The acceptor's fresh nonce.
        nonce: Nonce,
    },
    /// Connector → acceptor: who it is, and its proof.
    Hello {
        /// The router it claims to be; none for an operator's tool such as
        /// `peerlink status`, which may only ask questions.
        id: Option<ReplicaId>,
        /// The connector's fresh nonce.
        nonce: Nonce,
        /// HMAC over both nonces and `id`.
        proof: Proof,
    },
    /// Acceptor → connector: the acceptor's own proof; cluster frames
    /// follow.
    Welcome {
        /// HMAC over both nonces and `id`, for the other direction.
        proof: Proof,
    },
    /// Acceptor → connector: the proof was wrong; the connection closes.
    Refused {
        /// Why.
        message: String,
    },
}

/// Which side a proof is made by; part of what is signed, so that one
/// side's proof is never valid for the other.
#[derive(Clone, Copy)]
enum Side {
    Connector,
    Acceptor,
}

fn proof(
    key: &ClusterKey,
    side: Side,
    challenge: &Nonce,
    nonce: &Nonce,
    id: Option<&ReplicaId>,
) -> Hmac<Sha256> {
    let mut mac = key.mac();
    mac.update(b"peerlink-cluster-v1\0");
    mac.update(match side {
        Side::Connector => b"connector\0",
        Side::Acceptor => b"acceptor\0\0",
    });
    mac.update(&challenge.0);
    mac.update(&nonce.0);
    let id = id.map_or("", ReplicaId::as_str);
    mac.update(&(id.len() as u64).to_be_bytes());
    mac.update(id.as_bytes());
    mac
}

/// The accepting side of one handshake.
#[derive(Debug)]
pub struct Acceptor {
    /// The key to check proofs with, then older ones still accepted.
    keys: Vec<ClusterKey>,
    challenge: Nonce,
}

impl Acceptor {
    /// Starts a handshake with a fresh `challenge`; send
    /// [`Acceptor::challenge`] first.
    pub fn new(key: ClusterKey, challenge: Nonce) -> Self {
        Self {
            keys: vec![key],
            challenge,
        }
    }

    /// Also admits connectors that prove one of `keys`, answering each with
    /// the key it proved: while a cluster rotates its key, members with the
    /// old key and members with the new one still admit each other.
    pub fn also_accepting(mut self, keys: impl IntoIterator<Item = ClusterKey>) -> Self {
        self.keys.extend(keys);
        self
    }

    /// The first frame to send.
    pub fn challenge(&self) -> AuthFrame {
        AuthFrame::Challenge {
            nonce: self.challenge,
        }
    }

    /// Checks the connector's answer. On success, returns the identity it
    /// proved and the frame to answer with; on failure, the error (answer
    /// with [`AuthFrame::Refused`] and close).
    pub fn on_hello(&self, frame: AuthFrame) -> Result<(Option<ReplicaId>, AuthFrame), AuthError> {
        let AuthFrame::Hello {
            id,
            nonce,
            proof: claimed,
        } = frame
        else {
            return Err(AuthError::Unexpected { expected: "hello" });
        };
        let key = self
            .keys
            .iter()
            .find(|key| {
                proof(key, Side::Connector, &self.challenge, &nonce, id.as_ref())
                    .verify_slice(&claimed.0)
                    .is_ok()
            })
            .ok_or(AuthError::WrongProof)?;
        let answer = proof(key, Side::Acceptor, &self.challenge, &nonce, id.as_ref());
        let welcome = AuthFrame::Welcome {
            proof: Proof(answer.finalize().into_bytes().to_vec()),
        };
        Ok((id, welcome))
    }
}

/// The connecting side of one handshake.
#[derive(Debug)]
pub struct Connector {
    key: ClusterKey,
    id: Option<ReplicaId>,
    nonce: Nonce,
    challenge: Option<Nonce>,
}

impl Connector {
    /// Starts a handshake as `id` (none for an operator's tool) with a
    /// fresh `nonce`; wait for the acceptor's challenge.
    pub fn new(key: ClusterKey, id: Option<ReplicaId>, nonce: Nonce) -> Self {
        Self {
            key,
            id,
            nonce,
            challenge: None,
        }
    }

    /// Answers the acceptor's challenge with the frame to send.
    pub fn on_challenge(&mut self, frame: AuthFrame) -> Result<AuthFrame, AuthError> {
        let AuthFrame::Challenge { nonce: challenge } = frame else {
            return Err(AuthError::Unexpected {
                expected: "challenge",
            });
        };
        self.challenge = Some(challenge);
        let mac = proof(
            &self.key,
            Side::Connector,
            &challenge,
            &self.nonce,
            self.id.as_ref(),
        );
        Ok(AuthFrame::Hello {
            id: self.id.clone(),
            nonce: self.nonce,
            proof: Proof(mac.finalize().into_bytes().to_vec()),
        })
    }

    /// Checks the acceptor's answer: `Ok` means the acceptor holds the key
    /// and cluster frames may flow.
    pub fn on_welcome(&self, frame: AuthFrame) -> Result<(), AuthError> {
        let claimed = match frame {
            AuthFrame::Welcome { proof } => proof,
            AuthFrame::Refused { message } => return Err(AuthError::Refused(message)),
            _ => return Err(AuthError::Unexpected { expected: "welcome" }),
        };
        let Some(challenge) = self.challenge else {
            return Err(AuthError::Unexpected {
                expected: "challenge",
            });
        };
        proof(
            &self.key,
            Side::Acceptor,
            &challenge,
            &self.nonce,
            self.id.as_ref(),
        )
        .verify_slice(&claimed.0)
        .map_err(|_| AuthError::WrongProof)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ClusterKey {
        ClusterKey::new(vec![b; 32]).unwrap()
    }

    fn r(s: &str) -> Option<ReplicaId> {
        Some(ReplicaId::new(s).unwrap())
    }

    /// Runs a whole handshake between holders of `a` (acceptor) and `c`.
    fn handshake(
        a: &ClusterKey,
        c: &ClusterKey,
        id: Option<ReplicaId>,
    ) -> Result<Option<ReplicaId>, AuthError> {
        let acceptor = Acceptor::new(a.clone(), Nonce([1; NONCE_LEN]));
        let mut connector = Connector::new(c.clone(), id, Nonce([2; NONCE_LEN]));
        let hello = connector.on_challenge(acceptor.challenge())?;
        let (id, welcome) = acceptor.on_hello(hello)?;
        connector.on_welcome(welcome)?;
        Ok(id)
    }

    #[test]
    fn members_prove_themselves_to_each_other() {
        assert_eq!(handshake(&key(7), &key(7), r("r2")), Ok(r("r2")));
        assert_eq!(handshake(&key(7), &key(7), None), Ok(None));
    }

    #[test]
    fn a_connector_without_the_key_is_refused() {
        assert_eq!(handshake(&key(7), &key(8), r("r2")), Err(AuthError::WrongProof));
    }

    #[test]
    fn an_acceptor_without_the_key_is_refused_by_the_connector() {
        let impostor = Acceptor::new(key(8), Nonce([1; NONCE_LEN]));
        let mut connector = Connector::new(key(7), r("r2"), Nonce([2; NONCE_LEN]));
        connector.on_challenge(impostor.challenge()).unwrap();
        // The impostor cannot check the proof, so it just welcomes with
        // what it can compute.
        let forged = proof(
            &key(8),
            Side::Acceptor,
            &Nonce([1; NONCE_LEN]),
            &Nonce([2; NONCE_LEN]),
            r("r2").as_ref(),
        );
        let welcome = AuthFrame::Welcome {
            proof: Proof(forged.finalize().into_bytes().to_vec()),
        };
        assert_eq!(connector.on_welcome(welcome), Err(AuthError::WrongProof));
    }

    #[test]
    fn a_proof_is_bound_to_the_identity_and_the_challenge() {
        let acceptor = Acceptor::new(key(7), Nonce([1; NONCE_LEN]));
        let mut connector = Connector::new(key(7), r("r2"), Nonce([2; NONCE_LEN]));
        let AuthFrame::Hello { nonce, proof, .. } = connector.on_challenge(acceptor.challenge()).unwrap()
        else {
            panic!("a hello");
        };
        let renamed = AuthFrame::Hello {
            id: r("r1"),
            nonce,
            proof: proof.clone(),
        };
        assert_eq!(acceptor.on_hello(renamed), Err(AuthError::WrongProof));
        // Replayed to another acceptor, whose challenge differs.
        let other = Acceptor::new(key(7), Nonce([3; NONCE_LEN]));
        let replay = AuthFrame::Hello {
            id: r("r2"),
            nonce,
            proof,
        };
        assert_eq!(other.on_hello(replay), Err(AuthError::WrongProof));
    }

    #[test]
    fn an_acceptors_proof_is_not_a_connectors() {
        // Reflecting the acceptor's own welcome back as a hello fails.
        let acceptor = Acceptor::new(key(7), Nonce([1; NONCE_LEN]));
        let mut connector = Connector::new(key(7), r("r2"), Nonce([2; NONCE_LEN]));
        let hello = connector.on_challenge(acceptor.challenge()).unwrap();
        let (_, AuthFrame::Welcome { proof }) = acceptor.on_hello(hello).unwrap() else {
            panic!("a welcome");
        };
        let reflected = AuthFrame::Hello {
            id: r("r2"),
            nonce: Nonce([2; NONCE_LEN]),
            proof,
        };
        assert_eq!(acceptor.on_hello(reflected), Err(AuthError::WrongProof));
    }

    #[test]
    fn frames_out_of_order_are_refused() {
        let acceptor = Acceptor::new(key(7), Nonce([1; NONCE_LEN]));
        assert!(matches!(
            acceptor.on_hello(acceptor.challenge()),
            Err(AuthError::Unexpected { .. })
        ));
        let connector = Connector::new(key(7), None, Nonce([2; NONCE_LEN]));
        let refused = AuthFrame::Refused { message: "no".into() };
        assert_eq!(
            connector.on_welcome(refused),
            Err(AuthError::Refused("no".into()))
        );
    }

    #[test]
    fn during_a_rotation_both_keys_are_admitted_and_no_other() {
        let rotating = |c: &ClusterKey| {
            let acceptor = Acceptor::new(key(7), Nonce([1; NONCE_LEN])).also_accepting([key(6)]);
            let mut connector = Connector::new(c.clone(), r("r2"), Nonce([2; NONCE_LEN]));
            let hello = connector.on_challenge(acceptor.challenge())?;
            let (_, welcome) = acceptor.on_hello(hello)?;
            connector.on_welcome(welcome)
        };
        assert_eq!(rotating(&key(7)), Ok(()), "the new key");
        assert_eq!(
            rotating(&key(6)),
            Ok(()),
            "the old key, answered with the old key"
        );
        assert_eq!(rotating(&key(5)), Err(AuthError::WrongProof));
    }

    #[test]
    fn keys_are_bounded_and_never_printed() {
        assert!(ClusterKey::new(vec![0; MIN_KEY_LEN - 1]).is_err());
        assert!(ClusterKey::new(vec![0; MAX_KEY_LEN + 1]).is_err());
        assert!(ClusterKey::from_hex("zz").is_err());
        let k = ClusterKey::from_hex(&key(0xab).to_hex()).unwrap();
        assert_eq!(k, key(0xab));
        assert!(!format!("{k:?}").contains("ab"));
    }

    #[test]
    fn handshake_frames_round_trip_and_reject_junk() {
        let mut connector = Connector::new(key(7), r("r2"), Nonce([2; NONCE_LEN]));
        let hello = connector
            .on_challenge(AuthFrame::Challenge {
                nonce: Nonce([9; NONCE_LEN]),
            })
            .unwrap();
        let line = serde_json::to_string(&hello).unwrap();
        assert!(line.len() < MAX_HANDSHAKE_FRAME);
        assert_eq!(serde_json::from_str::<AuthFrame>(&line).unwrap(), hello);
        let short = r#"{"type":"welcome","proof":"abcd"}"#;
        assert!(serde_json::from_str::<AuthFrame>(short).is_err());
    }
}
