//! Checkpoints written beside the log while appends go on: the records they cover stay
//! in the log until the checkpoint is durable, so a crash at any step recovers every
//! record, and once durable the checkpoint replaces the segments before it.

use std::fs;
use std::path::{Path, PathBuf};

use ekmat_storage::{Wal, WrittenCheckpoint};

use crate::{append_synced, fast, open, opts, payloads, segment_path, segments};

const SEGMENT: u64 = 200;

fn checkpoint_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.checkpoint"))
}

fn write_state(wal: &mut Wal, state: &[u8]) -> WrittenCheckpoint {
    let job = wal.begin_checkpoint().unwrap();
    job.write(state.len(), |out| {
        // In pieces, as a serializer streams it.
        for piece in state.chunks(7) {
            out.write_all(piece)?;
        }
        Ok(())
    })
    .unwrap()
}

#[test]
fn appends_go_on_while_a_checkpoint_is_written_and_it_then_replaces_the_old_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), opts(SEGMENT));
    append_synced(&mut wal, 1..=50);
    let job = wal.begin_checkpoint().unwrap();
    assert_eq!(job.covers(), 50);
    // The log goes on while the state through 50 is written elsewhere.
    append_synced(&mut wal, 51..=60);
    let state = b"state through 50".to_vec();
    let writer =
        std::thread::spawn(move || job.write(state.len(), |out| out.write_all(&state)).unwrap());
    let done = writer.join().unwrap();
    // Durable, it has replaced the segments before it (removed by the thread that
    // wrote it, not the log's).
    assert!(
        segments(tmp.path())
            .iter()
            .all(|s| *s >= segment_path(tmp.path(), 51))
    );
    append_synced(&mut wal, 61..=62);
    wal.finish_checkpoint(done).unwrap();
    let on_disk = segments(tmp.path()).len() as u64;
    assert_eq!(wal.stats().segments, on_disk, "the log forgets them");
    assert!(checkpoint_path(tmp.path(), 51).exists());
    drop(wal);

    let (mut wal, recovered) = open(tmp.path(), opts(SEGMENT));
    assert_eq!(
        recovered.checkpoint.as_deref(),
        Some(&b"state through 50"[..])
    );
    assert_eq!(recovered.first_seq_after_checkpoint, 51);
    assert_eq!(recovered.records, payloads(51..=62));
    assert_eq!(recovered.last_seq, 62);
    assert_eq!(wal.append(b"next").unwrap(), 63);
}

#[test]
fn a_crash_before_the_checkpoint_is_renamed_or_finished_loses_nothing() {
    for step in ["writing", "written"] {
        let tmp = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(tmp.path(), fast(SEGMENT));
        append_synced(&mut wal, 1..=30);
        if step == "writing" {
            // The process dies with the checkpoint half written, under its temporary name.
            let _job = wal.begin_checkpoint().unwrap();
            let tmp_file = tmp.path().join(format!("{:020}.checkpoint.tmp", 31));
            fs::write(&tmp_file, b"half a checkp").unwrap();
        } else {
            let _ = write_state(&mut wal, b"through 30"); // dies before finish_checkpoint
        }
        append_synced(&mut wal, 31..=35);
        drop(wal);
        let (_, recovered) = open(tmp.path(), fast(SEGMENT));
        assert_eq!(recovered.last_seq, 35, "{step}");
        if step == "writing" {
            assert_eq!(recovered.checkpoint, None);
            assert_eq!(recovered.records, payloads(1..=35));
        } else {
            assert_eq!(recovered.checkpoint.as_deref(), Some(&b"through 30"[..]));
            assert_eq!(recovered.records, payloads(31..=35));
            let first = segments(tmp.path()).into_iter().next();
            assert_eq!(first, Some(segment_path(tmp.path(), 31)));
        }
        let leftovers = fs::read_dir(tmp.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        assert_eq!(leftovers, 0, "{step}: a half-written checkpoint is removed");
    }
}

#[test]
fn a_newer_checkpoint_of_either_kind_supersedes_the_older() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), fast(SEGMENT));
    append_synced(&mut wal, 1..=10);
    let done = write_state(&mut wal, b"file through 10");
    wal.finish_checkpoint(done).unwrap();
    append_synced(&mut wal, 11..=20);
    wal.checkpoint(b"segment through 20").unwrap();
    assert!(!checkpoint_path(tmp.path(), 11).exists());
    append_synced(&mut wal, 21..=25);
    let done = write_state(&mut wal, b"file through 25");
    wal.finish_checkpoint(done).unwrap();
    append_synced(&mut wal, 26..=27);
    drop(wal);

    let (_, recovered) = open(tmp.path(), fast(SEGMENT));
    assert_eq!(
        recovered.checkpoint.as_deref(),
        Some(&b"file through 25"[..])
    );
    assert_eq!(recovered.records, payloads(26..=27));
}

#[test]
fn a_checkpoint_of_everything_with_no_record_after_it_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), fast(SEGMENT));
    append_synced(&mut wal, 1..=8);
    let done = write_state(&mut wal, b"all");
    wal.finish_checkpoint(done).unwrap();
    drop(wal);
    // Even with the empty segment it rolled over to gone, appends resume after it.
    fs::remove_file(segment_path(tmp.path(), 9)).unwrap();
    let (mut wal, recovered) = open(tmp.path(), fast(SEGMENT));
    assert_eq!(recovered.checkpoint.as_deref(), Some(&b"all"[..]));
    assert_eq!(
        (recovered.first_seq_after_checkpoint, recovered.last_seq),
        (9, 8)
    );
    assert_eq!(wal.append(b"nine").unwrap(), 9);
}

#[test]
fn a_damaged_checkpoint_file_or_a_missing_segment_after_it_is_corruption() {
    for damage in ["flip", "gap"] {
        let tmp = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(tmp.path(), fast(SEGMENT));
        append_synced(&mut wal, 1..=10);
        let done = write_state(&mut wal, b"through 10");
        wal.finish_checkpoint(done).unwrap();
        append_synced(&mut wal, 11..=40);
        drop(wal);
        let named = if damage == "flip" {
            let file = checkpoint_path(tmp.path(), 11);
            crate::flip_byte(&file, 20);
            file
        } else {
            let first = segment_path(tmp.path(), 11);
            fs::remove_file(&first).unwrap();
            segments(tmp.path())[0].clone()
        };
        let (file, _, _, reason) = crate::corrupt(tmp.path());
        assert_eq!(file, named, "{damage}: {reason}");
    }
}

#[test]
fn a_state_of_another_length_than_announced_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), fast(SEGMENT));
    append_synced(&mut wal, 1..=3);
    let job = wal.begin_checkpoint().unwrap();
    let err = job.write(10, |out| out.write_all(b"short")).unwrap_err();
    assert!(err.to_string().contains("announced as 10 bytes"), "{err}");
    drop(wal);
    let (_, recovered) = open(tmp.path(), fast(SEGMENT));
    assert_eq!((recovered.checkpoint, recovered.last_seq), (None, 3));
}
