//! The fan-out of applied changes to watch streams. The driver publishes the events of
//! every applied entry; each watch stream holds a receiver. A broadcast channel never
//! blocks its sender, so a slow watcher cannot stall the node: it falls behind, is told
//! so (`Lagged`), and catches up from the store's history instead.

use std::sync::Arc;

use ekmat_kv::Event;
use tokio::sync::broadcast;

/// Applied entries' events kept for receivers that have not read them yet. Past this a
/// receiver lags and must resync from history.
pub const HUB_CAPACITY: usize = 4096;

/// What a watch stream receives.
#[derive(Clone, Debug)]
pub enum Published {
    /// The changes one applied entry made, in revision order (an entry can span several
    /// revisions: lease expiries come first, each in its own).
    Events(Arc<Vec<Event>>),
    /// The state machine was replaced by a snapshot: events may have been skipped, so
    /// every watcher must resync from history.
    Reset,
}

#[derive(Clone, Debug)]
pub struct WatchHub {
    tx: broadcast::Sender<Published>,
}

impl Default for WatchHub {
    fn default() -> WatchHub {
        WatchHub::new()
    }
}

impl WatchHub {
    pub fn new() -> WatchHub {
        WatchHub {
            tx: broadcast::channel(HUB_CAPACITY).0,
        }
    }

    /// A receiver of everything published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.tx.subscribe()
    }

    /// Whether anyone listens (so the driver can skip copying events nobody reads).
    pub fn has_watchers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn publish(&self, published: Published) {
        // No receivers is not an error: nobody is watching.
        let _ = self.tx.send(published);
    }
}
