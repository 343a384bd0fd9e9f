//! Peer-to-peer messaging over TCP, or over mutually authenticated TLS where members
//! are configured with certificates (`tls.rs`).
//!
//! Every connection opens with a challenge from the accepting side (32 random bytes) and
//! a hello from the connecting side naming the cluster, the sender and the settings
//! every member must run with alike, so a node never takes messages from another cluster,
//! and refuses (naming the setting) a member configured differently. Where members hold
//! signing keys (PBFT), the hello carries the sender's signature over the challenge, so
//! no one opens a link in another member's name: the link's sender is what per-peer
//! budgets are kept by. Over TLS, the certificate a link was opened with must name the
//! IP of the claimed sender's peer address, so no holder of another certificate the CA
//! signed (a client's, say) can claim to be a member. Otherwise a sender it does not
//! know yet is accepted: it may be a member added since this node last heard (the
//! protocol, not the transport, decides what a message from a non-member is worth);
//! over TLS it is refused until it is known, and its link is retried. Peers added at run
//! time get a sender too. After the hello, each message is a frame: a 4-byte big-endian
//! length and the postcard encoding of the protocol's message.
//! Each peer has a bounded outgoing queue drained by one task that reconnects with
//! backoff; a full queue drops the message (consensus protocols tolerate loss, and a slow
//! peer must not stall the node). Incoming frames go to the driver through a bounded
//! channel, so a busy driver slows its peers' TCP streams instead of buffering forever.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ekmat_core::NodeId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Largest frame accepted: a batch of log entries, with room to spare.
pub const MAX_FRAME: usize = 64 << 20;
/// Messages queued per peer before new ones are dropped.
pub const PEER_QUEUE: usize = 8192;
const MAGIC: u32 = 0x454b_4d54; // "EKMT"
/// 2: the hello carries the settings members must agree on. 3: it answers the
/// accepting side's challenge. 4: log entries may name a client's sender (auth's
/// `Command::As`), which an older member would skip as malformed and so diverge: the
/// versions refuse each other instead.
const VERSION: u16 = 4;
/// How long either side of a new connection waits for the other's challenge or hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// What a member signs to prove a link is its own (domain separation).
const LINK_CONTEXT: &[u8] = b"ekmat-peer-link";
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Hello {
    magic: u32,
    version: u16,
    cluster_id: u64,
    from: NodeId,
    settings: Settings,
    /// The sender's signature over the challenge (see [`link_statement`]), where
    /// members hold signing keys.
    proof: Option<Vec<u8>>,
}

/// The signing keys that prove a link's sender: this member's own, and every member's
/// public key. Without them (Raft, whose members hold no keys) a link is taken on the
/// word of its hello.
#[derive(Clone)]
pub struct LinkAuth {
    pub key: SigningKey,
    pub members: BTreeMap<NodeId, VerifyingKey>,
}

/// The bytes a member signs to open a link: the cluster, itself, and the challenge.
fn link_statement(cluster_id: u64, from: NodeId, challenge: &[u8; 32]) -> Vec<u8> {
    let mut m = LINK_CONTEXT.to_vec();
    m.extend_from_slice(&cluster_id.to_le_bytes());
    m.extend_from_slice(&from.0.to_le_bytes());
    m.extend_from_slice(challenge);
    m
}

impl LinkAuth {
    fn prove(&self, hello: &Hello, challenge: &[u8; 32]) -> Vec<u8> {
        let statement = link_statement(hello.cluster_id, hello.from, challenge);
        self.key.sign(&statement).to_bytes().to_vec()
    }

    /// Why `hello` does not prove its sender, if it does not.
    fn check(&self, hello: &Hello, challenge: &[u8; 32]) -> Result<(), String> {
        let key = self
            .members
            .get(&hello.from)
            .ok_or_else(|| format!("member {} has no public key here", hello.from))?;
        let proof = hello
            .proof
            .as_deref()
            .ok_or("the hello carries no signature")?;
        let sig = Signature::from_slice(proof).map_err(|_| "a malformed signature")?;
        let statement = link_statement(hello.cluster_id, hello.from, challenge);
        key.verify_strict(&statement, &sig)
            .map_err(|_| format!("the hello is not signed with member {}'s key", hello.from))
    }
}

/// How a member's links are secured: signed hellos (members with signing keys), TLS
/// (members with certificates), both or neither.
#[derive(Clone, Default)]
pub struct Security {
    pub auth: Option<LinkAuth>,
    pub tls: Option<crate::tls::PeerTls>,
}

/// What every connection of this member starts from.
struct Local {
    hello: Hello,
    auth: Option<LinkAuth>,
    tls: Option<crate::tls::PeerTls>,
    /// The members' peer addresses, which their certificates must name over TLS.
    members: std::sync::RwLock<BTreeMap<NodeId, SocketAddr>>,
}

impl Local {
    /// Over TLS, whether `cert` may speak for member `from`: it must name the IP of
    /// the peer address the member table has for it, so a certificate the CA signed
    /// for someone else (a client's, another host's member) cannot claim to be it.
    fn certificate_speaks_for(&self, from: NodeId, cert: &[u8]) -> Result<(), String> {
        let members = self.members.read().unwrap_or_else(|p| p.into_inner());
        let addr = members.get(&from).ok_or_else(|| {
            format!("member {from} is not known here yet, so its certificate cannot be checked")
        })?;
        let der = rustls::pki_types::CertificateDer::from(cert);
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        webpki::EndEntityCert::try_from(&der)
            .and_then(|c| c.verify_is_valid_for_subject_name(&name))
            .map_err(|_| {
                format!(
                    "its certificate does not name member {from}'s peer address {}",
                    addr.ip()
                )
            })
    }
}

/// The settings every member of a cluster must run with alike, as (name, value) pairs
/// (see `RuntimeProtocol::agreed_settings`).
pub type Settings = Vec<(String, String)>;

/// How `theirs` differs from `ours`, setting by setting; `None` if they agree.
fn settings_differ(ours: &Settings, theirs: &Settings) -> Option<String> {
    let find = |list: &Settings, name: &str| {
        list.iter()
            .find(|(n, _)| n == name)
            .map_or("unset".to_string(), |(_, v)| format!("{v:?}"))
    };
    let mut names: Vec<&str> = ours.iter().chain(theirs).map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let differences: Vec<String> = names
        .into_iter()
        .filter_map(|name| {
            let (here, there) = (find(ours, name), find(theirs, name));
            (here != there).then(|| format!("{name}: {here} here, {there} at the peer"))
        })
        .collect();
    (!differences.is_empty()).then(|| differences.join("; "))
}

/// Sends to peers.
pub struct Transport<M> {
    local: Arc<Local>,
    peers: BTreeMap<NodeId, (SocketAddr, mpsc::Sender<M>)>,
}

impl<M> Transport<M>
where
    M: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Bind the peer listener and start connecting to `peers`. Incoming messages go to
    /// `inbound`, from peers of cluster `cluster_id` that run with the same `settings`.
    /// With `security.auth`, this member signs every link it opens and takes only links
    /// their sender signed; without it, a link is taken on its hello's word. With
    /// `security.tls`, every link runs over TLS with certificates on both sides.
    /// Fails only if the listener cannot bind.
    pub async fn start(
        me: NodeId,
        cluster_id: u64,
        settings: Settings,
        listen: SocketAddr,
        peers: &[(NodeId, SocketAddr)],
        inbound: mpsc::Sender<(NodeId, M)>,
        security: Security,
    ) -> std::io::Result<Transport<M>> {
        let listener = TcpListener::bind(listen).await?;
        let hello = Hello {
            magic: MAGIC,
            version: VERSION,
            cluster_id,
            from: me,
            settings,
            proof: None,
        };
        let local = Arc::new(Local {
            hello,
            auth: security.auth,
            tls: security.tls,
            members: std::sync::RwLock::new(peers.iter().copied().collect()),
        });
        tokio::spawn(accept_loop(listener, local.clone(), inbound));
        let mut transport = Transport {
            local,
            peers: BTreeMap::new(),
        };
        for &(id, addr) in peers {
            transport.add_peer(id, addr);
        }
        Ok(transport)
    }

    /// Start sending to `id` at `addr` (a member added at run time). A peer already
    /// known at another address is redirected there.
    pub fn add_peer(&mut self, id: NodeId, addr: SocketAddr) {
        if id == self.local.hello.from || self.peers.get(&id).is_some_and(|(a, _)| *a == addr) {
            return;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        tokio::spawn(send_loop(addr, self.local.clone(), rx));
        // Dropping the old sender ends its task.
        self.peers.insert(id, (addr, tx));
        let mut members = self
            .local
            .members
            .write()
            .unwrap_or_else(|p| p.into_inner());
        members.insert(id, addr);
    }

    /// Stop sending to `id` (a removed member).
    pub fn remove_peer(&mut self, id: NodeId) {
        self.peers.remove(&id);
        let mut members = self
            .local
            .members
            .write()
            .unwrap_or_else(|p| p.into_inner());
        members.remove(&id);
    }

    /// Queue `msg` for `to`. Returns false if it was dropped (unknown peer, full queue).
    pub fn send(&self, to: NodeId, msg: M) -> bool {
        match self.peers.get(&to) {
            Some((_, tx)) => tx.try_send(msg).is_ok(),
            None => false,
        }
    }

    pub fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.keys().copied()
    }
}

async fn write_frame<W, T>(w: &mut W, value: &T) -> std::io::Result<()>
where
    W: AsyncWriteExt + Unpin,
    T: Serialize,
{
    FrameBuf::default().write(w, value).await
}

async fn read_frame<T: DeserializeOwned>(
    r: &mut (impl AsyncReadExt + Unpin),
) -> std::io::Result<T> {
    FrameBuf::default().read(r).await
}

/// One link's frame buffer, kept from frame to frame: a batch's frame is hundreds of
/// kilobytes, and a fresh buffer per frame cost page faults and zeroing on every one.
#[derive(Default)]
struct FrameBuf(Vec<u8>);

/// Beyond this a buffer is not kept for the next frame (one huge message should not
/// pin its memory for the link's life).
const FRAME_BUF_KEPT: usize = 4 << 20;

impl FrameBuf {
    async fn write<W, T>(&mut self, w: &mut W, value: &T) -> std::io::Result<()>
    where
        W: AsyncWriteExt + Unpin,
        T: Serialize,
    {
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        buf.extend_from_slice(&[0; 4]);
        let mut buf = postcard::to_extend(value, buf).map_err(std::io::Error::other)?;
        let len = buf.len() - 4;
        let result = if len > MAX_FRAME {
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("message of {len} bytes exceeds the {MAX_FRAME}-byte frame limit"),
            ))
        } else {
            buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
            w.write_all(&buf).await
        };
        self.keep(buf);
        result
    }

    async fn read<T: DeserializeOwned>(
        &mut self,
        r: &mut (impl AsyncReadExt + Unpin),
    ) -> std::io::Result<T> {
        let mut len = [0u8; 4];
        r.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(std::io::Error::other(format!(
                "frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"
            )));
        }
        let mut buf = std::mem::take(&mut self.0);
        // Only bytes past the old length are zeroed; all are overwritten below.
        buf.resize(len, 0);
        r.read_exact(&mut buf).await?;
        let msg = postcard::from_bytes(&buf)
            .map_err(|e| std::io::Error::other(format!("malformed frame: {e}")));
        self.keep(buf);
        msg
    }

    fn keep(&mut self, buf: Vec<u8>) {
        if buf.capacity() <= FRAME_BUF_KEPT {
            self.0 = buf;
        }
    }
}

/// Write one queued message; one too large for a frame is dropped, loudly, and the
/// connection (with the messages buffered before it) is kept: the peer could never
/// receive it, and tearing the connection down for it would lose the others too.
async fn write_queued<W, T>(
    w: &mut W,
    frames: &mut FrameBuf,
    value: &T,
    peer: SocketAddr,
) -> std::io::Result<()>
where
    W: AsyncWriteExt + Unpin,
    T: Serialize,
{
    match frames.write(w, value).await {
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            tracing::error!(%peer, error = %e, "message dropped");
            metrics::counter!("ekmat_messages_oversize_total").increment(1);
            Ok(())
        }
        other => other,
    }
}

/// Keep one connection to a peer up, and drain its queue into it. A connection that
/// breaks soon after it was made (a peer that refuses this one's hello, say) is made
/// again only after a growing pause, not at the rate messages are sent.
async fn send_loop<M: Serialize + Sync>(
    addr: SocketAddr,
    local: Arc<Local>,
    mut rx: mpsc::Receiver<M>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let connected = Instant::now();
        match connect_and_pump(addr, &local, &mut rx).await {
            Ok(()) => return, // the node is shutting down
            Err(e) => {
                tracing::debug!(peer = %addr, error = %e, "peer connection lost; reconnecting");
                metrics::counter!("ekmat_peer_reconnects_total").increment(1);
            }
        }
        if connected.elapsed() >= BACKOFF_MAX {
            backoff = BACKOFF_MIN;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn connect_and_pump<M: Serialize + Sync>(
    addr: SocketAddr,
    local: &Local,
    rx: &mut mpsc::Receiver<M>,
) -> std::io::Result<()> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    match &local.tls {
        None => hello_and_pump(stream, addr, local, rx).await,
        Some(tls) => {
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let stream = within_handshake(tls.connector.connect(name, stream)).await?;
            hello_and_pump(stream, addr, local, rx).await
        }
    }
}

/// Answer the peer's challenge with this member's hello, then send it the queue.
async fn hello_and_pump<M: Serialize + Sync>(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    addr: SocketAddr,
    local: &Local,
    rx: &mut mpsc::Receiver<M>,
) -> std::io::Result<()> {
    let mut challenge = [0u8; 32];
    within_handshake(stream.read_exact(&mut challenge)).await?;
    let mut hello = local.hello.clone();
    hello.proof = local.auth.as_ref().map(|a| a.prove(&hello, &challenge));
    let mut w = BufWriter::new(stream);
    write_frame(&mut w, &hello).await?;
    w.flush().await?;
    pump(&mut w, rx, addr).await
}

/// Write queued messages, flushing once per batch: many messages, one syscall.
async fn pump<M: Serialize + Sync>(
    w: &mut BufWriter<impl AsyncWrite + Unpin>,
    rx: &mut mpsc::Receiver<M>,
    peer: SocketAddr,
) -> std::io::Result<()> {
    let mut frames = FrameBuf::default();
    while let Some(first) = rx.recv().await {
        write_queued(w, &mut frames, &first, peer).await?;
        while let Ok(more) = rx.try_recv() {
            write_queued(w, &mut frames, &more, peer).await?;
        }
        w.flush().await?;
    }
    Ok(())
}

/// `io`, or a timeout error if the peer takes longer than the handshake may.
async fn within_handshake<T>(
    io: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, io)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "peer handshake timed out")
        })?
}

/// Links being set up at once (handshake and hello); past it, new connections wait in
/// the listen backlog, so no one can use up the member's descriptors with idle ones.
const MAX_LINKS_SETTING_UP: usize = 256;

async fn accept_loop<M: DeserializeOwned + Send + 'static>(
    listener: TcpListener,
    ours: Arc<Local>,
    inbound: mpsc::Sender<(NodeId, M)>,
) {
    let setting_up = Arc::new(tokio::sync::Semaphore::new(MAX_LINKS_SETTING_UP));
    loop {
        let Ok(permit) = setting_up.clone().acquire_owned().await else {
            return;
        };
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, say: let some close before trying again.
                tracing::warn!(error = %e, "accepting a peer connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let inbound = inbound.clone();
        let ours = ours.clone();
        tokio::spawn(async move {
            let received = match &ours.tls {
                None => receive(stream, &ours, None, inbound, permit).await,
                Some(tls) => match within_handshake(tls.acceptor.accept(stream)).await {
                    Ok(stream) => {
                        let cert = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .map(|c| c.to_vec());
                        receive(stream, &ours, cert, inbound, permit).await
                    }
                    Err(e) => {
                        // Someone without a certificate the CA signed, or a member
                        // whose peer_transport_security differs from this one's.
                        tracing::debug!(%remote, error = %e, "refused a peer link: its TLS handshake failed");
                        metrics::counter!("ekmat_peer_tls_handshake_failures_total").increment(1);
                        return;
                    }
                },
            };
            if let Err(e) = received {
                tracing::debug!(%remote, error = %e, "peer connection closed");
            }
        });
    }
}

/// Take a link: its hello, checked, then its messages. `cert` is the certificate it
/// was opened with (over TLS); `setting_up` is held until the link is taken.
async fn receive<M: DeserializeOwned>(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    local: &Local,
    cert: Option<Vec<u8>>,
    inbound: mpsc::Sender<(NodeId, M)>,
    setting_up: tokio::sync::OwnedSemaphorePermit,
) -> std::io::Result<()> {
    let ours = &local.hello;
    let mut challenge = [0u8; 32];
    getrandom::getrandom(&mut challenge).map_err(|e| std::io::Error::other(e.to_string()))?;
    stream.write_all(&challenge).await?;
    let hello: Hello = within_handshake(read_frame(&mut stream))
        .await
        .map_err(|e| std::io::Error::other(format!("not an ekmat peer of this version: {e}")))?;
    if hello.magic != MAGIC || hello.version != VERSION {
        return Err(std::io::Error::other("not an ekmat peer (bad hello)"));
    }
    if hello.cluster_id != ours.cluster_id {
        tracing::warn!(from = %hello.from, "refused a peer of another cluster");
        return Err(std::io::Error::other("peer belongs to another cluster"));
    }
    if let Some(differences) = settings_differ(&ours.settings, &hello.settings) {
        tracing::error!(
            from = %hello.from,
            %differences,
            "refused a peer that runs with other cluster-wide settings: every member's configuration must set these alike"
        );
        metrics::counter!("ekmat_peer_settings_refused_total").increment(1);
        return Err(std::io::Error::other(format!(
            "peer runs with other settings: {differences}"
        )));
    }
    // The sender proves itself by its signature (members with keys) and, over TLS, by
    // the certificate the link was opened with.
    let signed = local.auth.as_ref().map(|a| a.check(&hello, &challenge));
    let certified = || cert.map(|c| local.certificate_speaks_for(hello.from, &c));
    if let Some(Err(why)) = signed.filter(Result::is_err).or_else(certified) {
        tracing::warn!(from = %hello.from, %why, "refused a peer link that does not prove its sender");
        metrics::counter!("ekmat_peer_links_unproven_total").increment(1);
        return Err(std::io::Error::other(format!("unproven peer link: {why}")));
    }
    drop(setting_up);
    let mut r = tokio::io::BufReader::new(stream);
    let mut frames = FrameBuf::default();
    loop {
        let msg: M = frames.read(&mut r).await?;
        if inbound.send((hello.from, msg)).await.is_err() {
            return Ok(()); // the driver is gone
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn free_addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], crate::ports::unused_port()))
    }

    /// Two members of cluster 7 that know each other: n0's transport, n1's (kept
    /// alive), n1's inbound messages, and n1's address.
    async fn two_members() -> (
        Transport<String>,
        Transport<String>,
        mpsc::Receiver<(NodeId, String)>,
        SocketAddr,
    ) {
        let (a, b) = (free_addr().await, free_addr().await);
        let (tx_a, _rx_a) = mpsc::channel::<(NodeId, String)>(16);
        let (tx_b, rx_b) = mpsc::channel::<(NodeId, String)>(16);
        let ta = Transport::start(
            NodeId(0),
            7,
            Vec::new(),
            a,
            &[(NodeId(1), b)],
            tx_a,
            Security::default(),
        )
        .await
        .unwrap();
        let tb = Transport::start(
            NodeId(1),
            7,
            Vec::new(),
            b,
            &[(NodeId(0), a)],
            tx_b,
            Security::default(),
        )
        .await
        .unwrap();
        (ta, tb, rx_b, b)
    }

    #[tokio::test]
    async fn messages_cross_and_other_clusters_are_refused() {
        let (ta, _tb, mut rx_b, b) = two_members().await;
        for i in 0..100 {
            assert!(ta.send(NodeId(1), format!("m{i}")));
        }
        for i in 0..100 {
            let (from, m) = rx_b.recv().await.unwrap();
            assert_eq!((from, m), (NodeId(0), format!("m{i}")));
        }
        // A node of another cluster is refused.
        let c = free_addr().await;
        let (tx_c, _rx_c) = mpsc::channel::<(NodeId, String)>(16);
        let tc = Transport::start(
            NodeId(0),
            8,
            Vec::new(),
            c,
            &[(NodeId(1), b)],
            tx_c,
            Security::default(),
        )
        .await
        .unwrap();
        tc.send(NodeId(1), "intruder".into());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(rx_b.try_recv().is_err());
    }

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn a_member_configured_differently_is_refused_and_the_setting_named() {
        let ours = settings(&[("protocol", "pbft"), ("pbft_snapshot_bytes", "1024")]);
        let (a, b) = (free_addr().await, free_addr().await);
        let (tx_a, _rx_a) = mpsc::channel::<(NodeId, String)>(16);
        let (tx_b, mut rx_b) = mpsc::channel::<(NodeId, String)>(16);
        let _tb = Transport::start(
            NodeId(1),
            7,
            ours.clone(),
            b,
            &[],
            tx_b,
            Security::default(),
        )
        .await
        .unwrap();
        let mut theirs = ours.clone();
        theirs[1].1 = "2048".into();
        let ta = Transport::start(
            NodeId(0),
            7,
            theirs.clone(),
            a,
            &[(NodeId(1), b)],
            tx_a,
            Security::default(),
        )
        .await
        .unwrap();
        for i in 0..20 {
            ta.send(NodeId(1), format!("m{i}"));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rx_b.try_recv().is_err(), "nothing from a differing member");

        assert_eq!(settings_differ(&ours, &ours), None);
        assert_eq!(
            settings_differ(&ours, &theirs).as_deref(),
            Some("pbft_snapshot_bytes: \"1024\" here, \"2048\" at the peer")
        );
        assert_eq!(
            settings_differ(&ours, &ours[..1].to_vec()).as_deref(),
            Some("pbft_snapshot_bytes: \"1024\" here, unset at the peer")
        );
    }

    #[tokio::test]
    async fn a_member_added_at_run_time_is_heard_and_can_be_sent_to() {
        let (a, b) = (free_addr().await, free_addr().await);
        let (tx_a, mut rx_a) = mpsc::channel::<(NodeId, String)>(16);
        let (tx_b, mut rx_b) = mpsc::channel::<(NodeId, String)>(16);
        let mut ta = Transport::start(NodeId(0), 7, Vec::new(), a, &[], tx_a, Security::default())
            .await
            .unwrap();
        // The newcomer knows the cluster; the cluster does not know it yet.
        let tb = Transport::start(
            NodeId(5),
            7,
            Vec::new(),
            b,
            &[(NodeId(0), a)],
            tx_b,
            Security::default(),
        )
        .await
        .unwrap();
        assert!(tb.send(NodeId(0), "hello".into()));
        assert_eq!(rx_a.recv().await.unwrap(), (NodeId(5), "hello".into()));
        assert!(!ta.send(NodeId(5), "too early".into()));
        ta.add_peer(NodeId(5), b);
        assert!(ta.send(NodeId(5), "welcome".into()));
        assert_eq!(rx_b.recv().await.unwrap(), (NodeId(0), "welcome".into()));
        ta.remove_peer(NodeId(5));
        assert!(!ta.send(NodeId(5), "gone".into()));
    }

    #[tokio::test]
    async fn a_peer_of_an_earlier_protocol_version_is_refused() {
        let b = free_addr().await;
        let (tx, _rx) = mpsc::channel::<(NodeId, String)>(16);
        let _tb = Transport::start(NodeId(1), 7, Vec::new(), b, &[], tx, Security::default())
            .await
            .unwrap();
        for (version, refused) in [(VERSION - 1, true), (VERSION, false)] {
            let mut stream = TcpStream::connect(b).await.unwrap();
            let mut challenge = [0u8; 32];
            stream.read_exact(&mut challenge).await.unwrap();
            let hello = Hello {
                magic: MAGIC,
                version,
                cluster_id: 7,
                from: NodeId(0),
                settings: Vec::new(),
                proof: None,
            };
            write_frame(&mut stream, &hello).await.unwrap();
            stream.flush().await.unwrap();
            // Refused: the member closes the link. Taken: it stays open, and silent.
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut byte)).await;
            assert_eq!(
                matches!(read, Ok(Ok(0) | Err(_))),
                refused,
                "version {version}"
            );
        }
    }

    #[tokio::test]
    async fn a_message_too_large_to_send_is_dropped_and_the_rest_still_arrive() {
        let (ta, _tb, mut rx_b, _) = two_members().await;
        assert!(ta.send(NodeId(1), "before".into()));
        assert!(ta.send(NodeId(1), "x".repeat(MAX_FRAME + 1)));
        assert!(ta.send(NodeId(1), "after".into()));
        for want in ["before", "after"] {
            let got = tokio::time::timeout(Duration::from_secs(5), rx_b.recv()).await;
            assert_eq!(got.unwrap().unwrap(), (NodeId(0), want.to_string()));
        }
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    /// Member `me` of cluster 7 at `addr`, proving its links with `signing` and
    /// knowing members 0 and 1 by keys 10 and 11.
    async fn keyed(
        me: u32,
        signing: SigningKey,
        addr: SocketAddr,
        peers: &[(NodeId, SocketAddr)],
    ) -> (Transport<String>, mpsc::Receiver<(NodeId, String)>) {
        let members = [(NodeId(0), key(10)), (NodeId(1), key(11))]
            .into_iter()
            .map(|(id, k)| (id, k.verifying_key()))
            .collect();
        let auth = LinkAuth {
            key: signing,
            members,
        };
        let (tx, rx) = mpsc::channel::<(NodeId, String)>(16);
        let t = Transport::start(
            NodeId(me),
            7,
            Vec::new(),
            addr,
            peers,
            tx,
            Security {
                auth: Some(auth),
                tls: None,
            },
        );
        (t.await.unwrap(), rx)
    }

    #[tokio::test]
    async fn a_link_is_taken_only_from_the_member_whose_key_signed_it() {
        let (a, b) = (free_addr().await, free_addr().await);
        let (_tb, mut rx_b) = keyed(1, key(11), b, &[]).await;
        let (ta, _rx_a) = keyed(0, key(10), a, &[(NodeId(1), b)]).await;
        assert!(ta.send(NodeId(1), "signed".into()));
        let got = tokio::time::timeout(Duration::from_secs(5), rx_b.recv()).await;
        assert_eq!(got.unwrap().unwrap(), (NodeId(0), "signed".to_string()));

        // Claiming to be n0 with another key, or with no key at all, is refused.
        let (c, d) = (free_addr().await, free_addr().await);
        let (tc, _rx_c) = keyed(0, key(99), c, &[(NodeId(1), b)]).await;
        let (tx_d, _rx_d) = mpsc::channel::<(NodeId, String)>(16);
        let td = Transport::start(
            NodeId(0),
            7,
            Vec::new(),
            d,
            &[(NodeId(1), b)],
            tx_d,
            Security::default(),
        )
        .await
        .unwrap();
        for i in 0..10 {
            tc.send(NodeId(1), format!("impostor {i}"));
            td.send(NodeId(1), format!("unsigned {i}"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rx_b.try_recv().is_err(), "an unproven link was taken");
    }

    #[test]
    fn a_link_proof_binds_the_challenge_the_cluster_and_the_sender() {
        let auth = LinkAuth {
            key: key(10),
            members: [(NodeId(0), key(10).verifying_key())].into(),
        };
        let mut hello = Hello {
            magic: MAGIC,
            version: VERSION,
            cluster_id: 7,
            from: NodeId(0),
            settings: Vec::new(),
            proof: None,
        };
        let challenge = [3; 32];
        assert!(auth.check(&hello, &challenge).is_err(), "no proof");
        hello.proof = Some(auth.prove(&hello, &challenge));
        assert_eq!(auth.check(&hello, &challenge), Ok(()));
        assert!(auth.check(&hello, &[4; 32]).is_err(), "a replayed proof");
        let other_cluster = Hello {
            cluster_id: 8,
            ..hello.clone()
        };
        assert!(auth.check(&other_cluster, &challenge).is_err());
        let unknown = Hello {
            from: NodeId(5),
            ..hello
        };
        let e = auth.check(&unknown, &challenge).unwrap_err();
        assert!(e.contains("has no public key here"), "{e}");
    }

    #[tokio::test]
    async fn a_binding_conflict_is_an_error_not_a_panic() {
        let a = free_addr().await;
        let _hold = TcpListener::bind(a).await.unwrap();
        let (tx, _rx) = mpsc::channel::<(NodeId, String)>(1);
        assert!(
            Transport::start(NodeId(0), 1, Vec::new(), a, &[], tx, Security::default())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn oversized_frames_close_the_connection() {
        let (a, b) = (free_addr().await, free_addr().await);
        let (tx, mut rx) = mpsc::channel::<(NodeId, String)>(4);
        let _t = Transport::<String>::start(
            NodeId(0),
            1,
            Vec::new(),
            a,
            &[(NodeId(1), b)],
            tx,
            Security::default(),
        )
        .await
        .unwrap();
        let mut s = TcpStream::connect(a).await.unwrap();
        let mut challenge = [0u8; 32];
        s.read_exact(&mut challenge).await.unwrap();
        let hello = Hello {
            magic: MAGIC,
            version: VERSION,
            cluster_id: 1,
            from: NodeId(1),
            settings: Vec::new(),
            proof: None,
        };
        write_frame(&mut s, &hello).await.unwrap();
        s.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the node hung up");
        assert!(rx.try_recv().is_err());
    }

    /// A member on `addr` whose links use TLS with `security`, knowing `peers`.
    async fn over_tls(
        me: u32,
        addr: SocketAddr,
        peers: &[(NodeId, SocketAddr)],
        security: &crate::tls::TransportSecurity,
    ) -> (Transport<String>, mpsc::Receiver<(NodeId, String)>) {
        let (tx, rx) = mpsc::channel(16);
        let tls = crate::tls::PeerTls::load(security).unwrap();
        let security = Security {
            auth: None,
            tls: Some(tls),
        };
        let t = Transport::start(NodeId(me), 7, Vec::new(), addr, peers, tx, security)
            .await
            .unwrap();
        (t, rx)
    }

    /// Whether member `to` refuses a link opened with `security`'s certificate that
    /// claims to come from `claimed`: a refused link is closed at once, a taken one
    /// stays open for messages.
    async fn link_refused(
        to: SocketAddr,
        security: &crate::tls::TransportSecurity,
        claimed: NodeId,
    ) -> bool {
        let tls = crate::tls::PeerTls::load(security).unwrap();
        let tcp = TcpStream::connect(to).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(to.ip().into());
        let Ok(mut stream) = tls.connector.connect(name, tcp).await else {
            return true;
        };
        let mut challenge = [0u8; 32];
        if stream.read_exact(&mut challenge).await.is_err() {
            return true;
        }
        let hello = Hello {
            magic: MAGIC,
            version: VERSION,
            cluster_id: 7,
            from: claimed,
            settings: Vec::new(),
            proof: None,
        };
        if write_frame(&mut stream, &hello).await.is_err() || stream.flush().await.is_err() {
            return true;
        }
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte)).await;
        matches!(read, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test]
    async fn over_tls_a_link_is_taken_only_with_a_certificate_the_ca_signed_for_its_sender() {
        use crate::tls::test_pki::Ca;
        let dir = tempfile::tempdir().unwrap();
        let (ca, other) = (Ca::new(), Ca::new());
        let (a, b) = (free_addr().await, free_addr().await);
        let n0 = ca.member(dir.path(), "n0", &ca);
        let n1 = ca.member(dir.path(), "n1", &ca);
        let (_tb, mut rx_b) = over_tls(1, b, &[(NodeId(0), a)], &n1).await;
        let (ta, _) = over_tls(0, a, &[(NodeId(1), b)], &n0).await;
        for i in 0..20 {
            assert!(ta.send(NodeId(1), format!("m{i}")));
        }
        for i in 0..20 {
            let (from, m) = rx_b.recv().await.unwrap();
            assert_eq!((from, m), (NodeId(0), format!("m{i}")));
        }
        assert!(
            !link_refused(b, &n0, NodeId(0)).await,
            "n0's own certificate speaks for n0"
        );
        let stranger = other.member(dir.path(), "n9", &ca);
        assert!(
            link_refused(b, &stranger, NodeId(0)).await,
            "another CA's certificate"
        );
        let client = ca.certificate(dir.path(), "client", &[], &ca);
        assert!(
            link_refused(b, &client, NodeId(0)).await,
            "a client's certificate, same CA"
        );
        let elsewhere = ca.certificate(dir.path(), "n2", &["10.1.2.3"], &ca);
        assert!(
            link_refused(b, &elsewhere, NodeId(0)).await,
            "another host's member"
        );
        assert!(
            link_refused(b, &n0, NodeId(5)).await,
            "a member not known here"
        );
        // And no TLS at all.
        let (tx_d, _rx_d) = mpsc::channel::<(NodeId, String)>(16);
        let d = free_addr().await;
        let td = Transport::start(
            NodeId(0),
            7,
            Vec::new(),
            d,
            &[(NodeId(1), b)],
            tx_d,
            Security::default(),
        )
        .await
        .unwrap();
        td.send(NodeId(1), "in the clear".into());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(rx_b.try_recv().is_err());
    }
}
