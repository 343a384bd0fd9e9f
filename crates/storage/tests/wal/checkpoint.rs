//! Checkpoints replace everything before them, and a crash at any step of one recovers
//! either the old log or the checkpoint and what follows.

use std::fs;
use std::path::{Path, PathBuf};

use crate::{append_synced, fast, open, opts, payload, payloads, segment_path, segments};

const SEGMENT: u64 = 200;

#[test]
fn a_checkpoint_replaces_the_records_and_segments_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), opts(SEGMENT));
    append_synced(&mut wal, 1..=50);
    assert!(segments(tmp.path()).len() > 3);
    wal.checkpoint(b"state through 50").unwrap();
    assert_eq!(segments(tmp.path()), vec![segment_path(tmp.path(), 51)]);
    assert_eq!(wal.stats().segments, 1);
    assert_eq!(wal.durable_seq(), 50);
    append_synced(&mut wal, 51..=53);
    drop(wal);

    let (mut wal, recovered) = open(tmp.path(), opts(SEGMENT));
    assert_eq!(
        recovered.checkpoint.as_deref(),
        Some(&b"state through 50"[..])
    );
    assert_eq!(recovered.records, payloads(51..=53));
    assert_eq!(recovered.first_seq_after_checkpoint, 51);
    assert_eq!(recovered.last_seq, 53);
    assert_eq!(wal.append(b"next").unwrap(), 54);
}

#[test]
fn a_checkpoint_covers_buffered_records_without_a_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), opts(SEGMENT));
    for i in 1..=5 {
        wal.append(&payload(i)).unwrap();
    }
    wal.checkpoint(b"five").unwrap();
    drop(wal);
    let (_, recovered) = open(tmp.path(), opts(SEGMENT));
    assert_eq!(recovered.checkpoint.as_deref(), Some(&b"five"[..]));
    assert!(recovered.records.is_empty());
    assert_eq!(
        (recovered.first_seq_after_checkpoint, recovered.last_seq),
        (6, 5)
    );
}

#[test]
fn a_checkpoint_of_an_empty_log_and_checkpoints_in_a_row() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), opts(SEGMENT));
    wal.checkpoint(b"empty").unwrap();
    // No record in between: the second checkpoint's segment has the same name and
    // replaces the first one's.
    wal.checkpoint(b"still empty").unwrap();
    assert_eq!(segments(tmp.path()), vec![segment_path(tmp.path(), 1)]);
    drop(wal);
    let (mut wal, recovered) = open(tmp.path(), opts(SEGMENT));
    assert_eq!(recovered.checkpoint.as_deref(), Some(&b"still empty"[..]));
    assert_eq!(
        (recovered.first_seq_after_checkpoint, recovered.last_seq),
        (1, 0)
    );
    assert_eq!(wal.append(b"first").unwrap(), 1);
}

#[test]
fn a_large_checkpoint_does_not_share_a_base_with_the_next_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), fast(SEGMENT));
    append_synced(&mut wal, 1..=10);
    wal.checkpoint(&[9u8; 1000]).unwrap();
    append_synced(&mut wal, 11..=40);
    wal.checkpoint(&[8u8; 1000]).unwrap();
    append_synced(&mut wal, 41..=45);
    drop(wal);
    let (_, recovered) = open(tmp.path(), fast(SEGMENT));
    assert_eq!(recovered.checkpoint, Some(vec![8u8; 1000]));
    assert_eq!(recovered.records, payloads(41..=45));
}

/// Copies of the segment files, to put back as a crash before their deletion would.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    segments(dir)
        .into_iter()
        .map(|path| {
            let bytes = fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

fn restore(files: &[(PathBuf, Vec<u8>)]) {
    for (path, bytes) in files {
        fs::write(path, bytes).unwrap();
    }
}

#[test]
fn a_crash_before_old_segments_are_deleted_recovers_the_checkpoint_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), opts(SEGMENT));
    append_synced(&mut wal, 1..=30);
    let old = snapshot(tmp.path());
    wal.checkpoint(b"through 30").unwrap();
    append_synced(&mut wal, 31..=33);
    drop(wal);
    restore(&old);
    assert!(segments(tmp.path()).len() > 2);

    let (mut wal, recovered) = open(tmp.path(), opts(SEGMENT));
    assert_eq!(recovered.checkpoint.as_deref(), Some(&b"through 30"[..]));
    assert_eq!(
        recovered.records,
        payloads(31..=33),
        "old records not replayed"
    );
    assert_eq!(recovered.first_seq_after_checkpoint, 31);
    // Recovery finished the checkpoint's deletions.
    assert_eq!(segments(tmp.path()), vec![segment_path(tmp.path(), 31)]);
    assert_eq!(wal.append(b"next").unwrap(), 34);
}

#[test]
fn a_crash_before_the_rename_recovers_the_old_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), opts(SEGMENT));
    append_synced(&mut wal, 1..=30);
    let old = snapshot(tmp.path());
    wal.checkpoint(b"through 30").unwrap();
    drop(wal);
    // Undo the rename (the checkpoint is back under its temporary name, complete or
    // torn) and the deletions.
    let new = segment_path(tmp.path(), 31);
    let checkpoint = fs::read(&new).unwrap();
    fs::remove_file(&new).unwrap();
    restore(&old);
    for cut in [checkpoint.len(), checkpoint.len() / 2, 0] {
        let tmp_file = tmp.path().join(format!("{:020}.wal.tmp", 31));
        fs::write(&tmp_file, &checkpoint[..cut]).unwrap();
        let (_, recovered) = open(tmp.path(), opts(SEGMENT));
        assert_eq!(recovered.checkpoint, None);
        assert_eq!(recovered.records, payloads(1..=30));
        assert!(!tmp_file.exists(), "the leftover is removed");
    }
}

#[test]
fn data_after_a_damaged_checkpoint_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), fast(1 << 20));
    append_synced(&mut wal, 1..=10);
    wal.checkpoint(b"through 10").unwrap();
    append_synced(&mut wal, 11..=12);
    drop(wal);
    let file = segment_path(tmp.path(), 11);
    crate::flip_byte(&file, 20);
    let (named, offset, _, _) = crate::corrupt(tmp.path());
    assert_eq!((named, offset), (file, 0));
}

#[test]
fn checkpoints_and_rollovers_interleave() {
    let tmp = tempfile::tempdir().unwrap();
    let mut next = 1;
    for round in 0..5u64 {
        let (mut wal, recovered) = open(tmp.path(), fast(SEGMENT));
        assert_eq!(recovered.last_seq, next - 1);
        if round > 0 {
            assert_eq!(recovered.checkpoint, Some(round.to_le_bytes().to_vec()));
            assert_eq!(
                recovered.records,
                payloads(recovered.first_seq_after_checkpoint..=next - 1)
            );
        }
        append_synced(&mut wal, next..=next + 19);
        wal.checkpoint(&(round + 1).to_le_bytes()).unwrap();
        append_synced(&mut wal, next + 20..=next + 29);
        next += 30;
    }
}
