//! Heartbeat and election timeouts, fixed or adapted to the network (seed 001): the
//! leader measures round trips of AppendEntries, sets its heartbeat interval to
//! mean(RTT) + 2σ and the election timeout to three heartbeats, both clamped to the
//! configured bounds, and tells followers the election timeout it uses, so a slow WAN
//! stops causing elections without making a healthy LAN slow to notice a dead leader.

use std::collections::VecDeque;
use std::time::Duration;

use ekmat_core::Time;

use crate::node::RaftNode;

/// Adaptive timeouts' upper bound and window. The lower bounds are the configured
/// fixed timeouts: adapting only ever waits longer, so a fast network keeps the
/// configured failure detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdaptiveTimeouts {
    /// The longest heartbeat interval; elections wait at most three of them.
    pub heartbeat_max: Duration,
    /// Round trips remembered (across all followers).
    pub window: usize,
}

impl Default for AdaptiveTimeouts {
    fn default() -> Self {
        AdaptiveTimeouts {
            heartbeat_max: Duration::from_millis(1000),
            window: 64,
        }
    }
}

/// The timeouts in force. Elections draw from `election..election_max`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub heartbeat: Duration,
    pub election: Duration,
    pub election_max: Duration,
}

/// The seed's rule: heartbeat = mean + 2σ (population σ), election = 3 × heartbeat.
/// None without samples.
pub fn from_round_trips(samples: &[Duration]) -> Option<(Duration, Duration)> {
    if samples.is_empty() {
        return None;
    }
    let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let n = ms.len() as f64;
    let mean = ms.iter().sum::<f64>() / n;
    let sigma = (ms.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    Some(the_rule(mean, sigma))
}

/// Heartbeat and election timeout from the round trips' mean and σ, in milliseconds.
fn the_rule(mean: f64, sigma: f64) -> (Duration, Duration) {
    // Whole milliseconds, as the seed's example rounds.
    let heartbeat = Duration::from_millis((mean + 2.0 * sigma) as u64);
    (heartbeat, heartbeat * 3)
}

/// Round trips measured, oldest first, with running sums so each new sample costs
/// O(1) (one arrives with every AppendEntries answer).
#[derive(Clone, Debug, Default)]
pub struct RoundTrips {
    samples: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
}

impl RoundTrips {
    fn record(&mut self, rtt: Duration, window: usize) {
        if self.samples.len() == window
            && let Some(old) = self.samples.pop_front()
        {
            self.sum -= old;
            self.sum_sq -= old * old;
        }
        let ms = rtt.as_secs_f64() * 1e3;
        self.samples.push_back(ms);
        self.sum += ms;
        self.sum_sq += ms * ms;
    }

    /// As [`from_round_trips`] over the window.
    fn estimate(&self) -> Option<(Duration, Duration)> {
        let n = self.samples.len() as f64;
        if n == 0.0 {
            return None;
        }
        let mean = self.sum / n;
        // Rounding in the running sums can leave a tiny negative variance.
        let sigma = (self.sum_sq / n - mean * mean).max(0.0).sqrt();
        Some(the_rule(mean, sigma))
    }
}

impl RaftNode {
    /// The configured, fixed timeouts.
    pub(crate) fn configured_timeouts(&self) -> Timeouts {
        Timeouts {
            heartbeat: self.cfg.heartbeat_interval,
            election: self.cfg.election_timeout_min,
            election_max: self.cfg.election_timeout_max,
        }
    }

    /// A leader's answer to a round trip it timed (`sent_at_us` echoed by a follower).
    pub(crate) fn on_round_trip(&mut self, sent_at_us: u64) {
        let Some(adaptive) = self.cfg.adaptive else {
            return;
        };
        if sent_at_us == 0 || sent_at_us > self.now.0 {
            return;
        }
        let rtt = Duration::from_micros(self.now.0 - sent_at_us);
        self.round_trips.record(rtt, adaptive.window);
        if let Some((heartbeat, election)) = self.round_trips.estimate() {
            self.timeouts = self.clamped(election, heartbeat);
        }
    }

    /// A follower adopts the election timeout its leader measured for the cluster.
    pub(crate) fn adopt_election_timeout(&mut self, election_us: u64) {
        if self.cfg.adaptive.is_none() || election_us == 0 {
            return;
        }
        let election = Duration::from_micros(election_us);
        self.timeouts = self.clamped(election, election / 3);
    }

    /// Within the bounds: the configured timeouts below, `heartbeat_max` above.
    fn clamped(&self, election: Duration, heartbeat: Duration) -> Timeouts {
        let fixed = self.configured_timeouts();
        let adaptive = self.cfg.adaptive.unwrap_or_default();
        let heartbeat =
            heartbeat.clamp(fixed.heartbeat, adaptive.heartbeat_max.max(fixed.heartbeat));
        let election = election.clamp(
            fixed.election,
            (adaptive.heartbeat_max * 3).max(fixed.election),
        );
        Timeouts {
            heartbeat,
            election,
            election_max: (election * 2).max(fixed.election_max),
        }
    }

    /// The election timeout this leader announces (0: fixed timeouts, nothing to adopt).
    pub(crate) fn announced_election_timeout(&self) -> u64 {
        if self.cfg.adaptive.is_some() {
            self.timeouts.election.as_micros() as u64
        } else {
            0
        }
    }

    pub(crate) fn stamp(&self) -> u64 {
        if self.cfg.adaptive.is_some() {
            self.now.0.max(1)
        } else {
            0
        }
    }

    /// When the current election timeout, drawn afresh, runs out from now.
    pub(crate) fn draw_election_deadline(&mut self) -> Time {
        let min = self.timeouts.election.as_micros() as u64;
        let max = (self.timeouts.election_max.as_micros() as u64).max(min + 1);
        Time(self.now.0 + self.rng.range(min, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn the_seeds_example_gives_126_ms_heartbeats_and_378_ms_elections() {
        let (heartbeat, election) =
            from_round_trips(&ms(&[25, 30, 45, 28, 35, 150, 40, 33])).unwrap();
        assert_eq!(heartbeat, Duration::from_millis(126));
        assert_eq!(election, Duration::from_millis(378));
    }

    #[test]
    fn a_steady_link_gives_its_round_trip() {
        let (heartbeat, election) = from_round_trips(&ms(&[40; 10])).unwrap();
        assert_eq!(
            (heartbeat, election),
            (Duration::from_millis(40), Duration::from_millis(120))
        );
        assert_eq!(from_round_trips(&[]), None);
    }

    #[test]
    fn the_window_forgets_old_round_trips() {
        let mut rt = RoundTrips::default();
        for _ in 0..8 {
            rt.record(Duration::from_millis(400), 4);
        }
        for _ in 0..4 {
            rt.record(Duration::from_millis(10), 4);
        }
        assert_eq!(rt.estimate().unwrap().0, Duration::from_millis(10));
    }

    #[test]
    fn the_running_window_agrees_with_the_formula() {
        let samples = ms(&[25, 30, 45, 28, 35, 150, 40, 33]);
        let mut rt = RoundTrips::default();
        for s in ms(&[500, 700]).into_iter().chain(samples.iter().copied()) {
            rt.record(s, samples.len());
        }
        assert_eq!(rt.estimate(), from_round_trips(&samples));
    }
}
