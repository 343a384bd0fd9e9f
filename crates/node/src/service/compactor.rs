//! etcd's automatic compaction (`--auto-compaction-mode`, `--auto-compaction-retention`):
//! the leader compacts the key history on a schedule, through the log like a client's
//! Compact, so the history kept in memory stays bounded without an operator.
//!
//! - `periodic` keeps at least the retention period of history: the first compaction
//!   runs once the member has sampled the store for a little over one period, then one
//!   every period (at most an hour apart), each to the revision the store had at least
//!   one period earlier (a sample is taken every tenth of the interval). The retention
//!   is read with `humantime` (`30m`, `1h30m`, `1h 30m`), not Go's parser as etcd's is:
//!   `1.5h` is refused (write `1h30m`).
//! - `revision` keeps the last `retention` revisions: every five minutes it compacts to
//!   the current revision minus the retention.
//!
//! Every member samples its revision; only the leader compacts, so a new leader already
//! knows how far back each period reaches.

use std::collections::VecDeque;
use std::time::Duration;

use ekmat_kv::{Command, CompactionRequest, KvError, Response};

use super::Services;
use crate::driver::CallError;

/// How often `revision` mode compacts (etcd's fixed interval).
const REVISION_MODE_EVERY: Duration = Duration::from_secs(300);
/// `periodic` mode compacts at most this far apart, however long the retention.
const LONGEST_PERIOD: Duration = Duration::from_secs(3600);
/// `periodic` mode samples the revision this many times per compaction interval.
const SAMPLES_PER_INTERVAL: u32 = 10;
/// The shortest `periodic` retention accepted: below it compactions would follow each
/// other nearly without pause, filling the log with them.
const MIN_PERIOD: Duration = Duration::from_secs(1);

/// What the configuration asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    Off,
    /// Keep at least this much time of history.
    Periodic(Duration),
    /// Keep at least this many revisions of history.
    Revisions(i64),
}

impl Retention {
    /// From etcd's two settings: a mode (`periodic` or `revision`) and a retention (for
    /// `periodic` a duration such as `30m` or `1h30m`, or a bare number of hours; for
    /// `revision` a number of revisions; `0` turns compaction off in both).
    pub fn parse(mode: &str, retention: &str) -> Result<Retention, String> {
        let retention = retention.trim();
        let bad = |why: &str| {
            format!("auto_compaction_retention = {retention:?} for mode {mode:?}: {why}")
        };
        match mode {
            "periodic" => {
                let period = match retention.parse::<u64>() {
                    Ok(hours) => Duration::from_secs(hours.saturating_mul(3600)),
                    Err(_) => humantime::parse_duration(retention).map_err(|e| {
                        bad(&format!(
                            "{e} (a duration such as 30m or 1h30m, or a number of hours)"
                        ))
                    })?,
                };
                if period.is_zero() {
                    Ok(Retention::Off)
                } else if period < MIN_PERIOD {
                    Err(bad(&format!(
                        "shorter than {} (or 0, off): compactions would follow each other without pause",
                        humantime::format_duration(MIN_PERIOD)
                    )))
                } else {
                    Ok(Retention::Periodic(period))
                }
            }
            "revision" => match retention.parse::<i64>() {
                Ok(0) => Ok(Retention::Off),
                Ok(n) if n > 0 => Ok(Retention::Revisions(n)),
                _ => Err(bad("not a number of revisions (0 or more)")),
            },
            _ => Err(format!(
                "unknown auto_compaction_mode {mode:?} (known: periodic, revision)"
            )),
        }
    }
}

/// The schedule, apart from clocks and the cluster: fed the store's revision every
/// [`Schedule::every`], it says when to compact and to which revision.
#[derive(Debug)]
pub struct Schedule {
    retention: Retention,
    /// `periodic`: the revisions sampled over the last period, oldest first.
    samples: VecDeque<i64>,
    /// Time since the last compaction that held (or since the start).
    since_compaction: Duration,
    /// The last revision compacted to (never compacted to again).
    last: i64,
}

impl Schedule {
    pub fn new(retention: Retention) -> Schedule {
        Schedule {
            retention,
            samples: VecDeque::new(),
            since_compaction: Duration::ZERO,
            last: 0,
        }
    }

    /// How often to call [`Schedule::tick`]; `None` when compaction is off.
    pub fn every(&self) -> Option<Duration> {
        match self.retention {
            Retention::Off => None,
            Retention::Periodic(period) => Some(interval(period) / SAMPLES_PER_INTERVAL),
            Retention::Revisions(_) => Some(REVISION_MODE_EVERY),
        }
    }

    /// One step of [`Schedule::every`]: the store is at `revision`, and this member
    /// leads or not. The revision to compact to, if now is the time.
    pub fn tick(&mut self, revision: i64, leader: bool) -> Option<i64> {
        let every = self.every()?;
        self.since_compaction += every;
        let target = match self.retention {
            Retention::Off => return None,
            Retention::Periodic(period) => {
                // The oldest sample is the revision at least one period ago, once a
                // period passed (rounded up: never less history than the retention).
                let keep = period.as_nanos().div_ceil(every.as_nanos().max(1)) as usize + 1;
                self.samples.push_back(revision);
                while self.samples.len() > keep {
                    self.samples.pop_front();
                }
                // A full window of samples already spans more than a period, so the
                // first compaction waits for it; later ones come an interval apart.
                if self.since_compaction < interval(period) || self.samples.len() < keep {
                    return None;
                }
                self.samples[0]
            }
            Retention::Revisions(n) => revision - n,
        };
        (leader && target > 0 && target > self.last).then_some(target)
    }

    /// The compaction to `revision` held (or the store was compacted past it already).
    pub fn compacted(&mut self, revision: i64) {
        self.last = self.last.max(revision);
        self.since_compaction = Duration::ZERO;
    }
}

/// How far apart `periodic` compactions run for a retention of `period`.
fn interval(period: Duration) -> Duration {
    period.min(LONGEST_PERIOD)
}

impl Services {
    /// Run `retention`'s schedule for as long as the member runs.
    pub async fn compact_automatically(self, retention: Retention) {
        let mut schedule = Schedule::new(retention);
        let Some(every) = schedule.every() else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let leader = self.inner.status.borrow().core.is_leader;
            let Some(revision) = schedule.tick(self.revision(), leader) else {
                continue;
            };
            match self.auto_compact(revision).await {
                Ok(()) => {
                    tracing::info!(revision, "auto-compaction: history compacted");
                    schedule.compacted(revision);
                }
                Err(why) => tracing::warn!(revision, %why, "auto-compaction failed"),
            }
        }
    }

    async fn auto_compact(&self, revision: i64) -> Result<(), String> {
        let command = Command::Compact(CompactionRequest {
            revision,
            physical: false,
        });
        metrics::counter!("ekmat_auto_compactions_total").increment(1);
        match self.write_internal(command).await {
            Ok(Response::Compact(_)) => Ok(()),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            // Compacted already, by a client or an earlier leader: nothing to do.
            Err(CallError::Kv(KvError::Compacted)) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hours(h: u64) -> Duration {
        Duration::from_secs(h * 3600)
    }

    #[test]
    fn settings_parse_as_etcd_reads_them() {
        let p = |m, r| Retention::parse(m, r);
        assert_eq!(p("periodic", "0"), Ok(Retention::Off));
        assert_eq!(p("periodic", "72"), Ok(Retention::Periodic(hours(72))));
        assert_eq!(
            p("periodic", "30m"),
            Ok(Retention::Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(
            p("periodic", "1h30m"),
            Ok(Retention::Periodic(Duration::from_secs(5400)))
        );
        assert_eq!(p("revision", "1000"), Ok(Retention::Revisions(1000)));
        assert_eq!(p("revision", "0"), Ok(Retention::Off));
        for (mode, retention, says) in [
            ("periodic", "soon", "a duration such as 30m"),
            ("periodic", "-1", "a duration such as 30m"),
            ("periodic", "500ms", "shorter than 1s"),
            ("revision", "1h", "not a number of revisions"),
            ("revision", "-5", "not a number of revisions"),
            ("hourly", "1", "unknown auto_compaction_mode \"hourly\""),
        ] {
            let e = p(mode, retention).unwrap_err();
            assert!(e.contains(says), "{mode} {retention}: {e}");
        }
    }

    /// Ticks a schedule `n` times with the revision growing by `per_tick` each time;
    /// the (tick, revision) of each compaction it asks for, taken to hold.
    fn run(s: &mut Schedule, n: usize, per_tick: i64, leader: bool) -> Vec<(usize, i64)> {
        let mut done = Vec::new();
        for i in 1..=n {
            if let Some(rev) = s.tick(100 + i as i64 * per_tick, leader) {
                s.compacted(rev);
                done.push((i, rev));
            }
        }
        done
    }

    #[test]
    fn periodic_keeps_one_period_of_history_and_compacts_once_a_period() {
        let mut s = Schedule::new(Retention::Periodic(Duration::from_secs(10)));
        assert_eq!(s.every(), Some(Duration::from_secs(1)));
        // Revision 100 + tick. Once it holds a sample one period (10 ticks) old, it
        // compacts to that revision, then again every 10 ticks.
        let done = run(&mut s, 35, 1, true);
        assert_eq!(done, [(11, 101), (21, 111), (31, 121)]);
    }

    #[test]
    fn periodic_compacts_at_least_hourly_however_long_the_retention() {
        let mut s = Schedule::new(Retention::Periodic(hours(5)));
        assert_eq!(s.every(), Some(Duration::from_secs(360)));
        // 10 ticks an hour: the first once a sample is five hours old, then hourly, each
        // to the revision five hours back.
        let done = run(&mut s, 75, 1, true);
        assert_eq!(done, [(51, 101), (61, 111), (71, 121)]);
        // 1h1m is not a whole number of samples (6 minutes apart): it keeps 66 minutes
        // rather than 60, never less than the retention.
        let mut s = Schedule::new(Retention::Periodic(Duration::from_secs(3660)));
        let done = run(&mut s, 12, 1, true);
        assert_eq!(done, [(12, 101)]);
    }

    #[test]
    fn revision_mode_keeps_the_last_n_revisions() {
        let mut s = Schedule::new(Retention::Revisions(1000));
        assert_eq!(s.every(), Some(REVISION_MODE_EVERY));
        // 400 revisions per tick: nothing to compact until the store passes 1,000.
        let done = run(&mut s, 4, 400, true);
        assert_eq!(done, [(3, 300), (4, 700)]);
        // An idle store is not compacted again to the same revision.
        assert_eq!(s.tick(1700, true), None);
    }

    #[test]
    fn only_the_leader_compacts_and_a_new_leader_knows_the_past_period() {
        let mut s = Schedule::new(Retention::Periodic(Duration::from_secs(10)));
        assert!(
            run(&mut s, 15, 1, false).is_empty(),
            "a follower never compacts"
        );
        // Elected at tick 16: it compacts at once, to the revision of 10 ticks earlier.
        assert_eq!(s.tick(116, true), Some(106));
    }

    #[test]
    fn a_compaction_that_failed_is_tried_again_next_tick() {
        let mut s = Schedule::new(Retention::Revisions(10));
        assert_eq!(s.tick(50, true), Some(40));
        // Not marked compacted: the next tick asks again, with the newer revision.
        assert_eq!(s.tick(55, true), Some(45));
        let mut off = Schedule::new(Retention::Off);
        assert_eq!((off.every(), off.tick(1000, true)), (None, None));
    }
}
