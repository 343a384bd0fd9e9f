//! A member that keeps refusing primaries' batch times (PBFT's agreed clock) says so in
//! its log. Its clock, or the primaries', is off by more than the bounds, and views
//! change until a primary whose time it finds plausible leads: a cluster whose correct
//! clocks disagree that much makes little progress. The counters alone
//! (`clock-ahead-refused`, `clock-behind-refused` on /metrics) are easy to miss.

use std::time::{Duration, Instant};

use ekmat_core::Event;

/// At most one warning this often; it counts the refusals since the last one.
const WARN_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct ClockRefusals {
    unreported: u64,
    last_warning: Option<Instant>,
}

impl ClockRefusals {
    /// Count `e` if it is a refusal of a batch's time, and warn if a warning is due.
    /// Returns whether it warned.
    pub fn note(&mut self, e: &Event, now: Instant) -> bool {
        let Event::Counter { name, delta } = e else {
            return false;
        };
        if !matches!(*name, "clock-ahead-refused" | "clock-behind-refused") {
            return false;
        }
        self.unreported += delta;
        if self
            .last_warning
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            return false;
        }
        tracing::warn!(
            refused = self.unreported,
            latest = *name,
            "refused primaries' batch times as implausible on this member's clock (more than \
             pbft_clock_ahead_ms past it, or pbft_clock_behind_ms before it); if this goes on, \
             a member's clock is off: check that every member's clock is synchronised"
        );
        self.unreported = 0;
        self.last_warning = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(name: &'static str) -> Event {
        Event::Counter { name, delta: 1 }
    }

    #[test]
    fn refusals_are_named_at_most_once_per_period_and_other_counters_not_at_all() {
        let mut r = ClockRefusals::default();
        let t0 = Instant::now();
        assert!(!r.note(&refused("view-change"), t0));
        assert!(r.note(&refused("clock-ahead-refused"), t0));
        assert!(!r.note(&refused("clock-behind-refused"), t0 + WARN_EVERY / 2));
        assert_eq!(r.unreported, 1);
        assert!(r.note(&refused("clock-behind-refused"), t0 + WARN_EVERY));
        assert_eq!(r.unreported, 0);
    }
}
