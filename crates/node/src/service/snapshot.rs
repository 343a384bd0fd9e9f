//! Maintenance.Snapshot: this member's state machine as one stream of bytes.
//!
//! As etcd does, the stream is a bbolt database laid out as etcd's backend (see
//! [`crate::backup`]), in etcd's frames: chunks of at most 32 KiB, each with the number
//! of bytes still to come, then one last message whose blob is the SHA-256 of everything
//! before it (with `remaining_bytes` 0). `etcdctl snapshot save` writes it all to a
//! file, which `etcdctl snapshot status` reads and `etcdctl snapshot restore` turns
//! into a data directory for etcd.

use ekmat_api::etcdserverpb as pb;
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::codegen::BoxStream;

use super::{Services, call_error, unexpected_answer};
use crate::query::{Answer, Query};

/// etcd's chunk size (`snapshotSendBufferSize`).
const CHUNK: usize = 32 * 1024;

/// Frames waiting to be sent: the backup is written as the client takes it.
const FRAMES_QUEUED: usize = 4;

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
        let (tx, rx) = tokio::sync::mpsc::channel(FRAMES_QUEUED);
        // Writing a large store takes a while: not on a task the runtime shares.
        tokio::task::spawn_blocking(move || {
            crate::backup::stream(&source, CHUNK, |chunks| {
                for frame in frames(chunks, header) {
                    if tx.blocking_send(Ok(frame)).is_err() {
                        return; // the client went away
                    }
                }
            });
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// The messages carrying `chunks` (each with the bytes still to come after it), then
/// one whose blob is the SHA-256 of them all. The header goes in the first message only.
pub fn frames<'a>(
    chunks: impl Iterator<Item = (Vec<u8>, u64)> + 'a,
    header: pb::ResponseHeader,
) -> impl Iterator<Item = pb::SnapshotResponse> + 'a {
    let mut sha = Some(Sha256::new());
    let mut header = Some(header);
    let data = chunks.map(Some).chain(std::iter::once(None));
    data.map(move |chunk| {
        let (blob, remaining_bytes) = match chunk {
            Some((blob, remaining)) => {
                sha.as_mut().expect("until the end").update(&blob);
                (blob, remaining)
            }
            None => (sha.take().expect("once").finalize().to_vec(), 0),
        };
        pb::SnapshotResponse {
            header: header.take(),
            remaining_bytes,
            blob,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_comes_in_chunks_counting_down_then_its_sha256() {
        let content = vec![7u8; CHUNK * 2 + 10];
        let chunks = content.chunks(CHUNK).enumerate().map(|(i, c)| {
            let sent = (i * CHUNK + c.len()) as u64;
            (c.to_vec(), content.len() as u64 - sent)
        });
        let frames: Vec<_> = frames(chunks, pb::ResponseHeader::default()).collect();
        let remaining: Vec<u64> = frames.iter().map(|f| f.remaining_bytes).collect();
        assert_eq!(remaining, vec![CHUNK as u64 + 10, 10, 0, 0]);
        assert!(frames[0].header.is_some() && frames[1].header.is_none());
        let body: Vec<u8> = frames[..3].iter().flat_map(|f| f.blob.clone()).collect();
        assert_eq!(body, content);
        assert_eq!(frames[3].blob, Sha256::digest(&content).to_vec());
    }
}
