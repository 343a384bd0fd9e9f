//! Writing a checkpoint beside a live log without starving the log's fsyncs.
//!
//! A checkpoint is the whole state, hundreds of megabytes for a large store. Written
//! through the page cache and synced once at the end, it reached the disk as one burst
//! (measured: 350–430 MB/s for a second and more, a PBFT member's state of ~270 MB),
//! and every fsync of the log waited behind it: the log's writes fell from ~9,000 to
//! ~600–1,300 a second, their wait from 0.08 to 3–8 ms, and a 4-member cluster's p99
//! rose from 50 ms to 700 ms, refusing a sixth of its requests. Synced a chunk at a
//! time, with a pause as long as each chunk's sync took, a checkpoint keeps at most one
//! chunk ahead of the log's next fsync and takes at most half the disk's time.

use std::fs::File;
use std::io::{self, Write};
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

/// Bytes a checkpoint writes between syncs of its own.
const CHUNK: u64 = 1 << 20;

/// The longest pause after one chunk: a slow disk slows a checkpoint, not much more.
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// Writes to `file` (unbuffered: put a `BufWriter` on top), syncing and pausing every
/// [`CHUNK`] bytes when `sync` is on.
pub(crate) struct Paced<'a> {
    file: &'a File,
    sync: bool,
    written: u64,
    synced: u64,
}

impl<'a> Paced<'a> {
    pub(crate) fn new(file: &'a File, sync: bool) -> Self {
        Paced {
            file,
            sync,
            written: 0,
            synced: 0,
        }
    }

    /// The fsyncs made so far: one per whole chunk (writes never cross a chunk's end).
    pub(crate) fn syncs(&self) -> u64 {
        self.synced / CHUNK
    }

    fn sync_chunk(&mut self) -> io::Result<()> {
        let started = Instant::now();
        self.file.sync_data()?;
        let took = started.elapsed();
        // Recovery alone reads a checkpoint back: its synced pages are dropped from the
        // page cache, so the next chunk reuses them rather than growing the cache by the
        // whole state (and the drop is only advice: a kernel that ignores it loses nothing).
        if let Some(len) = NonZeroU64::new(self.written - self.synced) {
            let _ = rustix::fs::fadvise(
                self.file,
                self.synced,
                Some(len),
                rustix::fs::Advice::DontNeed,
            );
        }
        self.synced = self.written;
        std::thread::sleep(took.min(MAX_PAUSE));
        Ok(())
    }
}

impl Write for Paced<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Never past the chunk: a state serialized as one large slice (a snapshot's
        // bytes) would otherwise go to the kernel, and to the disk, in one piece.
        let room = match self.sync {
            true => (CHUNK - (self.written - self.synced)) as usize,
            false => buf.len(),
        };
        let n = self.file.write(&buf[..buf.len().min(room)])?;
        self.written += n as u64;
        if self.sync && self.written - self.synced >= CHUNK {
            self.sync_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // nothing is held here; the caller syncs the file when it is whole
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn without_sync_it_only_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let file = File::create(&path).unwrap();
        let data = vec![7u8; 3 * CHUNK as usize];
        let mut out = Paced::new(&file, false);
        out.write_all(&data).unwrap();
        out.write_all(&data).unwrap();
        assert_eq!(out.syncs(), 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 6 * CHUNK);
    }

    #[test]
    fn syncs_every_chunk_and_writes_every_byte_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let file = File::create(&path).unwrap();
        let data: Vec<u8> = (0..(3 * CHUNK + 12_345)).map(|i| (i % 251) as u8).collect();
        let mut out = io::BufWriter::with_capacity(64 << 10, Paced::new(&file, true));
        let (small, large) = data.split_at(CHUNK as usize / 2 + 7);
        for piece in small.chunks(100_003) {
            out.write_all(piece).unwrap();
        }
        out.write_all(large).unwrap(); // past the buffer: handed on whole
        out.flush().unwrap();
        assert_eq!(
            out.get_ref().syncs(),
            3,
            "one sync per whole chunk, a large slice too"
        );
        drop(out);
        let mut back = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut back).unwrap();
        assert!(back == data, "the file holds what was written");
    }
}
