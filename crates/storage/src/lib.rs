//! A durable write-ahead log of opaque records, with group commit and checkpoints.
//!
//! Protocol cores ask for durable writes (`Effect::Persist`); the runtime serializes each
//! one, [`Wal::append`]s it, calls [`Wal::sync`] once for a whole batch, and on restart
//! folds the [`Recovered`] records into its `Stable` state. The log knows nothing of what
//! the records mean.
//!
//! ```no_run
//! use ekmat_storage::{Wal, WalOptions};
//! # fn main() -> Result<(), ekmat_storage::WalError> {
//! let (mut wal, recovered) = Wal::open("data/wal".as_ref(), WalOptions::default())?;
//! // ... rebuild state from recovered.checkpoint and recovered.records ...
//! let a = wal.append(b"first")?;
//! let b = wal.append(b"second")?;
//! let durable = wal.sync()?; // one fsync for both
//! assert!(durable >= b && b == a + 1);
//! wal.checkpoint(b"state folded from everything so far")?;
//! # Ok(()) }
//! ```
//!
//! # Durability contract
//!
//! A record is durable once [`Wal::sync`] has returned a sequence number at least as large
//! as its own (or a [`Wal::checkpoint`] covering it has returned): after that, every later
//! [`Wal::open`] returns it — folded into the checkpoint or in `records`, in order — or
//! refuses to start with [`WalError::Corrupt`]. Records not yet synced may or may not
//! survive a crash, but what survives is always a prefix: never a record without the ones
//! before it. Dropping a [`Wal`] does not sync; it loses what a crash would.
//! [`WalOptions::sync`]` = false` voids all of this (benchmarks and tests only).
//!
//! After any failed write or fsync the log is poisoned ([`WalError::Poisoned`]): the
//! kernel may have dropped the pages that failed, so the process must restart and recover.
//!
//! # File format
//!
//! The log is a directory of segment files, `<base>.wal`, where `<base>` is the 20-digit
//! zero-padded sequence number of the first data record the segment holds, so name order
//! is log order. A segment is a plain concatenation of records, each a 17-byte header —
//! CRC32C (4 bytes), payload length (4), kind (1: data, 2: checkpoint, 3: end mark),
//! sequence number (8), all little-endian, the checksum covering the other header
//! fields and the payload —
//! followed by the payload. A checkpoint record is always the first record of its segment
//! and carries the sequence number of the last record it covers, `n`; its segment is named
//! `n + 1`, and the data records after it continue from `n + 1`. A checkpoint is written
//! as `<base>.wal.tmp`, fsynced and renamed into place. Segments roll over once the next
//! record would take them past [`WalOptions::segment_bytes`].
//!
//! With [`WalOptions::preallocate`] (the default) the segment being appended to is kept
//! zero-filled about 1 MiB ahead of its records, so a sync overwrites blocks the file
//! already has and needs no journal commit for a new file size (on ext4 here, an
//! fdatasync took 170 µs instead of 220–250 µs idle, 375 µs instead of 580 µs under a
//! 3-member cluster's load). A zero header is never a valid record, so recovery reads an
//! all-zero rest of a segment as its end; a segment is cut back to its records before the
//! next one is created.
//!
//! Segments a checkpoint replaced are kept, up to [`WalOptions::spare_segments`], as
//! `<base>.wal.spare`, and a new segment is a spare renamed and written over: its blocks
//! exist and its pages may still be cached, so a write costs about half the CPU of one
//! into a new file and an fsync commits no metadata. Behind the new records the file
//! then holds records of an earlier part of the log; each write of records ends with an
//! end mark (a record of kind 3, no payload, carrying the next sequence number), and
//! recovery reads that mark, or a record whose sequence number is more than one below
//! the segment's base, as the segment's clean end: every record a spare held belongs
//! before the checkpoint that replaced it, and any segment made after has a larger base
//! by at least two. A spare is renamed into place durably (the directory fsynced)
//! before anything is written into it, so no record can become durable in a file still
//! named as a spare. Recovery never reads a spare.
//!
//! A checkpoint written while appends go on ([`Wal::begin_checkpoint`]) is a file of its
//! own, `<base>.checkpoint`, holding one checkpoint record that covers records up to
//! `base - 1`; the log had rolled over to a segment named `base` when it began. It too is
//! written under a temporary name (`.checkpoint.tmp`), fsynced and renamed; only then are
//! the segments before `base` deleted.
//!
//! Sequence numbers are stored in each record rather than implied by position: 8 bytes a
//! record buys a check that every record is where it belongs (a stale, duplicated or
//! misplaced record is caught, not replayed), and makes telling a torn tail from damage in
//! the middle reliable: after a bad record, recovery looks for any valid record that could
//! follow it, and a checksum *and* a plausible sequence number make a false match from
//! garbage negligible.
//!
//! # Recovery
//!
//! [`Wal::open`] starts at the newest checkpoint — a segment that begins with a valid
//! checkpoint record, or a checkpoint file (which must read back whole: it was durable
//! before anything it replaced was deleted) — deletes the segments and checkpoint files
//! before it, then reads every record after it, checking checksums and that
//! sequence numbers run without gaps within and across segments.
//!
//! - A **torn tail** — the last segment ending in an incomplete record, or in one that
//!   fails its checksum with no valid record after it — is what a crash mid-write leaves.
//!   It is cut off (the file truncated and fsynced) and reported in
//!   [`Recovered::repaired`].
//! - Anything else is **corruption** and fails with [`WalError::Corrupt`], naming the file
//!   and byte offset, without changing anything on disk: a bad record followed by valid
//!   ones, a bad record in a segment that is not the last, a record or segment out of
//!   sequence, a missing segment.
//!
//! Two limits follow from the format, as in every log of this design: a bit flip in the
//! very last record is indistinguishable from a torn write and is cut off like one; and a
//! deleted *last* segment looks like records never written.
//!
//! | file | idea |
//! |---|---|
//! | `wal.rs` | the log: append, sync, checkpoint, open, stats |
//! | `record.rs` | one record's encoding and checksum |
//! | `segment.rs` | segment names, the directory listing, the segment being appended to |
//! | `recovery.rs` | reading the log back, torn-tail repair, corruption checks |
//! | `paced.rs` | writing a checkpoint without starving the log's fsyncs |
//! | `error.rs` | errors worded for operators |

mod error;
mod paced;
mod record;
mod recovery;
mod segment;
mod wal;

pub use error::{Result, WalError};
pub use record::{HEADER_LEN, MAX_PAYLOAD};
pub use wal::{CheckpointJob, Recovered, TornTail, Wal, WalOptions, WalStats, WrittenCheckpoint};
