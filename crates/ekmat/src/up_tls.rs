//! `ekmat up --tls`: a CA, one certificate for the members (for 127.0.0.1 and
//! localhost, shown on both ends of their links) and one for clients, made in
//! `<data-dir>/tls` and kept there, so a cluster restarted on the same directory keeps
//! them. The CA's key is not kept: nothing else is ever signed with it.

use std::path::{Path, PathBuf};

use ekmat_node::tls::TransportSecurity;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose as Usage,
    IsCa, KeyPair,
};

use crate::client::TlsArgs;

pub struct LocalPki {
    dir: PathBuf,
}

impl LocalPki {
    /// The certificates in `data`/tls, made if any is missing.
    pub fn ensure(data: &Path) -> Result<LocalPki, String> {
        let pki = LocalPki {
            dir: data.join("tls"),
        };
        let files = [
            "ca.pem",
            "member.pem",
            "member-key.pem",
            "client.pem",
            "client-key.pem",
        ];
        if !files.iter().all(|f| pki.dir.join(f).exists()) {
            pki.make()
                .map_err(|e| format!("making certificates in {}: {e}", pki.dir.display()))?;
        }
        Ok(pki)
    }

    fn make(&self) -> Result<(), Box<dyn std::error::Error>> {
        std::fs::create_dir_all(&self.dir)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "ekmat up CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        write(&self.dir.join("ca.pem"), &ca.pem(), false)?;
        // A member's certificate serves and opens links; a client's only opens them, and
        // names no address, so it can never speak for a member.
        let kinds = [
            (
                "member",
                vec!["127.0.0.1", "localhost"],
                vec![Usage::ServerAuth, Usage::ClientAuth],
            ),
            ("client", vec![], vec![Usage::ClientAuth]),
        ];
        for (name, names, usages) in kinds {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = CertificateParams::new(names)?;
            params.extended_key_usages = usages;
            params
                .distinguished_name
                .push(DnType::CommonName, format!("ekmat up {name}"));
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &ca)?;
            write(&self.dir.join(format!("{name}.pem")), &cert.pem(), false)?;
            write(
                &self.dir.join(format!("{name}-key.pem")),
                &key.serialize_pem(),
                true,
            )?;
        }
        Ok(())
    }

    /// Both ports' settings for every member.
    pub fn member_security(&self) -> TransportSecurity {
        TransportSecurity {
            cert_file: self.dir.join("member.pem"),
            key_file: self.dir.join("member-key.pem"),
            trusted_ca_file: Some(self.dir.join("ca.pem")),
            client_cert_auth: true,
            crl_file: None,
        }
    }

    /// etcdctl's flags for the client certificate.
    pub fn client_args(&self) -> TlsArgs {
        TlsArgs {
            cacert: Some(self.dir.join("ca.pem")),
            cert: Some(self.dir.join("client.pem")),
            key: Some(self.dir.join("client-key.pem")),
        }
    }

    /// The same, as etcdctl takes them on its command line.
    pub fn etcdctl_flags(&self) -> String {
        self.client_flags("key")
    }

    /// The flags with which `ekmat pbft` and `ekmat gateway` reach the members (a
    /// leading space; `--key` is their signing key, so the certificate's is `--cert-key`).
    pub fn signing_client_flags(&self) -> String {
        format!(" {}", self.client_flags("cert-key"))
    }

    /// The client certificate's flags, its key given as `--{key_flag}`.
    fn client_flags(&self, key_flag: &str) -> String {
        let a = self.client_args();
        let path = |p: Option<PathBuf>| p.map(|p| p.display().to_string()).unwrap_or_default();
        format!(
            "--cacert {} --cert {} --{key_flag} {}",
            path(a.cacert),
            path(a.cert),
            path(a.key)
        )
    }

    /// What a local gateway serves TLS with: the members' certificate (it names
    /// 127.0.0.1), admitting clients of the same CA (a leading space).
    pub fn gateway_serving_flags(&self) -> String {
        let m = self.member_security();
        let ca = m.trusted_ca_file.unwrap_or_default();
        format!(
            " --cert-file {} --key-file {} --trusted-ca-file {}",
            m.cert_file.display(),
            m.key_file.display(),
            ca.display()
        )
    }
}

/// Write `text` to `path`; a private key readable by its owner only.
fn write(path: &Path, text: &str, private: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)?;
    // The mode above applies to a new file only.
    let mode = if private { 0o600 } else { 0o644 };
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    file.write_all(text.as_bytes())
}
