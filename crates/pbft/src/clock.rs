//! The agreed clock: the time each batch executes at, one value for every replica.
//!
//! A state machine that expires leases needs a clock every replica reads alike. Taking
//! each request's own stamp (its gateway's wall clock) lets one faulty gateway expire
//! every lease at once, by stamping a time far ahead (the store's clock only moves
//! forward, so it would also stay there). Castro and Liskov's answer for such
//! non-deterministic values (OSDI'99, section 4.6): the primary proposes the value
//! with the batch, inside what the batch digest covers, and each backup accepts the
//! pre-prepare only if the value is plausible on its own clock: at most `clock_ahead`
//! past it, at most `clock_behind` before it.
//!
//! A batch prepares only with 2f+1 replicas' word, the primary's included, and at most
//! f of them are faulty: either the primary is correct and proposed its own clock, or
//! at least f+1 correct backups found the value plausible. So a batch's time is never
//! more than `clock_ahead` past some correct replica's clock, nor more than
//! `clock_behind` before it: a faulty primary can neither expire leases early by more
//! than `clock_ahead`, nor stop them expiring. A backup that refuses a batch's time
//! sends no PREPARE for it; the bundles wait, and the view timer replaces the primary.
//! The refusal is not evidence (it rests on the backup's own clock).
//!
//! Re-issued pre-prepares in a NEW-VIEW keep the time they prepared with (checked when
//! they first prepared); null batches carry none (0). The host reads the wall clock and
//! hands it in before each step ([`crate::Pbft::observe_clock`]): the core reads none.

use crate::Mutant;
use crate::message::Batch;
use crate::replica::{Fx, Pbft};

impl Pbft {
    /// The host's wall clock now, in ms since the Unix epoch. A host that never calls
    /// this leaves it at 0: every batch then carries time 0 and none is refused.
    pub fn observe_clock(&mut self, wall_ms: u64) {
        self.wall_ms = wall_ms;
    }

    /// The time the primary stamps on the batch it cuts now.
    pub(crate) fn batch_clock(&self) -> u64 {
        self.wall_ms
    }

    /// Whether a backup accepts `batch`'s time on its own clock (counted if not).
    pub(crate) fn clock_plausible(&self, batch: &Batch, out: &mut Fx) -> bool {
        if batch.is_null() || self.cfg.mutant == Mutant::SkipClockCheck {
            return true;
        }
        let ahead = self.cfg.clock_ahead.as_millis() as u64;
        let behind = self.cfg.clock_behind.as_millis() as u64;
        if batch.clock_ms > self.wall_ms.saturating_add(ahead) {
            self.counter("clock-ahead-refused", out);
            return false;
        }
        if batch.clock_ms.saturating_add(behind) < self.wall_ms {
            self.counter("clock-behind-refused", out);
            return false;
        }
        true
    }
}
