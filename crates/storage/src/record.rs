//! One record on disk: a fixed header, then the payload.
//!
//! ```text
//! offset  size  field
//!      0     4  crc32c (little-endian) over bytes 4..17 of the header and the payload
//!      4     4  payload length in bytes (little-endian)
//!      8     1  kind: 1 = data, 2 = checkpoint, 3 = end mark
//!      9     8  sequence number (little-endian)
//!     17     n  payload
//! ```
//!
//! The checksum covers the length, kind and sequence number as well as the payload, so a
//! flipped bit anywhere in a record is caught, not just in its payload.

use std::ops::RangeInclusive;

/// Bytes of header before each payload.
pub const HEADER_LEN: usize = 17;

/// The largest payload a record can hold: its length is stored in 32 bits.
pub const MAX_PAYLOAD: usize = u32::MAX as usize;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One appended record.
    Data = 1,
    /// The caller's serialized state covering every data record up to its sequence number.
    Checkpoint = 2,
    /// No payload: the segment's records end here, and its sequence number is the next
    /// record's. Written after the records in a reused segment, whose earlier life
    /// follows (see [`crate::WalOptions::spare_segments`]); overwritten by the next write.
    End = 3,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Data),
            2 => Some(Kind::Checkpoint),
            3 => Some(Kind::End),
            _ => None,
        }
    }
}

/// Appends the encoding of one record to `out`. The caller has checked `payload.len() <=
/// MAX_PAYLOAD`.
pub fn encode(kind: Kind, seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("caller checks MAX_PAYLOAD");
    let mut header = [0u8; HEADER_LEN];
    header[4..8].copy_from_slice(&len.to_le_bytes());
    header[8] = kind as u8;
    header[9..17].copy_from_slice(&seq.to_le_bytes());
    let crc = checksum(&header[4..], payload);
    header[0..4].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
}

/// The header of a record whose payload is written piece by piece (a checkpoint streamed
/// to its file): [`Streamed::update`] with each piece, then [`Streamed::header`].
pub struct Streamed {
    header: [u8; HEADER_LEN],
    crc: u32,
}

impl Streamed {
    /// The caller has checked `len <= MAX_PAYLOAD`.
    pub fn new(kind: Kind, seq: u64, len: usize) -> Streamed {
        let len = u32::try_from(len).expect("caller checks MAX_PAYLOAD");
        let mut header = [0u8; HEADER_LEN];
        header[4..8].copy_from_slice(&len.to_le_bytes());
        header[8] = kind as u8;
        header[9..17].copy_from_slice(&seq.to_le_bytes());
        let crc = crc32c::crc32c(&header[4..]);
        Streamed { header, crc }
    }

    pub fn update(&mut self, piece: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, piece);
    }

    /// The header, checksum filled in, once every piece of the payload has gone through
    /// [`Streamed::update`].
    pub fn header(mut self) -> [u8; HEADER_LEN] {
        self.header[0..4].copy_from_slice(&self.crc.to_le_bytes());
        self.header
    }
}

fn checksum(header_tail: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header_tail), payload)
}

/// A record that decoded and passed its checksum.
#[derive(Debug)]
pub struct Record<'a> {
    pub kind: Kind,
    pub seq: u64,
    pub payload: &'a [u8],
}

impl Record<'_> {
    /// Bytes the record occupies on disk.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// The result of reading one record from the front of a byte slice.
#[derive(Debug)]
pub enum Decoded<'a> {
    Record(Record<'a>),
    /// The bytes stop before the record does: what a crash in the middle of a write leaves.
    Incomplete(String),
    /// A complete record that fails its checksum or names no known kind.
    Invalid(String),
}

/// The header fields, unchecked.
struct Header {
    crc: u32,
    len: usize,
    kind: u8,
    seq: u64,
}

fn read_header(bytes: &[u8]) -> Option<Header> {
    let header = bytes.get(..HEADER_LEN)?;
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    Some(Header {
        crc: u32_at(0),
        len: u32_at(4) as usize,
        kind: header[8],
        seq: u64::from_le_bytes(header[9..17].try_into().expect("8 bytes")),
    })
}

/// Decodes the record at the front of `bytes`.
pub fn decode(bytes: &[u8]) -> Decoded<'_> {
    let Some(header) = read_header(bytes) else {
        return Decoded::Incomplete(format!(
            "short record header ({} of {HEADER_LEN} bytes)",
            bytes.len()
        ));
    };
    let available = bytes.len() - HEADER_LEN;
    if header.len > available {
        return Decoded::Incomplete(format!(
            "record length {} runs past the end of the file ({available} bytes left)",
            header.len
        ));
    }
    let payload = &bytes[HEADER_LEN..HEADER_LEN + header.len];
    if checksum(&bytes[4..HEADER_LEN], payload) != header.crc {
        return Decoded::Invalid(format!(
            "checksum mismatch in a record of {} bytes",
            header.len
        ));
    }
    let Some(kind) = Kind::from_byte(header.kind) else {
        return Decoded::Invalid(format!("unknown record kind {}", header.kind));
    };
    Decoded::Record(Record {
        kind,
        seq: header.seq,
        payload,
    })
}

/// Whether a valid data record with a sequence number in `seqs` starts at the front of
/// `bytes`. Used to tell a torn tail (nothing valid after the damage) from damage in the
/// middle; the cheap header tests run first so scanning garbage rarely computes a checksum.
pub fn is_plausible_data_record(bytes: &[u8], seqs: &RangeInclusive<u64>) -> bool {
    is_valid_record_where(bytes, |kind, seq| {
        kind == Kind::Data as u8 && seqs.contains(&seq)
    })
}

fn is_valid_record_where(bytes: &[u8], header_ok: impl Fn(u8, u64) -> bool) -> bool {
    let Some(header) = read_header(bytes) else {
        return false;
    };
    header_ok(header.kind, header.seq)
        && header.len <= bytes.len() - HEADER_LEN
        && matches!(decode(bytes), Decoded::Record(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(kind: Kind, seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(kind, seq, payload, &mut out);
        out
    }

    #[test]
    fn round_trips() {
        let bytes = encoded(Kind::Checkpoint, 42, b"state");
        let Decoded::Record(record) = decode(&bytes) else {
            panic!("should decode");
        };
        assert_eq!(
            (record.kind, record.seq, record.payload),
            (Kind::Checkpoint, 42, &b"state"[..])
        );
        assert_eq!(record.encoded_len(), bytes.len());
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let bytes = encoded(Kind::Data, 7, b"hello");
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(decode(&damaged), Decoded::Record(_)),
                "bit {bit} flipped went unnoticed"
            );
        }
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let bytes = encoded(Kind::Data, 1, b"payload");
        for cut in 0..bytes.len() {
            assert!(matches!(decode(&bytes[..cut]), Decoded::Incomplete(_)));
        }
    }

    #[test]
    fn zeroes_are_not_a_record() {
        assert!(matches!(decode(&[0; 64]), Decoded::Invalid(_)));
        assert!(!is_plausible_data_record(&[0; 64], &(0..=u64::MAX)));
    }
}
