//! A replica serves another a bounded amount per fetch timeout: a faulty replica that
//! asks for the same batches or snapshot chunks again and again gets a few answers, not
//! one per request.

use super::*;
use crate::message::Fetch;

fn signed_by_n3<T: crate::message::Encode>(body: T) -> crate::message::Signed<T> {
    crate::crypto::sign(&crate::crypto::derive_key(KEY_SEED, 3), NodeId(3), body)
}

/// Messages n0 queued for n3 that `is` picks out.
fn sent_to_n3(c: &Cluster, is: impl Fn(&Message) -> bool) -> usize {
    c.queue
        .iter()
        .filter(|(f, to, m)| (*f, *to) == (NodeId(0), NodeId(3)) && is(m))
        .count()
}

#[test]
fn a_replica_asking_for_batches_again_and_again_is_answered_a_few_times_per_period() {
    let mut c = Cluster::new(4);
    c.one_request_per_batch(5);
    let fetch = Fetch { from: 1, view: 0 };
    for _ in 0..10 {
        c.input(0, from(3, Message::Fetch(signed_by_n3(fetch))));
    }
    let transfers = |c: &Cluster| sent_to_n3(c, |m| matches!(m, Message::Transfer(_)));
    assert_eq!(transfers(&c), 4);
    assert_eq!(counted(&c, 0, "over-serve-budget"), 6);
    // A fetch timeout later, it is answered again.
    c.now = c.now + c.node(0).config().fetch_timeout;
    c.input(0, from(3, Message::Fetch(signed_by_n3(fetch))));
    assert_eq!(transfers(&c), 5);
}

#[test]
fn a_replica_asking_for_snapshot_chunks_again_and_again_gets_a_bounded_number_of_bytes() {
    let mut c = Cluster::with(4, snapshotting);
    c.one_request_per_batch(40);
    c.run();
    let snapshot = c.node(0).own_snapshot().expect("a snapshot").clone();
    let image = snapshot.image().len() as u64;
    let ask = crate::snapshot_transfer::ChunkRequest {
        seq: snapshot.seq(),
        digest: snapshot.digest(),
        offset: 0,
        len: image,
    };
    let budget = c.node(0).chunk_serve_budget();
    let asked = budget / image + 50;
    for _ in 0..asked {
        c.input(0, from(3, Message::SnapshotFetch(signed_by_n3(ask))));
    }
    let chunks = |c: &Cluster| sent_to_n3(c, |m| matches!(m, Message::SnapshotChunk(_)));
    let served = chunks(&c) as u64;
    assert_eq!(
        served,
        budget / image,
        "the whole image, as often as the budget holds"
    );
    assert_eq!(counted(&c, 0, "over-serve-budget") as u64, asked - served);
    c.now = c.now + c.node(0).config().fetch_timeout;
    c.input(0, from(3, Message::SnapshotFetch(signed_by_n3(ask))));
    assert_eq!(chunks(&c) as u64, served + 1);
}
