//! The storage writer: a dedicated thread that owns the write-ahead log and commits in
//! groups. The driver hands it writes; it appends every write that is waiting, makes them
//! durable with one fsync, and publishes how far durability reached. Under load, one
//! fsync covers many writes; when idle, a lone write is synced at once.
//!
//! Optionally (`group_commit`, off by default), once an fsync has covered several
//! writes the next waits until a short window after it began, so more writes join it:
//! fewer fsyncs and wake-ups, at the cost of holding every write back by up to the
//! window, which halves what a few concurrent clients get (see
//! `NodeConfig::group_commit_us`).
//!
//! It also folds the writes into the protocol's durable state, exactly as recovery would,
//! and every so often has that state written as a checkpoint that replaces the log files
//! before it, so with snapshots compacting the protocol's log, the disk stays bounded.
//! A checkpoint is written only when it would at least halve the log (by the protocol's
//! estimate of its state's size): a state that grows with the log, like PBFT's executed
//! batches kept until its next snapshot, is not copied again and again for nothing.
//! The checkpoint is written by a thread of its own at the lowest priority while the
//! writer goes on appending and syncing: encoding a large state takes seconds, and a
//! replica whose log stops for seconds stops acknowledging, so its leader stops sending
//! it entries and the requests it forwarded wait.

use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ekmat_core::{Durable, Replica};
use ekmat_storage::{CheckpointJob, Wal, WrittenCheckpoint};
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

/// A checkpoint written on its own thread: its size and how long it took, once done.
type CheckpointDone = Result<(WrittenCheckpoint, u64, Duration), String>;

struct State<P: RuntimeProtocol> {
    wal: Wal,
    stable: StableOf<P>,
    /// Log bytes written since the last checkpoint began, and that checkpoint's size.
    since_checkpoint: u64,
    last_checkpoint: u64,
    checkpoint_bytes: u64,
    /// Bytes added to the first checkpoint's threshold (see `NodeConfig::stagger`).
    stagger: u64,
    /// Log bytes since the last checkpoint before its state is worth rewriting, by the
    /// protocol's last estimate of the state's size (see [`State::grown_enough`]).
    worth_it_at: u64,
    /// The checkpoint being written, if one is.
    checkpointing: Option<std_mpsc::Receiver<CheckpointDone>>,
    /// A compaction was folded into `stable` but into no checkpoint yet.
    compaction_pending: bool,
}

/// Start the writer over `wal`, whose records fold into `stable`. The log is
/// checkpointed once it has grown by `checkpoint_bytes` and by twice the last
/// checkpoint's size (so rewriting a large state stays a small fraction of the writing),
/// and holds twice the state (so the rewrite at least halves it).
pub fn spawn<P: RuntimeProtocol>(
    wal: Wal,
    stable: StableOf<P>,
    checkpoint_bytes: u64,
    stagger: u64,
    group_commit: Duration,
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
        worth_it_at: 0,
        checkpointing: None,
        compaction_pending: false,
    };
    let fail = move |tx: &watch::Sender<Durability>, e: String| {
        tx.send_modify(|d| d.failed = Some(format!("write-ahead log failed: {e}")));
    };
    let thread = std::thread::Builder::new()
        .name("ekmat-wal-writer".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            let mut last_sync: Option<(Instant, usize)> = None;
            while let Some(first) = rx.blocking_recv() {
                let wait = last_sync.map_or(Duration::ZERO, |(began, writes)| {
                    group_commit_wait(writes, began.elapsed(), group_commit)
                });
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
                last_sync = Some((Instant::now(), 0));
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
                    return fail(&tx, e);
                }
                if let Some((_, writes)) = &mut last_sync {
                    *writes = batch.len();
                }
                tx.send_replace(Durability {
                    seq: last,
                    failed: None,
                });
                batch.clear();
                if let Err(e) = state.checkpoint_if_due() {
                    return fail(&tx, e);
                }
            }
            // Stopping: a checkpoint under way is finished, not left half-written.
            if let Err(e) = state.finish_checkpoint(true) {
                fail(&tx, e);
            }
        })
        .expect("spawning the writer thread");
    Writer {
        queue,
        durable,
        thread,
    }
}

/// How long to hold the next fsync back: until `window` after the last one began, if
/// that one covered several writes (so they are coming faster than one fsync each); not
/// at all after a lone write, which a lone client waits for.
fn group_commit_wait(last_writes: usize, since_last: Duration, window: Duration) -> Duration {
    if last_writes < 2 {
        return Duration::ZERO;
    }
    window.saturating_sub(since_last)
}

impl<P: RuntimeProtocol> State<P> {
    fn write_batch(&mut self, batch: &[(u64, WriteOf<P>)]) -> Result<(), String> {
        for (_, write) in batch {
            self.stable.apply(write);
            if <StableOf<P> as Durable<WriteOf<P>>>::is_compaction(write) {
                // Lost in a crash, it costs nothing (see `Durable::is_compaction`); in
                // the log it would hold up every write after it while hundreds of
                // megabytes are copied and written.
                self.compaction_pending = true;
                continue;
            }
            let bytes = postcard::to_stdvec(write).map_err(|e| e.to_string())?;
            self.wal.append(&bytes).map_err(|e| e.to_string())?;
            self.since_checkpoint += bytes.len() as u64;
        }
        let started = Instant::now();
        self.wal.sync().map_err(|e| e.to_string())?;
        metrics::histogram!("ekmat_fsync_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("ekmat_fsync_batch_writes").record(batch.len() as f64);
        Ok(())
    }

    /// Finish a checkpoint that is done, and start one if the log has grown enough.
    fn checkpoint_if_due(&mut self) -> Result<(), String> {
        self.finish_checkpoint(false)?;
        if self.checkpointing.is_some() || !(self.compaction_pending || self.grown_enough()) {
            return Ok(());
        }
        self.compaction_pending = false;
        let job = self.wal.begin_checkpoint().map_err(|e| e.to_string())?;
        self.checkpointing = Some(write_checkpoint::<P>(job, self.stable.clone()));
        self.since_checkpoint = 0;
        self.stagger = 0;
        self.worth_it_at = 0;
        Ok(())
    }

    /// Whether the log has grown by `checkpoint_bytes` and by twice the last checkpoint,
    /// and now holds at least twice what a checkpoint would (where the protocol can
    /// tell). Estimating walks the state, so a "not yet" is remembered as the growth
    /// that would make it worth it.
    fn grown_enough(&mut self) -> bool {
        let threshold = self
            .checkpoint_bytes
            .max(2 * self.last_checkpoint)
            .max(self.worth_it_at)
            + self.stagger;
        if self.since_checkpoint < threshold {
            return false;
        }
        let Some(state) = self.stable.encoded_len_hint() else {
            return true;
        };
        if self.last_checkpoint + self.since_checkpoint >= 2 * state {
            return true;
        }
        self.worth_it_at = (2 * state).saturating_sub(self.last_checkpoint);
        false
    }

    /// If a checkpoint is being written and is done (or `wait`), let it replace the log
    /// before it.
    fn finish_checkpoint(&mut self, wait: bool) -> Result<(), String> {
        let Some(done) = &self.checkpointing else {
            return Ok(());
        };
        let result = if wait {
            done.recv()
                .map_err(|_| std_mpsc::TryRecvError::Disconnected)
        } else {
            done.try_recv()
        };
        let (written, bytes, took) = match result {
            Ok(result) => result.map_err(|e| format!("checkpoint failed: {e}"))?,
            Err(std_mpsc::TryRecvError::Empty) => return Ok(()),
            Err(std_mpsc::TryRecvError::Disconnected) => {
                return Err("the checkpoint thread died".into());
            }
        };
        self.checkpointing = None;
        self.wal
            .finish_checkpoint(written)
            .map_err(|e| e.to_string())?;
        self.last_checkpoint = bytes;
        metrics::counter!("ekmat_wal_checkpoints_total").increment(1);
        tracing::info!(
            bytes,
            took_ms = took.as_millis() as u64,
            "checkpointed the write-ahead log"
        );
        Ok(())
    }
}

/// Encode `stable` straight into the checkpoint file, on a thread of its own at the
/// lowest priority. The receiver hears once, when it is durable (or failed).
fn write_checkpoint<P: RuntimeProtocol>(
    job: CheckpointJob,
    stable: StableOf<P>,
) -> std_mpsc::Receiver<CheckpointDone> {
    let (tx, rx) = std_mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("ekmat-checkpoint".into())
        .spawn(move || {
            crate::driver::snapshot::lower_priority();
            let started = Instant::now();
            let result = postcard::experimental::serialized_size(&stable)
                .map_err(|e| e.to_string())
                .and_then(|len| {
                    job.write(len, |out| {
                        postcard::to_io(&stable, out)
                            .map(drop)
                            .map_err(std::io::Error::other)
                    })
                    .map(|written| (written, len as u64, started.elapsed()))
                    .map_err(|e| e.to_string())
                });
            // The writer may have stopped waiting (its own failure): nothing to tell.
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        let (tx, failed) = std_mpsc::sync_channel(1);
        let _ = tx.send(Err(format!("cannot start the checkpoint thread: {e}")));
        return failed;
    }
    rx
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use ekmat_core::Membership;
    use ekmat_core::{NodeId, RequestId};
    use ekmat_raft::{Entry, Payload, RaftStable, RaftWrite, Snapshot};

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
    fn write_and_recover(
        writes: &[RaftWrite],
        checkpoint_bytes: u64,
    ) -> (RaftStable, RaftStable, usize) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = NodeConfig::new("t", 0, dir.path().to_path_buf(), Vec::new());
        let (wal, stable) = crate::node::recover::<Raft>(&cfg).unwrap();
        let w = spawn::<Raft>(wal, stable, checkpoint_bytes, 0, Duration::from_millis(1));
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
        let checkpoints = std::fs::read_dir(dir.path().join("wal"))
            .map(|files| {
                files
                    .filter(|f| {
                        f.as_ref().unwrap().path().extension() == Some("checkpoint".as_ref())
                    })
                    .count()
            })
            .unwrap_or(0);
        let (_, recovered) = crate::node::recover::<Raft>(&cfg).unwrap();
        (expected, recovered, checkpoints)
    }

    #[test]
    fn writes_checkpointed_while_the_log_goes_on_are_recovered() {
        let mut writes = vec![RaftWrite::HardState {
            term: 1,
            vote: Some(NodeId(0)),
        }];
        // Large writes over the same four indexes (as new leaders overwrite entries): the
        // log outgrows the state, and every few writes cross the threshold and become a
        // checkpoint.
        writes.extend((0..40).map(|i| append(i % 4 + 1, 10_000)));
        let (expected, recovered, checkpoints) = write_and_recover(&writes, 32 << 10);
        assert_eq!(recovered, expected);
        assert_eq!(recovered.log.len(), 4);
        assert_eq!(
            checkpoints, 1,
            "the last checkpoint replaced the ones before it"
        );
    }

    #[test]
    fn a_log_that_holds_little_besides_its_state_is_not_rewritten() {
        // Every write stays in the state: a checkpoint would be as large as the log.
        let writes: Vec<RaftWrite> = (1..=40).map(|i| append(i, 10_000)).collect();
        let (expected, recovered, checkpoints) = write_and_recover(&writes, 32 << 10);
        assert_eq!(recovered, expected);
        assert_eq!(recovered.log.len(), 40);
        assert_eq!(checkpoints, 0, "400 KB of log past a 32 KB threshold");
    }

    #[test]
    fn a_compaction_goes_into_a_checkpoint_at_once_not_into_the_log() {
        let mut writes: Vec<RaftWrite> = (1..=30).map(|i| append(i, 100)).collect();
        writes.push(RaftWrite::Compact {
            snapshot: Snapshot {
                index: 20,
                term: 1,
                membership: Membership::default(),
                data: Bytes::from(vec![5; 50_000]),
            },
            keep_from: 15,
        });
        writes.extend((31..=35).map(|i| append(i, 100)));
        // Far below the size threshold: only the compaction asks for the checkpoint.
        let (expected, recovered, checkpoints) = write_and_recover(&writes, 64 << 20);
        assert_eq!(recovered, expected);
        assert_eq!(recovered.snapshot.as_ref().map(|s| s.index), Some(20));
        assert_eq!(recovered.log.first().map(|e| e.index), Some(15));
        assert_eq!(checkpoints, 1);
    }

    #[test]
    fn only_writes_coming_faster_than_fsyncs_wait_for_company() {
        let window = Duration::from_millis(1);
        let us = Duration::from_micros;
        assert_eq!(group_commit_wait(1, us(100), window), Duration::ZERO);
        assert_eq!(group_commit_wait(0, us(0), window), Duration::ZERO);
        assert_eq!(group_commit_wait(2, us(300), window), us(700));
        assert_eq!(group_commit_wait(50, us(1500), window), Duration::ZERO);
        assert_eq!(
            group_commit_wait(50, us(10), Duration::ZERO),
            Duration::ZERO
        );
    }

    #[test]
    fn without_a_checkpoint_the_log_alone_recovers_every_write() {
        let writes: Vec<RaftWrite> = (1..=20).map(|i| append(i, 100)).collect();
        let (expected, recovered, checkpoints) = write_and_recover(&writes, 64 << 20);
        assert_eq!(recovered, expected);
        assert_eq!(checkpoints, 0);
    }
}
