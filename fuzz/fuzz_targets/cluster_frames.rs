//! Every cluster frame decoder (replica manager requests and replies,
//! follower and primary frames, the membership handshake): any bytes give
//! a frame or an error, never a panic, and a frame round-trips.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use peerlink_core::cluster_auth::AuthFrame;
use peerlink_core::wire::cluster::{FollowerFrame, PrimaryFrame, RmReply, RmRequest};
use peerlink_core::wire::{decode_as, encode_frame};

fn round_trip<T>(line: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(frame) = decode_as::<T>(line) {
        let mut out = BytesMut::new();
        encode_frame(&frame, &mut out);
        let again: T = decode_as(&out[..out.len() - 1]).expect("an encoded frame decodes");
        assert_eq!(again, frame);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<RmRequest>(data);
    round_trip::<RmReply>(data);
    round_trip::<FollowerFrame>(data);
    round_trip::<PrimaryFrame>(data);
    round_trip::<AuthFrame>(data);
});
