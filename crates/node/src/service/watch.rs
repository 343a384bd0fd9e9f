//! etcd's Watch service: one bidirectional stream per client carrying many watchers.
//!
//! Every member serves watches from its own applied state: a stream subscribes to the
//! driver's [`WatchHub`](crate::watch_hub::WatchHub) and reads the history a watcher
//! starts from through the driver. A stream that falls more than the hub's capacity
//! behind (its client reads slowly) is told so by the hub and catches each watcher up
//! from the store's history; a watcher whose history has been compacted away is
//! cancelled with `compact_revision` set, as etcd does. Nothing a client does can make
//! the driver wait.

use std::collections::BTreeMap;
use std::time::Duration;

use ekmat_api::{etcdserverpb as pb, mvccpb};
use ekmat_kv::Event;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response as Reply, Status, Streaming};

use super::watcher::{Watcher, fragments};
use super::{MAX_REQUEST_BYTES, RequestStream, Services};
use crate::driver::CallError;
use crate::query::{Answer, History, Query};
use crate::watch_hub::Published;

/// Responses queued for a client. A client that reads slower than events arrive fills
/// this, and then its stream lags behind the hub instead of holding anything up.
const OUT_QUEUE: usize = 64;
/// How often watchers that asked for progress notifications get one if nothing was sent
/// to them meanwhile (etcd's default interval).
const PROGRESS_NOTIFY_EVERY: Duration = Duration::from_secs(600);
/// etcd's reason for a create that names a watch id the stream already uses.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// The size at which etcd fragments a response for a watcher that asked for it: its
/// request limit plus the 512 KiB it allows for gRPC's overhead (measured against etcd
/// 3.4: a 1.8 MB response goes whole, a 2.4 MB one in fragments).
const FRAGMENT_AT: usize = MAX_REQUEST_BYTES + 512 * 1024;
/// etcd's message for a watch that starts before the compaction point.
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

type Out = mpsc::Sender<Result<pb::WatchResponse, Status>>;

#[tonic::async_trait]
impl pb::watch_server::Watch for Services {
    type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Reply<Self::WatchStream>, Status> {
        let caller = self.caller(&request).await?;
        Ok(Reply::new(self.watch_session(caller, request.into_inner())))
    }
}

impl Services {
    /// Serve one watch stream: the responses to `requests`, and the events they ask for
    /// (where `caller` may read them).
    pub(crate) fn watch_session(
        &self,
        caller: ekmat_kv::Caller,
        requests: impl RequestStream<pb::WatchRequest>,
    ) -> ReceiverStream<Result<pb::WatchResponse, Status>> {
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        // Subscribe before any create is read, so no applied entry falls between a
        // watcher's history and the live events.
        let hub = self.inner.hub.subscribe();
        let session = Session {
            services: self.clone(),
            caller,
            out: tx,
            watchers: BTreeMap::new(),
            next_id: 0,
            revision: 0,
        };
        tokio::spawn(session.run(requests, hub));
        ReceiverStream::new(rx)
    }
}

/// One client's watch stream.
struct Session {
    services: Services,
    /// Who opened the stream: each watch needs read permission on its keys.
    caller: ekmat_kv::Caller,
    out: Out,
    watchers: BTreeMap<i64, Watcher>,
    /// The next watch id to try for a create that asks for none.
    next_id: i64,
    /// Every event up to this revision has been sent to every watcher that wants it
    /// (0: not known yet).
    revision: i64,
}

/// Whether the stream goes on.
type Go = bool;

impl Session {
    async fn run(
        mut self,
        mut requests: impl RequestStream<pb::WatchRequest>,
        mut hub: broadcast::Receiver<Published>,
    ) {
        let mut progress = tokio::time::interval(PROGRESS_NOTIFY_EVERY);
        progress.tick().await; // the first tick is immediate
        let mut reading = true;
        loop {
            let go = tokio::select! {
                req = requests.next(), if reading => match req {
                    Some(Ok(req)) => self.on_request(req).await,
                    // A client that closes its side still gets events, as in etcd.
                    None => { reading = false; true }
                    Some(Err(_)) => false,
                },
                published = hub.recv() => match published {
                    Ok(Published::Events(events)) => self.on_events(&events).await,
                    Ok(Published::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.resync().await
                    }
                    Err(broadcast::error::RecvError::Closed) => false,
                },
                _ = progress.tick() => self.notify_progress().await,
                () = self.out.closed() => false,
            };
            if !go {
                return;
            }
        }
    }

    async fn send(&self, resp: pb::WatchResponse) -> Go {
        self.out.send(Ok(resp)).await.is_ok()
    }

    fn response(&self, watch_id: i64, revision: i64) -> pb::WatchResponse {
        pb::WatchResponse {
            header: Some(self.services.header(revision)),
            watch_id,
            ..Default::default()
        }
    }

    /// The revision progress is reported at: what this stream has delivered, or, before
    /// it knows, what the member has applied (with no watchers, nothing is owed).
    fn progress_revision(&self) -> i64 {
        if self.revision > 0 {
            self.revision
        } else {
            self.services.revision()
        }
    }

    async fn on_request(&mut self, req: pb::WatchRequest) -> Go {
        use pb::watch_request::RequestUnion as R;
        match req.request_union {
            Some(R::CreateRequest(c)) => self.create(c).await,
            Some(R::CancelRequest(c)) => self.cancel(c.watch_id).await,
            Some(R::ProgressRequest(_)) => {
                // Not tied to a watcher: etcd uses watch id -1.
                self.send(self.response(-1, self.progress_revision())).await
            }
            None => true,
        }
    }

    /// The id a create gets: the one it asks for if free, else the lowest free one from
    /// `next_id` on. `None` if the one asked for is taken.
    fn assign_id(&mut self, wanted: i64) -> Option<i64> {
        if wanted != 0 {
            return (!self.watchers.contains_key(&wanted)).then_some(wanted);
        }
        while self.watchers.contains_key(&self.next_id) {
            self.next_id += 1;
        }
        self.next_id += 1;
        Some(self.next_id - 1)
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) -> Go {
        let mut watcher = Watcher::new(&c, 0);
        let from = c.start_revision.max(0);
        // Read first: it is where the caller's permission to watch these keys is checked.
        let history = match self.history(from, &watcher).await {
            Ok(history) => history,
            Err(CallError::Kv(denied)) => {
                // etcd 3.4 gives the gRPC error's text as the reason.
                let denied = super::convert::kv_error(&denied);
                let reason = format!(
                    "rpc error: code = {:?} desc = {}",
                    denied.code(),
                    denied.message()
                );
                return self.refuse(reason).await;
            }
            Err(_) => return false,
        };
        let Some(id) = self.assign_id(c.watch_id) else {
            return self.refuse(DUPLICATE_ID.to_string()).await;
        };
        match history {
            History::Compacted {
                revision,
                compact_revision,
            } => {
                // etcd accepts the watch, then cancels it with the compaction point.
                let mut created = self.response(id, revision);
                created.created = true;
                self.send(created).await && self.cancel_compacted(id, compact_revision).await
            }
            History::Events { revision, events } => {
                let mut created = self.response(id, revision);
                created.created = true;
                if !self.send(created).await {
                    return false;
                }
                watcher.next_rev = from.max(1);
                let go = self.send_history(id, &mut watcher, &events, revision).await;
                self.watchers.insert(id, watcher);
                go
            }
        }
    }

    /// Refuse a create as etcd does: created and canceled at once, with the reason.
    async fn refuse(&self, reason: String) -> Go {
        let mut refused = self.response(-1, self.progress_revision());
        refused.created = true;
        refused.canceled = true;
        refused.cancel_reason = reason;
        self.send(refused).await
    }

    async fn history(&self, from: i64, w: &Watcher) -> Result<History, CallError> {
        let query = Query::History {
            from,
            key: w.key().clone(),
            range_end: w.range_end().clone(),
        };
        let query = Query::As(self.caller.clone(), Box::new(query));
        match self.services.read(query, false).await? {
            Answer::History(h) => Ok(h),
            _ => Err(CallError::Stopped),
        }
    }

    async fn send_history(
        &mut self,
        id: i64,
        w: &mut Watcher,
        events: &[Event],
        revision: i64,
    ) -> Go {
        self.revision = self.revision.max(revision);
        for batch in w.take_history(events, revision) {
            w.sent_since_progress = true;
            if !self.send_events(id, revision, batch, w.fragment).await {
                return false;
            }
        }
        true
    }

    /// One response of `events`, in fragments if the watcher asked for them.
    async fn send_events(
        &self,
        id: i64,
        revision: i64,
        events: Vec<mvccpb::Event>,
        fragment: bool,
    ) -> Go {
        let resp = pb::WatchResponse {
            events,
            ..self.response(id, revision)
        };
        if !fragment {
            return self.send(resp).await;
        }
        for piece in fragments(resp, FRAGMENT_AT) {
            if !self.send(piece).await {
                return false;
            }
        }
        true
    }

    async fn cancel_compacted(&self, id: i64, compact_revision: i64) -> Go {
        let mut canceled = self.response(id, self.progress_revision());
        canceled.canceled = true;
        canceled.compact_revision = compact_revision;
        canceled.cancel_reason = COMPACTED.to_string();
        self.send(canceled).await
    }

    async fn cancel(&mut self, id: i64) -> Go {
        // An unknown id gets no answer, as in etcd.
        if self.watchers.remove(&id).is_none() {
            return true;
        }
        let mut canceled = self.response(id, self.progress_revision());
        canceled.canceled = true;
        self.send(canceled).await
    }

    /// Hand each watcher its share of one applied entry's events.
    async fn on_events(&mut self, events: &[Event]) -> Go {
        let Some(last) = events.last() else {
            return true;
        };
        let mut out = Vec::new();
        for (&id, w) in &mut self.watchers {
            let groups = w.take_live(events);
            w.sent_since_progress |= !groups.is_empty();
            let fragment = w.fragment;
            out.extend(
                groups
                    .into_iter()
                    .map(|(rev, evs)| (id, rev, evs, fragment)),
            );
        }
        self.revision = self.revision.max(last.revision());
        for (id, rev, evs, fragment) in out {
            if !self.send_events(id, rev, evs, fragment).await {
                return false;
            }
        }
        true
    }

    /// The stream missed published events (it lagged, or the store was replaced by a
    /// snapshot): catch every watcher up from history, or cancel it if that is gone.
    async fn resync(&mut self) -> Go {
        metrics::counter!("ekmat_watch_resyncs_total").increment(1);
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let Some(mut w) = self.watchers.remove(&id) else {
                continue;
            };
            let go = match self.history(w.next_rev, &w).await {
                // Its caller may no longer read its keys.
                Err(CallError::Kv(e)) => {
                    let mut canceled = self.response(id, self.progress_revision());
                    canceled.canceled = true;
                    canceled.cancel_reason = super::convert::kv_error(&e).message().to_owned();
                    self.send(canceled).await
                }
                Err(_) => false,
                Ok(History::Compacted {
                    compact_revision, ..
                }) => self.cancel_compacted(id, compact_revision).await,
                Ok(History::Events { revision, events }) => {
                    let go = self.send_history(id, &mut w, &events, revision).await;
                    self.watchers.insert(id, w);
                    go
                }
            };
            if !go {
                return false;
            }
        }
        true
    }

    /// Tell each watcher that asked for it, and was sent nothing since last time, how
    /// far the stream has got.
    async fn notify_progress(&mut self) -> Go {
        let revision = self.progress_revision();
        let mut due = Vec::new();
        for (&id, w) in &mut self.watchers {
            if w.progress_notify && !w.sent_since_progress {
                due.push(id);
            }
            w.sent_since_progress = false;
        }
        for id in due {
            if !self.send(self.response(id, revision)).await {
                return false;
            }
        }
        true
    }
}
