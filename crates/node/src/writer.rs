//! The storage writer: a dedicated thread that owns the write-ahead log and commits in
//! groups. The driver hands it writes; it appends every write that is waiting, makes them
//! durable with one fsync, and publishes how far durability reached. Under load, one
//! fsync covers many writes; when idle, a lone write is synced at once.

use std::thread::JoinHandle;
use std::time::Instant;

use ekmat_storage::Wal;
use tokio::sync::{mpsc, watch};

/// Writes queued before the driver waits (back-pressure instead of unbounded memory).
pub const QUEUE: usize = 16 * 1024;
/// Most writes gathered into one fsync.
const MAX_BATCH: usize = 4096;

/// How far the log is durable, in the driver's write sequence numbers, or why it
/// stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Durability {
    pub seq: u64,
    pub failed: Option<String>,
}

pub struct Writer {
    pub queue: mpsc::Sender<(u64, Vec<u8>)>,
    pub durable: watch::Receiver<Durability>,
    pub thread: JoinHandle<()>,
}

pub fn spawn(mut wal: Wal) -> Writer {
    let (queue, mut rx) = mpsc::channel::<(u64, Vec<u8>)>(QUEUE);
    let (tx, durable) = watch::channel(Durability::default());
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
                match write_batch(&mut wal, &batch) {
                    Ok(()) => {
                        tx.send_replace(Durability {
                            seq: last,
                            failed: None,
                        });
                    }
                    Err(e) => {
                        let failed = Some(format!("write-ahead log failed: {e}"));
                        tx.send_modify(|d| d.failed = failed);
                        return;
                    }
                }
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

fn write_batch(wal: &mut Wal, batch: &[(u64, Vec<u8>)]) -> Result<(), ekmat_storage::WalError> {
    for (_, bytes) in batch {
        wal.append(bytes)?;
    }
    let started = Instant::now();
    wal.sync()?;
    metrics::histogram!("ekmat_fsync_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("ekmat_fsync_batch_writes").record(batch.len() as f64);
    Ok(())
}
