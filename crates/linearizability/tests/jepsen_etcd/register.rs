//! The object Jepsen's 2014 etcd test exercised: one register holding an
//! optional integer, with read, write and compare-and-swap.

use ekmat_linearizability::Model;

/// A request to the register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterInput {
    Read,
    Write(u64),
    /// Swap to `.1` iff the register holds `.0`; an empty register never matches
    /// (etcd's compare-and-swap on a missing key fails).
    Cas(u64, u64),
}

/// A response from the register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterOutput {
    Read(Option<u64>),
    Written,
    /// Whether the compare-and-swap swapped.
    Cas(bool),
}

/// The sequential specification of the register.
pub struct RegisterModel;

impl Model for RegisterModel {
    type State = Option<u64>;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> Self::State {
        None
    }

    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State> {
        let (next, result) = match *input {
            RegisterInput::Read => (*state, RegisterOutput::Read(*state)),
            RegisterInput::Write(value) => (Some(value), RegisterOutput::Written),
            RegisterInput::Cas(from, to) if *state == Some(from) => {
                (Some(to), RegisterOutput::Cas(true))
            }
            RegisterInput::Cas(..) => (*state, RegisterOutput::Cas(false)),
        };
        match output {
            Some(seen) if *seen != result => None,
            _ => Some(next),
        }
    }

    fn is_read_only(&self, input: &Self::Input) -> bool {
        matches!(input, RegisterInput::Read)
    }
}
