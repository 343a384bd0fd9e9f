//! A key-value map as a [`Model`]: the sequential specification of the
//! replicated KV service's client API, as far as the simulator exercises it.
//!
//! Every operation names one key, and keys never affect each other, so the
//! checker partitions by key and the state of a partition is just the value
//! of its key.

use crate::Model;

/// A request to the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvInput {
    /// Read the key's value.
    Get { key: u64 },
    /// Set the key's value.
    Put { key: u64, value: u64 },
    /// Set the key to `new` iff its value is `expected` (`None`: iff it is absent).
    Cas {
        key: u64,
        expected: Option<u64>,
        new: u64,
    },
    /// Remove the key.
    Delete { key: u64 },
}

impl KvInput {
    /// The key the request is about.
    pub fn key(&self) -> u64 {
        match *self {
            KvInput::Get { key }
            | KvInput::Put { key, .. }
            | KvInput::Cas { key, .. }
            | KvInput::Delete { key } => key,
        }
    }
}

/// A response from the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// The result of a `Get`: the value, `None` if absent.
    Value(Option<u64>),
    /// The result of a `Put` or `Delete`.
    Done,
    /// The result of a `Cas`: whether it swapped.
    Cas(bool),
}

/// A map from `u64` keys to `u64` values, every key initially absent.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvModel;

impl Model for KvModel {
    /// The value of the partition's one key.
    type State = Option<u64>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Self::State {
        None
    }

    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State> {
        // With an unknown output the operation is assumed to take effect,
        // which loses nothing: an operation pending forever can also be
        // linearized at the very end, where its effect is invisible.
        let (next, result) = apply(*state, input);
        match output {
            None => Some(next),
            Some(seen) if *seen == result => Some(next),
            Some(_) => None,
        }
    }

    fn partition_key(&self, input: &Self::Input) -> u64 {
        input.key()
    }

    fn is_read_only(&self, input: &Self::Input) -> bool {
        matches!(input, KvInput::Get { .. })
    }
}

/// Runs `input` against a key whose value is `state`: the new value and the
/// response the map gives.
pub fn apply(state: Option<u64>, input: &KvInput) -> (Option<u64>, KvOutput) {
    match *input {
        KvInput::Get { .. } => (state, KvOutput::Value(state)),
        KvInput::Put { value, .. } => (Some(value), KvOutput::Done),
        KvInput::Cas { expected, new, .. } if state == expected => (Some(new), KvOutput::Cas(true)),
        KvInput::Cas { .. } => (state, KvOutput::Cas(false)),
        KvInput::Delete { .. } => (None, KvOutput::Done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(state: Option<u64>, input: KvInput, output: Option<KvOutput>) -> Option<Option<u64>> {
        KvModel.step(&state, &input, output.as_ref())
    }

    #[test]
    fn get_must_return_the_current_value() {
        let get = KvInput::Get { key: 1 };
        assert_eq!(
            step(Some(3), get, Some(KvOutput::Value(Some(3)))),
            Some(Some(3))
        );
        assert_eq!(step(Some(3), get, Some(KvOutput::Value(None))), None);
        assert_eq!(step(None, get, Some(KvOutput::Value(None))), Some(None));
    }

    #[test]
    fn put_and_delete_always_apply() {
        let put = KvInput::Put { key: 1, value: 9 };
        assert_eq!(step(None, put, Some(KvOutput::Done)), Some(Some(9)));
        assert_eq!(step(Some(1), put, None), Some(Some(9)));
        let delete = KvInput::Delete { key: 1 };
        assert_eq!(step(Some(1), delete, Some(KvOutput::Done)), Some(None));
    }

    #[test]
    fn cas_swaps_only_from_the_expected_value() {
        let cas = KvInput::Cas {
            key: 1,
            expected: Some(2),
            new: 5,
        };
        assert_eq!(step(Some(2), cas, Some(KvOutput::Cas(true))), Some(Some(5)));
        assert_eq!(step(Some(3), cas, Some(KvOutput::Cas(true))), None);
        assert_eq!(
            step(Some(3), cas, Some(KvOutput::Cas(false))),
            Some(Some(3))
        );
        assert_eq!(step(Some(2), cas, Some(KvOutput::Cas(false))), None);
        assert_eq!(step(Some(3), cas, None), Some(Some(3)));
        assert_eq!(step(Some(2), cas, None), Some(Some(5)));
    }

    #[test]
    fn cas_expecting_absence_succeeds_only_on_an_absent_key() {
        let cas = KvInput::Cas {
            key: 1,
            expected: None,
            new: 5,
        };
        assert_eq!(step(None, cas, Some(KvOutput::Cas(true))), Some(Some(5)));
        assert_eq!(
            step(Some(5), cas, Some(KvOutput::Cas(false))),
            Some(Some(5))
        );
    }

    #[test]
    fn a_mismatched_output_kind_is_rejected() {
        let put = KvInput::Put { key: 1, value: 9 };
        assert_eq!(step(None, put, Some(KvOutput::Cas(true))), None);
    }
}
