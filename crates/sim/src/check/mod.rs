//! Checkers: per-protocol invariants, and linearizability of the client history.

pub mod pbft;
mod pbft_points;
pub mod raft;

use ekmat_core::Time;
use ekmat_linearizability::kv::{KvInput, KvModel, KvOutput};
use ekmat_linearizability::{CheckOptions, Operation, Verdict, check};

use crate::protocol::Violation;

/// The verdict on a run's client history.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Linearizability {
    Linearizable,
    /// The search budget ran out on a key: neither proved nor refuted.
    Unknown {
        key: u64,
    },
    Violated,
    /// Not checked (the run had already failed).
    Skipped,
}

/// Check a KV history; a violation comes back with a description of where it failed.
pub fn check_history(
    ops: &[Operation<KvInput, KvOutput>],
    opts: &CheckOptions,
    end: Time,
) -> (Linearizability, Option<Violation>) {
    match check(&KvModel, ops, opts) {
        Ok(Verdict::Linearizable) => (Linearizability::Linearizable, None),
        Ok(Verdict::Unknown { partition }) => (Linearizability::Unknown { key: partition }, None),
        Ok(Verdict::NotLinearizable {
            partition,
            ops: key_ops,
            longest_prefix,
            stuck_at,
        }) => {
            let describe = |i: usize| {
                let op = &ops[i];
                let ret = op
                    .ret
                    .map_or("never".to_string(), |r| format!("{}", Time(r)));
                let output = op
                    .output
                    .map_or("unknown".to_string(), |o| describe_output(&o));
                format!(
                    "client {} {} -> {output} [{} .. {ret}]",
                    op.client,
                    describe_input(&op.input),
                    Time(op.call),
                )
            };
            let mut detail = format!(
                "key {partition}: {} operations; the longest linearizable prefix has {}",
                key_ops.len(),
                longest_prefix.len()
            );
            let tail = longest_prefix.len().saturating_sub(3);
            for &i in &longest_prefix[tail..] {
                detail.push_str(&format!("\n    ... {}", describe(i)));
            }
            if let Some(i) = stuck_at {
                detail.push_str(&format!("\n    cannot linearize: {}", describe(i)));
            }
            (
                Linearizability::Violated,
                Some(Violation::new("linearizability", end, detail)),
            )
        }
        Err(e) => (
            Linearizability::Violated,
            Some(Violation::new(
                "history",
                end,
                format!("malformed history: {e}"),
            )),
        ),
    }
}

/// Values are written as `c<client>#<seq>`: who wrote them, in which operation.
fn describe_value(v: Option<u64>) -> String {
    match v {
        None => "absent".to_string(),
        Some(v) => format!("c{}#{}", (v >> 32).saturating_sub(1), v & 0xffff_ffff),
    }
}

fn describe_input(input: &KvInput) -> String {
    match *input {
        KvInput::Get { key } => format!("get(k{key})"),
        KvInput::Put { key, value } => format!("put(k{key}, {})", describe_value(Some(value))),
        KvInput::Cas { key, expected, new } => format!(
            "cas(k{key}, {} -> {})",
            describe_value(expected),
            describe_value(Some(new))
        ),
        KvInput::Delete { key } => format!("delete(k{key})"),
    }
}

fn describe_output(output: &KvOutput) -> String {
    match *output {
        KvOutput::Value(v) => describe_value(v),
        KvOutput::Done => "ok".to_string(),
        KvOutput::Cas(true) => "swapped".to_string(),
        KvOutput::Cas(false) => "not swapped".to_string(),
    }
}
