//! ekmat's own `SignedRequests` service (`ekmatpb`): requests a registered PBFT client
//! signed. This member checks the signature against the client's registered key (so a
//! bad request is told at once, not left to time out), hands the request to the
//! protocol as the client's gateway (`Submit`), and answers once it executed here, with
//! the result and the proof that it committed. `AwaitOutcome` only waits: a client
//! submits through one member and asks the others, accepting a result f+1 of them
//! return alike (no member can make up a result alone), as PBFT's clients do.
//!
//! The member remembers a client's latest executed request and its result (the store's
//! session), so a client waits for each request before it sends its next.

use std::time::Duration;

use ekmat_api::ekmatpb::{self, signed_requests_server::SignedRequests};
use ekmat_kv::{Command, Envelope};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use super::{MAX_REQUEST_BYTES, Services, call_error};
use crate::driver::{Call, Outcome};
use crate::protocol::SignedRequest;

/// How long a call waits for the execution unless the client says.
const DEFAULT_WAIT: Duration = Duration::from_secs(5);
const MAX_WAIT: Duration = Duration::from_secs(60);

#[tonic::async_trait]
impl SignedRequests for Services {
    async fn submit(
        &self,
        request: Request<ekmatpb::SignedRequest>,
    ) -> Result<Response<ekmatpb::Outcome>, Status> {
        let (signed, wait, operations) = self.check_signed(request.into_inner())?;
        // A retry of what already executed is answered without ordering it again.
        let outcome = self.outcome(&signed, false).await?;
        if outcome != Outcome::Pending {
            return self.answer(&signed, wait, outcome);
        }
        // Admission control, as for etcd's writes: the driver holds the slot until
        // the request executes here, whether or not this call waits that long.
        let slot = Some(self.admit_write(operations).map_err(|e| call_error(&e))?);
        let request = signed.clone();
        self.call(|reply| Call::Signed {
            request,
            slot,
            reply,
        })
        .await
        .map_err(|e| call_error(&e))?;
        self.await_outcome_of(signed, wait).await
    }

    async fn await_outcome(
        &self,
        request: Request<ekmatpb::SignedRequest>,
    ) -> Result<Response<ekmatpb::Outcome>, Status> {
        let (signed, wait, _) = self.check_signed(request.into_inner())?;
        self.await_outcome_of(signed, wait).await
    }
}

impl Services {
    /// The request, if its client is registered here and signed it; how long to wait;
    /// and the key operations it orders ([`Command::operations`]).
    fn check_signed(
        &self,
        r: ekmatpb::SignedRequest,
    ) -> Result<(SignedRequest, Duration, usize), Status> {
        if self.inner.protocol != "pbft" {
            return Err(Status::unimplemented(format!(
                "protocol {} takes no requests signed by their clients (only pbft does)",
                self.inner.protocol
            )));
        }
        let Some(key) = self.inner.clients.get(&r.client) else {
            return Err(Status::permission_denied(format!(
                "client {} is not registered at member {} (no [[pbft_client]] entry with that id in its configuration)",
                r.client, self.inner.node_id
            )));
        };
        if r.seq == 0 {
            return Err(Status::invalid_argument("request numbers start at 1"));
        }
        if r.op.len() > MAX_REQUEST_BYTES {
            return Err(Status::invalid_argument("etcdserver: request is too large"));
        }
        // The envelope's own stamp is not the store's clock: the batch's agreed time is
        // (PBFT's `clock.rs`), so a client's clock cannot expire leases.
        let envelope = Envelope::decode(&r.op).map_err(|e| {
            Status::invalid_argument(format!("the operation is not an encoded command: {e}"))
        })?;
        // A registered client's key is its credential: it writes keys as itself, and
        // neither manages auth nor speaks in a user's name.
        if matches!(envelope.command, Command::Auth(_) | Command::As(..)) {
            return Err(Status::permission_denied(
                "a signed request carries a key-value command; users and roles are managed through the Auth service",
            ));
        }
        let signature: [u8; 64] = r.signature.as_slice().try_into().map_err(|_| {
            Status::invalid_argument(format!(
                "a signature is 64 bytes, not {}",
                r.signature.len()
            ))
        })?;
        let signed = SignedRequest {
            client: r.client,
            seq: r.seq,
            op: r.op.into(),
            signature,
        };
        let core = crate::protocol::pbft_client_request(&signed);
        if core.size() > self.inner.pbft_request_bytes {
            // PBFT orders nothing larger than a batch (the core would drop it).
            return Err(Status::invalid_argument("etcdserver: request is too large"));
        }
        if !ekmat_pbft::client::request_signed_by(key, &self.inner.signing_cluster, &core) {
            return Err(Status::unauthenticated(format!(
                "the signature does not verify with client {}'s registered public key for this cluster (a client signs for the cluster its validators' keys name)",
                r.client
            )));
        }
        let wait = match r.wait_ms {
            0 => DEFAULT_WAIT,
            ms => Duration::from_millis(ms).min(MAX_WAIT),
        };
        Ok((signed, wait, envelope.command.operations()))
    }

    /// The request's outcome here now, or with `wait` once it is no longer pending.
    async fn outcome(&self, request: &SignedRequest, wait: bool) -> Result<Outcome, Status> {
        let (reply, answer) = oneshot::channel();
        let request = request.clone();
        let stopped = || Status::unavailable("etcdserver: server stopped");
        self.inner
            .calls
            .send(Call::Outcome {
                request,
                wait,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }

    async fn await_outcome_of(
        &self,
        request: SignedRequest,
        wait: Duration,
    ) -> Result<Response<ekmatpb::Outcome>, Status> {
        let outcome = match tokio::time::timeout(wait, self.outcome(&request, true)).await {
            Ok(outcome) => outcome?,
            Err(_) => Outcome::Pending,
        };
        self.answer(&request, wait, outcome)
    }

    /// What the client is told of `request`'s outcome here (still pending after `wait`:
    /// a deadline error).
    fn answer(
        &self,
        request: &SignedRequest,
        wait: Duration,
        outcome: Outcome,
    ) -> Result<Response<ekmatpb::Outcome>, Status> {
        match outcome {
            Outcome::Executed { result, proof } => {
                let (batch_seq, proof_json) = proof.unwrap_or_default();
                Ok(Response::new(ekmatpb::Outcome {
                    member: u64::from(self.inner.node_id),
                    result: postcard::to_stdvec(&result).expect("results always serialize"),
                    batch_seq,
                    proof_json,
                }))
            }
            Outcome::Superseded { latest } => Err(Status::failed_precondition(format!(
                "client {} has executed its request {latest} since request {}: the result of {} is no longer kept",
                request.client, request.seq, request.seq
            ))),
            Outcome::OtherOperation => Err(Status::failed_precondition(format!(
                "client {} signed another operation under request number {}, and that one executed: this one never will (a new request needs a new number)",
                request.client, request.seq
            ))),
            Outcome::Pending => Err(Status::deadline_exceeded(format!(
                "request {} of client {} has not executed at member {} within {} ms",
                request.seq,
                request.client,
                self.inner.node_id,
                wait.as_millis()
            ))),
        }
    }
}
