//! Certificate revocation lists (etcd's `--client-crl-file` and `--peer-crl-file`): a
//! certificate whose serial number the CA revoked is refused, by the client port and by
//! the peer port both ways. The file is read again soon after it changes, as etcd reads
//! it for each new connection: a revocation needs no restart.
//!
//! Only the connecting (or answering) certificate itself is checked against the list,
//! and it must come from the CA that issued that certificate: a certificate whose issuer
//! has no list in the file is refused rather than let through unchecked.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use super::Reloading;
use super::read;

/// Verifiers built from the trusted CA and the revocation list in `crl_file`, rebuilt
/// soon after the file changes. A list that does not read keeps the last good one.
#[derive(Debug)]
pub(super) struct Revocations {
    subjects: Vec<DistinguishedName>,
    verifiers: Reloading<Verifiers>,
}

impl Revocations {
    pub(super) fn load(
        crl_file: PathBuf,
        section: &'static str,
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<Revocations>, String> {
        let subjects = roots.subjects();
        let files = vec![crl_file.clone()];
        let verifiers = Reloading::load(files, section, "revocation list", move || {
            verifiers(&crl_file, section, &roots, &provider)
        })?;
        Ok(Arc::new(Revocations {
            subjects,
            verifiers,
        }))
    }

    fn current(&self) -> Verifiers {
        self.verifiers.get()
    }

    /// Checks the certificates that connect to this port.
    pub(super) fn client_verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(Clients(self.clone()))
    }

    /// Checks the certificates of the peers this member connects to.
    pub(super) fn server_verifier(self: &Arc<Self>) -> Arc<dyn ServerCertVerifier> {
        Arc::new(Servers(self.clone()))
    }
}

/// What checks connecting clients' certificates, and what checks peers' when connecting.
type Verifiers = (Arc<dyn ClientCertVerifier>, Arc<dyn ServerCertVerifier>);

/// The file's lists, and verifiers that check certificates against them.
fn verifiers(
    path: &std::path::Path,
    section: &str,
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Verifiers, String> {
    let named = |why: String| format!("{section}: crl_file {}: {why}", path.display());
    let pem = read(path, section, "crl_file")?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| named(e.to_string()))?;
    if crls.is_empty() {
        return Err(named("no PEM revocation list (X509 CRL) in it".into()));
    }
    let client = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .with_crls(crls.clone())
    .only_check_end_entity_revocation()
    .build()
    .map_err(|e| named(e.to_string()))?;
    let server = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .with_crls(crls)
    .only_check_end_entity_revocation()
    .build()
    .map_err(|e| named(e.to_string()))?;
    Ok((client, server))
}

#[derive(Debug)]
struct Clients(Arc<Revocations>);

impl ClientCertVerifier for Clients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.0.subjects
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let (verifier, _) = self.0.current();
        verifier.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .0
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .0
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().0.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct Servers(Arc<Revocations>);

impl ServerCertVerifier for Servers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (_, verifier) = self.0.current();
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .1
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .1
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().1.supported_verify_schemes()
    }
}
