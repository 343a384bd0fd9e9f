//! Segments a checkpoint replaced are kept as spares and written over as later segments
//! (see `WalOptions::spare_segments`): what a spare held before never comes back as a
//! record, a crash while one is reused loses nothing synced, and a clean reopen repairs
//! nothing.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ekmat_storage::WalOptions;

use crate::{append_synced, fast, open, opts, payloads, segment_path, segments};

const SEGMENT: u64 = 256;

/// `options` keeping at most `n` spares.
fn with_spares(n: usize, options: WalOptions) -> WalOptions {
    WalOptions {
        spare_segments: n,
        ..options
    }
}

fn spares(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_str().unwrap().ends_with(".wal.spare"))
        .collect();
    files.sort();
    files
}

fn inode(path: &Path) -> u64 {
    fs::metadata(path).unwrap().ino()
}

#[test]
fn a_replaced_segment_is_written_over_as_a_later_one_and_its_old_records_stay_dead() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut wal, _) = open(dir, with_spares(4, opts(SEGMENT)));
    append_synced(&mut wal, 1..=60);
    let replaced = segments(dir).len();
    assert!(replaced >= 4, "{replaced} segments");
    wal.checkpoint(b"state through 60").unwrap();
    let kept = spares(dir);
    assert_eq!(kept.len(), 4, "as many as allowed");
    assert_eq!(wal.stats().spares, 4);
    let last_spare = inode(kept.last().unwrap());

    // A short record, then more: the first new segment is the spare replaced last,
    // and holds fewer bytes of records than of its earlier life.
    append_synced(&mut wal, 61..=75);
    assert!(spares(dir).len() < 4, "a spare was taken");
    let reused = segments(dir)
        .iter()
        .any(|segment| inode(segment) == last_spare);
    assert!(reused, "the last spare became a segment");
    drop(wal);

    let (_, recovered) = open(dir, opts(SEGMENT));
    assert_eq!(
        recovered.checkpoint.as_deref(),
        Some(&b"state through 60"[..])
    );
    assert_eq!(recovered.records, payloads(61..=75));
    assert_eq!(recovered.repaired, None, "stale bytes are a clean end");
}

#[test]
fn with_no_spares_allowed_replaced_segments_are_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let no_spares = with_spares(0, opts(SEGMENT));
    let (mut wal, _) = open(dir, no_spares);
    append_synced(&mut wal, 1..=60);
    wal.checkpoint(b"state").unwrap();
    assert!(spares(dir).is_empty());
    assert_eq!(wal.stats().spares, 0);
    drop(wal);

    // Spares a run with more allowed left behind are let go down to the new limit.
    let (mut wal, _) = open(dir, with_spares(4, opts(SEGMENT)));
    append_synced(&mut wal, 61..=120);
    wal.checkpoint(b"state").unwrap();
    assert_eq!(spares(dir).len(), 4);
    drop(wal);
    let one = with_spares(1, opts(SEGMENT));
    let (wal, recovered) = open(dir, one);
    assert_eq!(recovered.checkpoint.as_deref(), Some(&b"state"[..]));
    assert_eq!(spares(dir).len(), 1);
    assert_eq!(wal.stats().spares, 1);
}

/// A spare that led with a checkpoint, reused and crashed before its first record was
/// written: its old checkpoint must not be taken for the log's newest.
#[test]
fn a_stale_checkpoint_at_the_front_of_a_reused_segment_is_not_a_starting_point() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let one = with_spares(1, fast(SEGMENT));
    let (mut wal, _) = open(dir, one);
    let old_state = vec![1u8; 200];
    wal.checkpoint(&old_state).unwrap();
    let old_front = segment_path(dir, 1);
    assert_eq!(
        fs::read(&old_front).unwrap()[8],
        2,
        "leads with a checkpoint"
    );
    append_synced(&mut wal, 1..=40);
    // Retires the old checkpoint's segment first: it becomes the one spare.
    let new_state = vec![2u8; 240];
    wal.checkpoint(&new_state).unwrap();
    assert_eq!(spares(dir).len(), 1);
    assert!(spares(dir)[0].ends_with("00000000000000000001.wal.spare"));
    // The checkpoint's segment is full once it holds a record: the next append rolls
    // over onto the spare (the first is written out as its segment is finished), and
    // is buffered, never written, when the log is dropped.
    wal.append(b"kept").unwrap();
    wal.append(b"lost").unwrap();
    assert!(spares(dir).is_empty(), "the spare was taken");
    assert_eq!(
        fs::read(segment_path(dir, 42)).unwrap()[8],
        2,
        "still its old front"
    );
    drop(wal);

    let (mut wal, recovered) = open(dir, one);
    assert_eq!(recovered.checkpoint, Some(new_state));
    assert_eq!(recovered.records, vec![b"kept".to_vec()]);
    assert_eq!(recovered.last_seq, 41);
    assert_eq!(recovered.repaired, None);
    // And the log goes on over the stale bytes.
    append_synced(&mut wal, 42..=46);
    drop(wal);
    let (_, recovered) = open(dir, one);
    assert_eq!(recovered.records[1..], payloads(42..=46)[..]);
}

fn write_checkpoint(wal: &mut ekmat_storage::Wal, state: &[u8]) {
    let job = wal.begin_checkpoint().unwrap();
    let done = job.write(state.len(), |out| out.write_all(state)).unwrap();
    wal.finish_checkpoint(done).unwrap();
}

fn checkpoint_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "checkpoint"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_replaced_checkpoint_file_is_written_over_by_the_next_and_cut_to_its_length() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spare = dir.join("checkpoint.spare");
    let (mut wal, _) = open(dir, opts(SEGMENT));
    append_synced(&mut wal, 1..=10);
    write_checkpoint(&mut wal, &[1; 900]);
    assert!(!spare.exists(), "nothing replaced yet");
    append_synced(&mut wal, 11..=20);
    write_checkpoint(&mut wal, &[2; 700]);
    let first = inode(&spare);
    assert_eq!(checkpoint_files(dir).len(), 1);
    append_synced(&mut wal, 21..=30);
    // Shorter than the spare's 900 bytes: the file must end at its record.
    write_checkpoint(&mut wal, &[3; 500]);
    let newest = checkpoint_files(dir);
    assert_eq!(newest.len(), 1);
    assert_eq!(inode(&newest[0]), first, "written over the spare");
    assert!(spare.exists(), "the one it replaced is the next spare");
    append_synced(&mut wal, 31..=32);
    drop(wal);

    let (_, recovered) = open(dir, opts(SEGMENT));
    assert_eq!(recovered.checkpoint, Some(vec![3; 500]));
    assert_eq!(recovered.records, payloads(31..=32));

    let none = with_spares(0, opts(SEGMENT));
    let _ = open(dir, none);
    assert!(!spare.exists(), "let go when spares are not wanted");
}
