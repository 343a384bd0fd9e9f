//! Holding clients back while a member checks its data at start (`initial_corrupt_check`):
//! every request but the few its peers' own checks need (Maintenance Status and HashKV)
//! is answered Unavailable until the gate opens. Peers restarting together then still
//! compare with each other instead of each waiting on the others' closed doors.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::watch;

/// Served while the gate is closed.
const ALWAYS: [&str; 2] = [
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/HashKV",
];

#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    open: watch::Receiver<bool>,
}

/// A layer that wraps a service in a [`Gate`] that opens when `open` turns true.
pub fn layer<S>(open: watch::Receiver<bool>) -> impl tower::Layer<S, Service = Gate<S>> + Clone {
    tower::layer::layer_fn(move |inner| Gate {
        inner,
        open: open.clone(),
    })
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Gate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !*self.open.borrow() && !ALWAYS.contains(&request.uri().path()) {
            let status = tonic::Status::unavailable(
                "etcdserver: not capable: this member is checking its data against its peers' before it serves",
            );
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(self.inner.call(request))
    }
}
