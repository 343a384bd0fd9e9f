//! Re-admitting an excluded replica: f+1 validators' votes, ordered and executed by
//! every replica at one sequence number; old evidence pardoned, new evidence not.

use bytes::Bytes;
use ekmat_core::{Event, NodeId, RequestId};

use super::{Cluster, config, primary_equivocates_to_3, snapshotting};
use crate::PbftConfig;
use crate::message::{Bundle, ClientRequest, Commit, Message};
use crate::readmission::{Readmission, ReadmissionError, ReadmitVote, vote};
use crate::{EXCLUSION_CLIENT, Pbft, READMISSION_CLIENT, evidence};

/// A cluster whose primary n0 equivocated and was excluded; the sequence number.
fn with_n0_excluded() -> (Cluster, u64) {
    excluding_n0(config)
}

fn excluding_n0(config: impl Fn(u32, usize) -> PbftConfig) -> (Cluster, u64) {
    let mut c = Cluster::with(4, config);
    c.request(0, 1, 1);
    primary_equivocates_to_3(&mut c);
    c.advance(3000);
    let at = c.node(1).excluded()[&NodeId(0)];
    (c, at)
}

fn votes(c: &Cluster, signers: &[u32], excluded_at: u64) -> Readmission {
    let target = ReadmitVote {
        cluster: c.node(1).cluster_id(),
        convict: NodeId(0),
        excluded_at,
    };
    let votes = signers
        .iter()
        .map(|&i| vote(&config(i, 4).secret, NodeId(i), target))
        .collect();
    Readmission { votes }
}

/// Hand `r` to replica `at`, as its host does with an operator's re-admission.
fn hand_in(c: &mut Cluster, at: usize, r: &Readmission) {
    let request = ClientRequest {
        id: RequestId {
            client: READMISSION_CLIENT,
            seq: 0,
        },
        op: Some(r.encode()),
        sig: None,
    };
    let from = NodeId(at as u32);
    c.input(
        at,
        ekmat_core::Input::Message {
            from,
            msg: Message::Request(request),
        },
    );
}

/// Replica n1, as a Byzantine gateway would, bundles `proof` as an exclusion request.
fn submit_proof(c: &mut Cluster, proof: Bytes, nonce: u64) {
    bundle_as_n1(c, EXCLUSION_CLIENT, proof, nonce);
}

/// Replica n1 bundles `op` as a request of the reserved `client` and sends it to all.
fn bundle_as_n1(c: &mut Cluster, client: u64, op: Bytes, nonce: u64) {
    let created = c.node(1).last_executed();
    let bundle = Bundle::new(
        NodeId(1),
        nonce,
        created,
        vec![ClientRequest {
            id: RequestId { client, seq: nonce },
            op: Some(op),
            sig: None,
        }],
    );
    let signed = std::sync::Arc::new(crate::crypto::sign(&config(1, 4).secret, NodeId(1), bundle));
    for to in [0, 2, 3] {
        c.queue
            .push_back((NodeId(1), NodeId(to), Message::Bundle(signed.clone())));
    }
}

/// n0's two conflicting COMMITs for sequence number `seq`.
fn n0_equivocates_at(seq: u64) -> Bytes {
    let statement = |digest: u8| {
        let body = Commit {
            view: 0,
            seq,
            digest: [digest; 32],
        };
        evidence::Statement::of(&crate::crypto::sign(&config(0, 4).secret, NodeId(0), body))
    };
    evidence::proof(&statement(1), &statement(2))
}

fn count(c: &Cluster, name: &str) -> usize {
    c.events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Counter { name: n, .. } if *n == name))
        .count()
}

#[test]
fn f_plus_1_votes_readmit_at_one_sequence_number_and_old_evidence_is_pardoned() {
    let (mut c, at) = with_n0_excluded();
    let r = votes(&c, &[1, 2], at);
    hand_in(&mut c, 2, &r);
    c.advance(500);
    let readmitted = c.node(1).readmitted().get(&NodeId(0)).copied();
    let r = readmitted.expect("ordered and executed");
    assert!(r > at);
    for i in 0..4 {
        assert!(c.node(i).excluded().is_empty(), "n{i}");
        assert_eq!(c.node(i).readmitted().get(&NodeId(0)), Some(&r), "n{i}");
    }
    // Its bundles are taken again.
    let before = c.committed[1].len();
    c.request(0, 5, 1);
    c.advance(500);
    assert_eq!(
        c.committed[1].len(),
        before + 1,
        "n0's client request executed"
    );
    c.assert_agree(&[0, 1, 2, 3]);

    // The old misbehaviour, proven again, excludes nobody; new misbehaviour does.
    submit_proof(&mut c, n0_equivocates_at(at.min(1)), 901);
    c.request(1, 1, 2);
    c.advance(500);
    assert!(c.node(2).excluded().is_empty());
    assert!(
        count(&c, "pardoned-evidence") >= 3,
        "every replica executed it"
    );
    let later = c.node(1).last_executed() + 1;
    submit_proof(&mut c, n0_equivocates_at(later), 902);
    c.request(1, 1, 3);
    c.advance(500);
    let again = c.node(2).excluded().get(&NodeId(0)).copied();
    assert!(again.is_some_and(|s| s > r), "excluded again: {again:?}");

    // A restarted replica replays both decisions at the same sequence numbers.
    let stable = c.disks[3].clone();
    c.nodes[3] = Some(Pbft::recover(config(3, 4), stable, c.now).unwrap());
    c.advance(500);
    assert_eq!(c.node(3).readmitted().get(&NodeId(0)), Some(&r));
    assert_eq!(c.node(3).excluded().get(&NodeId(0)).copied(), again);
}

#[test]
fn too_few_or_wrong_votes_readmit_nobody() {
    let (mut c, at) = with_n0_excluded();
    let node = c.node(1);
    let check = |r: &Readmission| node.check_readmission(&r.encode());
    let need = ReadmissionError::TooFew { have: 1, need: 2 };
    assert_eq!(check(&votes(&c, &[1], at)), Err(need));
    assert_eq!(
        check(&votes(&c, &[0, 1], at)),
        Err(ReadmissionError::ConvictVotes)
    );
    assert_eq!(
        check(&votes(&c, &[1, 1], at)),
        Err(ReadmissionError::RepeatedSigner)
    );
    assert_eq!(
        check(&votes(&c, &[1, 2], at + 1)),
        Err(ReadmissionError::OtherExclusion { in_force: at })
    );
    let mut mixed = votes(&c, &[1, 2], at);
    mixed.votes[1] = votes(&c, &[2], at + 1).votes[0];
    assert_eq!(check(&mixed), Err(ReadmissionError::Mixed));
    let mut forged = votes(&c, &[1, 2], at);
    forged.votes[1].sig.0[3] ^= 1;
    assert_eq!(check(&forged), Err(ReadmissionError::BadSignature));
    let mut elsewhere = votes(&c, &[1, 2], at);
    for v in &mut elsewhere.votes {
        v.body.cluster[0] ^= 1;
        *v = vote(&config(v.signer.0, 4).secret, v.signer, v.body);
    }
    assert_eq!(check(&elsewhere), Err(ReadmissionError::WrongCluster));
    assert_eq!(
        node.check_readmission(b"junk"),
        Err(ReadmissionError::Malformed)
    );

    // Handed in anyway (a Byzantine member may order anything): nobody re-admits.
    let one = votes(&c, &[1], at);
    hand_in(&mut c, 2, &one);
    c.advance(500);
    for i in 0..4 {
        assert_eq!(c.node(i).excluded().get(&NodeId(0)), Some(&at), "n{i}");
    }
    assert!(count(&c, "invalid-readmission") >= 1);
}

/// A Byzantine gateway may order anything: votes too few to hold re-admit nobody when
/// executed.
#[test]
fn a_readmission_ordered_without_enough_votes_readmits_nobody() {
    let (mut c, at) = with_n0_excluded();
    let one = votes(&c, &[1], at);
    bundle_as_n1(&mut c, READMISSION_CLIENT, one.encode(), 777);
    c.request(1, 1, 2);
    c.advance(500);
    for i in 0..4 {
        assert_eq!(c.node(i).excluded().get(&NodeId(0)), Some(&at), "n{i}");
        assert!(c.node(i).readmitted().is_empty(), "n{i}");
    }
    assert!(
        count(&c, "invalid-readmission") >= 3,
        "executed, and refused, by all"
    );
}

/// The excluded member's own operator hands the votes in there: nobody takes its
/// bundles, so it passes them to the others.
#[test]
fn votes_handed_to_the_excluded_member_readmit_it() {
    let (mut c, at) = with_n0_excluded();
    let r = votes(&c, &[1, 2], at);
    hand_in(&mut c, 0, &r);
    c.advance(500);
    for i in 0..4 {
        assert!(c.node(i).excluded().is_empty(), "n{i}");
        assert!(c.node(i).readmitted().contains_key(&NodeId(0)), "n{i}");
    }
}

/// Misbehaviour seen while the replica is still excluded, after the slot its
/// re-admission will take, excludes it again once the re-admission executes.
#[test]
fn evidence_found_while_excluded_and_newer_than_the_pardon_excludes_again() {
    let (mut c, at) = with_n0_excluded();
    let r = votes(&c, &[1, 2], at);
    hand_in(&mut c, 2, &r);
    let ahead = c.node(1).last_executed() + 6;
    let view = c.node(1).view();
    for d in [1u8, 2] {
        let body = Commit {
            view,
            seq: ahead,
            digest: [d; 32],
        };
        let signed = crate::crypto::sign(&config(0, 4).secret, NodeId(0), body);
        for to in [1, 2, 3] {
            c.queue
                .push_front((NodeId(0), NodeId(to), Message::Commit(signed)));
        }
    }
    c.advance(500);
    for s in 2..8 {
        c.request(1, 1, s);
        c.advance(100);
    }
    let readmitted = c.node(1).readmitted()[&NodeId(0)];
    assert!(
        readmitted < ahead,
        "the equivocation is newer than the pardon"
    );
    for i in 1..4 {
        let again = c.node(i).excluded().get(&NodeId(0)).copied();
        assert!(again.is_some_and(|s| s > readmitted), "n{i}: {again:?}");
    }
}

/// A replica that missed the re-admission and installs a snapshot taken after it
/// holds it as the others do.
#[test]
fn a_snapshot_carries_the_readmission_to_a_replica_behind() {
    let (mut c, at) = excluding_n0(snapshotting);
    c.cut = Box::new(|_, to, _| to == NodeId(2));
    let r = votes(&c, &[1, 3], at);
    hand_in(&mut c, 1, &r);
    c.advance(300);
    let readmitted = c.node(1).readmitted()[&NodeId(0)];
    for s in 2..40 {
        c.request(1, 1, s);
        c.advance(20);
    }
    assert!(
        c.node(1).executed(readmitted).is_none(),
        "dropped behind a snapshot"
    );
    assert!(c.node(2).readmitted().is_empty());
    c.cut = Box::new(|_, _, _| false);
    c.request(1, 1, 40);
    c.advance(2000);
    assert!(c.node(2).stats().snapshots_installed >= 1);
    assert!(c.node(2).excluded().is_empty());
    assert_eq!(c.node(2).readmitted().get(&NodeId(0)), Some(&readmitted));
}
