//! Generators of KV histories shared by the integration tests.
//!
//! A history is made linearizable by construction: every operation gets a
//! linearization point inside its interval, the points are replayed in order
//! on the model to produce the outputs, and only then are the intervals shown
//! to the checker.

#![allow(dead_code)] // each test binary uses a different part

use ekmat_linearizability::Operation;
use ekmat_linearizability::kv::{self, KvInput, KvOutput};

pub type KvOp = Operation<KvInput, KvOutput>;

/// SplitMix64: a tiny deterministic generator, enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The shape of a simulated client workload.
#[derive(Clone, Debug)]
pub struct Workload {
    pub keys: u64,
    pub clients: u64,
    pub ops: usize,
    /// Percentage of operations whose outcome the client never learns.
    pub unknown_percent: u64,
    /// Percentage of unknown-outcome operations that nevertheless took effect.
    pub applied_percent: u64,
    /// Values written are drawn from `0..values`; 0 means every write is unique.
    pub values: u64,
    /// Upper bounds on the two halves of an operation's latency.
    pub max_latency: u64,
    /// Upper bound on a client's pause between operations.
    pub max_think: u64,
}

impl Workload {
    /// Roughly what the deterministic simulator produces.
    pub fn sim_like(keys: u64, ops: usize) -> Self {
        Self {
            keys,
            clients: 10,
            ops,
            unknown_percent: 3,
            applied_percent: 50,
            values: 0,
            max_latency: 50,
            max_think: 10,
        }
    }
}

/// One operation before outputs are known.
struct Planned {
    client: u64,
    input: KvInput,
    call: u64,
    point: u64,
    ret: u64,
    unknown: bool,
    /// For an unknown operation: whether it took effect at all.
    applied: bool,
}

/// A linearizable history of closed-loop clients: each client issues its next
/// operation after the previous one completed (or timed out).
pub fn simulated(workload: &Workload, seed: u64) -> Vec<KvOp> {
    let mut rng = Rng::new(seed);
    let mut now = vec![0u64; workload.clients as usize];
    let mut planned = Vec::with_capacity(workload.ops);
    let mut unique = 0u64;
    for i in 0..workload.ops {
        // Round-robin keeps every client busy, so concurrency is ~clients.
        let client = i as u64 % workload.clients;
        let call = now[client as usize] + rng.below(workload.max_think + 1);
        let point = call + 1 + rng.below(workload.max_latency);
        let ret = point + 1 + rng.below(workload.max_latency);
        now[client as usize] = ret;
        let unknown = rng.percent(workload.unknown_percent);
        let input = random_input(&mut rng, workload, &mut unique);
        planned.push(Planned {
            client,
            input,
            call,
            point,
            ret,
            unknown,
            applied: !unknown || rng.percent(workload.applied_percent),
        });
    }
    replay(planned)
}

fn random_input(rng: &mut Rng, workload: &Workload, unique: &mut u64) -> KvInput {
    let key = rng.below(workload.keys);
    match rng.below(10) {
        0..=3 => KvInput::Get { key },
        4..=6 => KvInput::Put {
            key,
            value: new_value(rng, workload, unique),
        },
        7 | 8 => KvInput::Cas {
            key,
            expected: recent_value(rng, workload, *unique),
            new: new_value(rng, workload, unique),
        },
        _ => KvInput::Delete { key },
    }
}

fn new_value(rng: &mut Rng, workload: &Workload, unique: &mut u64) -> u64 {
    if workload.values == 0 {
        *unique += 1;
        *unique
    } else {
        rng.below(workload.values)
    }
}

/// A value a cas may expect: recently written ones, so that some swaps
/// succeed, or absence.
fn recent_value(rng: &mut Rng, workload: &Workload, unique: u64) -> Option<u64> {
    if rng.percent(10) {
        None
    } else if workload.values == 0 {
        Some(unique.saturating_sub(rng.below(3)))
    } else {
        Some(rng.below(workload.values))
    }
}

/// Runs the planned operations in linearization-point order to fill in their
/// outputs, and returns them in planning order.
fn replay(planned: Vec<Planned>) -> Vec<KvOp> {
    let mut order: Vec<usize> = (0..planned.len()).collect();
    order.sort_by_key(|&i| (planned[i].point, i));
    let mut outputs = vec![None; planned.len()];
    let mut store = std::collections::BTreeMap::<u64, Option<u64>>::new();
    for i in order {
        let p = &planned[i];
        if !p.applied {
            continue;
        }
        let value = store.entry(p.input.key()).or_insert(None);
        let (next, output) = kv::apply(*value, &p.input);
        *value = next;
        outputs[i] = Some(output);
    }
    planned
        .into_iter()
        .zip(outputs)
        .map(|(p, output)| Operation {
            client: p.client,
            input: p.input,
            call: p.call,
            ret: (!p.unknown).then_some(p.ret),
            output: if p.unknown { None } else { output },
        })
        .collect()
}
