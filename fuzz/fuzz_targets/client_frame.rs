//! The client frame decoder: any bytes give a frame or an error, never a
//! panic; a frame that decodes encodes back to a line that decodes to the
//! same frame; an error message stays short.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use peerlink_core::wire::{decode_client_frame, encode_frame, LineDecoder, MAX_ERROR_MESSAGE};

fuzz_target!(|data: &[u8]| {
    let mut decoder = LineDecoder::new(4096);
    let mut buf = BytesMut::from(data);
    buf.extend_from_slice(b"\n");
    while let Some(line) = decoder.decode(&mut buf) {
        let Ok(line) = line else { continue };
        match decode_client_frame(&line) {
            Ok(frame) => {
                let mut out = BytesMut::new();
                encode_frame(&frame, &mut out);
                let again = decode_client_frame(&out[..out.len() - 1]).expect("an encoded frame decodes");
                assert_eq!(again, frame);
            }
            Err(error) => assert!(error.message.chars().count() <= MAX_ERROR_MESSAGE + 1),
        }
    }
});
