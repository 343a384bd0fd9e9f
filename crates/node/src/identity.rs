//! Which cluster and member a data directory belongs to. Recorded on first start and
//! checked on every start after, so a node never joins one cluster with another's data.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE: &str = "ekmat-identity.toml";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub cluster: String,
    pub cluster_id: u64,
    pub member: u32,
    pub protocol: String,
}

impl Identity {
    /// The identity the member `cfg` describes gives its data directory.
    pub fn of(cfg: &crate::config::NodeConfig) -> Identity {
        Identity {
            cluster: cfg.cluster.clone(),
            cluster_id: cfg.cluster_id(),
            member: cfg.id,
            protocol: cfg.protocol.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("data directory {dir} is not usable: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("data directory {dir} is in use by another ekmat process; refusing to start")]
    InUse { dir: PathBuf },
    #[error("data directory {dir} has an unreadable identity file: {message}")]
    Unreadable { dir: PathBuf, message: String },
    #[error(
        "data directory {dir} {detail}; refusing to start. Use an empty data directory for a new cluster or member."
    )]
    Mismatch { dir: PathBuf, detail: String },
}

/// Held while a process owns a data directory; released when dropped (or the process dies).
#[derive(Debug)]
pub struct DirLock(#[allow(dead_code)] std::fs::File);

/// Create the directory and its identity, or check the identity it already has, and lock
/// the directory against a second process (two writers would corrupt the log).
pub fn claim(dir: &Path, want: &Identity) -> Result<DirLock, IdentityError> {
    let io = |source| IdentityError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let lock = std::fs::File::create(dir.join("LOCK")).map_err(io)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(IdentityError::InUse {
                dir: dir.to_path_buf(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    check_or_write(dir, want)?;
    Ok(DirLock(lock))
}

fn check_or_write(dir: &Path, want: &Identity) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let path = dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found: Identity = toml::from_str(&text).map_err(|e| IdentityError::Unreadable {
                dir: dir.to_path_buf(),
                message: e.to_string(),
            })?;
            if found != *want {
                let detail = format!(
                    "belongs to cluster '{}' (id {:x}) as member {} running {}, not to cluster '{}' (id {:x}) as member {} running {}",
                    found.cluster,
                    found.cluster_id,
                    found.member,
                    found.protocol,
                    want.cluster,
                    want.cluster_id,
                    want.member,
                    want.protocol
                );
                return Err(IdentityError::Mismatch {
                    dir: dir.to_path_buf(),
                    detail,
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_atomically(dir, &path, want).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}

/// Write to a temporary file, fsync it, rename it into place and fsync the directory:
/// after a crash the identity is either absent or complete.
fn write_atomically(dir: &Path, path: &Path, id: &Identity) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(
        toml::to_string(id)
            .expect("identities serialize")
            .as_bytes(),
    )?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(member: u32) -> Identity {
        Identity {
            cluster: "c".into(),
            cluster_id: 42,
            member,
            protocol: "raft".into(),
        }
    }

    #[test]
    fn first_start_claims_and_later_starts_check() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("n0");
        drop(claim(&data, &id(0)).unwrap());
        drop(claim(&data, &id(0)).unwrap());
        let err = claim(&data, &id(1)).unwrap_err().to_string();
        assert!(
            err.contains("belongs to cluster 'c'") && err.contains("refusing to start"),
            "{err}"
        );
    }

    #[test]
    fn a_directory_in_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _held = claim(dir.path(), &id(0)).unwrap();
        let err = claim(dir.path(), &id(0)).unwrap_err().to_string();
        assert!(err.contains("in use by another"), "{err}");
    }

    #[test]
    fn an_unusable_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let err = claim(&file.join("data"), &id(0)).unwrap_err().to_string();
        assert!(err.contains("is not usable"), "{err}");
    }
}
