//! PBFT as the runtime runs it: validator i is member i; every member's public key comes
//! from the configuration, its own secret key from its data directory (generated there
//! on first start, see `keys.rs`). The membership is fixed: PBFT's core has no
//! reconfiguration, so membership changes and leadership transfer are refused.
//!
//! Every member is a gateway: a client request at any member is signed into a bundle
//! and sent to every replica, so nothing is forwarded to the primary. A request is
//! answered only once its batch committed (2f+1 COMMITs, a quorum certificate) and the
//! local replica executed it.

use std::time::Duration;

use ekmat_core::{NodeId, Time};
use ekmat_pbft::{PbftConfig, PbftStable, primary_of};

use ekmat_pbft::readmission::Readmission;

use super::{CoreStatus, Exclusions, Readmit, RuntimeProtocol, SignedRequest};
use crate::config::NodeConfig;
use crate::keys;

pub struct Pbft;

/// The view-change timeout (doubled per failed view, up to 8x). Longer than the
/// simulator's: a real disk and a loaded machine stall for hundreds of milliseconds.
const VIEW_TIMEOUT: Duration = Duration::from_millis(1000);

/// The core's form of a signed request.
pub fn client_request(request: &SignedRequest) -> ekmat_pbft::message::ClientRequest {
    ekmat_pbft::message::ClientRequest {
        id: ekmat_core::RequestId {
            client: request.client,
            seq: request.seq,
        },
        op: Some(request.op.clone()),
        sig: Some(ekmat_pbft::message::Sig(request.signature)),
    }
}

/// The history digest of the backup this member was seeded with (see
/// `backup/seed.rs`), or that it was seeded with none.
fn seed_of(cfg: &NodeConfig) -> String {
    let path = cfg.data_dir.join(crate::backup::SEED_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => format!("history digest {}", text.trim()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "none".into(),
        Err(e) => format!("unreadable {}: {e}", path.display()),
    }
}

/// The core's knobs for a real cluster.
fn tune(pc: &mut PbftConfig, cfg: &NodeConfig) {
    pc.checkpoint_interval = 8;
    // The executed log (memory and disk) stays within about this many bytes of
    // requests, or K times the store's size once that is more: a snapshot encodes the
    // whole store, so one every 256 MiB cost, at 1 GB of store, four bytes encoded and
    // written per byte executed (a sixth to a quarter of the members' CPU at 85,000
    // puts/s in a 20 s run, measured with snapshots off).
    pc.snapshot_bytes = cfg.pbft_snapshot_bytes;
    pc.snapshot_size_factor = cfg.pbft_snapshot_factor;
    pc.window = WINDOW;
    pc.max_inflight = cfg.pbft_max_inflight;
    pc.batch_max = 2048;
    pc.batch_max_bytes = max_request_bytes(cfg);
    pc.bundle_max = 256;
    pc.bundle_max_bytes = pc.batch_max_bytes / 2;
    pc.view_timeout = VIEW_TIMEOUT;
    pc.fetch_timeout = Duration::from_millis(300);
    pc.clock_ahead = Duration::from_millis(cfg.pbft_clock_ahead_ms);
    pc.clock_behind = Duration::from_millis(cfg.pbft_clock_behind_ms);
}

/// Sequence numbers between the watermarks.
pub(crate) const WINDOW: u64 = 32;

/// The most bytes a batch of requests takes here, and so a request (as
/// `ClientRequest::size` counts them): the core refuses a larger one as too large.
pub fn max_request_bytes(cfg: &NodeConfig) -> usize {
    batch_bytes_that_fit(cfg.members.len(), WINDOW)
}

/// The most request bytes a batch takes. A VIEW-CHANGE carries every batch its sender
/// prepared above its stable checkpoint (a window's worth at most) and a NEW-VIEW 2f+1
/// of those, all in one transport frame; a quarter of the frame is left for the rest.
/// Batches of half a megabyte carry as much as unbounded ones (2,048 transactions of 100
/// puts made a 100 MB pre-prepare no backup could receive), where a quarter megabyte
/// lost a fifth of the throughput: a batch's round trip has fsyncs in it. A bundle or
/// batch may exceed the bound by `EVIDENCE_SLACK` (a proof against a gateway).
fn batch_bytes_that_fit(n: usize, window: u64) -> usize {
    const MOST: usize = 512 << 10;
    let f = n.saturating_sub(1) / 3;
    let view_changes = 2 * f + 1;
    let share = crate::transport::MAX_FRAME / (view_changes * window as usize);
    (share - share / 4).min(MOST)
}

impl RuntimeProtocol for Pbft {
    type Node = ekmat_pbft::Pbft;
    const NAME: &'static str = "pbft";
    const RECONFIGURES: bool = false;
    const AGREES_ON_TIME: bool = true;
    const TAKES_SNAPSHOTS: bool = false;

    /// Snapshot points follow bytes executed, so a member with another threshold would
    /// vouch for snapshots no one else takes; a member listing another key for a peer
    /// would take every message of it for a forgery.
    fn agreed_settings(cfg: &NodeConfig) -> Vec<(String, String)> {
        let mut settings = vec![
            (
                "pbft_snapshot_bytes".to_string(),
                cfg.pbft_snapshot_bytes.to_string(),
            ),
            // How points follow from it (`tune`): a member of a build that snapshots
            // every `pbft_snapshot_bytes` alone sends no such setting, and is refused
            // rather than vouching for snapshots at points no one else takes.
            (
                "pbft_snapshot_points".to_string(),
                "after the bytes or the last snapshot's size".to_string(),
            ),
            (
                "pbft_snapshot_factor".to_string(),
                cfg.pbft_snapshot_factor.to_string(),
            ),
            // A member with other clock bounds would refuse times the rest accept.
            (
                "pbft_clock_ahead_ms".to_string(),
                cfg.pbft_clock_ahead_ms.to_string(),
            ),
            (
                "pbft_clock_behind_ms".to_string(),
                cfg.pbft_clock_behind_ms.to_string(),
            ),
        ];
        for m in &cfg.members {
            let key = m.public_key.clone().unwrap_or_default().to_lowercase();
            settings.push((format!("public_key of member {}", m.id), key));
        }
        // Members registering different clients would disagree on which bundles are
        // valid: a pre-prepare some correct members refuse costs progress.
        let clients: Vec<String> = cfg.pbft_clients.iter().map(|c| c.id.to_string()).collect();
        settings.push(("registered pbft_client ids".into(), clients.join(",")));
        // Members started from different backups, or one from none, would run the same
        // batches on different stores.
        settings.push(("backup the cluster started from".into(), seed_of(cfg)));
        for c in &cfg.pbft_clients {
            let key = c.public_key.to_lowercase();
            settings.push((format!("public_key of pbft_client {}", c.id), key));
            // Members binding a client to different users would execute its requests
            // with different rights, and so diverge. (Listed only when set, so members
            // of an earlier build, which bind none, still agree with these.)
            if let Some(user) = &c.user {
                settings.push((format!("user of pbft_client {}", c.id), user.clone()));
            }
        }
        settings
    }

    fn recover(
        cfg: &NodeConfig,
        stable: PbftStable,
        now: Time,
    ) -> Result<ekmat_pbft::Pbft, String> {
        let validators = cfg.public_keys()?;
        let path = keys::key_path(&cfg.data_dir);
        let (secret, generated) =
            keys::load_or_generate(&cfg.data_dir).map_err(|e| e.to_string())?;
        let mine = keys::public_key_hex(&secret.verifying_key());
        let listed = keys::public_key_hex(&validators[cfg.id as usize]);
        if mine != listed {
            let how = if generated {
                "this node had no signing key and generated one"
            } else {
                "this node's signing key"
            };
            return Err(format!(
                "{how} in {} has public key {mine}, but the configuration lists {listed} for member {}: \
                 restore the member's original key file, or (for a new member) put public_key = \"{mine}\" \
                 in member {}'s entry of every member's configuration",
                path.display(),
                cfg.id,
                cfg.id
            ));
        }
        if generated {
            tracing::info!(path = %path.display(), public_key = %mine, "generated this node's signing key");
        }
        let mut pc = PbftConfig {
            validators,
            secret,
            clients: std::sync::Arc::new(cfg.client_keys()?),
            ..PbftConfig::from_seed(NodeId(cfg.id), cfg.members.len(), 0)
        };
        tune(&mut pc, cfg);
        ekmat_pbft::Pbft::recover(pc, stable, now)
    }

    /// A Byzantine member could otherwise open links in another's name and spend the
    /// per-peer budgets (snapshot serving) kept for it. The keys are the replica's own.
    fn link_auth(node: &ekmat_pbft::Pbft) -> Option<crate::transport::LinkAuth> {
        let validators = &node.config().validators;
        Some(crate::transport::LinkAuth {
            key: node.keyring().secret().clone(),
            members: (0..).map(NodeId).zip(validators.iter().copied()).collect(),
        })
    }

    fn signed_request(request: &SignedRequest) -> Result<ekmat_pbft::Message, String> {
        Ok(ekmat_pbft::Message::Request(client_request(request)))
    }

    fn request_proof(node: &ekmat_pbft::Pbft, request: &SignedRequest) -> Option<(u64, String)> {
        let (seq, proof) = node.find_commit_proof(&client_request(request))?;
        Some((seq, serde_json::to_string(&proof).ok()?))
    }

    fn executed_as_sent(node: &ekmat_pbft::Pbft, request: &SignedRequest) -> Option<bool> {
        node.executed_as_sent(&client_request(request))
    }

    fn exclusions(node: &ekmat_pbft::Pbft) -> Option<Exclusions> {
        let list = |m: &std::collections::BTreeMap<NodeId, u64>| {
            m.iter().map(|(&id, &seq)| (id, seq)).collect()
        };
        Some(Exclusions {
            excluded: list(node.excluded()),
            readmitted: list(node.readmitted()),
        })
    }

    fn readmission(
        node: &ekmat_pbft::Pbft,
        votes: &[bytes::Bytes],
    ) -> Result<ekmat_pbft::Message, Readmit> {
        let refused = |why: String| Readmit::Refused(why);
        let votes = votes
            .iter()
            .enumerate()
            .map(|(i, v)| {
                postcard::from_bytes(v)
                    .map_err(|_| refused(format!("vote {} is not a vote", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let encoded = Readmission { votes }.encode();
        node.check_readmission(&encoded)
            .map_err(|e| refused(e.to_string()))?;
        Ok(ekmat_pbft::Message::Request(
            ekmat_pbft::message::ClientRequest {
                id: ekmat_core::RequestId {
                    client: ekmat_pbft::READMISSION_CLIENT,
                    seq: 0,
                },
                op: Some(encoded),
                sig: None,
            },
        ))
    }

    fn injected_fault(
        node: &ekmat_pbft::Pbft,
        to: NodeId,
        msg: &ekmat_pbft::Message,
    ) -> Option<ekmat_pbft::Message> {
        let ekmat_pbft::Message::Commit(c) = msg else {
            return None;
        };
        if !crate::query::equivocate_now(to.0) {
            return None;
        }
        let mut body = c.body;
        body.digest[0] ^= 1;
        tracing::warn!(to = %to, seq = body.seq, "injected fault: equivocating");
        Some(ekmat_pbft::Message::Commit(node.keyring().sign(body)))
    }

    fn election_timeout(_: &NodeConfig) -> Duration {
        VIEW_TIMEOUT
    }

    fn certificate(node: &ekmat_pbft::Pbft, seq: u64) -> Option<String> {
        let seq = if seq == 0 { node.last_executed() } else { seq };
        let (batch, qc) = node.executed(seq)?;
        let cert = ekmat_pbft::certificate::BatchCertificate::of(qc, batch);
        serde_json::to_string_pretty(&cert).ok()
    }

    fn observe_clock(node: &mut ekmat_pbft::Pbft, wall_ms: u64) {
        node.observe_clock(wall_ms);
    }

    fn status(node: &ekmat_pbft::Pbft) -> CoreStatus {
        let n = node.config().n();
        let primary = primary_of(node.view(), n);
        CoreStatus {
            term: node.view(),
            leader: node.is_normal().then_some(primary),
            is_leader: node.is_normal() && node.is_primary(),
            commit: node.applied(),
            last_index: node.applied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_view_of_full_batches_fits_one_frame_at_every_cluster_size() {
        for n in 1..=31 {
            let bytes = batch_bytes_that_fit(n, WINDOW) + ekmat_pbft::EVIDENCE_SLACK;
            let view_changes = 2 * ((n - 1) / 3) + 1;
            assert!(
                view_changes * WINDOW as usize * bytes <= crate::transport::MAX_FRAME * 4 / 5,
                "n = {n}"
            );
            assert!(bytes >= 32 << 10, "n = {n}: batches of {bytes} bytes");
        }
        assert_eq!(batch_bytes_that_fit(4, WINDOW), 512 << 10);
    }

    #[test]
    fn the_primary_keeps_as_many_batches_in_flight_as_configured() {
        let mut cfg = NodeConfig::new("test", 0, "/tmp/x".into(), Vec::new());
        let mut pc = PbftConfig::from_seed(NodeId(0), 4, 0);
        tune(&mut pc, &cfg);
        assert_eq!(pc.max_inflight, 3, "the default");
        cfg.pbft_max_inflight = 5;
        tune(&mut pc, &cfg);
        assert_eq!(pc.max_inflight, 5);
    }
}
