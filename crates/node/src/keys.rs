//! A validator's signing key (PBFT): an ed25519 secret generated from the operating
//! system's randomness on the node's first start and kept in its data directory
//! (`pbft.key`, mode 0600, one line of hex). The public keys of every member are shared
//! through the cluster configuration (`public_key` of each `[[member]]`, hex); a node
//! refuses to start if its own key does not match the configuration's, or if its key
//! file cannot be read.
//!
//! The protocol core never touches a file or a random source: it receives the keys.

use std::io::Write;
use std::path::{Path, PathBuf};

pub use ed25519_dalek::{SigningKey, VerifyingKey};

/// The key file in a node's data directory.
pub const KEY_FILE: &str = "pbft.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the signing key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the signing key {path} is corrupt ({why}); refusing to start. Restore it from a backup: a member's key cannot be replaced without changing every member's configuration"
    )]
    Corrupt { path: PathBuf, why: String },
    #[error("the signing key {path} is readable by others (mode {mode:o}); run chmod 600 on it")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("cannot write a new signing key to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the operating system gave no randomness for a new key: {0}")]
    Random(String),
}

/// Hex, lower case.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 bytes from 64 hex digits.
fn from_hex32(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    if !text.is_ascii() {
        return Err("not hex".into());
    }
    if text.len() != 64 {
        return Err(format!("{} hex digits, 64 expected", text.len()));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = &text[2 * i..2 * i + 2];
        *byte = u8::from_str_radix(pair, 16).map_err(|_| format!("{pair:?} is not hex"))?;
    }
    Ok(out)
}

/// A member's public key as the configuration writes it (64 hex digits).
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes = from_hex32(text)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid ed25519 public key".to_string())
}

/// The public key's hex form, as the configuration holds it.
pub fn public_key_hex(key: &VerifyingKey) -> String {
    to_hex(key.as_bytes())
}

/// The path of the key file in `data_dir`.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// The node's signing key: read from `data_dir`, or generated there if the directory has
/// none yet. Returns the key and whether it was just generated.
pub fn load_or_generate(data_dir: &Path) -> Result<(SigningKey, bool), KeyError> {
    let path = key_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => load(&path, &text).map(|k| (k, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => generate(data_dir).map(|k| (k, true)),
        Err(source) => Err(KeyError::Read { path, source }),
    }
}

fn load(path: &Path, text: &str) -> Result<SigningKey, KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|source| KeyError::Read {
                path: path.to_path_buf(),
                source,
            })?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let bytes = from_hex32(text).map_err(|why| KeyError::Corrupt {
        path: path.to_path_buf(),
        why,
    })?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// A fresh key from the OS's randomness, written to `data_dir` (created if need be) with
/// mode 0600, and synced. Refuses to overwrite an existing key file.
pub fn generate(data_dir: &Path) -> Result<SigningKey, KeyError> {
    generate_at(&key_path(data_dir))
}

/// A fresh key written to the file `path` (its directory created if need be), mode
/// 0600, synced; refuses to overwrite a file. Clients keep theirs this way too.
pub fn generate_at(path: &Path) -> Result<SigningKey, KeyError> {
    let write_err = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).map_err(|e| KeyError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&secret);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(write_err)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(write_err)?;
    file.write_all(format!("{}\n", to_hex(&secret)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(write_err)?;
    // The directory entry too, so the key survives a crash right after it was made.
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(key)
}

/// The key in the file `path` (one line of hex, readable by its owner only).
pub fn load_at(path: &Path) -> Result<SigningKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    load(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_private_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let (key, fresh) = load_or_generate(dir.path()).unwrap();
        assert!(fresh);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key_path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, fresh) = load_or_generate(dir.path()).unwrap();
        assert!(!fresh);
        assert_eq!(again.to_bytes(), key.to_bytes());
        let hex = public_key_hex(&key.verifying_key());
        assert_eq!(parse_public_key(&hex).unwrap(), key.verifying_key());
    }

    #[test]
    fn two_nodes_get_different_keys() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ka = generate(a.path()).unwrap();
        let kb = generate(b.path()).unwrap();
        assert_ne!(ka.to_bytes(), kb.to_bytes());
        assert!(matches!(generate(a.path()), Err(KeyError::Write { .. })));
    }

    #[test]
    fn a_corrupt_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path()).unwrap();
        let path = key_path(dir.path());
        std::fs::write(&path, "not a key\n").unwrap();
        let err = load_or_generate(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is corrupt"), "{err}");
        std::fs::write(&path, format!("{}\n", "zz".repeat(32))).unwrap();
        let err = load_or_generate(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is not hex"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path()).unwrap();
        let path = key_path(dir.path());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_generate(dir.path()).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn an_unreadable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the key file should be: reading it fails, and not with
        // "not found", so no new key is generated over it.
        std::fs::create_dir(key_path(dir.path())).unwrap();
        let err = load_or_generate(dir.path()).unwrap_err().to_string();
        assert!(err.contains("cannot read the signing key"), "{err}");
    }

    #[test]
    fn public_keys_in_configurations_are_checked() {
        assert!(
            parse_public_key("abc")
                .unwrap_err()
                .contains("3 hex digits")
        );
        assert!(
            parse_public_key(&"g0".repeat(32))
                .unwrap_err()
                .contains("not hex")
        );
        let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        assert_eq!(parse_public_key(&public_key_hex(&key)).unwrap(), key);
    }
}
