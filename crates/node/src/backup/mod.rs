//! Backups in etcd's own format: what `Maintenance.Snapshot` streams is a bbolt database
//! laid out as etcd 3.4's backend, so `etcdctl snapshot status` reads it and `etcdctl
//! snapshot restore` turns it into a data directory a real etcd serves.

pub mod bbolt;
pub mod etcd_layout;
mod seed;

use ekmat_kv::SnapshotSource;
use sha2::{Digest, Sha256};

pub use etcd_layout::{EtcdState, Revision};
pub use seed::{SEED_FILE, Seed, Seeded, plant, prepare, seed};

/// The backup of the store `source` was taken from: a bbolt file, whole.
#[cfg(test)]
pub fn encode(source: &SnapshotSource) -> Result<Vec<u8>, String> {
    let mut file = Vec::new();
    stream(source, bbolt::PAGE_SIZE, |chunks| {
        chunks.for_each(|(chunk, _)| file.extend(chunk));
    })?;
    Ok(file)
}

/// The backup of the store `source` was taken from, handed to `consume` as chunks of
/// `chunk` bytes (the last may be shorter), each with the number of bytes still to come
/// after it. Pages are written as the chunks are taken, so a backup of any size holds
/// about one chunk in memory beyond the store itself. Fails, before any chunk, if the
/// store cannot be laid out as etcd's (which a consistent store always can).
pub fn stream<R>(
    source: &SnapshotSource,
    chunk: usize,
    consume: impl FnOnce(&mut dyn Iterator<Item = (Vec<u8>, u64)>) -> R,
) -> Result<R, String> {
    let history = source.history();
    let buckets = etcd_layout::buckets(source, &history);
    let plan = bbolt::Plan::of(&buckets)?;
    let mut remaining = plan.file_len();
    let mut pages = plan.pages(&buckets);
    let mut pending = bytes::BytesMut::new();
    let mut chunks = std::iter::from_fn(|| {
        while pending.len() < chunk {
            match pages.next() {
                Some(page) => pending.extend_from_slice(&page),
                None => break,
            }
        }
        if pending.is_empty() {
            return None;
        }
        let out = pending.split_to(chunk.min(pending.len())).to_vec();
        remaining -= out.len() as u64;
        Some((out, remaining))
    });
    Ok(consume(&mut chunks))
}

/// Read a backup: a file `etcdctl snapshot save` wrote (the database, then its SHA-256,
/// which is checked) or a bare bbolt database, from ekmat or from etcd.
pub fn decode(file: &[u8]) -> Result<EtcdState, String> {
    let db = strip_checksum(file)?;
    let buckets = bbolt::read(db).map_err(|e| e.to_string())?;
    etcd_layout::read(buckets)
}

/// A saved file is a database of 512-byte multiples followed by its 32-byte SHA-256, as
/// etcdctl tells them apart.
fn strip_checksum(file: &[u8]) -> Result<&[u8], String> {
    if file.len() % 512 != Sha256::output_size() {
        return Ok(file);
    }
    let (db, sha) = file.split_at(file.len() - Sha256::output_size());
    if Sha256::digest(db)[..] != *sha {
        return Err("the file's SHA-256 does not match its content".into());
    }
    Ok(db)
}
