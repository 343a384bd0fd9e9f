//! etcd's periodic corruption check (`--experimental-corrupt-check-time`): every so often
//! the leader compares its HashKV with every other member's, at one revision all of them
//! have applied, and raises the CORRUPT alarm — through the log, so every member then
//! refuses writes at the same entry — for each member whose key history differs.
//!
//! Members are compared only when their compaction revisions match (a hash covers the
//! versions above compaction). The majority of the compared members is taken as right;
//! with no majority, every member that differs from the leader is named, as etcd does.
//!
//! And etcd's check at start (`--experimental-initial-corrupt-check`): before a member
//! serves clients, its HashKV at its own revision is compared with each reachable
//! peer's at that revision; a peer with the same compaction revision and another hash
//! keeps it from starting. A peer that cannot answer (unreachable, behind that
//! revision, compacted past it) is skipped with a warning, as etcd skips it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ekmat_api::etcdserverpb as pb;
use ekmat_kv::{AlarmAction, AlarmRequest, AlarmType, Command};

use super::Services;
use crate::config::NodeConfig;
use crate::query::{Answer, Query};

/// How long one peer may take to answer a request of the check.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the check at start tries to catch up with the cluster before it compares.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(5);

/// One member's HashKV at the compared revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberHash {
    pub member_id: u64,
    pub hash: u32,
    pub compact_revision: i64,
}

/// The members whose hash at one revision shows their data corrupt: those outside the
/// strict majority of the members compared (the leader and the peers with the leader's
/// compaction revision), or with no majority, those that differ from the leader.
pub fn corrupted(leader: MemberHash, peers: &[MemberHash]) -> Vec<u64> {
    let compared: Vec<MemberHash> = std::iter::once(leader)
        .chain(
            peers
                .iter()
                .copied()
                .filter(|p| p.compact_revision == leader.compact_revision),
        )
        .collect();
    let mut votes: BTreeMap<u32, usize> = BTreeMap::new();
    for m in &compared {
        *votes.entry(m.hash).or_default() += 1;
    }
    let majority = votes
        .iter()
        .find(|&(_, &n)| n * 2 > compared.len())
        .map(|(&h, _)| h);
    let right = majority.unwrap_or(leader.hash);
    compared
        .iter()
        .filter(|m| m.hash != right)
        .map(|m| m.member_id)
        .collect()
}

/// What one round of the check did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckRound {
    /// The revision compared at (0: not the leader, or nothing to compare with).
    pub revision: i64,
    /// Peers whose hash was compared with the leader's.
    pub compared: usize,
    /// Members found corrupt (a CORRUPT alarm was raised for each).
    pub corrupt: Vec<u64>,
}

impl Services {
    /// Run the check every `every` while the node runs (on the leader; elsewhere each
    /// round does nothing).
    pub async fn check_corruption_every(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.check_corruption().await {
                Ok(round) if !round.corrupt.is_empty() => {
                    tracing::error!(?round, "corruption check: members' data differ");
                }
                Ok(round) => tracing::debug!(?round, "corruption check"),
                Err(e) => tracing::warn!(error = %e, "corruption check could not run"),
            }
        }
    }

    /// One round: compare every peer's HashKV with this leader's, raise CORRUPT for the
    /// members that differ.
    pub async fn check_corruption(&self) -> Result<CheckRound, String> {
        if !self.inner.status.borrow().core.is_leader {
            return Ok(CheckRound::default());
        }
        let peers = self.peer_clients();
        // One connection per reachable peer serves both of its requests.
        let mut clients = Vec::new();
        for (member_id, peer) in peers {
            match maintenance(peer, self.inner.tls.as_ref()).await {
                Ok(client) => clients.push((member_id, peer, client)),
                Err(e) => tracing::warn!(%peer, error = %e, "corruption check skips a peer"),
            }
        }
        // The lowest revision every member has applied; a member behind the compaction
        // point cannot be compared at all, and must not stop the rest being compared.
        let compacted = self.inner.status.borrow().compact_revision;
        let mut revision = self.revision();
        for (_, _, client) in &mut clients {
            if let Ok(r) = peer_revision(client).await
                && r > compacted
            {
                revision = revision.min(r);
            }
        }
        if revision <= 0 || clients.is_empty() {
            return Ok(CheckRound::default());
        }
        let leader = self.own_hash(revision).await?;
        let token = self.member_token_choosing().await;
        let mut hashes = Vec::new();
        for (member_id, peer, client) in &mut clients {
            let (member_id, peer) = (*member_id, *peer);
            match peer_hash(client, revision, token.as_deref()).await {
                // An answer from another member than the one at that address (a stale
                // address, say) must not count as this member's, nor twice.
                Ok(h) if h.member_id == member_id => hashes.push(h),
                Ok(h) => tracing::warn!(%peer, expected = member_id, answered = h.member_id,
                    "corruption check: another member answers at this member's address"),
                Err(e) => tracing::warn!(%peer, error = %e, "corruption check skips a peer"),
            }
        }
        metrics::counter!("ekmat_corruption_checks_total").increment(1);
        metrics::counter!("ekmat_corruption_peers_compared_total").increment(hashes.len() as u64);
        let corrupt = corrupted(leader, &hashes);
        metrics::counter!("ekmat_corruption_found_total").increment(corrupt.len() as u64);
        let raised = self.corrupt_alarms().await?;
        for &member_id in corrupt.iter().filter(|id| !raised.contains(id)) {
            self.raise_corrupt(member_id).await?;
        }
        Ok(CheckRound {
            revision,
            compared: hashes.len(),
            corrupt,
        })
    }

    /// The check at start: the number of peers compared, or why this member must not
    /// serve (every peer whose data differs, named).
    pub async fn check_initial_hashkv(&self) -> Result<usize, String> {
        let (own, revision) = self.own_hash_now().await?;
        let token = self.member_token();
        let mut compared = 0;
        let mut differ = Vec::new();
        for (member_id, peer) in self.peer_clients() {
            let answer = match maintenance(peer, self.inner.tls.as_ref()).await {
                Ok(mut client) => peer_hash(&mut client, revision, token.as_deref()).await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(h) if h.member_id != member_id => tracing::warn!(%peer, expected = member_id,
                    answered = h.member_id, "initial corruption check: another member answers at this member's address"),
                Ok(h) if h.compact_revision != own.compact_revision => tracing::warn!(%peer,
                    compact_revision = h.compact_revision, own = own.compact_revision,
                    "initial corruption check: the peer compacted elsewhere; not compared"),
                Ok(h) => {
                    compared += 1;
                    if h.hash != own.hash {
                        differ.push(format!(
                            "member {member_id:x} has hash {} where this member has {}",
                            h.hash, own.hash
                        ));
                    }
                }
                Err(e) => tracing::warn!(%peer, error = %e,
                    "initial corruption check: cannot compare with this peer"),
            }
        }
        if differ.is_empty() {
            return Ok(compared);
        }
        Err(format!(
            "{:x} found data inconsistency with peers at revision {revision} (compaction revision {}): {}",
            self.inner.member_id,
            own.compact_revision,
            differ.join("; ")
        ))
    }

    /// The peers' member ids and client addresses.
    fn peer_clients(&self) -> Vec<(u64, SocketAddr)> {
        self.inner
            .members
            .borrow()
            .iter()
            .map(|m| (NodeConfig::member_id(m.id), m.client))
            .filter(|(id, _)| *id != self.inner.member_id)
            .filter_map(|(id, client)| Some((id, client?)))
            .collect()
    }

    /// This member's HashKV at its current revision, and that revision: once caught up
    /// with the cluster (a linearizable read), since a restarted member rebuilds its
    /// store from its log as it learns what is committed, and at start holds only its
    /// snapshot's revision; or, with no quorum to catch up through, as it stands.
    async fn own_hash_now(&self) -> Result<(MemberHash, i64), String> {
        let query = Query::HashKv { revision: 0 };
        let started = std::time::Instant::now();
        let answer = loop {
            match self.read(query.clone(), true).await {
                Ok(answer) => break Ok(answer),
                // A member just started knows no leader yet.
                Err(_) if started.elapsed() < CATCH_UP_WITHIN => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "initial corruption check: cannot catch up with the cluster first; comparing the data as it stands");
                    break self.read(query, false).await;
                }
            }
        };
        match answer {
            Ok(Answer::HashKv {
                header,
                hash,
                compact_revision,
            }) => Ok((
                MemberHash {
                    member_id: self.inner.member_id,
                    hash,
                    compact_revision,
                },
                header.revision,
            )),
            Ok(_) => Err("unexpected answer to HashKV".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn own_hash(&self, revision: i64) -> Result<MemberHash, String> {
        match self.read(Query::HashKv { revision }, false).await {
            Ok(Answer::HashKv {
                hash,
                compact_revision,
                ..
            }) => Ok(MemberHash {
                member_id: self.inner.member_id,
                hash,
                compact_revision,
            }),
            Ok(_) => Err("unexpected answer to HashKV".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The members a CORRUPT alarm is raised for already.
    async fn corrupt_alarms(&self) -> Result<Vec<u64>, String> {
        let query = Query::Alarms {
            alarm: AlarmType::Corrupt,
        };
        match self.read(query, false).await {
            Ok(Answer::Alarms { alarms, .. }) => Ok(alarms.iter().map(|a| a.member_id).collect()),
            Ok(_) => Err("unexpected answer to an alarm query".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn raise_corrupt(&self, member_id: u64) -> Result<(), String> {
        tracing::error!(
            member = format_args!("{member_id:x}"),
            "data differs from the cluster's: raising the CORRUPT alarm"
        );
        let raise = Command::Alarm(AlarmRequest {
            action: AlarmAction::Activate,
            member_id,
            alarm: AlarmType::Corrupt,
        });
        self.write_internal(raise)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

type MaintenanceClient = pb::maintenance_client::MaintenanceClient<tonic::transport::Channel>;

/// A client of `peer`'s client port (over TLS as this member serves its own).
async fn maintenance(
    peer: SocketAddr,
    tls: Option<&crate::tls::ClientTls>,
) -> Result<MaintenanceClient, String> {
    // Over TLS too the address says http: the connector, not tonic, speaks TLS.
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{peer}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(PEER_TIMEOUT)
        .timeout(PEER_TIMEOUT);
    let channel = match tls {
        Some(tls) => {
            let dial = tls
                .peer_dialer()
                .ok_or("reading a member's client port over TLS needs trusted_ca_file")?;
            endpoint.connect_with_connector(dial).await
        }
        None => endpoint.connect().await,
    };
    let channel = channel.map_err(|e| crate::with_causes(e.to_string(), &e))?;
    Ok(MaintenanceClient::new(channel))
}

async fn peer_revision(client: &mut MaintenanceClient) -> Result<i64, String> {
    let status = client
        .status(pb::StatusRequest {})
        .await
        .map_err(|e| e.message().to_string())?;
    Ok(status.into_inner().header.map_or(0, |h| h.revision))
}

/// `peer`'s hash at `revision`, asked with this member's `token` if auth is on.
async fn peer_hash(
    client: &mut MaintenanceClient,
    revision: i64,
    token: Option<&str>,
) -> Result<MemberHash, String> {
    let mut request = tonic::Request::new(pb::HashKvRequest { revision });
    if let Some(token) = token {
        let value = token
            .parse()
            .map_err(|_| "unusable member token".to_string())?;
        request.metadata_mut().insert("token", value);
    }
    let r = client
        .hash_kv(request)
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    Ok(MemberHash {
        member_id: r.header.map_or(0, |h| h.member_id),
        hash: r.hash,
        compact_revision: r.compact_revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(member_id: u64, hash: u32) -> MemberHash {
        MemberHash {
            member_id,
            hash,
            compact_revision: 5,
        }
    }

    #[test]
    fn agreeing_members_are_not_corrupt() {
        assert!(corrupted(at(1, 7), &[at(2, 7), at(3, 7)]).is_empty());
    }

    #[test]
    fn a_follower_outvoted_is_corrupt() {
        assert_eq!(corrupted(at(1, 7), &[at(2, 9), at(3, 7)]), [2]);
    }

    #[test]
    fn a_leader_outvoted_is_corrupt() {
        assert_eq!(corrupted(at(1, 7), &[at(2, 9), at(3, 9)]), [1]);
    }

    #[test]
    fn with_no_majority_those_differing_from_the_leader_are_named() {
        assert_eq!(corrupted(at(1, 7), &[at(2, 9)]), [2]);
        assert_eq!(corrupted(at(1, 7), &[at(2, 8), at(3, 9)]), [2, 3]);
    }

    #[test]
    fn members_compacted_elsewhere_are_not_compared() {
        let other = MemberHash {
            compact_revision: 6,
            ..at(2, 9)
        };
        assert!(corrupted(at(1, 7), &[other, at(3, 7)]).is_empty());
    }
}
