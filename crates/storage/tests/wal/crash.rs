//! A crash can stop a write anywhere: every cut of the last segment, and every kind of
//! garbage after its last good record, recovers exactly the complete records before it.

use std::fs;
use std::path::{Path, PathBuf};

use ekmat_storage::{TornTail, WalOptions};

use crate::{
    append_synced, encode_record, encoded_len, fast, open, opts, payload, payloads, record_offsets,
    segments,
};

const RECORDS: u64 = 44;
const SEGMENT: u64 = 200;

/// A log of `RECORDS` records over several segments, closed.
struct Log {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    files: Vec<PathBuf>,
    last: PathBuf,
    last_bytes: Vec<u8>,
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
        Log {
            last_bytes: fs::read(&last).unwrap(),
            _tmp: tmp,
            dir,
            files,
            last,
            last_base,
        }
    }

    /// Puts the last segment back as `bytes` and removes segments created since.
    fn reset_last(&self, bytes: &[u8]) {
        fs::write(&self.last, bytes).unwrap();
        for file in segments(&self.dir) {
            if !self.files.contains(&file) {
                fs::remove_file(file).unwrap();
            }
        }
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

fn base_of(path: &Path) -> u64 {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

#[test]
fn every_cut_of_the_last_segment_recovers_the_complete_records() {
    let log = Log::build();
    let boundaries = log.boundaries();
    for cut in 0..=log.last_bytes.len() as u64 {
        log.reset_last(&log.last_bytes[..cut as usize]);
        let whole = boundaries.iter().filter(|&&b| b <= cut).count() as u64 - 1;
        let good = boundaries[whole as usize];
        let repaired = (cut != good).then(|| TornTail {
            file: log.last.clone(),
            offset: good,
            discarded_bytes: cut - good,
        });
        log.check_recovers(log.last_base - 1 + whole, repaired, fast(SEGMENT));
    }
}

#[test]
fn a_torn_tail_is_repaired_with_real_fsyncs() {
    let log = Log::build();
    let boundaries = log.boundaries();
    let last_start = boundaries[boundaries.len() - 2];
    let cut = last_start + encoded_len(RECORDS) / 2;
    log.reset_last(&log.last_bytes[..cut as usize]);
    let torn = TornTail {
        file: log.last.clone(),
        offset: last_start,
        discarded_bytes: cut - last_start,
    };
    log.check_recovers(RECORDS - 1, Some(torn), opts(SEGMENT));
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
    for tail in garbage {
        let mut bytes = log.last_bytes.clone();
        bytes.extend_from_slice(&tail);
        log.reset_last(&bytes);
        let torn = TornTail {
            file: log.last.clone(),
            offset: log.last_bytes.len() as u64,
            discarded_bytes: tail.len() as u64,
        };
        log.check_recovers(RECORDS, Some(torn), fast(SEGMENT));
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
