//! A rogue host: it reaches every port of the cluster and, throughout a
//! run, tries what an attacker on the network would — cluster frames on the
//! routers' client ports; following a primary as one of its backups and
//! acknowledging everything at once (so that the primary would count a copy
//! no backup has); heartbeating the replica manager as the primary with a
//! new incarnation (so that it would think the primary lost its state).
//!
//! With a key of its own ([`RogueKey::Own`]) every handshake fails and the
//! run must be as clean as without the rogue. With the cluster's own key
//! ([`RogueKey::Stolen`]: a leaked key, the threat model's worst case) the
//! same attacks get through, which shows they would do damage.

use std::time::Duration;

use bytes::BytesMut;
use peerlink_core::cluster_auth::{ClusterKey, Connector};
use peerlink_core::ids::{Epoch, Lsn, ReplicaId};
use peerlink_core::wire::cluster::{FollowerFrame, PrimaryFrame, RmRequest};
use peerlink_core::wire::{decode_as, encode_frame, LineDecoder, DEFAULT_MAX_FRAME_LEN};
use peerlink_runtime::cluster_link::{self, Authenticated};
use peerlink_runtime::net::Network;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::{cluster_auth, CLUSTER_PORT, RM_PORT, ROUTER_PORT};
use crate::faults::{RM, ROUTERS};
use crate::net::TurmoilNetwork;

/// The rogue host's name.
pub const ROGUE: &str = "rogue";

/// Which key the rogue holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RogueKey {
    /// One of its own: it is not a member.
    Own,
    /// The cluster's: it stole a member's key.
    Stolen,
}

/// How often the rogue attacks again.
const PACE: Duration = Duration::from_millis(150);

/// How long one forged stream or request is kept up.
const STAY: Duration = Duration::from_secs(2);

/// Runs the rogue for ever; `cluster` is the cluster's key, used only for
/// [`RogueKey::Stolen`].
pub(crate) async fn run(which: RogueKey, cluster: ClusterKey, seed: u64) -> turmoil::Result {
    let key = match which {
        RogueKey::Stolen => cluster,
        RogueKey::Own => ClusterKey::new(ChaCha8Rng::seed_from_u64(seed).random::<[u8; 32]>().to_vec())?,
    };
    let mut auth = cluster_auth(key, seed.wrapping_add(1));
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(2));
    loop {
        for (n, router) in ROUTERS.iter().enumerate() {
            tokio::task::spawn_local(cluster_frames_on_client_port(router));
            let backup = ReplicaId::new(ROUTERS[(n + 1 + rng.random_range(0..2)) % ROUTERS.len()])?;
            let connector = auth.connector(Some(backup.clone()));
            tokio::task::spawn_local(forge_acknowledgements(router, backup, connector));
        }
        let victim = ReplicaId::new(ROUTERS[rng.random_range(0..ROUTERS.len())])?;
        let connector = auth.connector(Some(victim.clone()));
        tokio::task::spawn_local(claim_restart(victim, rng.random(), connector));
        tokio::time::sleep(PACE).await;
    }
}

/// Writes `frame` as one line.
async fn write<S: tokio::io::AsyncWrite + Unpin, F: serde::Serialize>(
    stream: &mut S,
    frame: &F,
) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    encode_frame(frame, &mut buf);
    stream.write_all(&buf).await
}

/// A follow and a flood of acknowledgements on a router's client port.
async fn cluster_frames_on_client_port(router: &'static str) {
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(STAY, TurmoilNetwork.connect(&format!("{router}:{ROUTER_PORT}"))).await
    else {
        return;
    };
    let id = ReplicaId::new("r2").expect("a valid name");
    let follow = FollowerFrame::Follow {
        id,
        epoch: Epoch(0),
        lsn: Lsn(0),
        stream_epoch: Epoch(0),
    };
    let applied = FollowerFrame::Applied {
        epoch: Epoch(u64::MAX),
        lsn: Lsn(u64::MAX),
        rm_live: true,
    };
    let _ = write(&mut stream, &follow).await;
    let _ = write(&mut stream, &applied).await;
    let mut sink = [0; 4096];
    let _ = tokio::time::timeout(STAY, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Follows `router` as `backup`, acknowledging every frame with a position
/// far ahead of anything the primary has.
async fn forge_acknowledgements(router: &'static str, backup: ReplicaId, connector: Connector) {
    let attempt = async {
        let stream = TurmoilNetwork
            .connect(&format!("{router}:{CLUSTER_PORT}"))
            .await
            .ok()?;
        let Authenticated {
            mut stream,
            mut buffered,
        } = cluster_link::connect(stream, connector).await.ok()?;
        let follow = FollowerFrame::Follow {
            id: backup,
            epoch: Epoch(0),
            lsn: Lsn(0),
            stream_epoch: Epoch(0),
        };
        write(&mut stream, &follow).await.ok()?;
        let mut decoder = LineDecoder::new(DEFAULT_MAX_FRAME_LEN * 1024);
        loop {
            while let Some(line) = decoder.decode(&mut buffered) {
                let epoch = match decode_as::<PrimaryFrame>(&line.ok()?).ok()? {
                    PrimaryFrame::CheckpointStart { epoch, .. }
                    | PrimaryFrame::CheckpointPart { epoch, .. }
                    | PrimaryFrame::CheckpointEnd { epoch, .. }
                    | PrimaryFrame::Entry { epoch, .. }
                    | PrimaryFrame::Alive { epoch, .. } => epoch,
                    PrimaryFrame::NotPrimary { .. } => return None::<()>,
                };
                let applied = FollowerFrame::Applied {
                    epoch,
                    lsn: Lsn(u64::MAX),
                    rm_live: true,
                };
                write(&mut stream, &applied).await.ok()?;
            }
            if stream.read_buf(&mut buffered).await.ok()? == 0 {
                return None;
            }
        }
    };
    let _ = tokio::time::timeout(STAY, attempt).await;
}

/// Heartbeats the replica manager as `victim` with a new incarnation, as if
/// that router had restarted empty, and asks to lead.
async fn claim_restart(victim: ReplicaId, incarnation: u64, connector: Connector) {
    let attempt = async {
        let stream = TurmoilNetwork.connect(&format!("{RM}:{RM_PORT}")).await.ok()?;
        let Authenticated { mut stream, .. } = cluster_link::connect(stream, connector).await.ok()?;
        let beat = RmRequest::Heartbeat {
            id: victim,
            addr: format!("{ROGUE}:{ROUTER_PORT}"),
            cluster_addr: format!("{ROGUE}:{CLUSTER_PORT}"),
            incarnation,
            state_id: 0,
            epoch: Epoch(0),
            lsn: Lsn(u64::MAX),
            may_lead: true,
            beat: 1,
        };
        write(&mut stream, &beat).await.ok()?;
        let mut sink = [0; 4096];
        while stream.read(&mut sink).await.ok()? > 0 {}
        Some(())
    };
    let _ = tokio::time::timeout(STAY, attempt).await;
}
