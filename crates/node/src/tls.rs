//! TLS on the client port, configured as etcd's client transport security
//! (`--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`): the member
//! serves gRPC, the JSON gateway and `/health` over TLS, and with `client_cert_auth`
//! lets in only clients whose certificate the trusted CA signed. Members read each
//! other's client ports too (the data check at start, the corruption check), as TLS
//! clients presenting their own certificate.
//!
//! Handshakes run in their own tasks, so a client that stalls its handshake holds up no
//! one else's connection; each is bounded in time, and so is how many run at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::service::AuthorityFix;

/// How long a client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections whose handshake finished, not yet taken by the server.
const ACCEPTED_QUEUE: usize = 128;
/// Handshakes under way at once; past it, new connections wait in the listen backlog.
const MAX_HANDSHAKES: usize = 1024;

/// `[client_transport_security]` in a member's configuration; the field names are
/// those of etcd's configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTransportSecurity {
    /// The member's certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that sign clients' certificates, and the other members'.
    /// As in etcd, setting it makes clients need a certificate it signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate that `trusted_ca_file` signed (which
    /// `trusted_ca_file` alone already asks, as in etcd).
    #[serde(default)]
    pub client_cert_auth: bool,
}

impl ClientTransportSecurity {
    /// The configuration's own consistency (the files are read at start).
    pub fn validate(&self) -> Result<(), String> {
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return Err(
                "client_transport_security: client_cert_auth = true needs trusted_ca_file, the CA that signs clients' certificates".into(),
            );
        }
        Ok(())
    }
}

/// The client port's TLS, loaded: what it serves with, and what the member presents
/// when it reads other members' client ports.
#[derive(Clone)]
pub struct ClientTls {
    acceptor: TlsAcceptor,
    pub peer_client: tonic::transport::ClientTlsConfig,
}

impl ClientTls {
    /// Read the certificate, key and CA files; every problem names its setting.
    pub fn load(cfg: &ClientTransportSecurity) -> Result<ClientTls, String> {
        let cert_pem = read(&cfg.cert_file, "cert_file")?;
        let key_pem = read(&cfg.key_file, "key_file")?;
        let ca_pem = match &cfg.trusted_ca_file {
            Some(path) => Some((read(path, "trusted_ca_file")?, path)),
            None => None,
        };
        let certs = parse_certs(&cert_pem, &cfg.cert_file, "cert_file")?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            setting_error("key_file", &cfg.key_file, &format!("no private key: {e}"))
        })?;
        let provider = Arc::new(ring_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        // As etcd: a CA to check clients' certificates with means clients need one.
        let builder = match &ca_pem {
            Some((pem, path)) => {
                let roots = Arc::new(root_store(pem, path)?);
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                        .build()
                        .map_err(|e| setting_error("trusted_ca_file", path, &e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut server = builder.with_single_cert(certs, key).map_err(|e| {
            format!(
                "client_transport_security: cert_file {} and key_file {} do not make a usable pair: {e}",
                cfg.cert_file.display(),
                cfg.key_file.display()
            )
        })?;
        // gRPC over HTTP/2, and /health, /metrics and /version over HTTP/1.1.
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ClientTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            peer_client: peer_client_config(cert_pem, key_pem, ca_pem.map(|(pem, _)| pem)),
        })
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

/// How this member connects to other members' client ports: trusting
/// `trusted_ca_file`, and presenting its own certificate (which their
/// `trusted_ca_file` then checks).
fn peer_client_config(
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Option<Vec<u8>>,
) -> tonic::transport::ClientTlsConfig {
    let identity = tonic::transport::Identity::from_pem(cert_pem, key_pem);
    let client = tonic::transport::ClientTlsConfig::new().identity(identity);
    match ca_pem {
        Some(ca) => client.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
        None => client,
    }
}

fn read(path: &Path, setting: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| setting_error(setting, path, &e.to_string()))
}

fn parse_certs(
    pem: &[u8],
    path: &Path,
    setting: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| setting_error(setting, path, &e.to_string()))?;
    if certs.is_empty() {
        return Err(setting_error(setting, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn root_store(pem: &[u8], path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in parse_certs(pem, path, "trusted_ca_file")? {
        roots
            .add(cert)
            .map_err(|e| setting_error("trusted_ca_file", path, &e.to_string()))?;
    }
    Ok(roots)
}

fn setting_error(setting: &str, path: &Path, why: &str) -> String {
    format!(
        "client_transport_security: {setting} {}: {why}",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_cert_auth_needs_a_ca() {
        let mut cfg = ClientTransportSecurity {
            cert_file: "c.pem".into(),
            key_file: "k.pem".into(),
            trusted_ca_file: None,
            client_cert_auth: true,
        };
        assert!(cfg.validate().unwrap_err().contains("trusted_ca_file"));
        cfg.trusted_ca_file = Some("ca.pem".into());
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn unreadable_files_are_named_with_their_setting() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ClientTransportSecurity {
            cert_file: dir.path().join("missing.pem"),
            key_file: dir.path().join("key.pem"),
            ..Default::default()
        };
        let err = ClientTls::load(&cfg).err().unwrap();
        assert!(
            err.contains("cert_file") && err.contains("missing.pem"),
            "{err}"
        );
        std::fs::write(&cfg.cert_file, "not a certificate").unwrap();
        std::fs::write(&cfg.key_file, "not a key either").unwrap();
        let err = ClientTls::load(&cfg).err().unwrap();
        assert!(err.contains("no PEM certificate"), "{err}");
    }
}
