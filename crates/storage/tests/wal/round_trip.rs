//! Appends come back, in order, across reopens and segment rollovers.

use std::fs;

use ekmat_storage::{Recovered, Wal, WalOptions};

use crate::{append_synced, fast, open, opts, payload, payloads, segment_path, segments};

#[test]
fn a_missing_directory_is_created_and_opens_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b/wal");
    let (wal, recovered) = open(&dir, WalOptions::default());
    assert_eq!(
        recovered,
        Recovered {
            first_seq_after_checkpoint: 1,
            ..Recovered::default()
        }
    );
    assert_eq!((wal.last_seq(), wal.durable_seq()), (0, 0));
    assert!(dir.is_dir());
    assert_eq!(segments(&dir), vec![segment_path(&dir, 1)]);
}

#[test]
fn records_round_trip_across_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), opts(1 << 20));
    append_synced(&mut wal, 1..=100);
    drop(wal);
    let (wal, recovered) = open(tmp.path(), opts(1 << 20));
    assert_eq!(recovered.records, payloads(1..=100));
    assert!(
        recovered.records.iter().any(Vec::is_empty),
        "empty payloads too"
    );
    assert_eq!(recovered.checkpoint, None);
    assert_eq!(recovered.first_seq_after_checkpoint, 1);
    assert_eq!(recovered.last_seq, 100);
    assert_eq!(recovered.repaired, None);
    assert_eq!((wal.last_seq(), wal.durable_seq()), (100, 100));
}

#[test]
fn sequence_numbers_continue_after_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    for round in 0..3u64 {
        let (mut wal, recovered) = open(tmp.path(), opts(1 << 20));
        assert_eq!(recovered.last_seq, round * 3);
        assert_eq!(recovered.records, payloads(1..=round * 3));
        append_synced(&mut wal, round * 3 + 1..=round * 3 + 3);
    }
}

#[test]
fn segments_roll_over_and_recover_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), opts(300));
    append_synced(&mut wal, 1..=400);
    let files = segments(tmp.path());
    assert!(files.len() > 20, "only {} segments", files.len());
    assert_eq!(wal.stats().segments, files.len() as u64);
    // Every segment but the one being appended to was cut back to its records.
    for file in &files[..files.len() - 1] {
        assert!(fs::metadata(file).unwrap().len() <= 300);
    }
    drop(wal);

    let (mut wal, recovered) = open(tmp.path(), opts(300));
    assert_eq!(recovered.records, payloads(1..=400));
    // Each segment is named after the sequence number of its first record.
    let mut seq = 1;
    for file in &files {
        assert_eq!(*file, segment_path(tmp.path(), seq));
        seq += records_in(file);
    }
    assert_eq!(seq, 401);
    append_synced(&mut wal, 401..=410);
    drop(wal);
    assert_eq!(open(tmp.path(), opts(300)).1.records, payloads(1..=410));
}

/// Counts the records in one segment by walking its headers.
fn records_in(file: &std::path::Path) -> u64 {
    let bytes = crate::records_only(file);
    let (mut at, mut count) = (0usize, 0u64);
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        at += ekmat_storage::HEADER_LEN + len;
        count += 1;
    }
    assert_eq!(at, bytes.len());
    count
}

#[test]
fn a_record_larger_than_a_segment_gets_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), opts(64));
    let big = vec![7u8; 1000];
    assert_eq!(wal.append(&big).unwrap(), 1);
    assert_eq!(wal.append(&big).unwrap(), 2);
    assert_eq!(wal.append(b"small").unwrap(), 3);
    wal.sync().unwrap();
    assert_eq!(segments(tmp.path()).len(), 3);
    drop(wal);
    let (_, recovered) = open(tmp.path(), opts(64));
    assert_eq!(recovered.records, vec![big.clone(), big, b"small".to_vec()]);
}

#[test]
fn one_fsync_covers_a_batch_and_an_idle_sync_does_none() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), crate::unpadded(1 << 20));
    let before = wal.stats();
    for i in 1..=50 {
        wal.append(&payload(i)).unwrap();
    }
    assert_eq!(wal.stats().fsyncs, before.fsyncs, "appends only buffer");
    assert_eq!(wal.stats().durable_seq, 0);
    assert_eq!(wal.sync().unwrap(), 50);
    let after = wal.stats();
    assert_eq!(after.fsyncs, before.fsyncs + 1);
    assert_eq!(after.syncs, before.syncs + 1);
    assert_eq!(
        after.bytes_written,
        (1..=50).map(crate::encoded_len).sum::<u64>()
    );
    assert_eq!((after.last_seq, after.durable_seq), (50, 50));
    assert_eq!(wal.sync().unwrap(), 50);
    assert_eq!(wal.stats().fsyncs, after.fsyncs);
    assert_eq!(wal.stats().syncs, after.syncs);
}

#[test]
fn dropping_without_sync_loses_only_the_unsynced_suffix() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), fast(1 << 20));
    append_synced(&mut wal, 1..=5);
    for i in 6..=8 {
        wal.append(&payload(i)).unwrap();
    }
    drop(wal);
    let (mut wal, recovered) = open(tmp.path(), fast(1 << 20));
    assert_eq!(recovered.records, payloads(1..=5));
    assert_eq!(wal.append(b"next").unwrap(), 6);
}

#[test]
fn reopening_with_different_segment_size_works() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), fast(100));
    append_synced(&mut wal, 1..=50);
    drop(wal);
    let (mut wal, recovered) = open(tmp.path(), fast(1 << 20));
    assert_eq!(recovered.records, payloads(1..=50));
    append_synced(&mut wal, 51..=60);
    drop(wal);
    assert_eq!(open(tmp.path(), fast(100)).1.records, payloads(1..=60));
}

#[test]
fn files_with_other_names_are_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("README"), "not a segment").unwrap();
    fs::write(tmp.path().join("1.wal"), "not ours either").unwrap();
    let (mut wal, _) = open(tmp.path(), fast(1 << 20));
    append_synced(&mut wal, 1..=3);
    drop(wal);
    assert_eq!(open(tmp.path(), fast(1 << 20)).1.records, payloads(1..=3));
    assert!(tmp.path().join("README").exists());
}

#[test]
fn wal_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Wal>();
}

#[test]
fn a_long_batch_is_written_out_before_sync_but_durable_only_after() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), opts(1 << 30));
    let record = [3u8; 256];
    for _ in 0..5000 {
        wal.append(&record).unwrap();
    }
    let stats = wal.stats();
    assert!(
        stats.bytes_written >= 1 << 20,
        "a large buffer is handed to the kernel"
    );
    assert_eq!((stats.fsyncs, stats.durable_seq), (2, 0), "but not fsynced");
    assert_eq!(wal.sync().unwrap(), 5000);
    drop(wal);
    let (_, recovered) = open(tmp.path(), opts(1 << 30));
    assert_eq!(recovered.records, vec![record.to_vec(); 5000]);
}
