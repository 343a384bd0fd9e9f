//! Maintenance.Snapshot: this member's state machine as one stream of bytes.
//!
//! As etcd does, the stream is a bbolt database laid out as etcd's backend (see
//! [`crate::backup`]), in etcd's frames: chunks of at most 32 KiB, each with the number
//! of bytes still to come, then one last message whose blob is the SHA-256 of everything
//! before it (with `remaining_bytes` 0). `etcdctl snapshot save` writes it all to a
//! file, which `etcdctl snapshot status` reads and `etcdctl snapshot restore` turns
//! into a data directory for etcd.

use bytes::Bytes;
use ekmat_api::etcdserverpb as pb;
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::codegen::BoxStream;

use super::{Services, call_error, unexpected_answer};
use crate::query::{Answer, Query};

/// etcd's chunk size (`snapshotSendBufferSize`).
const CHUNK: usize = 32 * 1024;

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
        let content =
            tokio::task::spawn_blocking(move || Bytes::from(crate::backup::encode(&source)))
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
}
