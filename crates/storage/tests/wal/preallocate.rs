//! A preallocating log keeps its last segment zero-filled ahead of its records: recovery
//! reads the zeros as the clean end and appends go on over them, segments are cut back to
//! their records before the next one starts, and zeros never hide a record.

use std::fs;

use crate::{
    append_synced, corrupt, encoded_len, fast, open, opts, payloads, record_offsets, segment_path,
    segments,
};

fn records_len(first: u64, last: u64) -> u64 {
    (first..=last).map(encoded_len).sum()
}

#[test]
fn the_last_segment_is_zero_filled_ahead_and_appends_go_on_over_the_zeros() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), opts(64 << 20));
    append_synced(&mut wal, 1..=50);
    let records = records_len(1, 50);
    let zeros = wal.stats().bytes_written - records;
    assert!(zeros >= 512 << 10, "only {zeros} bytes written ahead");
    drop(wal);

    let file = segment_path(tmp.path(), 1);
    let bytes = fs::read(&file).unwrap();
    assert_eq!(bytes.len() as u64, records + zeros);
    assert!(bytes[records as usize..].iter().all(|&b| b == 0));

    let (mut wal, recovered) = open(tmp.path(), opts(64 << 20));
    assert_eq!(recovered.records, payloads(1..=50));
    assert_eq!(
        recovered.repaired, None,
        "zeros after the records are no damage"
    );
    append_synced(&mut wal, 51..=60);
    drop(wal);
    assert_eq!(
        fs::metadata(&file).unwrap().len(),
        bytes.len() as u64,
        "the appends overwrote zeros instead of growing the file"
    );
    let (_, recovered) = open(tmp.path(), opts(64 << 20));
    assert_eq!(recovered.records, payloads(1..=60));
}

#[test]
fn without_preallocation_a_segment_ends_at_its_records() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), crate::unpadded(64 << 20));
    append_synced(&mut wal, 1..=50);
    drop(wal);
    let len = fs::metadata(segment_path(tmp.path(), 1)).unwrap().len();
    assert_eq!(len, records_len(1, 50));
}

#[test]
fn a_segment_is_cut_back_to_its_records_before_the_next_one_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), fast(300));
    append_synced(&mut wal, 1..=100);
    drop(wal);
    let files = segments(tmp.path());
    assert!(files.len() > 5);
    for pair in files.windows(2) {
        let (base, next) = (crate::base_of(&pair[0]), crate::base_of(&pair[1]));
        let len = fs::metadata(&pair[0]).unwrap().len();
        assert_eq!(len, records_len(base, next - 1), "{}", pair[0].display());
    }
    let last = files.last().unwrap();
    assert!(fs::metadata(last).unwrap().len() > records_len(crate::base_of(last), 100));
}

#[test]
fn zeros_where_an_earlier_segments_records_were_are_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), fast(300));
    append_synced(&mut wal, 1..=100);
    drop(wal);
    let files = segments(tmp.path());
    let middle = &files[files.len() / 2];
    let base = crate::base_of(middle);
    let mut bytes = fs::read(middle).unwrap();
    // Its last two records turned to zeros: the next segment's base no longer follows.
    let count = record_offsets(base, 1000)
        .iter()
        .take_while(|&&at| at < bytes.len() as u64)
        .count() as u64;
    let from = record_offsets(base, count)[count as usize - 2] as usize;
    bytes[from..].fill(0);
    fs::write(middle, &bytes).unwrap();
    let (_, _, reason, _) = corrupt(tmp.path());
    assert!(reason.contains("gap"), "{reason}");
}

#[test]
fn a_record_after_zeros_in_the_last_segment_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), fast(1 << 20));
    append_synced(&mut wal, 1..=10);
    drop(wal);
    let file = segment_path(tmp.path(), 1);
    let mut bytes = fs::read(&file).unwrap();
    let offsets = record_offsets(1, 10);
    bytes[offsets[4] as usize..offsets[5] as usize].fill(0);
    fs::write(&file, &bytes).unwrap();
    let (named, offset, reason, _) = corrupt(tmp.path());
    assert_eq!((named, offset), (file, offsets[4]));
    assert!(reason.contains("a valid record follows"), "{reason}");
}
