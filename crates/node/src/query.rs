//! Reads the driver serves from the state machine without ordering them through the log:
//! key ranges, lease state, and the event history a watch starts from. Linearizable ones
//! wait for the protocol's read barrier first; the rest are served from this member's own
//! applied state.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ekmat_kv::{
    AlarmMember, AlarmType, Event, KvError, KvStore, LeaseTimeToLiveResponse, RangeRequest,
    RangeResponse, ResponseHeader, SnapshotSource,
};

/// A read of the state machine.
#[derive(Clone, Debug)]
pub enum Query {
    Range(RangeRequest),
    /// A lease's remaining time (on this member's clock), optionally with its keys.
    LeaseTimeToLive {
        id: i64,
        keys: bool,
    },
    /// How long a lease has left (on this member's clock), in milliseconds.
    LeaseRemaining {
        id: i64,
    },
    /// Every live lease's id.
    Leases,
    /// A hash of the whole replicated state (etcd's Hash, which hashes its backend).
    Hash,
    /// etcd's HashKV of key versions up to `revision` (0: now).
    HashKv {
        revision: i64,
    },
    /// The events at `from` and later on `(key, range_end)`, for a watch to replay;
    /// `from == 0` asks for none, only the current revision.
    History {
        from: i64,
        key: Bytes,
        range_end: Bytes,
    },
    /// The raised alarms of one type ([`AlarmType::None`]: all).
    Alarms {
        alarm: AlarmType,
    },
    /// What a snapshot of the state machine is made of, taken in O(1); the caller
    /// encodes it off the driver's task.
    Snapshot,
    /// Users, roles and the auth switch (a login checks a password against them after a
    /// read barrier, so a user just added anywhere can log in here).
    Auth,
    /// A client's [`Query::Range`], [`Query::History`] or [`Query::LeaseTimeToLive`]
    /// with who sent it: refused unless the caller may read the keys it shows, as the
    /// store stands when it is served (after the read barrier, so a change to auth the
    /// barrier covers counts).
    As(ekmat_kv::Caller, Box<Query>),
}

/// The answer to a [`Query`], variant for variant.
#[derive(Clone, Debug)]
pub enum Answer {
    Range(RangeResponse),
    LeaseTimeToLive(LeaseTimeToLiveResponse),
    LeaseRemaining {
        header: ResponseHeader,
        left_ms: u64,
        granted_ttl: i64,
    },
    Leases {
        header: ResponseHeader,
        ids: Vec<i64>,
    },
    History(History),
    HashKv {
        header: ResponseHeader,
        hash: u32,
        compact_revision: i64,
    },
    Hash {
        header: ResponseHeader,
        hash: u32,
    },
    Alarms {
        header: ResponseHeader,
        alarms: Vec<AlarmMember>,
    },
    Snapshot(Box<SnapshotSource>),
    Auth(Box<ekmat_kv::AuthState>),
}

/// Where a watch starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum History {
    /// Every event asked for, up to and including `revision` (the store's revision when
    /// the history was read): live events after it follow.
    Events { revision: i64, events: Vec<Event> },
    /// The history asked for is gone: it starts before `compact_revision`.
    Compacted {
        revision: i64,
        compact_revision: i64,
    },
}

/// A query's answer computed away from the driver, from a view of the store taken when
/// it was due.
pub type Offloaded = Box<dyn FnOnce() -> Result<Answer, KvError> + Send>;

impl Query {
    /// For a query that visits the whole store (Hash and HashKV hash every retained
    /// version), the work to do on a blocking thread instead of the driver, which would
    /// otherwise stop ordering and applying, and could miss its heartbeats, for as long
    /// as it takes.
    /// `None`: serve it at once with [`Query::serve`].
    pub fn offload(&self, kv: &KvStore) -> Option<Offloaded> {
        match *self {
            Query::HashKv { revision } => {
                let history = kv.key_history();
                Some(Box::new(move || {
                    history.hash_kv(revision).map(|(hash, _)| Answer::HashKv {
                        header: ResponseHeader {
                            revision: history.revision(),
                        },
                        hash,
                        compact_revision: history.compact_revision(),
                    })
                }))
            }
            Query::Hash => {
                let source = kv.snapshot_source();
                Some(Box::new(move || {
                    Ok(Answer::Hash {
                        header: ResponseHeader {
                            revision: source.revision(),
                        },
                        hash: source.hash32(),
                    })
                }))
            }
            _ => None,
        }
    }

    /// Serve the query from `kv` as it stands.
    pub fn serve(&self, kv: &KvStore) -> Result<Answer, KvError> {
        match self {
            Query::Range(req) => kv.range(req).map(Answer::Range),
            Query::LeaseTimeToLive { id, keys } => kv
                .lease_time_to_live_at(*id, *keys, wall_clock_ms())
                .map(Answer::LeaseTimeToLive),
            Query::LeaseRemaining { id } => {
                kv.lease_remaining_ms(*id, wall_clock_ms())
                    .map(|(left_ms, granted_ttl)| Answer::LeaseRemaining {
                        header: ResponseHeader {
                            revision: kv.revision(),
                        },
                        left_ms,
                        granted_ttl,
                    })
            }
            Query::Leases => Ok(Answer::Leases {
                header: ResponseHeader {
                    revision: kv.revision(),
                },
                ids: kv.leases(),
            }),
            Query::History {
                from,
                key,
                range_end,
            } => Ok(Answer::History(history(kv, *from, key, range_end))),
            Query::Hash | Query::HashKv { .. } => {
                self.offload(kv).expect("whole-store hashes are offloaded")()
            }
            Query::Auth => Ok(Answer::Auth(Box::new(kv.auth().clone()))),
            Query::As(caller, query) => {
                let auth = kv.auth();
                match query.as_ref() {
                    Query::Range(r) => auth.may_read(caller, &r.key, &r.range_end)?,
                    Query::History { key, range_end, .. } => {
                        auth.may_read(caller, key, range_end)?
                    }
                    _ => {}
                }
                let answer = query.serve(kv)?;
                // A lease's keys are shown only to a caller who may read them all (etcd's
                // fix for CVE-2023-32082).
                if let Answer::LeaseTimeToLive(t) = &answer {
                    for key in &t.keys {
                        auth.may_read(caller, key, b"")?;
                    }
                }
                Ok(answer)
            }
            Query::Alarms { alarm } => Ok(Answer::Alarms {
                header: ResponseHeader {
                    revision: kv.revision(),
                },
                alarms: kv.alarms(*alarm),
            }),
            Query::Snapshot => Ok(Answer::Snapshot(Box::new(kv.snapshot_source()))),
        }
    }
}

fn history(kv: &KvStore, from: i64, key: &[u8], range_end: &[u8]) -> History {
    let revision = kv.revision();
    if from <= 0 || from > revision {
        return History::Events {
            revision,
            events: Vec::new(),
        };
    }
    match kv.events_between(from, key, range_end) {
        Ok(events) => History::Events { revision, events },
        Err(_) => History::Compacted {
            revision,
            compact_revision: kv.compact_revision(),
        },
    }
}

/// Milliseconds since the Unix epoch: the clock envelopes carry and leases expire by
/// (shifted by [`CLOCK_FAULT_ENV`] when a test sets it).
pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        .saturating_add_signed(clock_fault_ms())
}

/// A fault tests inject: this process's wall clock runs this many milliseconds off
/// (negative: behind), as a member whose clock is wrong would.
pub const CLOCK_FAULT_ENV: &str = "EKMAT_FAULT_CLOCK_OFFSET_MS";

/// A fault tests inject: this member, a Byzantine PBFT replica, sends the member this
/// names a second COMMIT for another digest beside its first one (once per process):
/// evidence of equivocation that member turns into its exclusion.
pub const EQUIVOCATE_ONCE_ENV: &str = "EKMAT_FAULT_EQUIVOCATE_ONCE_TO";

/// Whether this build takes the faults tests inject (the `fault-injection` feature,
/// which `cargo test` turns on and a plain build leaves off).
pub const FAULTS_INJECTABLE: bool = cfg!(feature = "fault-injection");

/// Whether to equivocate now to `to` under [`EQUIVOCATE_ONCE_ENV`]: true once at most.
pub fn equivocate_now(to: u32) -> bool {
    if !FAULTS_INJECTABLE {
        return false;
    }
    static TARGET: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let target = *TARGET.get_or_init(|| {
        std::env::var(EQUIVOCATE_ONCE_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
    });
    target == Some(to) && !DONE.swap(true, std::sync::atomic::Ordering::Relaxed)
}

/// The injected clock offset (0 unless [`CLOCK_FAULT_ENV`] holds a number).
pub fn clock_fault_ms() -> i64 {
    if !FAULTS_INJECTABLE {
        return 0;
    }
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::env::var(CLOCK_FAULT_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}
