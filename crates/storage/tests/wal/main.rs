//! Integration tests of the write-ahead log, one module per idea. One test binary keeps
//! linking cheap on a 2-core machine.

mod bench;
mod checkpoint;
mod corruption;
mod crash;
mod detached;
mod full_disk;
mod io_errors;
mod model;
mod preallocate;
mod round_trip;
mod spares;

use std::fs;
use std::path::{Path, PathBuf};

use ekmat_storage::{HEADER_LEN, Recovered, Wal, WalError, WalOptions};

/// Options for tests: real fsyncs, small segments.
pub fn opts(segment_bytes: u64) -> WalOptions {
    WalOptions {
        segment_bytes,
        sync: true,
        ..WalOptions::default()
    }
}

/// Options for loops that reopen hundreds of times: no fsync (nothing here crashes the
/// kernel, so the page cache is as good as the disk).
pub fn fast(segment_bytes: u64) -> WalOptions {
    WalOptions {
        segment_bytes,
        sync: false,
        ..WalOptions::default()
    }
}

/// [`opts`] without preallocation: segments end at their records.
pub fn unpadded(segment_bytes: u64) -> WalOptions {
    WalOptions {
        preallocate: false,
        ..opts(segment_bytes)
    }
}

/// A recognisable payload of varying length (0 to 40 bytes).
pub fn payload(i: u64) -> Vec<u8> {
    let len = (i * 7 % 41) as usize;
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

pub fn payloads(range: std::ops::RangeInclusive<u64>) -> Vec<Vec<u8>> {
    range.map(payload).collect()
}

/// On-disk size of the record holding `payload(i)`.
pub fn encoded_len(i: u64) -> u64 {
    (HEADER_LEN + payload(i).len()) as u64
}

pub fn open(dir: &Path, opts: WalOptions) -> (Wal, Recovered) {
    Wal::open(dir, opts).expect("open")
}

/// Appends `payload(i)` for every `i` in the range, checks the sequence numbers, syncs.
pub fn append_synced(wal: &mut Wal, range: std::ops::RangeInclusive<u64>) {
    let last = *range.end();
    for i in range {
        assert_eq!(wal.append(&payload(i)).expect("append"), i);
    }
    assert_eq!(wal.sync().expect("sync"), last);
}

/// Segment files in order.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    files.sort();
    files
}

pub fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.wal"))
}

/// The `Corrupt` error from opening `dir`, or a panic saying what happened instead.
pub fn corrupt(dir: &Path) -> (PathBuf, u64, String, String) {
    match Wal::open(dir, fast(1 << 20)) {
        Err(err @ WalError::Corrupt { .. }) => {
            let display = err.to_string();
            let WalError::Corrupt {
                file,
                offset,
                reason,
            } = err
            else {
                unreachable!()
            };
            (file, offset, reason, display)
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok((_, recovered)) => panic!("expected Corrupt, recovered {recovered:?}"),
    }
}

pub fn flip_byte(path: &Path, at: u64) {
    let mut bytes = fs::read(path).expect("read");
    bytes[at as usize] ^= 0x5a;
    fs::write(path, bytes).expect("write");
}

/// A record encoded by hand from the documented layout (CRC32C, length, kind, sequence
/// number, payload): the tests that use it also pin the on-disk format.
pub fn encode_record(kind: u8, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut tail = Vec::new();
    tail.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    tail.push(kind);
    tail.extend_from_slice(&seq.to_le_bytes());
    tail.extend_from_slice(payload);
    let mut out = crc32c::crc32c(&tail).to_le_bytes().to_vec();
    out.extend_from_slice(&tail);
    out
}

/// The sequence number a segment file is named after.
pub fn base_of(path: &Path) -> u64 {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

/// Cuts a segment file back to its records: the zeros a preallocating log writes ahead
/// of them go (see `WalOptions::preallocate`). Returns the records' bytes.
pub fn records_only(path: &Path) -> Vec<u8> {
    let mut bytes = fs::read(path).expect("read");
    let mut at = 0;
    while at + HEADER_LEN <= bytes.len() && matches!(bytes[at + 8], 1 | 2) {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        at += HEADER_LEN + len;
    }
    assert!(bytes[at.min(bytes.len())..].iter().all(|&b| b == 0));
    bytes.truncate(at);
    fs::write(path, &bytes).expect("write");
    bytes
}

/// Start offsets of the records in a segment whose first record is `payload(first)`.
pub fn record_offsets(first: u64, count: u64) -> Vec<u64> {
    (first..first + count)
        .scan(0, |at, seq| {
            let start = *at;
            *at += encoded_len(seq);
            Some(start)
        })
        .collect()
}
