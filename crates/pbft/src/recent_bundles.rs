//! The bundles a replica took lately, so that a pre-prepare carrying them again (every
//! backup receives each bundle once from its gateway and once inside the primary's
//! batch), or a bundle sent again (every replica resends the bundles still pending
//! half-way to the view timeout), reuses the copy already held, whose requests digest
//! is already computed, instead of hashing every request a second time. A bundle is
//! reused only if it is equal byte for byte to the one held, so no sender can slip
//! anything in by it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use ekmat_core::NodeId;

use crate::message::{Batch, Bundle, Signed};

/// Requests' bytes held at most: old bundles go first.
const HELD_BYTES: usize = 64 << 20;

type Key = (NodeId, u64);

#[derive(Default)]
pub(crate) struct RecentBundles {
    held: BTreeMap<Key, Arc<Signed<Bundle>>>,
    order: VecDeque<(Key, usize)>,
    bytes: usize,
}

impl RecentBundles {
    pub(crate) fn remember(&mut self, b: &Arc<Signed<Bundle>>) {
        let key = (b.body.gateway, b.body.nonce);
        let bytes = b.body.size();
        self.held.insert(key, b.clone());
        self.order.push_back((key, bytes));
        self.bytes += bytes;
        while self.bytes > HELD_BYTES {
            let Some((old, old_bytes)) = self.order.pop_front() else {
                break;
            };
            self.bytes -= old_bytes;
            // A key seen twice (a gateway reusing a nonce) is dropped with its first
            // occurrence: only a missed reuse, never a wrong one.
            self.held.remove(&old);
        }
    }

    /// The bundle held that is equal to `b` byte for byte, if it is not `b` itself.
    pub(crate) fn held_equal(&self, b: &Arc<Signed<Bundle>>) -> Option<Arc<Signed<Bundle>>> {
        self.held
            .get(&(b.body.gateway, b.body.nonce))
            .filter(|h| !Arc::ptr_eq(h, b) && **h == *b)
            .cloned()
    }

    /// `batch` with every bundle equal to one held replaced by the held one.
    pub(crate) fn reuse(&self, mut batch: Arc<Batch>) -> Arc<Batch> {
        let found: Vec<_> = batch.bundles.iter().map(|b| self.held_equal(b)).collect();
        if found.iter().all(Option::is_none) {
            return batch;
        }
        let bundles = &mut Arc::make_mut(&mut batch).bundles;
        for (b, h) in bundles.iter_mut().zip(found) {
            if let Some(h) = h {
                *b = h;
            }
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use ekmat_core::RequestId;

    use super::*;
    use crate::message::{ClientRequest, Sig};

    fn bundle(nonce: u64, op: &str, len: usize) -> Arc<Signed<Bundle>> {
        let request = ClientRequest {
            id: RequestId {
                client: 7,
                seq: nonce,
            },
            op: Some(Bytes::from(op.repeat(len))),
            sig: None,
        };
        Arc::new(Signed {
            body: Bundle::new(NodeId(2), nonce, 0, vec![request]),
            signer: NodeId(2),
            sig: Sig([nonce as u8; 64]),
        })
    }

    fn batch(bundles: Vec<Arc<Signed<Bundle>>>) -> Arc<Batch> {
        Arc::new(Batch {
            bundles,
            clock_ms: 0,
        })
    }

    #[test]
    fn an_equal_bundle_is_replaced_by_the_one_held_and_a_different_one_is_kept() {
        let mut recent = RecentBundles::default();
        let held = bundle(1, "a", 10);
        held.body.requests_digest(); // computed once, on the copy held
        recent.remember(&held);
        let equal = Arc::new((*held).clone());
        let impostor = bundle(1, "b", 10); // same gateway and nonce, other requests
        let other = bundle(2, "a", 10);
        let out = recent.reuse(batch(vec![equal.clone(), impostor.clone(), other.clone()]));
        assert!(Arc::ptr_eq(&out.bundles[0], &held));
        assert!(Arc::ptr_eq(&out.bundles[1], &impostor));
        assert!(Arc::ptr_eq(&out.bundles[2], &other));
        assert_eq!(out.digest(), batch(vec![equal, impostor, other]).digest());
    }

    #[test]
    fn a_bundle_sent_again_is_the_one_held_unless_a_byte_differs() {
        let mut recent = RecentBundles::default();
        let held = bundle(1, "a", 10);
        recent.remember(&held);
        let again = Arc::new((*held).clone());
        assert!(Arc::ptr_eq(&recent.held_equal(&again).unwrap(), &held));
        assert!(recent.held_equal(&held).is_none(), "the held copy itself");
        let mut resigned = (*held).clone();
        resigned.sig = Sig([9; 64]);
        assert!(recent.held_equal(&Arc::new(resigned)).is_none());
        assert!(recent.held_equal(&bundle(1, "b", 10)).is_none());
        assert!(recent.held_equal(&bundle(3, "a", 10)).is_none());
    }

    #[test]
    fn old_bundles_are_forgotten_past_the_byte_bound() {
        let mut recent = RecentBundles::default();
        let per_bundle = 1 << 20;
        let bundles: Vec<_> = (0..100).map(|n| bundle(n, "x", per_bundle)).collect();
        for b in &bundles {
            recent.remember(b);
        }
        assert!(recent.bytes <= HELD_BYTES);
        let first = Arc::new((*bundles[0]).clone());
        assert!(Arc::ptr_eq(
            &recent.reuse(batch(vec![first.clone()])).bundles[0],
            &first
        ));
        let last = Arc::new((*bundles[99]).clone());
        assert!(Arc::ptr_eq(
            &recent.reuse(batch(vec![last])).bundles[0],
            &bundles[99]
        ));
    }
}
