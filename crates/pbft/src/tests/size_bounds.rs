//! Nothing larger than the batch bound is ordered: a request over it is refused, a
//! gateway splits what it holds into bundles within it, and a bundle or a batch over it
//! (from a Byzantine gateway or primary) is ignored. A VIEW-CHANGE carries a window of
//! prepared batches, so this is what keeps view changes within one transport frame.

use std::sync::Arc;

use super::*;
use crate::message::{Bundle, ClientRequest};
use ekmat_core::{Rejection, Reply};

const BOUND: usize = 200;

fn bounded(i: u32, n: usize) -> PbftConfig {
    PbftConfig {
        batch_max_bytes: BOUND,
        bundle_max: 64,
        ..config(i, n)
    }
}

fn write(client: u64, seq: u64, len: usize) -> Request {
    Request {
        id: RequestId { client, seq },
        kind: RequestKind::Write(Bytes::from(vec![b'x'; len])),
    }
}

#[test]
fn a_request_over_the_batch_bound_is_refused_as_too_large() {
    let mut c = Cluster::with(4, bounded);
    c.input(1, Input::Request(write(1, 1, BOUND)));
    c.input(1, Input::Request(write(1, 2, BOUND - 24)));
    c.advance(100);
    let too_large = Reply::Rejected {
        id: RequestId { client: 1, seq: 1 },
        reason: Rejection::TooLarge { limit: BOUND },
    };
    assert_eq!(c.replies[1].first(), Some(&too_large));
    let ids: Vec<_> = c.committed[0].iter().map(|e| e.index).collect();
    assert_eq!(
        ids.len(),
        1,
        "only the request at the bound executes: {ids:?}"
    );
    c.assert_agree(&[0, 1, 2, 3]);
}

#[test]
fn a_gateway_splits_what_it_holds_into_bundles_within_the_bound() {
    use std::cell::RefCell;
    use std::rc::Rc;
    let mut c = Cluster::with(4, bounded);
    let bundles = Rc::new(RefCell::new(Vec::new()));
    let seen = bundles.clone();
    c.cut = Box::new(move |from, _, msg| {
        if let Message::Bundle(b) = msg
            && from == NodeId(2)
        {
            seen.borrow_mut().push(b.body.size());
        }
        false
    });
    // Queued without a flush between them: ten requests of 84 bytes, two per bundle.
    for s in 1..=10 {
        c.nodes[2].as_mut().unwrap().outbox.push(ClientRequest {
            id: RequestId { client: 1, seq: s },
            op: Some(Bytes::from(vec![b'y'; 60])),
            sig: None,
        });
    }
    c.advance(200);
    assert_eq!(c.committed[0].len(), 10);
    let bundles = bundles.borrow();
    assert!(bundles.len() >= 5, "{bundles:?}");
    assert!(bundles.iter().all(|&b| b <= BOUND), "{bundles:?}");
}

/// Clients' requests get no slack past the bound: a bundle of them over it, though
/// within `batch_limit`, is ignored as well (else a proof against its gateway, which
/// carries the bundle, would be too large to order).
#[test]
fn a_bundle_over_the_bound_is_ignored() {
    let mut c = Cluster::with(4, bounded);
    let requests = (1..=30)
        .map(|s| ClientRequest {
            id: RequestId { client: 7, seq: s },
            op: Some(Bytes::from_static(b"z")),
            sig: None,
        })
        .collect();
    let bundle = Bundle::new(NodeId(1), 99, 0, requests);
    assert!(bundle.size() > BOUND && bundle.size() <= bounded(1, 4).batch_limit());
    let signed = Arc::new(crate::crypto::sign(&config(1, 4).secret, NodeId(1), bundle));
    for to in [0, 2, 3] {
        c.queue
            .push_back((NodeId(1), NodeId(to), Message::Bundle(signed.clone())));
    }
    c.request(0, 1, 1);
    c.advance(300);
    for i in [0, 2, 3] {
        assert_eq!(c.committed[i].len(), 1, "n{i} ordered the oversize bundle");
        assert!(counted(&c, i, "oversize-bundle") >= 1, "n{i}");
    }
}

#[test]
fn a_pre_prepare_over_the_bound_is_not_prepared() {
    let mut c = Cluster::with(4, bounded);
    let bundles = (1..=3)
        .map(|s| {
            let request = ClientRequest {
                id: RequestId { client: 7, seq: s },
                op: Some(Bytes::from(vec![b'w'; 500])),
                sig: None,
            };
            let bundle = Bundle::new(NodeId(0), s, 0, vec![request]);
            Arc::new(crate::crypto::sign(&config(0, 4).secret, NodeId(0), bundle))
        })
        .collect();
    let batch = Arc::new(Batch {
        bundles,
        clock_ms: 0,
    });
    assert!(batch.size() > bounded(0, 4).batch_limit());
    let header = crate::crypto::sign(&config(0, 4).secret, NodeId(0), header(&batch));
    for to in 1..4 {
        let msg = Message::PrePrepare {
            header,
            batch: batch.clone(),
        };
        c.queue.push_back((NodeId(0), NodeId(to), msg));
    }
    c.run();
    for i in 1..4 {
        assert!(!c.took_pre_prepare(i, 1), "n{i} took the oversize batch");
        assert_eq!(counted(&c, i, "oversize-batch"), 1, "n{i}");
    }
}
