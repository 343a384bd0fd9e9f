//! The Client role: registered clients sign their requests, no gateway can write in
//! their name, and a commit proof convinces a client holding only public keys.

use std::sync::Arc;

use super::*;
use crate::client::{
    Client, ClusterId, CommitProof, ProofError, cluster_id, derive_client_key, sign_request,
};
use crate::message::{Bundle, ClientRequest, Sig, Signed};

/// Client 7 signs its requests; every validator has its key.
const SIGNER: u64 = 7;

fn with_signer(i: u32, n: usize) -> PbftConfig {
    let key = derive_client_key(KEY_SEED, SIGNER).verifying_key();
    PbftConfig {
        clients: Arc::new([(SIGNER, key)].into()),
        ..config(i, n)
    }
}

fn client() -> Client {
    let key = derive_client_key(KEY_SEED, SIGNER);
    Client::new(SIGNER, key, crate::crypto::derive_public_keys(KEY_SEED, 4)).unwrap()
}

/// The cluster the tests' four validators form.
fn here() -> ClusterId {
    cluster_id(&crate::crypto::derive_public_keys(KEY_SEED, 4))
}

fn op(text: &str) -> Option<Bytes> {
    Some(Bytes::from(text.to_string()))
}

/// `request` handed to validator `at` as its client sends it.
fn send(c: &mut Cluster, at: usize, request: &ClientRequest) {
    let msg = Message::Request(request.clone());
    let from = NodeId(100); // a client, not a validator
    c.input(at, Input::Message { from, msg });
}

/// Validator `gateway`'s bundle of `requests`, signed by it, sent to every other one.
fn bundle_from(c: &mut Cluster, gateway: u32, requests: Vec<ClientRequest>) {
    let bundle = Bundle::new(NodeId(gateway), 900, 0, requests);
    let signed = Arc::new(crate::crypto::sign(
        &config(gateway, 4).secret,
        NodeId(gateway),
        bundle,
    ));
    for to in (0..4).filter(|&to| to != gateway) {
        let msg = Message::Bundle(signed.clone());
        c.queue.push_back((NodeId(gateway), NodeId(to), msg));
    }
}

/// Where `id` executed at replica `i`, if it did.
fn executed_at(c: &Cluster, i: usize, id: RequestId) -> Option<u64> {
    let node = c.node(i);
    (1..=node.last_executed()).find(|&seq| {
        node.executed(seq)
            .is_some_and(|(b, _)| b.requests().any(|(_, r)| r.id == id))
    })
}

fn commands(c: &Cluster, i: usize) -> Vec<(RequestId, Bytes)> {
    c.committed[i]
        .iter()
        .filter_map(|x| match &x.entry {
            CommittedEntry::Command { id, command } => Some((*id, command.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_signed_request_executes_everywhere_and_its_commit_proof_convinces_its_client() {
    let mut c = Cluster::with(4, with_signer);
    let mut me = client();
    let request = me.request(op("balance 100"));
    send(&mut c, 2, &request);
    c.advance(50);
    for i in 0..4 {
        assert_eq!(commands(&c, i), [(request.id, op("balance 100").unwrap())]);
    }
    // Any replica can show the proof; the client needs only the validators' keys.
    let seq = executed_at(&c, 3, request.id).expect("executed");
    let proof = c.node(3).commit_proof(seq, &request).expect("held");
    assert_eq!(me.verify(&request, &proof), Ok(()));
    assert_eq!(proof.qc.seq, seq);
}

#[test]
fn a_host_finds_a_request_s_proof_by_the_request_alone_and_it_survives_the_wire() {
    let mut c = Cluster::with(4, with_signer);
    // A client that restarted after using number 41 goes on at 42.
    let mut me = client().resume_after(41);
    let first = me.request(op("a"));
    let second = me.request(op("b"));
    assert_eq!((first.id.seq, second.id.seq), (42, 43));
    send(&mut c, 1, &first);
    c.advance(50);
    send(&mut c, 2, &second);
    c.advance(50);
    for (request, i) in [(&first, 0), (&second, 3)] {
        let (seq, proof) = c.node(i).find_commit_proof(request).expect("held");
        assert_eq!(Some(seq), executed_at(&c, i, request.id));
        // A host hands the proof over as JSON; the client checks what it parsed.
        let json = serde_json::to_string(&proof).unwrap();
        let parsed: CommitProof = serde_json::from_str(&json).unwrap();
        assert_eq!(me.verify(request, &parsed), Ok(()));
    }
    let never_sent = me.request(op("c"));
    assert!(c.node(0).find_commit_proof(&never_sent).is_none());
    assert_eq!(c.node(0).executed_as_sent(&never_sent), None);
    assert_eq!(c.node(0).executed_as_sent(&second), Some(true));
    // Another operation signed under a number already used is not what executed.
    let key = derive_client_key(KEY_SEED, SIGNER);
    let same_number = sign_request(&key, &here(), second.id, op("other"));
    send(&mut c, 0, &same_number);
    c.advance(50);
    assert_eq!(c.node(1).executed_as_sent(&same_number), Some(false));
    // It reaches the state machine after the first, which answers it as a repeat.
    let under_43: Vec<Bytes> = commands(&c, 1)
        .into_iter()
        .filter(|(id, _)| *id == second.id)
        .map(|(_, op)| op)
        .collect();
    assert_eq!(under_43, [op("b").unwrap(), op("other").unwrap()]);
}

#[test]
fn a_request_forged_in_a_signing_clients_name_never_executes() {
    let mut c = Cluster::with(4, with_signer);
    let mut me = client();
    let real = me.request(op("pay bob 5"));
    let id = |seq| RequestId {
        client: SIGNER,
        seq,
    };
    let wrong_key = crate::crypto::derive_key(KEY_SEED, 1);
    let forgeries = [
        // The client's real signature over other bytes.
        ClientRequest {
            op: op("pay mallory 500"),
            ..real.clone()
        },
        ClientRequest {
            id: id(50),
            op: op("pay mallory 1"),
            sig: None,
        },
        ClientRequest {
            id: id(51),
            op: op("pay mallory 2"),
            sig: Some(Sig([0x5a; 64])),
        },
        sign_request(&wrong_key, &here(), id(52), op("pay mallory 3")),
        // Signed by the client itself, for another cluster that registers its key: a
        // replay from there.
        sign_request(
            &derive_client_key(KEY_SEED, SIGNER),
            &cluster_id(&crate::crypto::derive_public_keys(KEY_SEED + 1, 4)),
            id(53),
            op("pay mallory 4"),
        ),
    ];
    // Byzantine gateway n1 signs a bundle of each forgery (with a harmless request of
    // an unregistered client beside it) and sends it to every replica.
    for forged in &forgeries {
        let harmless = ClientRequest {
            id: RequestId { client: 2, seq: 1 },
            op: op("unregistered"),
            sig: None,
        };
        bundle_from(&mut c, 1, vec![harmless, forged.clone()]);
    }
    send(&mut c, 0, &real);
    c.advance(200);
    for i in [0, 2, 3] {
        assert_eq!(
            commands(&c, i),
            [(real.id, op("pay bob 5").unwrap())],
            "n{i}"
        );
        assert_eq!(
            counted(&c, i, "forged-client-request"),
            forgeries.len(),
            "n{i}"
        );
    }
    // The bundles prove their gateway forged: n1 is convicted, and excluded through
    // consensus at one sequence number on every honest replica.
    let convicted = c.events.iter().any(|(_, e)| {
        matches!(e, Event::Evidence { against, what: "forged-client-request", .. } if *against == NodeId(1))
    });
    assert!(convicted, "no evidence against the forging gateway");
    let at = c.node(0).excluded().get(&NodeId(1)).copied();
    assert!(at.is_some(), "n1 not excluded");
    for i in [2, 3] {
        assert_eq!(c.node(i).excluded().get(&NodeId(1)).copied(), at, "n{i}");
    }
}

/// A forged-request proof holds only for a bundle its gateway signed with a request
/// that is not its client's: an honest bundle, or one re-signed by someone else,
/// proves nothing.
#[test]
fn a_forged_request_proof_convicts_only_the_gateway_that_signed_a_forgery() {
    let c = Cluster::with(4, with_signer);
    let judge = c.node(0).judge();
    let honest = client().request(op("pay bob 5"));
    let sign_bundle = |signer: u32, requests| {
        let body = Bundle::new(NodeId(1), 3, 0, requests);
        crate::crypto::sign(&config(signer, 4).secret, NodeId(1), body)
    };
    let mut forged = honest.clone();
    forged.op = op("pay mallory 500");
    let proof = crate::evidence::forged_request_proof;
    assert_eq!(
        judge.verify(&proof(&sign_bundle(
            1,
            vec![honest.clone(), forged.clone()]
        ))),
        Ok((NodeId(1), "forged-client-request"))
    );
    assert_eq!(
        judge.verify(&proof(&sign_bundle(1, vec![honest]))),
        Err(crate::evidence::EvidenceError::NoForgery)
    );
    assert_eq!(
        judge.verify(&proof(&sign_bundle(2, vec![forged]))),
        Err(crate::evidence::EvidenceError::BadSignature),
        "n2 cannot frame n1"
    );
}

/// A primary proposes its own bundle with a forgery in it, unsigned or signed with a
/// key that is not the client's: no backup accepts the pre-prepare.
#[test]
fn a_primary_proposing_a_forged_request_is_not_followed() {
    let id = RequestId {
        client: SIGNER,
        seq: 1,
    };
    let unsigned = ClientRequest {
        id,
        op: op("pay mallory 9"),
        sig: None,
    };
    let wrong_key = crate::crypto::derive_key(KEY_SEED, 0);
    for forged in [
        unsigned,
        sign_request(&wrong_key, &here(), id, op("pay mallory 9")),
    ] {
        primary_proposes(forged);
    }
}

fn primary_proposes(forged: ClientRequest) {
    let mut c = Cluster::with(4, with_signer);
    let bundle = Bundle::new(NodeId(0), 1, 0, vec![forged]);
    let batch = Arc::new(Batch {
        bundles: vec![Arc::new(crate::crypto::sign(
            &config(0, 4).secret,
            NodeId(0),
            bundle,
        ))],
        clock_ms: 0,
    });
    let header = crate::crypto::sign(&config(0, 4).secret, NodeId(0), header(&batch));
    for to in 1..4 {
        let msg = Message::PrePrepare {
            header,
            batch: batch.clone(),
        };
        c.input(
            to,
            Input::Message {
                from: NodeId(0),
                msg,
            },
        );
    }
    for i in 1..4 {
        assert!(!c.took_pre_prepare(i, 1), "n{i} accepted it");
        assert_eq!(c.node(i).stats().bad_signatures, 1, "n{i}");
    }
    c.advance(100);
    assert!(commands(&c, 1).is_empty());
    // The bundle inside the pre-prepare, signed by n0 as its gateway, proves n0
    // forged; every backup excludes it at one sequence number (ordered by view 1's
    // primary, since n0 orders no exclusion of itself).
    c.advance(3_000);
    let at = c.node(1).excluded().get(&NodeId(0)).copied();
    assert!(at.is_some(), "the forging primary was not excluded");
    for i in 2..4 {
        assert_eq!(c.node(i).excluded().get(&NodeId(0)).copied(), at, "n{i}");
    }
}

#[test]
fn the_skip_client_signatures_mutant_executes_a_forgery() {
    let mut c = Cluster::with(4, |i, n| PbftConfig {
        mutant: crate::Mutant::SkipClientSignatures,
        ..with_signer(i, n)
    });
    let forged = ClientRequest {
        id: RequestId {
            client: SIGNER,
            seq: 1,
        },
        op: op("pay mallory 9"),
        sig: None,
    };
    bundle_from(&mut c, 1, vec![forged.clone()]);
    c.request(0, 2, 1); // something for the primary to propose the bundle beside
    c.advance(100);
    assert!(commands(&c, 2).iter().any(|(id, _)| *id == forged.id));
}

#[test]
fn a_signing_client_cannot_be_sent_unsigned_or_signed_wrongly() {
    let mut c = Cluster::with(4, with_signer);
    // Through the host, unsigned (as an etcd client's request arrives): refused.
    c.request(0, SIGNER, 1);
    assert!(matches!(
        c.replies[0][..],
        [ekmat_core::Reply::Rejected {
            reason: ekmat_core::Rejection::SignatureRequired,
            ..
        }]
    ));
    // As a message with a bad signature: dropped and counted.
    let mut r = client().request(op("x"));
    r.sig.as_mut().unwrap().0[3] ^= 1;
    send(&mut c, 0, &r);
    // An unregistered client's request carrying a signature has no key to check it.
    let stray = sign_request(
        &derive_client_key(KEY_SEED, 8),
        &here(),
        RequestId { client: 8, seq: 1 },
        op("y"),
    );
    send(&mut c, 0, &stray);
    c.advance(50);
    assert_eq!(counted(&c, 0, "bad-client-request"), 2);
    assert!(commands(&c, 0).is_empty());
}

#[test]
fn a_validator_takes_requests_from_a_non_validator_and_nothing_else() {
    let mut c = Cluster::with(4, with_signer);
    c.request(0, 2, 1);
    c.advance(50);
    // A client replays a commit it saw, as if it were a validator.
    let commit = c.node(1).executed(1).map(|(_, qc)| qc.statement()).unwrap();
    let signed = crate::crypto::sign(&config(1, 4).secret, NodeId(1), commit);
    let msg = Message::Commit(signed);
    c.input(
        2,
        Input::Message {
            from: NodeId(9),
            msg,
        },
    );
    assert_eq!(counted(&c, 2, "non-validator"), 1);
    send(&mut c, 2, &client().request(op("z")));
    c.advance(50);
    assert_eq!(commands(&c, 2).len(), 2);
}

#[test]
fn a_commit_proof_is_refused_when_any_part_is_wrong() {
    let mut c = Cluster::with(4, with_signer);
    let mut me = client();
    let request = me.request(op("transfer"));
    let other = me.request(op("another"));
    send(&mut c, 1, &request);
    c.advance(50);
    send(&mut c, 1, &other);
    c.advance(50);
    let at = |id| executed_at(&c, 0, id).expect("executed");
    let (seq, other_seq) = (at(request.id), at(other.id));
    assert_ne!(seq, other_seq);
    let proof = c.node(0).commit_proof(seq, &request).unwrap();
    let other_proof = c.node(0).commit_proof(other_seq, &other).unwrap();
    assert_eq!(me.verify(&request, &proof), Ok(()));

    let mut p = proof.clone();
    p.qc.sigs.pop();
    assert!(matches!(
        me.verify(&request, &p),
        Err(ProofError::Certificate(_))
    ));
    let mut p = proof.clone();
    p.qc.sigs[0].1.0[9] ^= 1;
    assert!(matches!(
        me.verify(&request, &p),
        Err(ProofError::Certificate(_))
    ));
    // Another batch's certificate, or digests that are not the certified batch's.
    let p = CommitProof {
        qc: other_proof.qc.clone(),
        ..proof.clone()
    };
    assert_eq!(
        me.verify(&request, &p),
        Err(ProofError::NotTheCertifiedBatch)
    );
    let mut p = proof.clone();
    p.bundle_digests.push([0; 32]);
    assert_eq!(
        me.verify(&request, &p),
        Err(ProofError::NotTheCertifiedBatch)
    );
    // A bundle outside the batch, even one that holds the request.
    let mut outside: Signed<Bundle> = (*proof.bundle).clone();
    outside.body.nonce += 1;
    let outside = crate::crypto::sign(&config(1, 4).secret, NodeId(1), outside.body);
    let p = CommitProof {
        bundle: Arc::new(outside),
        ..proof.clone()
    };
    assert_eq!(me.verify(&request, &p), Err(ProofError::BundleNotInBatch));
    // The request is not in the proof's bundle, or is there with other bytes.
    assert_eq!(
        me.verify(&other, &proof),
        Err(ProofError::RequestNotInBundle)
    );
    let changed = ClientRequest {
        op: op("transfer more"),
        ..request.clone()
    };
    assert_eq!(
        me.verify(&changed, &proof),
        Err(ProofError::RequestNotInBundle)
    );
}

#[test]
fn a_client_with_a_reserved_id_or_too_few_validators_is_refused() {
    let key = derive_client_key(KEY_SEED, 1);
    let keys = crate::crypto::derive_public_keys(KEY_SEED, 4);
    for reserved in [crate::client::ANONYMOUS_CLIENT, crate::EXCLUSION_CLIENT] {
        let err = Client::new(reserved, key.clone(), keys.clone())
            .err()
            .unwrap();
        assert!(err.contains("reserved"), "{err}");
        let mut cfg = config(0, 4);
        cfg.clients = Arc::new([(reserved, key.verifying_key())].into());
        let err = Pbft::new(cfg).err().unwrap();
        assert!(err.contains("reserved"), "{err}");
    }
    let err = Client::new(1, key, keys[..3].to_vec()).err().unwrap();
    assert!(err.contains("at least 4"), "{err}");
}

/// Logs written before clients signed hold requests as (id, optional bytes); they
/// read as unsigned requests, and hash into the same bundle digests as before.
#[test]
fn requests_written_before_clients_signed_still_read() {
    #[derive(serde::Serialize)]
    struct Before {
        id: RequestId,
        op: Option<Bytes>,
    }
    let id = RequestId { client: 3, seq: 4 };
    for op in [None, Some(Bytes::from_static(b"put k v"))] {
        let bytes = postcard::to_stdvec(&vec![Before { id, op: op.clone() }]).unwrap();
        let back: Vec<ClientRequest> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, [ClientRequest { id, op, sig: None }]);
    }
    let signed = sign_request(&derive_client_key(KEY_SEED, 3), &here(), id, op("w"));
    let back: ClientRequest = postcard::from_bytes(&postcard::to_stdvec(&signed).unwrap()).unwrap();
    assert_eq!(back, signed);
    // A signature changes the requests' digest; a request unsigned hashes as it did.
    let bundle = |requests| Bundle::new(NodeId(0), 1, 0, requests);
    let unsigned = ClientRequest {
        sig: None,
        ..signed.clone()
    };
    let mut before = Vec::new();
    for v in [3u64, 4, 1] {
        before.extend_from_slice(&v.to_le_bytes());
    }
    before.push(b'w');
    assert_eq!(
        bundle(vec![unsigned.clone()]).requests_digest(),
        crate::message::sha256(&before)
    );
    assert_ne!(
        bundle(vec![signed]).requests_digest(),
        bundle(vec![unsigned]).requests_digest()
    );
}

/// A signed request replayed to its gateway (by anyone: requests come from any sender)
/// costs no bundle once executed or while it waits in the gateway's next bundle.
#[test]
fn a_replayed_client_request_is_not_bundled_again() {
    let mut c = Cluster::with(4, |i, n| PbftConfig {
        bundle_max: 8,
        ..with_signer(i, n)
    });
    let request = client().request(op("once"));
    send(&mut c, 1, &request);
    send(&mut c, 1, &request); // waits in the outbox already
    c.advance(50);
    send(&mut c, 1, &request); // executed already
    c.advance(50);
    assert_eq!(counted(&c, 1, "repeated-client-request"), 2);
    assert_eq!(commands(&c, 0).len(), 1);
    assert_eq!(
        c.node(0).last_executed(),
        1,
        "one batch, one sequence number"
    );
}
