//! The storage writer: a dedicated thread that owns the write-ahead log and commits in
//! groups. The driver hands it writes; it appends every write that is waiting, makes them
//! durable with one fsync, and publishes how far durability reached. Under load, one
//! fsync covers many writes; when idle, a lone write is synced at once.
//!
//! It also folds the writes into the protocol's durable state, exactly as recovery would,
//! and every so often writes that state as a checkpoint: the log files then start
//! afresh, so with snapshots compacting the protocol's log, the disk stays bounded.

use std::thread::JoinHandle;
use std::time::Instant;

use ekmat_core::{Durable, Replica};
use ekmat_storage::Wal;
use tokio::sync::{mpsc, watch};

use crate::protocol::RuntimeProtocol;

/// Writes queued before the driver waits (back-pressure instead of unbounded memory).
pub const QUEUE: usize = 16 * 1024;
/// Most writes gathered into one fsync.
const MAX_BATCH: usize = 4096;

type WriteOf<P> = <<P as RuntimeProtocol>::Node as Replica>::Write;
type StableOf<P> = <<P as RuntimeProtocol>::Node as Replica>::Stable;

/// How far the log is durable, in the driver's write sequence numbers, or why it
/// stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Durability {
    pub seq: u64,
    pub failed: Option<String>,
}

pub struct Writer<W> {
    pub queue: mpsc::Sender<(u64, W)>,
    pub durable: watch::Receiver<Durability>,
    pub thread: JoinHandle<()>,
}

struct State<P: RuntimeProtocol> {
    wal: Wal,
    stable: StableOf<P>,
    /// Log bytes written since the last checkpoint, and that checkpoint's size.
    since_checkpoint: u64,
    last_checkpoint: u64,
    checkpoint_bytes: u64,
    /// Bytes added to the first checkpoint's threshold (see `NodeConfig::stagger`).
    stagger: u64,
}

/// Start the writer over `wal`, whose records fold into `stable`. The log is
/// checkpointed once it has grown by `checkpoint_bytes` and by twice the last
/// checkpoint's size (so rewriting a large state stays a small fraction of the writing).
pub fn spawn<P: RuntimeProtocol>(
    wal: Wal,
    stable: StableOf<P>,
    checkpoint_bytes: u64,
    stagger: u64,
) -> Writer<WriteOf<P>> {
    let (queue, mut rx) = mpsc::channel::<(u64, WriteOf<P>)>(QUEUE);
    let (tx, durable) = watch::channel(Durability::default());
    let mut state = State::<P> {
        wal,
        stable,
        since_checkpoint: 0,
        last_checkpoint: 0,
        checkpoint_bytes,
        stagger,
    };
    let thread = std::thread::Builder::new()
        .name("ekmat-wal-writer".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while let Some(first) = rx.blocking_recv() {
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(w) => batch.push(w),
                        Err(_) => break,
                    }
                }
                let last = batch
                    .last()
                    .map(|(seq, _)| *seq)
                    .expect("batch is not empty");
                if let Err(e) = state.write_batch(&batch) {
                    let failed = Some(format!("write-ahead log failed: {e}"));
                    tx.send_modify(|d| d.failed = failed);
                    return;
                }
                tx.send_replace(Durability {
                    seq: last,
                    failed: None,
                });
                batch.clear();
            }
        })
        .expect("spawning the writer thread");
    Writer {
        queue,
        durable,
        thread,
    }
}

impl<P: RuntimeProtocol> State<P> {
    fn write_batch(&mut self, batch: &[(u64, WriteOf<P>)]) -> Result<(), String> {
        // Measured, not encoded: a batch that ends up in a checkpoint is encoded there.
        let size = batch
            .iter()
            .map(|(_, write)| postcard::experimental::serialized_size(write).map(|n| n as u64))
            .sum::<Result<u64, _>>()
            .map_err(|e| e.to_string())?;
        let threshold = self.checkpoint_bytes.max(2 * self.last_checkpoint) + self.stagger;
        for (_, write) in batch {
            self.stable.apply(write);
        }
        if self.since_checkpoint + size >= threshold {
            // The checkpoint makes the batch durable too: writing it to the log first
            // would write it twice (for a snapshot, hundreds of megabytes).
            return self.checkpoint();
        }
        for (_, write) in batch {
            let bytes = postcard::to_stdvec(write).map_err(|e| e.to_string())?;
            self.wal.append(&bytes).map_err(|e| e.to_string())?;
        }
        self.since_checkpoint += size;
        let started = Instant::now();
        self.wal.sync().map_err(|e| e.to_string())?;
        metrics::histogram!("ekmat_fsync_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("ekmat_fsync_batch_writes").record(batch.len() as f64);
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let bytes = postcard::to_stdvec(&self.stable).map_err(|e| e.to_string())?;
        self.wal.checkpoint(&bytes).map_err(|e| e.to_string())?;
        self.last_checkpoint = bytes.len() as u64;
        self.since_checkpoint = 0;
        self.stagger = 0;
        metrics::counter!("ekmat_wal_checkpoints_total").increment(1);
        tracing::info!(
            bytes = bytes.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "checkpointed the write-ahead log"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use ekmat_core::{NodeId, RequestId};
    use ekmat_raft::{Entry, Payload, RaftStable, RaftWrite};

    use super::*;
    use crate::config::NodeConfig;
    use crate::protocol::Raft;

    fn append(index: u64, value_len: usize) -> RaftWrite {
        RaftWrite::Append {
            entries: vec![Entry {
                term: 1,
                index,
                payload: Payload::Command {
                    id: RequestId {
                        client: 0,
                        seq: index,
                    },
                    command: Bytes::from(vec![7; value_len]),
                },
            }],
        }
    }

    /// Writes `writes` through a writer that checkpoints after `checkpoint_bytes`, then
    /// recovers the directory as a restarting node would.
    fn write_and_recover(writes: &[RaftWrite], checkpoint_bytes: u64) -> (RaftStable, RaftStable) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = NodeConfig::new("t", 0, dir.path().to_path_buf(), Vec::new());
        let (wal, stable) = crate::node::recover::<Raft>(&cfg).unwrap();
        let w = spawn::<Raft>(wal, stable, checkpoint_bytes, 0);
        let mut expected = RaftStable::default();
        for (seq, write) in writes.iter().enumerate() {
            expected.apply(write);
            w.queue
                .blocking_send((seq as u64 + 1, write.clone()))
                .unwrap();
        }
        let mut durable = w.durable.clone();
        drop(w.queue);
        w.thread.join().unwrap();
        let reached = durable.borrow_and_update().clone();
        assert_eq!(reached.failed, None);
        assert_eq!(
            reached.seq,
            writes.len() as u64,
            "every write reported durable"
        );
        let (_, recovered) = crate::node::recover::<Raft>(&cfg).unwrap();
        (expected, recovered)
    }

    #[test]
    fn writes_folded_into_a_checkpoint_instead_of_the_log_are_recovered() {
        let mut writes = vec![RaftWrite::HardState {
            term: 1,
            vote: Some(NodeId(0)),
        }];
        // Large writes: every few of them cross the threshold and become a checkpoint.
        writes.extend((1..=40).map(|i| append(i, 10_000)));
        let (expected, recovered) = write_and_recover(&writes, 32 << 10);
        assert_eq!(recovered, expected);
        assert_eq!(recovered.log.len(), 40);
    }

    #[test]
    fn without_a_checkpoint_the_log_alone_recovers_every_write() {
        let writes: Vec<RaftWrite> = (1..=20).map(|i| append(i, 100)).collect();
        let (expected, recovered) = write_and_recover(&writes, 64 << 20);
        assert_eq!(recovered, expected);
    }
}
