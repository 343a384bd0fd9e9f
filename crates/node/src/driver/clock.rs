//! The time the driver gives the protocol core: time since the node started, except that
//! a follower's clock stands still while its process did not run.
//!
//! When the driver stalls — one entry that takes a second to apply (a DeleteRange of
//! half a million keys), or a process the OS did not schedule — every member applying
//! the same entry stalls together, the leader too. Waking up, a follower whose clock ran
//! on sees no heartbeat for longer than the election timeout and campaigns, though the
//! leader is fine and about to speak: a needless election, and seconds of "no leader".
//! Stopping a follower's clock for the stall only ever delays its election (a slower
//! clock is the safe direction: a leader's lease assumes followers wait *at least* the
//! election timeout). A leader's clock never stops: its lease must run in real time.

use std::time::{Duration, Instant};

use ekmat_core::Time;

use super::TICK;

/// A gap between two readings this much longer than a tick is a stall.
const STALL: Duration = Duration::from_millis(30);

pub struct CoreClock {
    started: Instant,
    /// Stalls the clock stood still for.
    paused: Duration,
    last_read: Instant,
    last: Time,
}

impl CoreClock {
    pub fn new(started: Instant) -> CoreClock {
        CoreClock {
            started,
            paused: Duration::ZERO,
            last_read: started,
            last: Time(0),
        }
    }

    /// The core's time now, for a replica that `follows` (does not lead). The driver
    /// reads it at least every tick, so a longer gap between readings is a stall.
    pub fn now(&mut self, follows: bool) -> Time {
        self.at(Instant::now(), follows)
    }

    fn at(&mut self, wall: Instant, follows: bool) -> Time {
        let gap = wall.saturating_duration_since(self.last_read);
        if follows && gap > TICK + STALL {
            self.paused += gap - TICK;
        }
        self.last_read = wall;
        let since_start = wall.saturating_duration_since(self.started);
        let t = Time(since_start.saturating_sub(self.paused).as_micros() as u64);
        self.last = self.last.max(t);
        self.last
    }

    /// How long the clock has stood still in all.
    pub fn paused(&self) -> Duration {
        self.paused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_follower_clock_stands_still_through_a_stall_and_a_leader_clock_does_not() {
        let start = Instant::now();
        let mut clock = CoreClock::new(start);
        assert_eq!(clock.at(start + ms(10), true), Time(10_000));
        // A second without a reading: the follower's clock moves one tick.
        assert_eq!(clock.at(start + ms(1010), true), Time(20_000));
        assert_eq!(clock.paused(), ms(990));
        // As leader, the same stall passes in full.
        assert_eq!(clock.at(start + ms(2010), false), Time(1_020_000));
        assert_eq!(clock.paused(), ms(990));
    }

    #[test]
    fn readings_a_tick_apart_are_not_stalls_and_time_never_goes_back() {
        let start = Instant::now();
        let mut clock = CoreClock::new(start);
        let mut last = Time(0);
        for i in 1..=50 {
            let now = clock.at(start + TICK * i, true);
            assert_eq!(now, Time((TICK * i).as_micros() as u64));
            assert!(now >= last);
            last = now;
        }
        assert_eq!(clock.paused(), Duration::ZERO);
        // A reading from before the last one (threads race to read) is not time travel.
        assert_eq!(clock.at(start + TICK * 49, true), last);
    }
}
