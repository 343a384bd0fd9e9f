//! What travels through the log (an [`Envelope`] around a [`Command`]) and what applying
//! it produces ([`Applied`]).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::alarm::{AlarmRequest, AlarmResponse};
use crate::auth::{AuthRequest, AuthResponse, Caller};
use crate::error::{DecodeError, KvError};
use crate::lease::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseRevokeRequest, LeaseRevokeResponse,
};
use crate::rpc::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use crate::watch::Event;

/// One logged command with the proposing leader's clock. The state machine's clock is
/// the largest `now_ms` it has applied, so lease expiry is decided by the log, the same
/// on every replica, and never runs backwards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The proposer's clock, in milliseconds.
    pub now_ms: u64,
    /// What to execute.
    pub command: Command,
}

impl Envelope {
    /// `command` as proposed at `now_ms` on the proposer's clock.
    pub fn new(now_ms: u64, command: Command) -> Envelope {
        Envelope { now_ms, command }
    }

    /// The bytes to put in the log.
    pub fn encode(&self) -> Bytes {
        Envelope::wrap(self.now_ms, &self.command)
    }

    /// The bytes of `Envelope::new(now_ms, command.clone()).encode()`, without the clone.
    pub fn wrap(now_ms: u64, command: &Command) -> Bytes {
        #[derive(Serialize)]
        struct EnvelopeRef<'a> {
            now_ms: u64,
            command: &'a Command,
        }
        let envelope = EnvelopeRef { now_ms, command };
        Bytes::from(postcard::to_stdvec(&envelope).expect("envelopes always serialize"))
    }

    /// Decode logged bytes; trailing bytes are an error, so one encoding means one thing.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        match postcard::take_from_bytes(bytes) {
            Ok((envelope, [])) => Ok(envelope),
            Ok((_, rest)) => Err(DecodeError(format!("{} trailing bytes", rest.len()))),
            Err(e) => Err(DecodeError(e.to_string())),
        }
    }

    /// [`Envelope::decode`], with put values slices of `bytes` rather than copies where
    /// they are a fair part of it (`shared_bytes.rs`): what the store keeps of a put.
    pub fn decode_shared(bytes: &Bytes) -> Result<Envelope, DecodeError> {
        crate::shared_bytes::decoding(bytes, Envelope::decode)
    }
}

/// A request the state machine executes in log order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// No operation: only lets the leader's clock advance (and leases expire).
    Tick,
    /// A read ordered through the log (reads usually go through [`crate::KvStore::range`]).
    Range(RangeRequest),
    /// Write one key.
    Put(PutRequest),
    /// Delete the keys in a range.
    DeleteRange(DeleteRangeRequest),
    /// Guarded, atomic reads and writes.
    Txn(TxnRequest),
    /// Drop history before a revision.
    Compact(CompactionRequest),
    /// Create a lease.
    LeaseGrant(LeaseGrantRequest),
    /// End a lease, deleting its keys.
    LeaseRevoke(LeaseRevokeRequest),
    /// Restart a lease's TTL.
    LeaseKeepAlive(LeaseKeepAliveRequest),
    /// A new leader's first command: restart every lease's TTL from its clock (etcd's
    /// lessor does the same on promotion). Keep-alives sent to the old leader may have
    /// been lost with it, and the clock may have jumped while no leader proposed, so
    /// without this a leader change could expire leases whose holders are alive. The
    /// restart happens before the envelope's clock can expire anything.
    LeaseRenewAll,
    /// List, raise or clear an alarm. Raised alarms are replicated state: every member
    /// refuses the same writes from the same entry on.
    Alarm(AlarmRequest),
    // Variants are serialized by position (entries live in logs): new ones go last.
    /// Read or change users, roles and permissions, or turn auth on or off.
    Auth(AuthRequest),
    /// A client's command with who sent it, for the permission check when it applies.
    /// One level only: a caller inside a caller does not decode (hostile nesting would
    /// otherwise exhaust the stack while decoding).
    As(
        Caller,
        #[serde(deserialize_with = "one_caller")] Box<Command>,
    ),
}

thread_local! {
    static IN_AS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks a decode inside an [`Command::As`] on this thread, until dropped.
struct InAs;

impl Drop for InAs {
    fn drop(&mut self) {
        IN_AS.with(|f| f.set(false));
    }
}

fn one_caller<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Box<Command>, D::Error> {
    if IN_AS.with(|f| f.replace(true)) {
        // Still inside the outer one: leave the flag to its guard.
        return Err(serde::de::Error::custom("a caller inside a caller"));
    }
    let _guard = InAs;
    Box::<Command>::deserialize(d)
}

impl Command {
    /// `self` as `caller`'s: what a member proposes for a client.
    pub fn from_caller(self, caller: Caller) -> Command {
        Command::As(caller, Box::new(self))
    }

    /// The command itself, whoever sent it.
    pub fn inner(&self) -> &Command {
        match self {
            Command::As(_, inner) => inner.inner(),
            command => command,
        }
    }

    /// How many key operations this command orders: a txn counts those of its larger
    /// branch (nested txns counted through), anything else one. Admission control
    /// weighs writes by it, since a txn of a hundred puts is a hundred puts' work.
    pub fn operations(&self) -> usize {
        match self.inner() {
            Command::Txn(t) => txn_operations(t),
            _ => 1,
        }
    }

    /// Whether applying this may touch many keys: a ranged delete (alone or in a txn), a
    /// compaction, a lease revocation, a tick that may expire leases. With half a million
    /// keys such a command takes a second; the rest take microseconds.
    pub fn touches_many_keys(&self) -> bool {
        let ranged =
            |op: &RequestOp| matches!(op, RequestOp::DeleteRange(d) if !d.range_end.is_empty());
        match self.inner() {
            Command::DeleteRange(d) => !d.range_end.is_empty(),
            Command::Txn(t) => t.success.iter().chain(&t.failure).any(ranged),
            Command::Compact(_) | Command::LeaseRevoke(_) | Command::Tick => true,
            _ => false,
        }
    }
}

fn txn_operations(t: &TxnRequest) -> usize {
    let branch = |ops: &[RequestOp]| -> usize {
        ops.iter()
            .map(|op| match op {
                RequestOp::Txn(inner) => txn_operations(inner),
                _ => 1,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure)).max(1)
}

/// The answer to a [`Tick`](Command::Tick) or a [`LeaseRenewAll`](Command::LeaseRenewAll).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickResponse {
    pub header: ResponseHeader,
}

/// The answer to a [`Command`], variant for variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Tick(TickResponse),
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseKeepAlive(LeaseKeepAliveResponse),
    LeaseRenewAll(TickResponse),
    Alarm(AlarmResponse),
    Auth(AuthResponse),
}

impl Response {
    /// The header every response carries (the store revision after the command).
    pub fn header(&self) -> ResponseHeader {
        match self {
            Response::Tick(r) => r.header,
            Response::Range(r) => r.header,
            Response::Put(r) => r.header,
            Response::DeleteRange(r) => r.header,
            Response::Txn(r) => r.header,
            Response::Compact(r) => r.header,
            Response::LeaseGrant(r) => r.header,
            Response::LeaseRevoke(r) => r.header,
            Response::LeaseKeepAlive(r) => r.header,
            Response::LeaseRenewAll(r) => r.header,
            Response::Alarm(r) => r.header,
            Response::Auth(r) => r.header,
        }
    }
}

/// What applying a logged entry did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The command ran. `events` are every change it made, in order, including lease
    /// expiries its clock triggered (which happen first, even if `result` is an error).
    Executed {
        /// The response, or why the command was refused (then it changed nothing but
        /// the clock and what the clock expired).
        result: Result<Response, KvError>,
        /// The changes, in order.
        events: Vec<Event>,
    },
    /// The same request ran before; this is its recorded result. Nothing changed.
    Repeated(Result<Response, KvError>),
    /// An older request of a client that has since moved on: it never runs.
    Superseded,
    /// Bytes that are not an envelope. Deterministically ignored on every replica.
    Malformed(DecodeError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delete(range_end: &'static [u8]) -> DeleteRangeRequest {
        DeleteRangeRequest {
            key: Bytes::from_static(b"a"),
            range_end: Bytes::from_static(range_end),
            ..Default::default()
        }
    }

    fn put_value(command: &Command, i: usize) -> &Bytes {
        match command {
            Command::Put(put) => &put.value,
            Command::Txn(txn) => match &txn.success[i] {
                RequestOp::Put(put) => &put.value,
                other => panic!("not a put: {other:?}"),
            },
            other => panic!("not a put: {other:?}"),
        }
    }

    fn within(part: &Bytes, whole: &Bytes) -> bool {
        let whole = whole.as_ptr_range();
        whole.start <= part.as_ptr() && part.as_ptr_range().end <= whole.end
    }

    #[test]
    fn a_put_value_decoded_from_a_logged_command_is_a_slice_of_it() {
        let command = Command::Put(PutRequest::new("k", vec![7; 512]));
        let bytes = Envelope::new(1, command.clone()).encode();
        let shared = Envelope::decode_shared(&bytes).unwrap();
        assert_eq!(shared.command, command);
        assert!(within(put_value(&shared.command, 0), &bytes));
        // Decoded from a plain slice (and after the shared decoding): a copy.
        let copied = Envelope::decode(&bytes).unwrap();
        assert_eq!(copied.command, command);
        assert!(!within(put_value(&copied.command, 0), &bytes));
    }

    #[test]
    fn a_value_small_beside_its_command_is_copied_so_it_cannot_hold_the_command_alive() {
        let puts = [vec![1u8; 4], vec![2u8; 100_000]]
            .map(|v| RequestOp::Put(PutRequest::new("k", v)))
            .to_vec();
        let command = Command::Txn(TxnRequest {
            success: puts,
            ..TxnRequest::default()
        });
        let bytes = Envelope::new(1, command.clone()).encode();
        let decoded = Envelope::decode_shared(&bytes).unwrap();
        assert_eq!(decoded.command, command);
        assert!(!within(put_value(&decoded.command, 0), &bytes));
        assert!(within(put_value(&decoded.command, 1), &bytes));
    }

    #[test]
    fn a_caller_inside_a_caller_does_not_decode_however_deep() {
        let once = Command::Put(PutRequest::default()).from_caller(Caller::Anonymous);
        let bytes = Envelope::new(1, once.clone()).encode();
        assert_eq!(Envelope::decode(&bytes).unwrap().command, once);
        // Encoded by hand: building and serializing it would recurse as deep.
        let mut bytes = vec![1]; // now_ms
        for _ in 0..100_000 {
            bytes.extend([12, 0]); // Command::As, Caller::Anonymous
        }
        bytes.extend(Envelope::new(0, Command::Put(PutRequest::default())).encode()[1..].iter());
        assert!(Envelope::decode(&bytes).is_err());
        // And the flag is down again: a later single caller decodes.
        let bytes = Envelope::new(1, once.clone()).encode();
        assert_eq!(Envelope::decode(&bytes).unwrap().command, once);
    }

    #[test]
    fn ranged_deletes_compactions_and_revocations_touch_many_keys_puts_do_not() {
        let heavy = |c: Command| c.touches_many_keys();
        assert!(heavy(Command::DeleteRange(delete(b"b"))));
        assert!(!heavy(Command::DeleteRange(delete(b""))));
        assert!(heavy(Command::Txn(TxnRequest {
            failure: vec![RequestOp::DeleteRange(delete(b"\0"))],
            ..Default::default()
        })));
        assert!(!heavy(Command::Txn(TxnRequest {
            success: vec![RequestOp::DeleteRange(delete(b""))],
            ..Default::default()
        })));
        assert!(heavy(Command::Compact(CompactionRequest::default())));
        assert!(heavy(Command::LeaseRevoke(LeaseRevokeRequest::default())));
        assert!(heavy(Command::Tick));
        assert!(!heavy(Command::Put(PutRequest::default())));
    }

    #[test]
    fn a_txn_weighs_the_operations_of_its_larger_branch() {
        let put = || RequestOp::Put(PutRequest::default());
        let txn = |success: Vec<RequestOp>, failure: Vec<RequestOp>| TxnRequest {
            success,
            failure,
            ..Default::default()
        };
        let nested = txn(vec![put(), put()], vec![put()]);
        let outer = txn(
            vec![put(), RequestOp::Txn(nested)],
            vec![put(), put(), put(), put()],
        );
        assert_eq!(Command::Txn(outer.clone()).operations(), 4);
        let outer = txn(vec![RequestOp::Txn(outer), put()], vec![]);
        assert_eq!(
            Command::Txn(outer)
                .from_caller(Caller::Anonymous)
                .operations(),
            5
        );
        assert_eq!(Command::Txn(TxnRequest::default()).operations(), 1);
        assert_eq!(Command::Put(PutRequest::default()).operations(), 1);
    }
}
