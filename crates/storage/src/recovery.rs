//! Reading the log back at startup: find the newest checkpoint, read every record after it,
//! repair a torn tail, and refuse anything that could mean acknowledged records were lost.
//!
//! The rule that separates a crash from damage: a crash can only tear the *end* of the
//! *last* segment (every earlier segment was fsynced before the next one was created), so
//! a bad record there with nothing valid after it is a torn write, cut off and reported.
//! Anything else — a bad record with a valid one after it, a bad record in an earlier
//! segment (unless it is the end of a reused one's records, below), a sequence number
//! out of place, a missing segment — is corruption.
//!
//! A segment may end in zeros written ahead of its records (see
//! [`crate::WalOptions::preallocate`]): an all-zero rest is its clean end, left in place.
//! Zeros cannot hide records: the next segment's name says which sequence number comes
//! next, and a gap is corruption.
//!
//! The last segment may also be a reused spare (see [`crate::WalOptions::spare_segments`])
//! with records of an earlier part of the log after its own. Those are told apart by
//! their sequence numbers: every record a spare held belongs before the checkpoint that
//! replaced it, so more than one below the base of any segment made after, where a
//! record of the segment carries its base or more (or, a checkpoint leading it, one
//! less). The segment's records end at such a stale record, or at the end mark each
//! write puts after them (a record of its own kind carrying the next sequence number),
//! with nothing that could follow them behind it: a clean end, left in place.

use std::fs::{self, OpenOptions};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use crate::error::{Result, WalError};
use crate::record::{self, Decoded, HEADER_LEN, Kind};
use crate::segment::{self, SegmentFile};
use crate::wal::{Recovered, TornTail, WalOptions};

/// Recovery's result: what the caller gets, and where appending resumes.
#[derive(Debug)]
pub struct Recovery {
    pub recovered: Recovered,
    /// The last live segment, or `None` for an empty directory.
    pub tail: Option<Tail>,
    /// Bases of the live segments, in order.
    pub live: Vec<u64>,
    /// Replaced segments kept to be written over.
    pub spares: Vec<PathBuf>,
}

/// The last segment, where appends go next.
#[derive(Debug)]
pub struct Tail {
    pub base: u64,
    pub path: PathBuf,
    /// Bytes of records.
    pub len: u64,
    /// Bytes in the file: `len`, then zeros or stale bytes.
    pub file_len: u64,
    /// Up to here, bytes after the records may be stale (see the module's documentation).
    pub stale_until: u64,
    pub data_records: u64,
}

/// How far a segment's records go, and what follows them.
struct SegmentEnd {
    good: usize,
    after: After,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    /// Nothing: the records end the file.
    Nothing,
    /// Zeros written ahead of the records.
    Zeros,
    /// Bytes of the file's earlier life as another segment.
    Stale,
    /// A torn write, to be cut off.
    Torn,
}

/// Records read so far and the sequence number the next one must carry.
struct Reader {
    checkpoint: Option<Vec<u8>>,
    /// The checkpoint came from a checkpoint file; the log continues at `expected`.
    checkpoint_file: bool,
    records: Vec<Vec<u8>>,
    first_seq: u64,
    expected: u64,
}

pub fn recover(dir: &Path, opts: &WalOptions) -> Result<Recovery> {
    let listing = segment::list(dir)?;
    // A checkpoint that never got renamed into place was never part of the log.
    for tmp in &listing.leftover_tmp {
        remove(tmp)?;
    }
    let in_segment = newest_checkpoint(&listing.segments)?;
    let file = newest_checkpoint_file(&listing.checkpoints)?;
    // The newer of the two starting points wins; both name the first record after them.
    let segment_base = in_segment.map(|i| listing.segments[i].base);
    let (start, from_file) = match file {
        Some((base, state)) if segment_base.is_none_or(|s| base >= s) => {
            let first = listing.segments.partition_point(|s| s.base < base);
            (first, Some((base, state)))
        }
        _ => (in_segment.unwrap_or(0), None),
    };
    let base = from_file.as_ref().map(|(base, _)| *base);
    let (obsolete, live) = listing.segments.split_at(start);
    let mut recovery = read_live(live, opts, from_file)?;
    recovery.spares = listing.spares;
    // Only now that the rest is known good: a crash between a checkpoint and the deletion
    // of what it replaced leaves segments and older checkpoint files behind.
    for old in obsolete {
        remove(&old.path)?;
    }
    for old in &listing.checkpoints {
        if base.is_none_or(|base| old.base < base) {
            remove(&old.path)?;
        }
    }
    Ok(recovery)
}

/// Index of the newest segment that begins with a valid checkpoint of its own (not a
/// stale one, left from the file's life as an earlier segment).
fn newest_checkpoint(segments: &[SegmentFile]) -> Result<Option<usize>> {
    for (index, segment) in segments.iter().enumerate().rev() {
        let leading = segment::leading_checkpoint(&segment.path)?;
        if leading.is_some_and(|seq| seq.saturating_add(1) >= segment.base) {
            return Ok(Some(index));
        }
    }
    Ok(None)
}

/// Whether `record`, found in the segment of this base, is left from the file's life as
/// an earlier segment: its sequence number is below any this segment's records carry.
fn is_stale(record: &record::Record<'_>, base: u64) -> bool {
    record.seq.saturating_add(1) < base
}

/// The newest checkpoint file's base and state. It was fsynced before its rename, so
/// one that does not read back whole is damage, not a crash: the segments it replaced
/// may be gone, and starting from an older point could silently lose records.
fn newest_checkpoint_file(files: &[SegmentFile]) -> Result<Option<(u64, Vec<u8>)>> {
    let Some(newest) = files.last() else {
        return Ok(None);
    };
    let path = newest.path.as_path();
    let bytes = fs::read(path).map_err(WalError::io(path))?;
    let record = match record::decode(&bytes) {
        Decoded::Record(record) if record.kind == Kind::Checkpoint => record,
        Decoded::Record(_) => {
            return Err(WalError::corrupt(
                path,
                0,
                "a checkpoint file without a checkpoint",
            ));
        }
        Decoded::Incomplete(reason) | Decoded::Invalid(reason) => {
            return Err(WalError::corrupt(
                path,
                0,
                format!("damaged checkpoint: {reason}"),
            ));
        }
    };
    if record.seq.checked_add(1) != Some(newest.base) || record.encoded_len() != bytes.len() {
        return Err(WalError::corrupt(
            path,
            0,
            format!(
                "checkpoint covers records up to seq {} but its file is named for seq {} \
                 (or has bytes after its record)",
                record.seq, newest.base
            ),
        ));
    }
    Ok(Some((newest.base, record.payload.to_vec())))
}

fn read_live(
    live: &[SegmentFile],
    opts: &WalOptions,
    from_file: Option<(u64, Vec<u8>)>,
) -> Result<Recovery> {
    let (first_seq, checkpoint) = match from_file {
        Some((base, state)) => (base, Some(state)),
        None => (1, None),
    };
    let mut reader = Reader {
        checkpoint_file: checkpoint.is_some(),
        checkpoint,
        records: Vec::new(),
        first_seq,
        expected: first_seq,
    };
    let mut repaired = None;
    let mut tail = None;
    for (index, segment) in live.iter().enumerate() {
        let is_last = index + 1 == live.len();
        let bytes = fs::read(&segment.path).map_err(WalError::io(&segment.path))?;
        let before = reader.records.len();
        let end = reader.read_segment(segment, &bytes, index == 0, is_last)?;
        let mut file_len = bytes.len();
        if end.after == After::Torn {
            repaired = Some(truncate(segment, end.good, bytes.len(), opts)?);
            file_len = end.good;
        }
        if is_last {
            let stale_until = if end.after == After::Stale {
                file_len
            } else {
                end.good
            };
            tail = Some(Tail {
                base: segment.base,
                path: segment.path.clone(),
                len: end.good as u64,
                file_len: file_len as u64,
                stale_until: stale_until as u64,
                data_records: (reader.records.len() - before) as u64,
            });
        }
    }
    let last_seq = reader.expected - 1;
    Ok(Recovery {
        recovered: Recovered {
            checkpoint: reader.checkpoint,
            records: reader.records,
            first_seq_after_checkpoint: reader.first_seq,
            last_seq,
            repaired,
        },
        tail,
        live: live.iter().map(|segment| segment.base).collect(),
        spares: Vec::new(),
    })
}

impl Reader {
    /// Reads one segment's records; returns how many bytes of it are good: less than its
    /// length for zeros written ahead, or a torn tail of the last segment.
    fn read_segment(
        &mut self,
        segment: &SegmentFile,
        bytes: &[u8],
        is_first: bool,
        is_last: bool,
    ) -> Result<SegmentEnd> {
        let file = segment.path.as_path();
        let mut offset = 0;
        if is_first {
            offset = self.start(segment, bytes)?;
        } else if segment.base != self.expected {
            return Err(WalError::corrupt(
                file,
                0,
                format!(
                    "sequence gap: the previous segment ends at seq {} but this one starts at \
                     seq {}; a segment file is missing",
                    self.expected - 1,
                    segment.base
                ),
            ));
        }
        while offset < bytes.len() {
            let (problem, ends_records) = match record::decode(&bytes[offset..]) {
                Decoded::Record(record) if is_stale(&record, segment.base) => {
                    (format!("a stale record of seq {}", record.seq), true)
                }
                Decoded::Record(record) if record.kind == Kind::End => {
                    let here = record.seq == self.expected;
                    let problem = format!(
                        "an end mark of seq {} where seq {} belongs",
                        record.seq, self.expected
                    );
                    (problem, here)
                }
                Decoded::Record(record) => {
                    self.accept(file, offset, &record)?;
                    offset += record.encoded_len();
                    continue;
                }
                Decoded::Incomplete(reason) | Decoded::Invalid(reason) => (reason, false),
            };
            if bytes[offset..].iter().all(|&b| b == 0) {
                return Ok(SegmentEnd {
                    good: offset,
                    after: After::Zeros,
                });
            }
            if ends_records {
                // In any segment: one cut back to its records before the next began is
                // not refused if the cut did not last, as the next one's base shows
                // whether records are missing.
                self.nothing_valid_after(file, bytes, offset, &problem)?;
                return Ok(SegmentEnd {
                    good: offset,
                    after: After::Stale,
                });
            }
            let good = self.bad_record(file, bytes, offset, problem, is_last)?;
            return Ok(SegmentEnd {
                good,
                after: After::Torn,
            });
        }
        Ok(SegmentEnd {
            good: offset,
            after: After::Nothing,
        })
    }

    /// Reads the first live segment's checkpoint, if it has one; returns where its data
    /// records begin.
    fn start(&mut self, segment: &SegmentFile, bytes: &[u8]) -> Result<usize> {
        let file = segment.path.as_path();
        if self.checkpoint_file {
            if segment.base != self.expected {
                return Err(WalError::corrupt(
                    file,
                    0,
                    format!(
                        "the checkpoint file covers records up to seq {} but the next segment \
                         starts at seq {}; a segment file is missing",
                        self.expected - 1,
                        segment.base
                    ),
                ));
            }
            // An in-segment checkpoint here covers the same records: the file supersedes it.
            return Ok(match record::decode(bytes) {
                Decoded::Record(record)
                    if record.kind == Kind::Checkpoint && !is_stale(&record, segment.base) =>
                {
                    record.encoded_len()
                }
                _ => 0,
            });
        }
        match record::decode(bytes) {
            Decoded::Record(record) if record.kind == Kind::Checkpoint => {
                self.start_at_checkpoint(file, segment.base, &record)
            }
            _ if segment.base == 1 => Ok(0),
            _ => Err(WalError::corrupt(
                file,
                0,
                format!(
                    "the log starts at seq {} with no checkpoint before it, where seq 1 \
                     belongs; earlier segments are missing",
                    segment.base
                ),
            )),
        }
    }

    fn start_at_checkpoint(
        &mut self,
        file: &Path,
        base: u64,
        record: &record::Record<'_>,
    ) -> Result<usize> {
        if record.seq.checked_add(1) != Some(base) {
            return Err(WalError::corrupt(
                file,
                0,
                format!(
                    "checkpoint covers records up to seq {} but its segment is named for seq \
                     {base}",
                    record.seq
                ),
            ));
        }
        self.checkpoint = Some(record.payload.to_vec());
        self.first_seq = base;
        self.expected = base;
        Ok(record.encoded_len())
    }

    fn accept(&mut self, file: &Path, offset: usize, record: &record::Record<'_>) -> Result<()> {
        if record.kind == Kind::Checkpoint {
            return Err(WalError::corrupt(
                file,
                offset as u64,
                "a checkpoint record in the middle of the log",
            ));
        }
        if record.seq != self.expected {
            return Err(WalError::corrupt(
                file,
                offset as u64,
                format!(
                    "record carries seq {} where seq {} belongs",
                    record.seq, self.expected
                ),
            ));
        }
        self.expected = self
            .expected
            .checked_add(1)
            .ok_or_else(|| WalError::corrupt(file, offset as u64, "sequence number overflow"))?;
        self.records.push(record.payload.to_vec());
        Ok(())
    }

    /// A record that does not decode: a torn tail if it is in the last segment with
    /// nothing valid after it (returns the good length), corruption otherwise.
    fn bad_record(
        &self,
        file: &Path,
        bytes: &[u8],
        offset: usize,
        problem: String,
        is_last: bool,
    ) -> Result<usize> {
        if !is_last {
            return Err(WalError::corrupt(
                file,
                offset as u64,
                format!("{problem}, in a segment that is not the last one"),
            ));
        }
        self.nothing_valid_after(file, bytes, offset, &problem)?;
        Ok(offset)
    }

    /// Corruption if a record that could follow the last good one lies beyond `offset`.
    fn nothing_valid_after(
        &self,
        file: &Path,
        bytes: &[u8],
        offset: usize,
        problem: &str,
    ) -> Result<()> {
        match find_valid_after(bytes, offset, self.expected) {
            Some(found) => Err(WalError::corrupt(
                file,
                offset as u64,
                format!("{problem}, but a valid record follows at byte {found}"),
            )),
            None => Ok(()),
        }
    }
}

/// The offset of a valid data record after the damaged one at `bad`, if any. Only records
/// whose sequence number could follow (at least `expected`, and no further on than the
/// remaining bytes could hold) count, so stale or random bytes are not mistaken for one.
fn find_valid_after(bytes: &[u8], bad: usize, expected: u64) -> Option<usize> {
    let most_records = ((bytes.len() - bad) / HEADER_LEN) as u64;
    let seqs: RangeInclusive<u64> = expected..=expected.saturating_add(most_records);
    (bad + 1..bytes.len()).find(|&at| record::is_plausible_data_record(&bytes[at..], &seqs))
}

/// Cuts a torn tail off the last segment, durably, so it cannot resurface after the next
/// records are appended behind it.
fn truncate(segment: &SegmentFile, good: usize, len: usize, opts: &WalOptions) -> Result<TornTail> {
    let path = &segment.path;
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(WalError::io(path))?;
    file.set_len(good as u64).map_err(WalError::io(path))?;
    if opts.sync {
        file.sync_all().map_err(WalError::io(path))?;
    }
    Ok(TornTail {
        file: path.clone(),
        offset: good as u64,
        discarded_bytes: (len - good) as u64,
    })
}

fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(WalError::io(path)(err)),
        _ => Ok(()),
    }
}
