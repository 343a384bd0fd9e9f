//! The Client role: a party outside consensus that signs its own requests, and trusts
//! that one committed on a proof it checks with the validators' public keys alone.
//!
//! Every validator is a gateway: it bundles the requests it receives and signs the
//! bundle. For an unregistered client that signature is all a request has, so a
//! Byzantine gateway could write in its name. A registered client (its public key in
//! every validator's configuration, [`PbftConfig::clients`](crate::PbftConfig)) signs
//! each request over (client, number, SHA-256 of the operation), and every validator
//! checks that signature before it takes a bundle or a pre-prepare holding the request:
//! no gateway or primary can make it execute anything the client did not sign.
//!
//! Once its request committed, the client can be shown a [`CommitProof`]: the batch's
//! quorum certificate, the digests of the batch's bundles, and the bundle holding the
//! request. [`Client::verify`] checks it: the request is in a batch 2f+1 validators
//! committed at that sequence number, so every correct replica orders it there. It
//! executes there unless it executed before (a request ordered twice executes once) or
//! is older than the client's last eight requests (see `normal_case::Session`): a client
//! that waits for each request before it sends the next, or gives up on none, is never
//! in the second case. A client never takes part in consensus: it holds no validator
//! key, and a validator takes nothing but requests from a non-validator.
//!
//! Every validator must register the same clients (the registry is configuration, not
//! ordered through consensus): with different registries they may disagree on whether
//! a bundle is valid, which costs progress (a pre-prepare some correct backups refuse),
//! not safety, since no replica checks client signatures at execution. A request
//! signature names its cluster ([`cluster_id`], a digest of the validators' public
//! keys), so one cluster's requests cannot be replayed to another that registers the
//! same client key.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use ed25519_dalek::{SigningKey, VerifyingKey};
use ekmat_core::RequestId;

use crate::certificate::{CertError, QuorumCertificate};
use crate::crypto::{SigItem, verify_items};
use crate::message::{
    Batch, Bundle, ClientRequest, Digest, Encode, Sig, Signed, bundle_digest, put_u64, sha256,
};
use crate::replica::Pbft;

/// The client id of requests a gateway numbered itself (the runtime's, see
/// `normal_case::deliver`); never a registered client.
pub const ANONYMOUS_CLIENT: u64 = 0;

/// How many of the newest executed batches [`Pbft::find_commit_proof`] searches.
pub const PROOF_SEARCH_DEPTH: usize = 4096;

/// Registered clients' public keys, by client id.
pub type ClientRegistry = BTreeMap<u64, VerifyingKey>;

/// Names a cluster in what its clients sign: the SHA-256 of its validators' public
/// keys, in validator order. Nothing to configure, and two clusters share it only if
/// they share every validator key.
pub type ClusterId = Digest;

/// The [`ClusterId`] of the cluster whose validators hold `validators`.
pub fn cluster_id(validators: &[VerifyingKey]) -> ClusterId {
    let mut bytes = b"ekmat-pbft-cluster".to_vec();
    for key in validators {
        bytes.extend_from_slice(key.as_bytes());
    }
    sha256(&bytes)
}

/// What a client signs: the cluster, its id, the request's number and the operation's
/// digest (`None` for a linearizable read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestStatement {
    pub cluster: ClusterId,
    pub client: u64,
    pub seq: u64,
    pub op: Option<Digest>,
}

impl RequestStatement {
    pub fn of(cluster: &ClusterId, r: &ClientRequest) -> RequestStatement {
        RequestStatement {
            cluster: *cluster,
            client: r.id.client,
            seq: r.id.seq,
            op: r.op.as_deref().map(sha256),
        }
    }
}

impl Encode for RequestStatement {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(15);
        out.extend_from_slice(&self.cluster);
        put_u64(out, self.client);
        put_u64(out, self.seq);
        match &self.op {
            Some(d) => {
                out.push(1);
                out.extend_from_slice(d);
            }
            None => out.push(0),
        }
    }
}

/// Deterministic keys for client `client` of a cluster named by `seed` (the
/// simulator's and the tests'; a real client generates its own).
pub fn derive_client_key(seed: u64, client: u64) -> SigningKey {
    crate::crypto::derive_signing_key(b"ekmat-pbft-client-key", seed, &client.to_le_bytes())
}

/// `id`'s request for `op` (a read if `None`) to `cluster`, signed with `key`.
pub fn sign_request(
    key: &SigningKey,
    cluster: &ClusterId,
    id: RequestId,
    op: Option<Bytes>,
) -> ClientRequest {
    use ed25519_dalek::Signer;
    let mut r = ClientRequest { id, op, sig: None };
    let sig = key.sign(&RequestStatement::of(cluster, &r).to_bytes());
    r.sig = Some(Sig(sig.to_bytes()));
    r
}

/// Whether `request` carries `key`'s signature over it, for `cluster` (for a host that
/// checks a client's request before it takes it, to tell the client at once).
pub fn request_signed_by(key: &VerifyingKey, cluster: &ClusterId, request: &ClientRequest) -> bool {
    let Some(sig) = request.sig else {
        return false;
    };
    let msg = RequestStatement::of(cluster, request).to_bytes();
    key.verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&sig.0))
        .is_ok()
}

/// The client signatures `requests` need checked, or `None` if one cannot be valid:
/// a registered client's request without its signature, or a signature on an
/// unregistered client's (a request has one canonical form).
pub fn client_sig_items<'a>(
    clients: &ClientRegistry,
    cluster: &ClusterId,
    requests: impl IntoIterator<Item = &'a ClientRequest>,
) -> Option<Vec<SigItem>> {
    let mut items = Vec::new();
    for r in requests {
        match (clients.get(&r.id.client), r.sig) {
            (Some(key), Some(sig)) => {
                let msg = RequestStatement::of(cluster, r).to_bytes();
                items.push(SigItem::by_key(*key, msg, sig));
            }
            (None, None) => {}
            _ => return None,
        }
    }
    Some(items)
}

/// Why a client does not accept a [`CommitProof`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProofError {
    /// The quorum certificate does not hold.
    Certificate(CertError),
    /// The bundle digests are not those of the batch the certificate names.
    NotTheCertifiedBatch,
    /// The bundle is not among the batch's.
    BundleNotInBatch,
    /// The bundle's gateway did not sign it.
    BadGatewaySignature,
    /// The request is not in the bundle (or is there with other bytes).
    RequestNotInBundle,
    /// The bundle was past its horizon at the certified sequence number: ordered
    /// there, but not executed.
    BundleExpired,
}

impl std::fmt::Display for ProofError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProofError::Certificate(e) => write!(f, "the quorum certificate does not hold: {e}"),
            ProofError::NotTheCertifiedBatch => {
                write!(f, "the bundle digests are not the certified batch's")
            }
            ProofError::BundleNotInBatch => write!(f, "the bundle is not in the certified batch"),
            ProofError::BadGatewaySignature => write!(f, "the bundle's signature does not verify"),
            ProofError::RequestNotInBundle => write!(f, "the request is not in the bundle"),
            ProofError::BundleExpired => write!(
                f,
                "the bundle was past its horizon at the certified sequence number"
            ),
        }
    }
}

impl std::error::Error for ProofError {}

/// That a request committed: the certificate of its batch, the batch's clock and bundle
/// digests (which the certificate's digest covers), and the bundle holding the request.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitProof {
    pub qc: QuorumCertificate,
    /// The time the batch executed at (see `clock.rs`), in ms since the Unix epoch.
    pub clock_ms: u64,
    pub bundle_digests: Vec<Digest>,
    pub bundle: Arc<Signed<Bundle>>,
}

impl CommitProof {
    /// Check the proof for `request` against the validators' keys and quorum.
    pub fn verify(
        &self,
        validators: &[VerifyingKey],
        quorum: usize,
        bundle_horizon: u64,
        request: &ClientRequest,
    ) -> Result<(), ProofError> {
        self.qc
            .verify(validators, quorum)
            .map_err(ProofError::Certificate)?;
        if Batch::digest_of(self.clock_ms, &self.bundle_digests) != self.qc.digest {
            return Err(ProofError::NotTheCertifiedBatch);
        }
        if !self.bundle_digests.contains(&bundle_digest(&self.bundle)) {
            return Err(ProofError::BundleNotInBatch);
        }
        let signer_is_gateway = self.bundle.signer == self.bundle.body.gateway;
        if !signer_is_gateway || !verify_items(validators, &[SigItem::of(&*self.bundle)]) {
            return Err(ProofError::BadGatewaySignature);
        }
        if !self.bundle.body.requests().contains(request) {
            return Err(ProofError::RequestNotInBundle);
        }
        if !self.bundle.body.executable_at(self.qc.seq, bundle_horizon) {
            return Err(ProofError::BundleExpired);
        }
        Ok(())
    }
}

/// A client: it signs its requests with its own key and checks commit proofs with the
/// validators' public keys. Sans-IO like the replica: it makes requests and judges
/// proofs; sending and receiving them is its host's business.
pub struct Client {
    id: u64,
    key: SigningKey,
    validators: Vec<VerifyingKey>,
    cluster: ClusterId,
    bundle_horizon: u64,
    next_seq: u64,
}

impl Client {
    /// Client `id` of the cluster whose validators hold `validators`. Refused for the
    /// protocol's reserved ids, and for fewer than four validators (PBFT's least n).
    pub fn new(id: u64, key: SigningKey, validators: Vec<VerifyingKey>) -> Result<Client, String> {
        if id == ANONYMOUS_CLIENT || id == crate::EXCLUSION_CLIENT {
            return Err(format!("client id {id} is reserved by the protocol"));
        }
        if validators.len() < 4 {
            return Err(format!(
                "{} validators: PBFT needs at least 4 (n = 3f+1, f >= 1)",
                validators.len()
            ));
        }
        Ok(Client {
            id,
            key,
            cluster: cluster_id(&validators),
            validators,
            bundle_horizon: crate::message::BUNDLE_HORIZON,
            next_seq: 0,
        })
    }

    /// For validators configured with another `bundle_horizon` than the default.
    pub fn with_bundle_horizon(mut self, bundle_horizon: u64) -> Client {
        self.bundle_horizon = bundle_horizon;
        self
    }

    /// A client that restarted numbers its requests after `seq`, the last it used: a
    /// number it used before would be taken for a retry of that request.
    pub fn resume_after(mut self, seq: u64) -> Client {
        self.next_seq = seq;
        self
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The next request, signed: a write of `op`, or a linearizable read if `None`.
    pub fn request(&mut self, op: Option<Bytes>) -> ClientRequest {
        self.next_seq += 1;
        let id = RequestId {
            client: self.id,
            seq: self.next_seq,
        };
        sign_request(&self.key, &self.cluster, id, op)
    }

    /// The cluster this client signs its requests for.
    pub fn cluster(&self) -> ClusterId {
        self.cluster
    }

    /// 2f+1 of the validators (n = 3f+1).
    pub fn quorum(&self) -> usize {
        crate::config::byzantine_quorum(self.validators.len())
    }

    /// Whether `proof` shows `request` committed.
    pub fn verify(&self, request: &ClientRequest, proof: &CommitProof) -> Result<(), ProofError> {
        proof.verify(
            &self.validators,
            self.quorum(),
            self.bundle_horizon,
            request,
        )
    }
}

impl Pbft {
    /// The cluster this validator's clients sign their requests for.
    pub fn cluster_id(&self) -> ClusterId {
        self.cluster
    }

    /// A client's request, sent to this validator as its gateway: taken only if the
    /// client is registered and signed it (an unsigned request comes through the
    /// host's [`ekmat_core::Input::Request`], on the gateway's word). The signature is
    /// checked with the rest of the bundle, when it is flushed (`drop_forged_requests`).
    pub(crate) fn on_client_request(&mut self, r: ClientRequest, out: &mut crate::replica::Fx) {
        if r.sig.is_none() || !self.cfg.clients.contains_key(&r.id.client) {
            return self.counter("bad-client-request", out);
        }
        if r.size() > self.cfg.batch_max_bytes {
            return self.counter("oversize-client-request", out);
        }
        // A replay (by anyone: requests come from any sender) must not cost a bundle
        // and a sequence number each time: one already executed, or already waiting
        // here, is dropped.
        let digest = r.op.as_deref().map_or([0; 32], sha256);
        let executed = self
            .sessions
            .get(&r.id.client)
            .is_some_and(|s| r.op.is_some() && !s.would_admit(r.id.seq, &digest));
        if executed || self.outbox.contains(&r) {
            return self.counter("repeated-client-request", out);
        }
        // An excluded gateway's host learns it should send its clients elsewhere.
        if !self.refuse_if_excluded(r.id, out) {
            self.queue_request(r, out);
        }
    }

    /// Whether every registered client's request among `requests` carries its client's
    /// valid signature (batch-verified, through the signature cache).
    pub(crate) fn client_requests_verify(&mut self, requests: &[ClientRequest]) -> bool {
        if self.cfg.mutant == crate::Mutant::SkipClientSignatures {
            return true;
        }
        match client_sig_items(&self.cfg.clients, &self.cluster, requests) {
            Some(items) => items.is_empty() || self.keys.verify_all(items),
            None => false,
        }
    }

    /// The proof that `request` (exactly these bytes) committed at sequence number
    /// `seq`, while this replica still holds that batch (until a snapshot covers it).
    /// Every certificate this replica holds is safe to hand out: its own COMMIT counts
    /// towards one only once durable (see `count_durable_own_commits`).
    pub fn commit_proof(&self, seq: u64, request: &ClientRequest) -> Option<CommitProof> {
        let (batch, qc) = self.executed.get(&seq)?;
        let horizon = self.cfg.bundle_horizon;
        let bundle = batch
            .bundles
            .iter()
            .find(|b| b.body.requests().contains(request) && b.body.executable_at(seq, horizon))?;
        Some(CommitProof {
            qc: qc.clone(),
            clock_ms: batch.clock_ms,
            bundle_digests: batch.bundle_digests(),
            bundle: bundle.clone(),
        })
    }

    /// Whether `request` is what executed under its client's request number here:
    /// `Some(false)` if another operation signed under the same number executed first
    /// (so this one never will), `None` if this replica's session no longer tells (the
    /// client sent eight later requests since) or nothing executed under it.
    pub fn executed_as_sent(&self, request: &ClientRequest) -> Option<bool> {
        let first = self
            .sessions
            .get(&request.id.client)?
            .first_executed(request.id.seq)?;
        Some(request.op.as_deref().is_some_and(|op| sha256(op) == first))
    }

    /// The sequence number of the newest batch this replica holds that orders `request`
    /// where it may execute, with the proof of it; `None` once a snapshot covers it (or
    /// if it never committed here). A host looks a client's request up this way: it
    /// learns of the execution from the state machine, which knows no batch numbers.
    /// Only the newest [`PROOF_SEARCH_DEPTH`] batches are searched, so a caller asking
    /// about an old request again and again costs a bounded amount each time.
    pub fn find_commit_proof(&self, request: &ClientRequest) -> Option<(u64, CommitProof)> {
        self.executed
            .keys()
            .rev()
            .take(PROOF_SEARCH_DEPTH)
            .find_map(|&seq| Some((seq, self.commit_proof(seq, request)?)))
    }
}
