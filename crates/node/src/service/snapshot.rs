//! Maintenance.Snapshot: this member's state machine as one stream of bytes.
//!
//! etcd streams its bbolt file; ekmat streams its own format (see [`backup`]), in the
//! same frame: chunks of at most 32 KiB, each with the number of bytes still to come,
//! then one last message whose blob is the SHA-256 of everything before it (with
//! `remaining_bytes` 0), as etcd sends it. `etcdctl snapshot save` writes it all to a
//! file; `etcdctl snapshot status` and `snapshot restore` cannot read that file, since it
//! is not a bbolt database.

use bytes::Bytes;
use ekmat_api::etcdserverpb as pb;
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::codegen::BoxStream;

use super::{Services, call_error, unexpected_answer};
use crate::query::{Answer, Query};

/// etcd's chunk size (`snapshotSendBufferSize`).
const CHUNK: usize = 32 * 1024;
/// What a backup file starts with.
const MAGIC: &[u8; 8] = b"EKMATSNP";
/// The layout below; bumped if it changes.
const BACKUP_FORMAT: u32 = 1;
/// etcdctl 3.4 takes a saved file whose length is not 32 bytes past a multiple of 512 (a
/// bbolt file is made of 512-byte multiples) as lacking its checksum, and refuses it.
const ALIGN: usize = 512;

/// A state machine snapshot as a backup: `MAGIC`, the format (u32, little-endian), the
/// snapshot's length (u64, little-endian), the snapshot (`KvStore::snapshot`), then zeros
/// up to a multiple of 512 bytes, so that etcdctl accepts the file with its checksum.
pub fn backup(snapshot: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(snapshot.len() + 20 + ALIGN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&BACKUP_FORMAT.to_le_bytes());
    out.extend_from_slice(&(snapshot.len() as u64).to_le_bytes());
    out.extend_from_slice(snapshot);
    out.resize(out.len().next_multiple_of(ALIGN), 0);
    Bytes::from(out)
}

/// The state machine snapshot inside a [`backup`] (a saved file without its trailing
/// checksum), if it is one.
pub fn unwrap_backup(file: &[u8]) -> Option<&[u8]> {
    let rest = file.strip_prefix(MAGIC)?;
    let (format, rest) = rest.split_first_chunk::<4>()?;
    let (len, rest) = rest.split_first_chunk::<8>()?;
    if u32::from_le_bytes(*format) != BACKUP_FORMAT {
        return None;
    }
    rest.get(..usize::try_from(u64::from_le_bytes(*len)).ok()?)
}

impl Services {
    /// A snapshot of the state this member has applied, as etcd's stream of messages.
    pub(super) async fn snapshot_stream(&self) -> Result<BoxStream<pb::SnapshotResponse>, Status> {
        let answer = self
            .read(Query::Snapshot, false)
            .await
            .map_err(|e| call_error(&e))?;
        let Answer::Snapshot(source) = answer else {
            return Err(unexpected_answer());
        };
        let header = self.header(source.revision());
        // Serializing a large store takes a while: not on a task the runtime shares.
        let content = tokio::task::spawn_blocking(move || backup(&source.encode()))
            .await
            .map_err(|e| Status::internal(format!("snapshot failed: {e}")))?;
        Ok(Box::pin(tokio_stream::iter(
            frames(content, header).map(Ok),
        )))
    }
}

/// The messages carrying `content`: its chunks, then its SHA-256. The header goes in the
/// first message only.
pub fn frames(
    content: Bytes,
    header: pb::ResponseHeader,
) -> impl Iterator<Item = pb::SnapshotResponse> + Send {
    let sha = Sha256::digest(&content).to_vec();
    let total = content.len();
    let chunks = (0..total.div_ceil(CHUNK)).map(move |i| {
        let end = ((i + 1) * CHUNK).min(total);
        pb::SnapshotResponse {
            header: None,
            remaining_bytes: (total - end) as u64,
            blob: content[i * CHUNK..end].to_vec(),
        }
    });
    let trailer = std::iter::once(pb::SnapshotResponse {
        header: None,
        remaining_bytes: 0,
        blob: sha,
    });
    let mut header = Some(header);
    chunks.chain(trailer).map(move |mut frame| {
        frame.header = header.take();
        frame
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_comes_in_chunks_counting_down_then_its_sha256() {
        let content = Bytes::from(vec![7u8; CHUNK * 2 + 10]);
        let frames: Vec<_> = frames(content.clone(), pb::ResponseHeader::default()).collect();
        let remaining: Vec<u64> = frames.iter().map(|f| f.remaining_bytes).collect();
        assert_eq!(remaining, vec![CHUNK as u64 + 10, 10, 0, 0]);
        assert!(frames[0].header.is_some() && frames[1].header.is_none());
        let body: Vec<u8> = frames[..3].iter().flat_map(|f| f.blob.clone()).collect();
        assert_eq!(body, content.to_vec());
        assert_eq!(frames[3].blob, Sha256::digest(&content).to_vec());
    }

    #[test]
    fn a_backup_is_512_byte_aligned_and_gives_its_snapshot_back() {
        let kv = ekmat_kv::KvStore::new();
        let snapshot = kv.snapshot();
        let file = backup(&snapshot);
        assert_eq!(file.len() % ALIGN, 0);
        assert_eq!(unwrap_backup(&file), Some(&snapshot[..]));
        assert_eq!(unwrap_backup(&file[1..]), None);
        assert_eq!(unwrap_backup(&file[..30.min(snapshot.len())]), None);
    }
}
