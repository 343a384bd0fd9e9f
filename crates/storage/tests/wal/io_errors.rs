//! Operating-system failures surface as `Io` errors naming the path; after a failed write
//! the log refuses further use.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use ekmat_storage::{Wal, WalError, WalOptions};

use crate::{fast, open, payload};

fn io_error(result: Result<(Wal, ekmat_storage::Recovered), WalError>) -> (String, String) {
    match result {
        Err(err @ WalError::Io { .. }) => {
            let display = err.to_string();
            let WalError::Io { path, .. } = err else {
                unreachable!()
            };
            (path.display().to_string(), display)
        }
        other => panic!("expected an Io error, got {other:?}"),
    }
}

#[test]
fn a_directory_under_a_regular_file_is_an_io_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plain-file");
    fs::write(&file, "x").unwrap();
    let dir = file.join("wal");
    let (path, display) = io_error(Wal::open(&dir, WalOptions::default()));
    assert_eq!(path, dir.display().to_string());
    assert!(
        display.starts_with(&format!("write-ahead log I/O error on {}: ", dir.display())),
        "{display}"
    );
}

#[test]
fn a_regular_file_as_the_directory_is_an_io_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plain-file");
    fs::write(&file, "x").unwrap();
    let (path, display) = io_error(Wal::open(&file, WalOptions::default()));
    assert_eq!(path, file.display().to_string());
    assert!(display.contains("not a directory"), "{display}");
}

#[test]
fn an_unwritable_directory_is_an_io_error_unless_we_are_root() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("locked");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o500)).unwrap();
    // Root ignores permission bits; the test above covers an unwritable path for root.
    let root = fs::write(dir.join("probe"), "x").is_ok();
    let result = Wal::open(&dir, WalOptions::default());
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    if root {
        assert!(result.is_ok());
        return;
    }
    let (path, display) = io_error(result);
    assert!(path.starts_with(&dir.display().to_string()), "{path}");
    assert!(display.contains("ermission denied"), "{display}");
}

#[test]
fn a_failed_write_poisons_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let (mut wal, _) = open(&dir, fast(64));
    wal.append(&[1; 50]).unwrap();
    // The next append must roll over to a new segment, which cannot be created.
    fs::remove_dir_all(&dir).unwrap();
    match wal.append(&payload(2)) {
        Err(WalError::Io { path, .. }) => assert!(path.starts_with(&dir)),
        other => panic!("expected Io, got {other:?}"),
    }
    for result in [
        wal.append(b"x").map(|_| ()),
        wal.sync().map(|_| ()),
        wal.checkpoint(b"s"),
    ] {
        let err = result.unwrap_err();
        assert!(matches!(err, WalError::Poisoned { .. }), "{err}");
        assert!(err.to_string().contains("restart"), "{err}");
    }
}
