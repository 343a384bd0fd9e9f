//! When the zeros a preallocating log writes ahead of its records do not fit (a full
//! disk, a file size limit), the log goes on without them and fails only when a record
//! itself does not fit. Run in a child process under a real file size limit
//! (`RLIMIT_FSIZE`), which the kernel enforces as it would a full disk: writes past it fail.

use std::process::Command;

use ekmat_storage::WalError;

use crate::{append_synced, open, opts, payloads};

const CHILD: &str = "EKMAT_WAL_FULL_DISK_DIR";
/// Below the megabyte of zeros the log writes ahead, far above the records here.
const LIMIT: u64 = 256 << 10;

#[test]
fn zeros_that_do_not_fit_stop_preallocation_not_the_log() {
    if let Ok(dir) = std::env::var(CHILD) {
        return appends_until_the_limit(dir.as_ref());
    }
    let tmp = tempfile::tempdir().unwrap();
    // The shell ignores SIGXFSZ (so writes past the limit fail with EFBIG instead of
    // killing the process; the disposition survives exec) and prlimit sets the limit.
    let out = Command::new("sh")
        .args([
            "-c",
            "trap '' XFSZ; exec prlimit --fsize=\"$0\":\"$0\" \"$@\"",
            &LIMIT.to_string(),
        ])
        .arg(std::env::current_exe().unwrap())
        .args([
            "full_disk::zeros_that_do_not_fit_stop_preallocation_not_the_log",
            "--exact",
            "--test-threads=1",
        ])
        .env(CHILD, tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn appends_until_the_limit(dir: &std::path::Path) {
    let (mut wal, _) = open(dir, opts(64 << 20));
    append_synced(&mut wal, 1..=100);
    drop(wal);
    let (mut wal, recovered) = open(dir, opts(64 << 20));
    assert_eq!(recovered.records, payloads(1..=100));
    // Records go on until one no longer fits; that one is an error, not a panic, and
    // every record synced before it is recovered.
    let big = vec![7u8; 16 << 10];
    let mut synced = 100;
    let err = loop {
        match wal.append(&big).and_then(|_| wal.sync()) {
            Ok(seq) => synced = seq,
            Err(e) => break e,
        }
        assert!(synced < 100 + LIMIT / 1000, "the limit never bit");
    };
    assert!(matches!(err, WalError::Io { .. }), "{err:?}");
    drop(wal);
    let (_, recovered) = open(dir, opts(64 << 20));
    assert_eq!(recovered.records.len() as u64, synced);
    assert_eq!(recovered.records[..100], payloads(1..=100)[..]);
    assert!(recovered.records[100..].iter().all(|r| *r == big));
}
