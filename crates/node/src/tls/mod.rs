//! TLS, configured as etcd's transport security, on both of a member's ports:
//!
//! - the client port (`[client_transport_security]`, etcd's `--cert-file`,
//!   `--key-file`, `--trusted-ca-file`, `--client-cert-auth`) serves gRPC, the JSON
//!   gateway and `/health` over TLS; with a trusted CA, only clients whose certificate it
//!   signed get in. Members read each other's client ports too (the data checks), as TLS
//!   clients presenting their own certificate.
//! - the peer port (`[peer_transport_security]`, etcd's `--peer-*` flags) carries the
//!   protocol's messages over mutually authenticated TLS: each member proves itself with
//!   a certificate the trusted CA signed, so no one without one can speak to a member as
//!   a peer.
//!
//! The certificate and key files are read again when they change, as etcd reads them
//! for each new connection: a renewed certificate is served without a restart. So is
//! a revocation list (`crl_file`, `revocation.rs`). The CA is read at start.
//!
//! Client handshakes run in their own tasks, so a client that stalls its handshake holds
//! up no one else's connection; each is bounded in time, and so is how many run at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;

use crate::service::AuthorityFix;

mod reloading;
mod revocation;
use reloading::Reloading;
use revocation::Revocations;

/// How long a client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections whose handshake finished, not yet taken by the server.
const ACCEPTED_QUEUE: usize = 128;
/// Handshakes under way at once; past it, new connections wait in the listen backlog.
const MAX_HANDSHAKES: usize = 1024;
const CLIENT_SECTION: &str = "client_transport_security";
const PEER_SECTION: &str = "peer_transport_security";

/// `[client_transport_security]` or `[peer_transport_security]` in a member's
/// configuration; the field names are those of etcd's configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSecurity {
    /// The member's certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that sign the certificates of those who connect (clients,
    /// or members). As in etcd, setting it makes them need a certificate it signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse connections without a certificate that `trusted_ca_file` signed (which
    /// `trusted_ca_file` alone already asks, as in etcd).
    #[serde(default)]
    pub client_cert_auth: bool,
    /// Certificate revocation lists (PEM) from the CA in `trusted_ca_file` (etcd's
    /// `--client-crl-file` and `--peer-crl-file`): a certificate it revoked is refused.
    /// Read again soon after the file changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_file: Option<PathBuf>,
}

impl TransportSecurity {
    /// The client port's settings, on their own (the files are read at start).
    pub fn validate_client(&self) -> Result<(), String> {
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return Err(format!(
                "{CLIENT_SECTION}: client_cert_auth = true needs trusted_ca_file, the CA that signs clients' certificates"
            ));
        }
        if self.crl_file.is_some() && self.trusted_ca_file.is_none() {
            return Err(format!(
                "{CLIENT_SECTION}: crl_file needs trusted_ca_file: revocation lists are checked against the certificates that CA signed"
            ));
        }
        Ok(())
    }

    /// The peer port's settings: members authenticate each other, so a CA is required.
    pub fn validate_peer(&self) -> Result<(), String> {
        if self.trusted_ca_file.is_none() {
            return Err(format!(
                "{PEER_SECTION}: trusted_ca_file is required, the CA that signs every member's certificate"
            ));
        }
        Ok(())
    }
}

/// A certificate chain and its key, as PEM.
type PairPem = Arc<(Vec<u8>, Vec<u8>)>;

/// What identifies a file's contents without reading it: inode, change and
/// modification times, size. A copy that keeps the modification time (`cp -p`) still
/// changes the inode or the change time.
type Stamp = Option<(u64, i64, i64, SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((
        meta.ino(),
        meta.ctime(),
        meta.ctime_nsec(),
        meta.modified().ok()?,
        meta.len(),
    ))
}

/// The member's certificate and key, read again soon after either file changes (a pair
/// that does not read or match keeps the last good one in use).
#[derive(Debug)]
struct ReloadingCert {
    provider: Arc<CryptoProvider>,
    pair: Reloading<(Arc<CertifiedKey>, PairPem)>,
}

impl ReloadingCert {
    fn load(cfg: &TransportSecurity, section: &'static str) -> Result<ReloadingCert, String> {
        let provider = Arc::new(ring_provider());
        let (cert_file, key_file) = (cfg.cert_file.clone(), cfg.key_file.clone());
        let files = vec![cert_file.clone(), key_file.clone()];
        let read_with = provider.clone();
        let pair = Reloading::load(files, section, "certificate and key", move || {
            read_pair(&cert_file, &key_file, section, &read_with)
        })?;
        Ok(ReloadingCert { provider, pair })
    }

    /// The pair to use now, and its PEM (for clients built from it, tonic's).
    fn current(&self) -> (Arc<CertifiedKey>, PairPem) {
        self.pair.get()
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().0)
    }
}

impl rustls::client::ResolvesClientCert for ReloadingCert {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current().0)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A certificate chain and its key, read, parsed and checked to belong together.
fn read_pair(
    cert_file: &Path,
    key_file: &Path,
    section: &str,
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, PairPem), String> {
    let cert_pem = read(cert_file, section, "cert_file")?;
    let key_pem = read(key_file, section, "key_file")?;
    let certs = parse_certs(&cert_pem, cert_file, section, "cert_file")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "{section}: key_file {}: no private key: {e}",
            key_file.display()
        )
    })?;
    let key = CertifiedKey::from_der(certs, key, provider).map_err(|e| {
        format!(
            "{section}: cert_file {} and key_file {} do not make a usable pair: {e}",
            cert_file.display(),
            key_file.display()
        )
    })?;
    Ok((Arc::new(key), Arc::new((cert_pem, key_pem))))
}

fn read(path: &Path, section: &str, setting: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{section}: {setting} {}: {e}", path.display()))
}

fn parse_certs(
    pem: &[u8],
    path: &Path,
    section: &str,
    setting: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let named = |why: String| format!("{section}: {setting} {}: {why}", path.display());
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| named(e.to_string()))?;
    if certs.is_empty() {
        return Err(named("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// A section's files, read and parsed.
struct Loaded {
    pair: Arc<ReloadingCert>,
    /// The trusted CA's PEM and certificates.
    ca: Option<(Vec<u8>, Arc<rustls::RootCertStore>)>,
    /// Verifiers that also check the revocation list, if there is one.
    revocations: Option<Arc<Revocations>>,
}

impl Loaded {
    /// Read the certificate, key and CA files; every problem names its setting.
    fn read(cfg: &TransportSecurity, section: &'static str) -> Result<Loaded, String> {
        let ca = match &cfg.trusted_ca_file {
            Some(path) => {
                let pem = read(path, section, "trusted_ca_file")?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in parse_certs(&pem, path, section, "trusted_ca_file")? {
                    roots.add(cert).map_err(|e| {
                        format!("{section}: trusted_ca_file {}: {e}", path.display())
                    })?;
                }
                Some((pem, Arc::new(roots)))
            }
            None => None,
        };
        let pair = Arc::new(ReloadingCert::load(cfg, section)?);
        let revocations = match (&cfg.crl_file, &ca) {
            (Some(path), Some((_, roots))) => Some(Revocations::load(
                path.clone(),
                section,
                roots.clone(),
                pair.provider.clone(),
            )?),
            (Some(_), None) => {
                return Err(format!("{section}: crl_file needs trusted_ca_file"));
            }
            (None, _) => None,
        };
        Ok(Loaded {
            pair,
            ca,
            revocations,
        })
    }

    /// What the member connects to others with: its current certificate, and the trusted
    /// CA's checks (the revocation list's besides, if there is one) of theirs.
    fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        let Some((_, roots)) = &self.ca else {
            return Err("a client of other members needs trusted_ca_file".into());
        };
        let builder = rustls::ClientConfig::builder_with_provider(self.pair.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.revocations {
            Some(revocations) => builder
                .dangerous()
                .with_custom_certificate_verifier(revocations.server_verifier()),
            None => builder.with_root_certificates(roots.clone()),
        };
        Ok(builder.with_client_cert_resolver(self.pair.clone()))
    }

    /// What the port serves with: this member's certificate, and, with a trusted CA,
    /// a demand for a certificate it signed from whoever connects.
    fn server_config(&self, section: &str) -> Result<rustls::ServerConfig, String> {
        let provider = self.pair.provider.clone();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match (&self.ca, &self.revocations) {
            (_, Some(revocations)) => {
                builder.with_client_cert_verifier(revocations.client_verifier())
            }
            (Some((_, roots)), None) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.clone(),
                    provider,
                )
                .build()
                .map_err(|e| format!("{section}: trusted_ca_file: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
            (None, None) => builder.with_no_client_auth(),
        };
        Ok(builder.with_cert_resolver(self.pair.clone()))
    }
}

/// The client port's TLS, loaded: what it serves with, and how the member reads other
/// members' client ports.
#[derive(Clone)]
pub struct ClientTls {
    acceptor: TlsAcceptor,
    /// Set when the section names a CA to check the other members' certificates with.
    dial: Option<TlsDial>,
}

impl ClientTls {
    pub fn load(cfg: &TransportSecurity) -> Result<ClientTls, String> {
        let loaded = Loaded::read(cfg, CLIENT_SECTION)?;
        let mut server = loaded.server_config(CLIENT_SECTION)?;
        // gRPC over HTTP/2, and /health, /metrics and /version over HTTP/1.1.
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let dial = match loaded.ca.is_some() {
            true => {
                let mut client = loaded.client_config()?;
                client.alpn_protocols = vec![b"h2".to_vec()];
                Some(TlsDial(TlsConnector::from(Arc::new(client))))
            }
            false => None,
        };
        Ok(ClientTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            dial,
        })
    }

    /// How to read a member's client port: trusting the CA (and its revocation list, if
    /// configured), presenting this member's current certificate. None without a CA.
    pub fn peer_dialer(&self) -> Option<TlsDial> {
        self.dial.clone()
    }

    /// The connections `listener` accepts, once their handshake is done.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> ReceiverStream<std::io::Result<AuthorityFix<TlsStream<TcpStream>>>> {
        let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
        let acceptor = self.acceptor.clone();
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = handshakes.clone().acquire_owned().await else {
                    return;
                };
                // Ends with the server, which drops the stream and so closes `tx`: the
                // port is released.
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = tx.closed() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors, say: let some close before trying again.
                        tracing::warn!(error = %e, "accepting a client connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                    let result = handshake.await;
                    drop(permit);
                    match result {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(AuthorityFix::new(tls))).await;
                        }
                        Ok(Err(e)) => handshake_failed(peer, &e.to_string()),
                        Err(_) => handshake_failed(peer, "timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

/// The peer port's TLS, loaded: what a member accepts its peers' links with, and what
/// it opens its own with; both sides show a certificate the trusted CA signed.
#[derive(Clone)]
pub struct PeerTls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

impl PeerTls {
    pub fn load(cfg: &TransportSecurity) -> Result<PeerTls, String> {
        cfg.validate_peer()?;
        let loaded = Loaded::read(cfg, PEER_SECTION)?;
        let server = loaded.server_config(PEER_SECTION)?;
        let client = loaded.client_config()?;
        Ok(PeerTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }
}

/// Opens TLS connections for a gRPC channel (`Endpoint::connect_with_connector`, given
/// an `http://` address: the TLS is this connector's): tonic's own TLS takes no
/// verifier of ours, so it could not check the revocation list, nor pick up a renewed
/// certificate.
#[derive(Clone)]
pub struct TlsDial(TlsConnector);

type Dialed = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tower::Service<http::Uri> for TlsDial {
    type Response = Dialed;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = std::io::Result<Dialed>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = self.0.clone();
        Box::pin(async move {
            let invalid = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
            let host = uri
                .host()
                .ok_or_else(|| invalid("no host in the address"))?;
            let port = uri
                .port_u16()
                .ok_or_else(|| invalid("no port in the address"))?;
            // An IPv6 literal comes bracketed; the certificate names the bare address.
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| invalid(&e.to_string()))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let tls = connector.connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// ring, not aws-lc-rs: rustls 0.23.48 deprecates ring's provider for lacking
/// post-quantum key exchange, but aws-lc-rs is a large C build (see the README's note
/// on build times) and the classical suites are what etcd's Go clients offer anyway.
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn handshake_failed(peer: std::net::SocketAddr, why: &str) {
    metrics::counter!("ekmat_client_tls_handshake_failures_total").increment(1);
    tracing::debug!(%peer, why, "a client's TLS handshake failed");
}

/// Certificates for tests: a CA, and members' certificates for 127.0.0.1.
#[cfg(test)]
pub(crate) mod test_pki {
    use std::path::Path;

    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
        IsCa, KeyIdMethod, KeyPair, RevocationReason, RevokedCertParams, SerialNumber,
        date_time_ymd,
    };

    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::net::TcpStream;
    use tokio_rustls::{TlsConnector, client::TlsStream};

    use super::{TransportSecurity, ring_provider};

    /// A TLS connection to `addr` as a client holding `client`'s certificate, trusting
    /// its CA: the handshake's error if it fails.
    pub async fn connect_as(
        addr: std::net::SocketAddr,
        client: &TransportSecurity,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let ca = std::fs::read(client.trusted_ca_file.as_ref().unwrap()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(&ca).unwrap())
            .unwrap();
        let chain = vec![CertificateDer::from_pem_file(&client.cert_file).unwrap()];
        let key = PrivateKeyDer::from_pem_file(&client.key_file).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(ring_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    }

    pub struct Ca(CertifiedIssuer<'static, KeyPair>);

    impl Ca {
        pub fn new() -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
        }

        /// Files in `dir` for a member named `name` whose certificate this CA signed
        /// for 127.0.0.1, trusting `trusted` (this CA or another).
        pub fn member(&self, dir: &Path, name: &str, trusted: &Ca) -> TransportSecurity {
            self.certificate(dir, name, &["127.0.0.1"], trusted)
        }

        /// The same for a certificate that names `names` (none: a client's).
        pub fn certificate(
            &self,
            dir: &Path,
            name: &str,
            names: &[&str],
            trusted: &Ca,
        ) -> TransportSecurity {
            self.certificate_numbered(dir, name, names, trusted, None)
        }

        /// The same with serial number `serial` (one a revocation list can name).
        pub fn certificate_numbered(
            &self,
            dir: &Path,
            name: &str,
            names: &[&str],
            trusted: &Ca,
            serial: Option<u64>,
        ) -> TransportSecurity {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = CertificateParams::new(names).unwrap();
            params.serial_number = serial.map(SerialNumber::from);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.0).unwrap();
            let file = |suffix: &str, text: String| {
                let path = dir.join(format!("{name}-{suffix}.pem"));
                std::fs::write(&path, text).unwrap();
                path
            };
            TransportSecurity {
                cert_file: file("cert", cert.pem()),
                key_file: file("key", key.serialize_pem()),
                trusted_ca_file: Some(file("ca", trusted.0.pem())),
                client_cert_auth: true,
                crl_file: None,
            }
        }

        /// Writes this CA's revocation list number `number`, revoking `serials`, to `path`.
        pub fn revocation_list(&self, path: &Path, number: u64, serials: &[u64]) {
            let revoked = serials.iter().map(|&serial| RevokedCertParams {
                serial_number: SerialNumber::from(serial),
                revocation_time: date_time_ymd(2024, 1, 1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
            let crl = CertificateRevocationListParams {
                this_update: date_time_ymd(2024, 1, 1),
                next_update: date_time_ymd(2100, 1, 1),
                crl_number: SerialNumber::from(number),
                issuing_distribution_point: None,
                revoked_certs: revoked.collect(),
                key_identifier_method: KeyIdMethod::Sha256,
            };
            let pem = crl.signed_by(&self.0).unwrap().pem().unwrap();
            std::fs::write(path, pem).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reloading::RELOAD_CHECK_EVERY;
    use super::*;

    #[test]
    fn client_cert_auth_needs_a_ca_and_peers_always_do() {
        let mut cfg = TransportSecurity {
            cert_file: "c.pem".into(),
            key_file: "k.pem".into(),
            trusted_ca_file: None,
            client_cert_auth: true,
            crl_file: None,
        };
        assert!(
            cfg.validate_client()
                .unwrap_err()
                .contains("trusted_ca_file")
        );
        cfg.client_cert_auth = false;
        assert!(cfg.validate_client().is_ok());
        assert!(
            cfg.validate_peer()
                .unwrap_err()
                .contains("trusted_ca_file is required")
        );
        cfg.trusted_ca_file = Some("ca.pem".into());
        assert!(cfg.validate_client().is_ok() && cfg.validate_peer().is_ok());
    }

    #[test]
    fn unreadable_files_are_named_with_their_setting() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TransportSecurity {
            cert_file: dir.path().join("missing.pem"),
            key_file: dir.path().join("key.pem"),
            ..Default::default()
        };
        let err = ClientTls::load(&cfg).err().unwrap();
        assert!(
            err.contains("client_transport_security: cert_file") && err.contains("missing.pem"),
            "{err}"
        );
        std::fs::write(&cfg.cert_file, "not a certificate").unwrap();
        std::fs::write(&cfg.key_file, "not a key either").unwrap();
        let err = ClientTls::load(&cfg).err().unwrap();
        assert!(err.contains("no PEM certificate"), "{err}");
    }

    /// The certificate a client sees when it connects to `addr` now.
    async fn served_certificate(addr: std::net::SocketAddr, client: &TransportSecurity) -> Vec<u8> {
        let tls = test_pki::connect_as(addr, client).await.unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }

    fn file_certificate(cfg: &TransportSecurity) -> Vec<u8> {
        CertificateDer::from_pem_file(&cfg.cert_file)
            .unwrap()
            .to_vec()
    }

    #[tokio::test]
    async fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
        use tokio_stream::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = test_pki::Ca::new();
        let member = ca.member(dir.path(), "member", &ca);
        let client = ca.member(dir.path(), "client", &ca);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = ClientTls::load(&member).unwrap().incoming(listener);
        tokio::spawn(async move { while incoming.next().await.is_some() {} });

        let first = served_certificate(addr, &client).await;
        assert_eq!(first, file_certificate(&member));
        let renewed = ca.member(dir.path(), "member", &ca); // new key and certificate, same files
        tokio::time::sleep(RELOAD_CHECK_EVERY).await;
        let second = served_certificate(addr, &client).await;
        assert_ne!(second, first);
        assert_eq!(second, file_certificate(&renewed));
        let whole = std::fs::read(&member.cert_file).unwrap();
        std::fs::write(&member.cert_file, &whole[..whole.len() / 2]).unwrap();
        tokio::time::sleep(RELOAD_CHECK_EVERY).await;
        let served = served_certificate(addr, &client).await;
        assert_eq!(served, second, "the last good pair");
        // Written whole at last: taken, though it failed to read before.
        let third = ca.member(dir.path(), "member", &ca);
        tokio::time::sleep(RELOAD_CHECK_EVERY).await;
        assert_eq!(
            served_certificate(addr, &client).await,
            file_certificate(&third)
        );
    }
}

#[cfg(test)]
mod revocation_tests {
    use tokio::io::AsyncReadExt;
    use tokio_stream::StreamExt;

    use super::reloading::RELOAD_CHECK_EVERY;
    use super::test_pki::Ca;
    use super::*;

    /// Whether the port at `addr` keeps a connection made with `client`'s certificate
    /// (a refused certificate ends the handshake, or, in TLS 1.3, the connection right
    /// after it).
    async fn kept(addr: std::net::SocketAddr, client: &TransportSecurity) -> bool {
        let Ok(mut tls) = super::test_pki::connect_as(addr, client).await else {
            return false;
        };
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(500), tls.read(&mut byte));
        read.await.is_err()
    }

    /// Serves `member`'s client port, keeping every connection it accepts open.
    async fn serve(member: &TransportSecurity) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = ClientTls::load(member).unwrap().incoming(listener);
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Some(conn) = incoming.next().await {
                open.push(conn);
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_revoked_client_certificate_is_refused_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let crl = dir.path().join("crl.pem");
        ca.revocation_list(&crl, 1, &[]);
        let mut member = ca.member(dir.path(), "member", &ca);
        member.crl_file = Some(crl.clone());
        let alice = ca.certificate_numbered(dir.path(), "alice", &[], &ca, Some(1001));
        let bob = ca.certificate_numbered(dir.path(), "bob", &[], &ca, Some(1002));
        let addr = serve(&member).await;
        assert!(kept(addr, &alice).await && kept(addr, &bob).await);

        ca.revocation_list(&crl, 2, &[1001]);
        tokio::time::sleep(RELOAD_CHECK_EVERY).await;
        assert!(!kept(addr, &alice).await, "alice's certificate is revoked");
        assert!(kept(addr, &bob).await);

        // A list that no longer reads keeps the last good one in force.
        std::fs::write(&crl, "-----BEGIN X509 CRL-----\ngarbage\n").unwrap();
        tokio::time::sleep(RELOAD_CHECK_EVERY).await;
        assert!(!kept(addr, &alice).await && kept(addr, &bob).await);
    }

    #[tokio::test]
    async fn a_list_from_another_ca_refuses_everyone_rather_than_check_no_one() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, other) = (Ca::new(), Ca::new());
        let crl = dir.path().join("crl.pem");
        other.revocation_list(&crl, 1, &[]);
        let mut member = ca.member(dir.path(), "member", &ca);
        member.crl_file = Some(crl);
        let alice = ca.certificate_numbered(dir.path(), "alice", &[], &ca, Some(1001));
        let addr = serve(&member).await;
        assert!(!kept(addr, &alice).await);
    }

    #[tokio::test]
    async fn a_member_does_not_link_to_a_peer_whose_certificate_is_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let crl = dir.path().join("crl.pem");
        ca.revocation_list(&crl, 1, &[7]);
        let mut me = ca.member(dir.path(), "me", &ca);
        me.crl_file = Some(crl);
        let revoked = ca.certificate_numbered(dir.path(), "peer", &["127.0.0.1"], &ca, Some(7));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = PeerTls::load(&revoked).unwrap().acceptor;
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = acceptor.accept(tcp).await;
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let linked = PeerTls::load(&me)
            .unwrap()
            .connector
            .connect(name, tcp)
            .await;
        let err = linked.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("Revoked"), "{err}");
    }

    #[tokio::test]
    async fn a_member_does_not_read_a_client_port_whose_certificate_is_revoked() {
        use tower::Service;
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let crl = dir.path().join("crl.pem");
        ca.revocation_list(&crl, 1, &[]);
        let mut me = ca.member(dir.path(), "me", &ca);
        me.crl_file = Some(crl.clone());
        let other = ca.certificate_numbered(dir.path(), "other", &["127.0.0.1"], &ca, Some(9));
        let addr = serve(&other).await;
        let mut dial = ClientTls::load(&me).unwrap().peer_dialer().unwrap();
        let uri: http::Uri = format!("http://{addr}").parse().unwrap();
        assert!(dial.call(uri.clone()).await.is_ok(), "not revoked yet");

        ca.revocation_list(&crl, 2, &[9]);
        tokio::time::sleep(RELOAD_CHECK_EVERY).await;
        let err = dial.call(uri).await.err().map(|e| e.to_string());
        assert!(err.as_deref().unwrap_or("").contains("Revoked"), "{err:?}");
    }

    #[test]
    fn a_revocation_list_without_a_ca_or_that_does_not_read_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let mut member = ca.member(dir.path(), "member", &ca);
        member.crl_file = Some(dir.path().join("missing.pem"));
        let err = ClientTls::load(&member).err().unwrap();
        assert!(
            err.contains("crl_file") && err.contains("missing.pem"),
            "{err}"
        );
        std::fs::write(dir.path().join("missing.pem"), "no list here").unwrap();
        let err = ClientTls::load(&member).err().unwrap();
        assert!(err.contains("no PEM revocation list"), "{err}");
        member.trusted_ca_file = None;
        member.client_cert_auth = false;
        assert!(
            member
                .validate_client()
                .unwrap_err()
                .contains("needs trusted_ca_file")
        );
    }
}
