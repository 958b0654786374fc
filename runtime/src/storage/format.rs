//! The bytes on disk: every file is a magic line followed by frames, each
//! `length (u32 LE) | crc32 (u32 LE) | payload`, where the checksum covers
//! the length and the payload. A reader stops at the first frame that is
//! cut short, has an impossible length, or fails its checksum: nothing
//! after a damaged frame is ever used.

/// The most bytes one frame's payload may have. Larger lengths are taken
/// for damage (a change is at most a few tens of MiB; a checkpoint part
/// about 256 KiB).
pub const MAX_PAYLOAD: usize = 256 << 20;

const HEADER: usize = 8;

/// Appends a frame carrying `payload` to `out`.
pub fn put_frame(out: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("payloads stay below MAX_PAYLOAD");
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len.to_le_bytes());
    crc.update(payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(payload);
}

/// Reads the frames of `bytes`, in order, up to the first damaged one.
#[derive(Debug)]
pub struct Frames<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Frames<'a> {
    /// Frames starting at `offset` of `bytes`.
    pub fn new(bytes: &'a [u8], offset: usize) -> Self {
        Self { bytes, offset }
    }

    /// Where the frames read so far end: every byte before it belongs to an
    /// intact frame.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Whether every byte was read as intact frames.
    pub fn at_end(&self) -> bool {
        self.offset == self.bytes.len()
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = &self.bytes[self.offset..];
        let header = rest.get(..HEADER)?;
        let len_bytes: [u8; 4] = header[..4].try_into().expect("4 bytes");
        let len = u32::from_le_bytes(len_bytes) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_PAYLOAD {
            return None;
        }
        let payload = rest.get(HEADER..HEADER + len)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&len_bytes);
        hasher.update(payload);
        if hasher.finalize() != crc {
            return None;
        }
        self.offset += HEADER + len;
        Some(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Vec<u8> {
        let mut bytes = Vec::new();
        for payload in [&b"one"[..], b"two", b"three"] {
            put_frame(&mut bytes, payload);
        }
        bytes
    }

    #[test]
    fn frames_round_trip() {
        let bytes = three();
        let mut frames = Frames::new(&bytes, 0);
        let read: Vec<&[u8]> = frames.by_ref().collect();
        assert_eq!(read, vec![&b"one"[..], b"two", b"three"]);
        assert!(frames.at_end());
    }

    #[test]
    fn a_cut_at_any_byte_keeps_exactly_the_whole_frames_before_it() {
        let bytes = three();
        let ends = [11, 22, 35];
        for cut in 0..bytes.len() {
            let mut frames = Frames::new(&bytes[..cut], 0);
            let n = frames.by_ref().count();
            assert_eq!(n, ends.iter().filter(|e| **e <= cut).count(), "cut at {cut}");
            assert_eq!(
                frames.offset(),
                ends.iter().copied().filter(|e| *e <= cut).max().unwrap_or(0)
            );
        }
    }

    #[test]
    fn any_flipped_bit_stops_the_reader_at_the_damaged_frame() {
        let bytes = three();
        for byte in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[byte] ^= 1 << bit;
                let read: Vec<&[u8]> = Frames::new(&damaged, 0).collect();
                let intact = [11, 22, 35].iter().filter(|end| **end <= byte).count();
                assert_eq!(read.len(), intact, "bit {bit} of byte {byte}");
            }
        }
    }

    #[test]
    fn zeros_and_absurd_lengths_are_not_frames() {
        assert_eq!(Frames::new(&[0; 64], 0).count(), 0);
        let mut bytes = ((MAX_PAYLOAD + 1) as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 12]);
        assert_eq!(Frames::new(&bytes, 0).count(), 0);
    }
}
