//! The write-ahead log: append, group-commit `sync`, checkpoints, and opening with recovery.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, WalError};
use crate::paced::Paced;
use crate::record::{self, HEADER_LEN, Kind, MAX_PAYLOAD};
use crate::recovery::{self, Recovery};
use crate::segment::{self, ActiveSegment};

/// How the log behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// A segment rolls over to a new file once the next record would take it past this many
    /// bytes. A segment always takes at least one data record, so a record larger than this
    /// gets a segment of its own. Default 64 MiB.
    pub segment_bytes: u64,
    /// **Whether to fsync at all. `false` makes nothing durable: a power loss or kernel
    /// crash can lose any record, including ones `sync` "acknowledged".** Only for
    /// benchmarks and tests that measure or exercise everything but the disk. Default `true`.
    pub sync: bool,
    /// Keep the last segment zero-filled ahead of its records, so that a sync overwrites
    /// blocks the file already has instead of growing it (no journal commit for the new
    /// size). Costs writing each byte of the log twice, once as a zero, so it is done
    /// only while appends between syncs are small (see `segment.rs`). Default `true`.
    pub preallocate: bool,
    /// How many segments a checkpoint replaced are kept, renamed, to be written over as
    /// new segments instead of deleted (if at least half `segment_bytes` long). Writing
    /// over a file's blocks, and pages the kernel may still cache, costs about half the
    /// CPU of writing a new file, and its fsyncs commit no metadata. Costs that much disk
    /// beside the log once appends stop (under load, the spares become segments as fast
    /// as the checkpoint made them). Unless 0, the checkpoint file a newer one replaced
    /// is kept too, for the next checkpoint [`CheckpointJob::write`] writes. 0 deletes
    /// them all. Default 8.
    pub spare_segments: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            sync: true,
            preallocate: true,
            spare_segments: 8,
        }
    }
}

/// Everything the log held at [`Wal::open`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The state given to the newest durable [`Wal::checkpoint`], if any.
    pub checkpoint: Option<Vec<u8>>,
    /// Every record appended after that checkpoint (or ever, without one), in order.
    pub records: Vec<Vec<u8>>,
    /// The sequence number of `records[0]`: one past what the checkpoint covers, or 1.
    pub first_seq_after_checkpoint: u64,
    /// The sequence number of the last record (covered by the checkpoint or in `records`);
    /// 0 for an empty log. The next append gets `last_seq + 1`.
    pub last_seq: u64,
    /// The torn tail cut off the last segment, if a crash left one.
    pub repaired: Option<TornTail>,
}

/// An incomplete or damaged last record, left by a crash in the middle of a write and cut
/// off at recovery. Nothing in it had been acknowledged by [`Wal::sync`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment it was in.
    pub file: PathBuf,
    /// Where the file now ends: the end of its last good record.
    pub offset: u64,
    /// How many bytes were cut off.
    pub discarded_bytes: u64,
}

/// Counters for metrics, cheap to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Bytes handed to the kernel since open (records, checkpoints, zeros written ahead).
    pub bytes_written: u64,
    /// `sync` calls that had something new to make durable.
    pub syncs: u64,
    /// fsync system calls issued (files and the directory).
    pub fsyncs: u64,
    /// Segment files currently making up the log.
    pub segments: u64,
    /// Replaced segments kept to be written over (see [`WalOptions::spare_segments`]).
    pub spares: u64,
    /// The last sequence number appended.
    pub last_seq: u64,
    /// The last sequence number known durable.
    pub durable_seq: u64,
}

/// A durable, append-only log of opaque records. See the crate documentation for the
/// durability contract and the file format.
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    active: ActiveSegment,
    /// Bases of the segment files that make up the log, in order; the last is `active`.
    live: Vec<u64>,
    /// Replaced segments to write new ones over, oldest first.
    spares: Vec<PathBuf>,
    last_seq: u64,
    durable_seq: u64,
    /// A segment file was created since the directory was last fsynced.
    dir_dirty: bool,
    /// A write or fsync failed; see [`WalError::Poisoned`].
    poisoned: bool,
    bytes_written: u64,
    syncs: u64,
    fsyncs: u64,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("opts", &self.opts)
            .field("active", &self.active.path)
            .field("last_seq", &self.last_seq)
            .field("durable_seq", &self.durable_seq)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Opens the log in `dir`, creating the directory if needed, and reads back everything
    /// in it. A torn tail is cut off and reported in [`Recovered::repaired`]; any other
    /// damage fails with [`WalError::Corrupt`] and leaves the files untouched.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Recovered)> {
        ensure_dir(dir, opts.sync)?;
        let Recovery {
            recovered,
            tail,
            mut live,
            mut spares,
        } = recovery::recover(dir, &opts)?;
        // Fewer allowed than a run with other options left.
        let extra = spares.len().saturating_sub(opts.spare_segments);
        for spare in spares.drain(..extra) {
            remove(&spare, &mut None);
        }
        if opts.spare_segments == 0 {
            remove(&dir.join(segment::CHECKPOINT_SPARE), &mut None);
        }
        let active = match tail {
            Some(tail) => ActiveSegment::open(tail, opts.preallocate)?,
            None => {
                // Empty, or everything is in a checkpoint file: appends go on after it.
                let base = recovered.last_seq + 1;
                live.push(base);
                ActiveSegment::create(dir, base, opts.preallocate)?
            }
        };
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            opts,
            active,
            live,
            spares,
            last_seq: recovered.last_seq,
            durable_seq: recovered.last_seq,
            dir_dirty: true,
            poisoned: false,
            bytes_written: 0,
            syncs: 0,
            fsyncs: 0,
        };
        wal.make_recovered_durable()?;
        Ok((wal, recovered))
    }

    /// What was recovered may only have reached the page cache (the previous process may
    /// have exited without syncing); one fsync now makes `durable_seq = last_seq` true.
    fn make_recovered_durable(&mut self) -> Result<()> {
        if self.opts.sync {
            self.active.fsync()?;
            self.fsyncs += 1;
        }
        self.sync_dir()
    }

    /// Buffers one record and returns its sequence number: one more than the last record's,
    /// across restarts and checkpoints. Not durable until [`Wal::sync`] returns a number at
    /// least as large.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64> {
        self.usable()?;
        check_size(payload)?;
        let seq = self.last_seq + 1;
        let result = self.append_record(seq, payload);
        self.poison_on_error(result)?;
        self.last_seq = seq;
        Ok(seq)
    }

    fn append_record(&mut self, seq: u64, payload: &[u8]) -> Result<()> {
        let record_len = (HEADER_LEN + payload.len()) as u64;
        let full = self.active.len().saturating_add(record_len) > self.opts.segment_bytes;
        if full && self.active.data_records > 0 {
            self.roll(seq)?;
        }
        self.bytes_written += self.active.push(seq, payload)?;
        Ok(())
    }

    /// Starts a new segment whose first record will be `base`.
    fn roll(&mut self, base: u64) -> Result<()> {
        // Recovery treats damage in any segment but the last as corruption, so the old
        // segment, and its directory entry, must be complete on disk before a newer one
        // exists, without the zeros written ahead of its records. This costs an fsync per
        // segment, not per batch.
        self.bytes_written += self.active.finish()?;
        if self.opts.sync && self.active.needs_fsync() {
            self.active.fsync()?;
            self.fsyncs += 1;
        }
        if self.dir_dirty {
            self.sync_dir()?;
        }
        self.active = self.new_segment(base)?;
        self.live.push(base);
        Ok(())
    }

    /// A new segment of this base, written over a spare if there is one (the
    /// highest-named: replaced last, its pages are the likeliest to be cached).
    fn new_segment(&mut self, base: u64) -> Result<ActiveSegment> {
        while let Some(spare) = self.spares.pop() {
            // One removed behind the log's back: a new file does as well.
            if !spare.exists() {
                continue;
            }
            let segment = ActiveSegment::reuse(&self.dir, base, &spare, self.opts.preallocate)?;
            // The rename is durable before any record goes into the file. An fdatasync
            // of a file written over commits no metadata, so records could otherwise
            // be durable in a file still named as a spare after a crash, with sequence
            // numbers that are no longer stale when it is reused at this base again.
            self.dir_dirty = true;
            self.sync_dir()?;
            return Ok(segment);
        }
        // Its directory entry is made durable by the next sync, with its records.
        self.dir_dirty = true;
        ActiveSegment::create(&self.dir, base, self.opts.preallocate)
    }

    /// Writes every buffered record and fsyncs (the file's data, and the directory if a
    /// segment was created since the last sync). Returns the highest durable sequence
    /// number: every record up to it survives a crash. One call covers all the appends
    /// before it (group commit); with nothing new it does no I/O.
    pub fn sync(&mut self) -> Result<u64> {
        self.usable()?;
        let result = self.sync_active();
        self.poison_on_error(result)?;
        self.durable_seq = self.last_seq;
        Ok(self.durable_seq)
    }

    fn sync_active(&mut self) -> Result<()> {
        if self.last_seq > self.durable_seq || self.dir_dirty {
            self.syncs += 1;
        }
        self.bytes_written += self.active.flush()?;
        if self.opts.sync && self.active.needs_fsync() {
            self.active.fsync()?;
            self.fsyncs += 1;
        }
        self.sync_dir()
    }

    /// Makes `state` — the caller's serialized fold of every record so far — the log's new
    /// starting point, and deletes the segments it replaces. When this returns `Ok`, the
    /// checkpoint is durable and covers every record appended so far (buffered ones too:
    /// they need no separate `sync`).
    ///
    /// The checkpoint goes into a new segment under a temporary name, is fsynced, renamed
    /// into place, and the directory fsynced; only then are older segments deleted. A
    /// crash before the rename is durable recovers the old log; after it, the checkpoint
    /// and what follows (recovery deletes old segments a crash left behind).
    ///
    /// If deleting an old segment fails, the checkpoint still stands: the error is
    /// returned, the log stays usable, and the next checkpoint (or open) retries.
    pub fn checkpoint(&mut self, state: &[u8]) -> Result<()> {
        self.usable()?;
        check_size(state)?;
        let result = self.write_checkpoint(state);
        self.poison_on_error(result)?;
        self.delete_obsolete()
    }

    fn write_checkpoint(&mut self, state: &[u8]) -> Result<()> {
        let covered = self.last_seq;
        let base = covered + 1;
        // Buffered records are covered by the checkpoint, so they need no fsync; writing
        // them out keeps the old segment a faithful prefix if we crash before the rename.
        self.bytes_written += self.active.finish()?;
        let mut bytes = Vec::with_capacity(HEADER_LEN + state.len());
        record::encode(Kind::Checkpoint, covered, state, &mut bytes);
        let tmp = self.dir.join(segment::tmp_name(base));
        let path = self.dir.join(segment::file_name(base));
        self.write_synced(&tmp, &bytes)?;
        // Renaming over an existing file is atomic, which matters in one case: a second
        // checkpoint with no record since replaces the first one's segment of that name.
        fs::rename(&tmp, &path).map_err(WalError::io(&path))?;
        // The rename must be durable before any old segment goes, or a crash could leave
        // neither the old log nor the checkpoint.
        self.dir_dirty = true;
        self.sync_dir()?;
        let tail = recovery::Tail {
            base,
            path,
            len: bytes.len() as u64,
            file_len: bytes.len() as u64,
            stale_until: 0,
            data_records: 0,
        };
        self.active = ActiveSegment::open(tail, self.opts.preallocate)?;
        self.durable_seq = covered;
        Ok(())
    }

    /// Starts a checkpoint of every record appended so far that the caller writes with
    /// [`CheckpointJob::write`] — on another thread, while appends and syncs go on here —
    /// and then hands to [`Wal::finish_checkpoint`], which deletes what it replaced.
    ///
    /// Unlike [`Wal::checkpoint`], this makes nothing durable: the records it covers stay
    /// in the log until the checkpoint is finished, so a crash at any point recovers them
    /// either way. The log rolls over to a new segment here (one fsync of the old one), so
    /// the checkpoint replaces whole segments.
    pub fn begin_checkpoint(&mut self) -> Result<CheckpointJob> {
        self.usable()?;
        let base = self.last_seq + 1;
        if self.active.data_records > 0 {
            let result = self.roll(base);
            self.poison_on_error(result)?;
        }
        debug_assert_eq!(
            self.active.base, base,
            "an empty segment starts at the next seq"
        );
        Ok(CheckpointJob {
            dir: self.dir.clone(),
            base,
            sync: self.opts.sync,
            spares: self.spare_room(),
        })
    }

    /// Forgets the segments that a written checkpoint replaced (its writer removed them
    /// and the older checkpoint files). If a removal failed, the checkpoint still stands:
    /// the error is returned, the log stays usable, and the next checkpoint (or open)
    /// retries.
    pub fn finish_checkpoint(&mut self, done: WrittenCheckpoint) -> Result<()> {
        self.usable()?;
        debug_assert!(done.base <= self.active.base, "checkpoints cover the past");
        self.bytes_written += done.bytes;
        self.fsyncs += done.fsyncs;
        let left = done.left_behind;
        self.spares.extend(left.spared);
        self.live.retain(|&base| {
            base >= done.base
                || left
                    .segments
                    .as_ref()
                    .is_none_or(|kept| kept.contains(&base))
        });
        left.error.map_or(Ok(()), Err)
    }

    /// Writes a whole file and fsyncs it.
    fn write_synced(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        let mut file = File::create(path).map_err(WalError::io(path))?;
        file.write_all(bytes).map_err(WalError::io(path))?;
        self.bytes_written += bytes.len() as u64;
        if self.opts.sync {
            file.sync_data().map_err(WalError::io(path))?;
            self.fsyncs += 1;
        }
        Ok(())
    }

    /// Deletes every segment before the active one, and checkpoint files it supersedes.
    /// No directory fsync: if a crash undoes
    /// a deletion, recovery finds the newer checkpoint and deletes the segment again.
    fn delete_obsolete(&mut self) -> Result<()> {
        let keep = self.active.base;
        let dir = &self.dir;
        let mut first_error = None;
        let mut retiring = Retiring::new(self.spare_room());
        self.live
            .retain(|&base| base != keep && retiring.retire(dir, base, &mut first_error));
        self.spares.extend(retiring.spared);
        // The checkpoint's own segment is new, or replaced one of the same name.
        self.live.push(keep);
        // A checkpoint file of the same base covers the same records: this one replaces it.
        remove_checkpoint_files_below(dir, keep + 1, &mut first_error)?;
        first_error.map_or(Ok(()), Err)
    }

    /// How many more replaced segments may be kept as spares.
    fn spare_room(&self) -> SpareRoom {
        SpareRoom {
            count: self.opts.spare_segments.saturating_sub(self.spares.len()),
            min_len: self.opts.segment_bytes / 2,
            checkpoint: self.opts.spare_segments > 0,
        }
    }

    fn sync_dir(&mut self) -> Result<()> {
        if self.dir_dirty && self.opts.sync {
            segment::sync_dir(&self.dir)?;
            self.fsyncs += 1;
        }
        self.dir_dirty = false;
        Ok(())
    }

    fn usable(&self) -> Result<()> {
        if self.poisoned {
            return Err(WalError::Poisoned {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    fn poison_on_error<T>(&mut self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// The last sequence number appended (0 if none ever was).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The last sequence number known durable.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options the log was opened with.
    pub fn options(&self) -> WalOptions {
        self.opts
    }

    /// Counters for metrics; no I/O.
    pub fn stats(&self) -> WalStats {
        WalStats {
            bytes_written: self.bytes_written,
            syncs: self.syncs,
            fsyncs: self.fsyncs,
            segments: self.live.len() as u64,
            spares: self.spares.len() as u64,
            last_seq: self.last_seq,
            durable_seq: self.durable_seq,
        }
    }
}

/// Removes a file; records the first failure and returns whether it is still there.
fn remove(path: &Path, first_error: &mut Option<WalError>) -> bool {
    match fs::remove_file(path) {
        Ok(()) => false,
        Err(err) if err.kind() == io::ErrorKind::NotFound => false,
        Err(err) => {
            first_error.get_or_insert(WalError::io(path)(err));
            true
        }
    }
}

/// How many replaced segments may become spares, and how long one must be to.
#[derive(Clone, Copy, Debug)]
struct SpareRoom {
    count: usize,
    min_len: u64,
    /// Whether to keep a replaced checkpoint file as [`segment::CHECKPOINT_SPARE`].
    checkpoint: bool,
}

/// Replaced segments on their way out: kept as spares while there is room, else removed.
struct Retiring {
    room: SpareRoom,
    spared: Vec<PathBuf>,
}

impl Retiring {
    fn new(room: SpareRoom) -> Retiring {
        Retiring {
            room,
            spared: Vec::new(),
        }
    }

    /// Renames segment `base` to a spare or removes it; records the first failure and
    /// returns whether it is still there as a segment. Not made durable: a crash that
    /// undoes the rename leaves a segment the checkpoint replaced, which recovery
    /// removes, and one that keeps it a spare, which recovery does not read.
    fn retire(&mut self, dir: &Path, base: u64, first_error: &mut Option<WalError>) -> bool {
        let path = dir.join(segment::file_name(base));
        let long_enough = || fs::metadata(&path).is_ok_and(|m| m.len() >= self.room.min_len);
        if self.spared.len() < self.room.count && long_enough() {
            let spare = dir.join(segment::spare_name(base));
            if fs::rename(&path, &spare).is_ok() {
                self.spared.push(spare);
                return false;
            }
        }
        remove(&path, first_error)
    }
}

/// Removes the checkpoint files whose base is below `limit` (recording the first
/// failure, as [`remove`] does).
fn remove_checkpoint_files_below(
    dir: &Path,
    limit: u64,
    first_error: &mut Option<WalError>,
) -> Result<()> {
    remove_checkpoints_below(&segment::list(dir)?.checkpoints, limit, first_error);
    Ok(())
}

fn remove_checkpoints_below(
    checkpoints: &[segment::SegmentFile],
    limit: u64,
    first_error: &mut Option<WalError>,
) {
    for old in checkpoints.iter().filter(|old| old.base < limit) {
        remove(&old.path, first_error);
    }
}

/// A checkpoint started by [`Wal::begin_checkpoint`], to be written on any thread.
#[derive(Debug)]
pub struct CheckpointJob {
    dir: PathBuf,
    base: u64,
    sync: bool,
    spares: SpareRoom,
}

/// A checkpoint on disk, durable, waiting for [`Wal::finish_checkpoint`].
#[derive(Debug)]
pub struct WrittenCheckpoint {
    base: u64,
    bytes: u64,
    fsyncs: u64,
    left_behind: LeftBehind,
}

/// What removing the files a checkpoint replaced left in place.
#[derive(Debug, Default)]
struct LeftBehind {
    /// The bases of the segments still there; `None` if the directory could not be read.
    segments: Option<Vec<u64>>,
    /// The segments kept as spares.
    spared: Vec<PathBuf>,
    error: Option<WalError>,
}

/// Removes the segments and checkpoint files below `base`, which a durable checkpoint
/// at `base` replaces. Done by the thread that wrote the checkpoint, not the log's:
/// unlinking a few 64 MiB segments took the log's writer 80–110 ms under load, and
/// every fsync behind it waited. Safe before [`Wal::finish_checkpoint`]: the log never
/// touches a segment below the one it appends to, and a crash leaves recovery to start
/// from the checkpoint and delete the rest itself.
fn remove_replaced(dir: &Path, base: u64, room: SpareRoom) -> LeftBehind {
    let listing = match segment::list(dir) {
        Ok(listing) => listing,
        Err(error) => {
            return LeftBehind {
                segments: None,
                spared: Vec::new(),
                error: Some(error),
            };
        }
    };
    let mut error = None;
    let mut retiring = Retiring::new(room);
    let segments = listing
        .segments
        .iter()
        .filter(|old| old.base < base && retiring.retire(dir, old.base, &mut error))
        .map(|old| old.base)
        .collect();
    let below = listing.checkpoints.partition_point(|old| old.base < base);
    let kept = below
        .checked_sub(1)
        .filter(|_| room.checkpoint)
        .is_some_and(|newest| {
            let spare = dir.join(segment::CHECKPOINT_SPARE);
            fs::rename(&listing.checkpoints[newest].path, spare).is_ok()
        });
    let removed = if kept { below - 1 } else { below };
    remove_checkpoints_below(&listing.checkpoints[..removed], base, &mut error);
    LeftBehind {
        segments: Some(segments),
        spared: retiring.spared,
        error,
    }
}

impl CheckpointJob {
    /// The last sequence number the checkpoint covers: the state written must be the
    /// fold of every record up to it.
    pub fn covers(&self) -> u64 {
        self.base - 1
    }

    /// Streams a state of exactly `len` bytes from `fill` into the checkpoint file (under
    /// a temporary name, fsynced, renamed into place, directory fsynced): the state is
    /// never held as one more buffer in memory.
    pub fn write(
        self,
        len: usize,
        fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<WrittenCheckpoint> {
        check_size_len(len)?;
        let tmp = self.dir.join(segment::checkpoint_tmp_name(self.base));
        let path = self.dir.join(segment::checkpoint_name(self.base));
        let file = self.create_over_spare(&tmp)?;
        let mut out = Checksummed {
            out: io::BufWriter::with_capacity(1 << 20, Paced::new(&file, self.sync)),
            record: record::Streamed::new(Kind::Checkpoint, self.covers(), len),
            written: 0,
        };
        out.out
            .write_all(&[0; HEADER_LEN])
            .and_then(|()| fill(&mut out))
            .and_then(|()| out.out.flush())
            .map_err(WalError::io(&tmp))?;
        if out.written != len as u64 {
            return Err(WalError::io(&tmp)(io::Error::other(format!(
                "the checkpoint's state was announced as {len} bytes but {} were written",
                out.written
            ))));
        }
        let header = out.record.header();
        let mut fsyncs = out.out.get_ref().syncs();
        drop(out.out);
        std::os::unix::fs::FileExt::write_all_at(&file, &header, 0).map_err(WalError::io(&tmp))?;
        // A spare written over may have been longer.
        file.set_len((HEADER_LEN + len) as u64)
            .map_err(WalError::io(&tmp))?;
        if self.sync {
            file.sync_data().map_err(WalError::io(&tmp))?;
            fsyncs += 1;
        }
        fs::rename(&tmp, &path).map_err(WalError::io(&path))?;
        // Durable before anything it replaces is deleted.
        if self.sync {
            segment::sync_dir(&self.dir)?;
            fsyncs += 1;
        }
        Ok(WrittenCheckpoint {
            base: self.base,
            bytes: (HEADER_LEN + len) as u64,
            fsyncs,
            left_behind: remove_replaced(&self.dir, self.base, self.spares),
        })
    }

    /// The file to write the checkpoint into under `tmp`: the spare checkpoint file if
    /// there is one (its blocks exist: see [`WalOptions::spare_segments`]), else a new one.
    fn create_over_spare(&self, tmp: &Path) -> Result<File> {
        let spare = self.dir.join(segment::CHECKPOINT_SPARE);
        if self.spares.checkpoint && fs::rename(&spare, tmp).is_ok() {
            return fs::OpenOptions::new()
                .write(true)
                .open(tmp)
                .map_err(WalError::io(tmp));
        }
        File::create(tmp).map_err(WalError::io(tmp))
    }
}

/// Passes writes on, checksumming and counting them.
struct Checksummed<W> {
    out: W,
    record: record::Streamed,
    written: u64,
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.record.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn check_size(payload: &[u8]) -> Result<()> {
    check_size_len(payload.len())
}

fn check_size_len(len: usize) -> Result<()> {
    if len > MAX_PAYLOAD {
        return Err(WalError::RecordTooLarge {
            len,
            max: MAX_PAYLOAD,
        });
    }
    Ok(())
}

/// Creates the directory if it is missing, durably (its entry in the parent is fsynced).
fn ensure_dir(dir: &Path, sync: bool) -> Result<()> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(WalError::io(dir)(io::Error::other(
            "exists but is not a directory",
        ))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(WalError::io(dir))?;
            if sync {
                let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
                segment::sync_dir(parent.unwrap_or(Path::new(".")))?;
            }
            Ok(())
        }
        Err(err) => Err(WalError::io(dir)(err)),
    }
}
