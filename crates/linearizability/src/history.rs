//! Client histories: the operations a checker is given, how they are
//! validated, and how they are split into independent partitions.

use std::collections::BTreeMap;

use crate::Model;

/// One client operation as observed from outside the system.
#[derive(Clone, Debug)]
pub struct Operation<I, O> {
    /// Who issued it (for reporting only).
    pub client: u64,
    /// What was asked.
    pub input: I,
    /// Invocation time, in any monotonic unit shared by the whole history.
    pub call: u64,
    /// Completion time; `None` means the outcome is unknown (a timeout, a
    /// crashed client): the operation is treated as returning at +infinity.
    pub ret: Option<u64>,
    /// The result; `None` iff the outcome is unknown.
    pub output: Option<O>,
}

/// A history the checker refuses to judge because it cannot have been
/// recorded correctly.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The operation completed before it was invoked.
    #[error("operation {index} returns at {ret}, before its call at {call}")]
    ReturnBeforeCall {
        /// Index of the operation in the history.
        index: usize,
        /// Its invocation time.
        call: u64,
        /// Its completion time.
        ret: u64,
    },
    /// The operation has a completion time but no output.
    #[error(
        "operation {index} has a return time but no output (an unknown outcome must have `ret: None`)"
    )]
    ReturnWithoutOutput {
        /// Index of the operation in the history.
        index: usize,
    },
    /// The operation has an output but no completion time.
    #[error("operation {index} has an output but no return time")]
    OutputWithoutReturn {
        /// Index of the operation in the history.
        index: usize,
    },
    /// One partition holds more operations than the search can index.
    #[error(
        "partition {partition} (first operation {index}) has {count} operations; at most {max} are supported"
    )]
    PartitionTooLarge {
        /// Index of the partition's first operation in the history.
        index: usize,
        /// The partition key.
        partition: u64,
        /// How many operations it holds.
        count: usize,
        /// The supported maximum.
        max: usize,
    },
}

/// The most operations one partition may hold: the event lists index up to
/// two events per operation, plus two sentinels, with `u32`, one value of
/// which is reserved.
pub(crate) const MAX_PARTITION_OPS: usize = (u32::MAX as usize - 2) / 2;

/// The operations that share one partition key.
pub(crate) struct Partition {
    pub(crate) key: u64,
    /// Every operation with this key, as indices into the history, ascending.
    pub(crate) ops: Vec<usize>,
    /// The subset the search must consider: `ops` minus unknown-outcome
    /// read-only operations, which can always be linearized (or not) freely.
    pub(crate) searched: Vec<usize>,
}

/// Rejects operations whose times and outputs contradict each other.
pub(crate) fn validate<I, O>(history: &[Operation<I, O>]) -> Result<(), HistoryError> {
    for (index, op) in history.iter().enumerate() {
        match (op.ret, &op.output) {
            (Some(ret), _) if ret < op.call => {
                return Err(HistoryError::ReturnBeforeCall {
                    index,
                    call: op.call,
                    ret,
                });
            }
            (Some(_), None) => return Err(HistoryError::ReturnWithoutOutput { index }),
            (None, Some(_)) => return Err(HistoryError::OutputWithoutReturn { index }),
            _ => {}
        }
    }
    Ok(())
}

/// Splits a validated history by partition key, in ascending key order.
pub(crate) fn partition<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
) -> Result<Vec<Partition>, HistoryError> {
    let mut by_key: BTreeMap<u64, Partition> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        let key = model.partition_key(&op.input);
        let partition = by_key.entry(key).or_insert_with(|| Partition {
            key,
            ops: Vec::new(),
            searched: Vec::new(),
        });
        partition.ops.push(index);
        if op.output.is_some() || !model.is_read_only(&op.input) {
            partition.searched.push(index);
        }
    }
    let partitions: Vec<Partition> = by_key.into_values().collect();
    if let Some(big) = partitions
        .iter()
        .find(|p| p.searched.len() > MAX_PARTITION_OPS)
    {
        return Err(HistoryError::PartitionTooLarge {
            index: big.ops[0],
            partition: big.key,
            count: big.searched.len(),
            max: MAX_PARTITION_OPS,
        });
    }
    Ok(partitions)
}
