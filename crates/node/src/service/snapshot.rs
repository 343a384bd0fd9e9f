//! Maintenance.Snapshot: this member's state machine as one stream of bytes.
//!
//! As etcd does, the stream is a bbolt database laid out as etcd's backend (see
//! [`crate::backup`]), in etcd's frames: chunks of at most 32 KiB, each with the number
//! of bytes still to come, then one last message whose blob is the SHA-256 of everything
//! before it (with `remaining_bytes` 0). `etcdctl snapshot save` writes it all to a
//! file, which `etcdctl snapshot status` reads and `etcdctl snapshot restore` turns
//! into a data directory for etcd.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
/// Backups being written at once; more are refused, so clients that stop reading
/// cannot pile up threads (each holds one, and a view of the store).
const MAX_STREAMS: usize = 4;
/// A client that takes no frame for this long is given up on.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

static STREAMS: AtomicUsize = AtomicUsize::new(0);

/// One of the [`MAX_STREAMS`] places, given back on drop.
struct StreamSlot;

impl StreamSlot {
    fn take() -> Option<StreamSlot> {
        STREAMS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_STREAMS).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamSlot)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        STREAMS.fetch_sub(1, Ordering::AcqRel);
    }
}

type Frame = Result<pb::SnapshotResponse, Status>;

impl Services {
    /// A snapshot of the state this member has applied, as etcd's stream of messages.
    pub(super) async fn snapshot_stream(&self) -> Result<BoxStream<pb::SnapshotResponse>, Status> {
        let slot = StreamSlot::take().ok_or_else(|| {
            Status::unavailable(format!(
                "{MAX_STREAMS} backups are being sent already; retry later"
            ))
        })?;
        let answer = self
            .read(Query::Snapshot, false)
            .await
            .map_err(|e| call_error(&e))?;
        let Answer::Snapshot(source) = answer else {
            return Err(unexpected_answer());
        };
        let header = self.header(source.revision());
        let (tx, rx) = tokio::sync::mpsc::channel(FRAMES_QUEUED);
        let runtime = tokio::runtime::Handle::current();
        // Writing a large store takes a while, and the client sets the pace: a thread of
        // its own, not one the runtime (or the driver's heavy entries) shares.
        std::thread::Builder::new()
            .name("ekmat-backup".into())
            .spawn(move || {
                let _slot = slot;
                let send = |frame: Frame| {
                    runtime.block_on(async {
                        matches!(
                            tokio::time::timeout(SEND_TIMEOUT, tx.send(frame)).await,
                            Ok(Ok(()))
                        )
                    })
                };
                write_backup(&source, header, &send);
            })
            .map_err(|e| Status::internal(format!("cannot start the backup: {e}")))?;
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// Send the backup of `source` frame by frame; a failure ends the stream with an error,
/// never with a short file that looks complete.
fn write_backup(
    source: &ekmat_kv::SnapshotSource,
    header: pb::ResponseHeader,
    send: &dyn Fn(Frame) -> bool,
) {
    let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::backup::stream(source, CHUNK, |chunks| {
            for frame in frames(chunks, header) {
                if !send(Ok(frame)) {
                    return; // the client went away, or stopped reading
                }
            }
        })
    }));
    let failed = match written {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e,
        Err(_) => "the backup writer panicked".to_string(),
    };
    tracing::error!(error = %failed, "a backup failed");
    send(Err(Status::internal(format!("backup failed: {failed}"))));
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
            blob: blob.into(),
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
