//! A crash can stop a write anywhere: every cut of the last segment, and every kind of
//! garbage after its last good record, recovers exactly the complete records before it —
//! whether the segment ends at its records or in the zeros a preallocating log writes
//! ahead of them (where a torn write lands).

use std::fs;
use std::path::PathBuf;

use ekmat_storage::{TornTail, WalOptions};

use crate::{
    append_synced, base_of, encode_record, encoded_len, fast, open, opts, payload, payloads,
    record_offsets, records_only, segments,
};

const RECORDS: u64 = 44;
const SEGMENT: u64 = 200;

/// A log of `RECORDS` records over several segments, closed.
struct Log {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    files: Vec<PathBuf>,
    last: PathBuf,
    /// The last segment's records, without the zeros written ahead of them.
    last_bytes: Vec<u8>,
    /// The last segment's length with those zeros.
    padded_len: usize,
    /// Sequence number of the last segment's first record.
    last_base: u64,
}

impl Log {
    fn build() -> Log {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let (mut wal, _) = open(&dir, fast(SEGMENT));
        append_synced(&mut wal, 1..=RECORDS);
        drop(wal);
        let files = segments(&dir);
        assert!(files.len() >= 4, "want several segments");
        let last = files.last().unwrap().clone();
        let last_base = base_of(&last);
        assert!(
            RECORDS - last_base >= 3,
            "want several records in the last segment"
        );
        let padded_len = fs::metadata(&last).unwrap().len() as usize;
        let last_bytes = records_only(&last);
        assert!(padded_len > last_bytes.len(), "the log writes zeros ahead");
        Log {
            last_bytes,
            padded_len,
            _tmp: tmp,
            dir,
            files,
            last,
            last_base,
        }
    }

    /// Puts the last segment back as `bytes`, followed by zeros up to its preallocated
    /// length if `padded`, and removes segments created since. Returns the file's bytes.
    fn reset_last(&self, bytes: &[u8], padded: bool) -> Vec<u8> {
        let mut file = bytes.to_vec();
        if padded && file.len() < self.padded_len {
            file.resize(self.padded_len, 0);
        }
        fs::write(&self.last, &file).unwrap();
        for file in segments(&self.dir) {
            if !self.files.contains(&file) {
                fs::remove_file(file).unwrap();
            }
        }
        file
    }

    /// The repair recovery must report for a last segment of `file` whose records are good
    /// up to `good`: none if only zeros follow, else everything after `good` cut off.
    fn repair(&self, file: &[u8], good: u64) -> Option<TornTail> {
        let rest = &file[good as usize..];
        (!rest.iter().all(|&b| b == 0)).then(|| TornTail {
            file: self.last.clone(),
            offset: good,
            discarded_bytes: rest.len() as u64,
        })
    }

    /// Offsets in the last segment where a record starts, and its end.
    fn boundaries(&self) -> Vec<u64> {
        let count = RECORDS - self.last_base + 1;
        let mut offsets = record_offsets(self.last_base, count);
        offsets.push(self.last_bytes.len() as u64);
        offsets
    }

    /// Opens the log, checks it holds records `1..=complete` and the expected repair, then
    /// that appending continues from there and survives another reopen.
    fn check_recovers(&self, complete: u64, repaired: Option<TornTail>, opts: WalOptions) {
        let (mut wal, recovered) = open(&self.dir, opts);
        assert_eq!(recovered.records, payloads(1..=complete));
        assert_eq!(recovered.last_seq, complete);
        assert_eq!(recovered.repaired, repaired);
        if let Some(torn) = &repaired {
            assert_eq!(fs::metadata(&torn.file).unwrap().len(), torn.offset);
        }
        assert_eq!(wal.append(&payload(complete + 1)).unwrap(), complete + 1);
        wal.sync().unwrap();
        drop(wal);
        let (_, again) = open(&self.dir, opts);
        assert_eq!(again.records, payloads(1..=complete + 1));
        assert_eq!(again.repaired, None);
    }
}

#[test]
fn every_cut_of_the_last_segment_recovers_the_complete_records() {
    let log = Log::build();
    let boundaries = log.boundaries();
    for padded in [false, true] {
        for cut in 0..=log.last_bytes.len() as u64 {
            let file = log.reset_last(&log.last_bytes[..cut as usize], padded);
            // Whole records are those whose bytes are all there; with zeros after the
            // cut, a record whose missing bytes were zeros is whole too.
            let intact = |&end: &u64| {
                let end = end as usize;
                file.len() >= end && file[..end] == log.last_bytes[..end]
            };
            let whole = boundaries.iter().take_while(|end| intact(end)).count() as u64 - 1;
            let good = boundaries[whole as usize];
            let repaired = log.repair(&file, good);
            log.check_recovers(log.last_base - 1 + whole, repaired, fast(SEGMENT));
        }
    }
}

#[test]
fn a_torn_tail_is_repaired_with_real_fsyncs() {
    let log = Log::build();
    let boundaries = log.boundaries();
    let last_start = boundaries[boundaries.len() - 2];
    let cut = last_start + encoded_len(RECORDS) / 2;
    for padded in [false, true] {
        let file = log.reset_last(&log.last_bytes[..cut as usize], padded);
        let torn = log.repair(&file, last_start);
        assert!(torn.is_some());
        log.check_recovers(RECORDS - 1, torn, opts(SEGMENT));
    }
}

#[test]
fn garbage_after_the_last_good_record_is_cut_off() {
    let log = Log::build();
    let next = RECORDS + 1;
    let valid_next = encode_record(1, next, &payload(next));
    let mut bad_checksum = valid_next.clone();
    *bad_checksum.last_mut().unwrap() ^= 1;
    let mut garbage: Vec<Vec<u8>> = vec![
        vec![0; 1],
        vec![0; 17],
        vec![0; 4096],
        vec![0xff; 9],
        vec![0xff; 300],
        bad_checksum,
    ];
    // Every prefix of the next record: a crash part-way through writing it.
    garbage.extend((1..valid_next.len()).map(|cut| valid_next[..cut].to_vec()));
    // Pseudo-random bytes of many lengths.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for len in (1..400).step_by(13) {
        garbage.push(
            (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect(),
        );
    }
    for (tail, padded) in garbage
        .iter()
        .flat_map(|tail| [(tail, false), (tail, true)])
    {
        let mut bytes = log.last_bytes.clone();
        bytes.extend_from_slice(tail);
        let file = log.reset_last(&bytes, padded);
        // Zeros alone are what a preallocating log leaves after its records: no repair.
        let torn = log.repair(&file, log.last_bytes.len() as u64);
        assert_eq!(torn.is_none(), tail.iter().all(|&b| b == 0));
        log.check_recovers(RECORDS, torn, fast(SEGMENT));
    }
}

#[test]
fn a_crash_right_after_creating_a_segment_leaves_an_empty_one() {
    let log = Log::build();
    let next = RECORDS + 1;
    fs::write(crate::segment_path(&log.dir, next), b"").unwrap();
    let (mut wal, recovered) = open(&log.dir, fast(SEGMENT));
    assert_eq!(recovered.records, payloads(1..=RECORDS));
    assert_eq!(recovered.repaired, None);
    append_synced(&mut wal, next..=next + 2);
    drop(wal);
    assert_eq!(
        open(&log.dir, fast(SEGMENT)).1.records,
        payloads(1..=next + 2)
    );
}
