//! A value read from files, read again soon after any of them changes: what lets a
//! renewed certificate or a new revocation list take effect without a restart, as etcd
//! reads them for each new connection.

use std::path::PathBuf;
use std::sync::{Mutex, TryLockError};
use std::time::{Duration, Instant};

use super::{Stamp, stamp};

/// How often the files are looked at: a handshake costs no file access otherwise.
pub(super) const RELOAD_CHECK_EVERY: Duration = Duration::from_secs(1);

type Read<T> = Box<dyn Fn() -> Result<T, String> + Send + Sync>;

/// The value read from `files`. Files that do not read keep the last good value in use
/// (and are tried again each check until they read, in case they were caught
/// half-written).
pub(super) struct Reloading<T> {
    files: Vec<PathBuf>,
    section: &'static str,
    /// What the files hold, for the log.
    what: &'static str,
    read: Read<T>,
    current: Mutex<Current<T>>,
}

struct Current<T> {
    /// The files' stamps when the value in use was read.
    stamps: Vec<Stamp>,
    checked: Instant,
    value: T,
    /// The last reload's failure, logged once.
    failure: Option<String>,
}

impl<T: Clone> Reloading<T> {
    /// Reads the value now: a failure is the caller's to report.
    pub(super) fn load(
        files: Vec<PathBuf>,
        section: &'static str,
        what: &'static str,
        read: impl Fn() -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Reloading<T>, String> {
        let stamps = files.iter().map(|f| stamp(f)).collect();
        let value = read()?;
        Ok(Reloading {
            files,
            section,
            what,
            read: Box::new(read),
            current: Mutex::new(Current {
                stamps,
                checked: Instant::now(),
                value,
                failure: None,
            }),
        })
    }

    /// The value to use now. Handshakes on other threads are not held up while one
    /// re-reads the files: they use the value in use until then.
    pub(super) fn get(&self) -> T {
        let mut current = match self.current.try_lock() {
            Ok(current) => current,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
                return current.value.clone();
            }
        };
        if current.checked.elapsed() >= RELOAD_CHECK_EVERY {
            current.checked = Instant::now();
            self.reload_if_changed(&mut current);
        }
        current.value.clone()
    }

    fn reload_if_changed(&self, current: &mut Current<T>) {
        let stamps: Vec<Stamp> = self.files.iter().map(|f| stamp(f)).collect();
        if current.stamps == stamps {
            return;
        }
        match (self.read)() {
            Ok(value) => {
                tracing::info!(section = self.section, "read a changed {}", self.what);
                (current.value, current.stamps) = (value, stamps);
                current.failure = None;
            }
            Err(e) => {
                if current.failure.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "the {} changed and cannot be used: keeping the last good one", self.what);
                    current.failure = Some(e);
                }
            }
        }
    }
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("files", &self.files)
            .field("section", &self.section)
            .finish_non_exhaustive()
    }
}
