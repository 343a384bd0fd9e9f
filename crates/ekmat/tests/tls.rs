//! TLS configured as etcd's transport security: etcd's own `etcdctl` talks to a
//! 3-process cluster over https with a client certificate, and is refused without one,
//! with one from another CA, and over plain http; the members speak to each other over
//! mutually authenticated TLS (peer port), and read each other's client ports over TLS
//! too (the data check at start).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ekmat_node::tls::TransportSecurity;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use support::Cluster;

/// PEM files in `dir`: a CA, a certificate for 127.0.0.1 and localhost that the members
/// serve with, a client's, and a client's from a CA nobody trusts.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
    stranger: (PathBuf, PathBuf),
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn issue(
    dir: &Path,
    name: &str,
    names: &[&str],
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> (PathBuf, PathBuf) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

fn pki(dir: &Path) -> Pki {
    let trusted = ca("ekmat test CA");
    let other = ca("another CA");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, trusted.pem()).unwrap();
    Pki {
        ca: ca_path,
        server: issue(dir, "member", &["127.0.0.1", "localhost"], &trusted),
        client: issue(dir, "client", &[], &trusted),
        stranger: issue(dir, "stranger", &[], &other),
    }
}

fn etcdctl(endpoint: &str, tls: &[String], args: &[&str]) -> (bool, String) {
    let mut all = vec!["--dial-timeout=2s", "--command-timeout=5s"];
    all.extend(tls.iter().map(String::as_str));
    all.extend(args);
    let (ok, out, err) = support::etcdctl(endpoint, &all, None);
    (ok, out + &err)
}

fn flags(ca: &Path, identity: Option<&(PathBuf, PathBuf)>) -> Vec<String> {
    let mut v = vec![format!("--cacert={}", ca.display())];
    if let Some((cert, key)) = identity {
        v.push(format!("--cert={}", cert.display()));
        v.push(format!("--key={}", key.display()));
    }
    v
}

/// One HTTP/1.0 request to member `i`'s client port over TLS with the trusted client
/// certificate: the status and the body.
fn https_request(
    pki: &Pki,
    c: &Cluster,
    i: usize,
    request_line: &str,
    body: &str,
) -> (u16, String) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&pki.ca).unwrap())
        .unwrap();
    let chain = vec![CertificateDer::from_pem_file(&pki.client.0).unwrap()];
    let key = PrivateKeyDer::from_pem_file(&pki.client.1).unwrap();
    #[allow(deprecated)] // ring's provider, as the member uses
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(c.cfgs[i].me().client).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut stream = rustls::StreamOwned::new(tls, tcp);
    write!(
        stream,
        "{request_line} HTTP/1.0\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = Vec::new();
    // The server may close without TLS's close_notify: what arrived is the answer.
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

fn wait_until(within: Duration, what: &str, mut ok: impl FnMut() -> Result<(), String>) {
    let started = Instant::now();
    loop {
        match ok() {
            Ok(()) => return,
            Err(e) if started.elapsed() > within => panic!("{what} within {within:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn a_cluster_over_tls_serves_etcdctl_with_a_client_certificate_and_nothing_else_gets_in() {
    if !support::etcdctl_available() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let pki = pki(certs.path());
    let security = TransportSecurity {
        cert_file: pki.server.0.clone(),
        key_file: pki.server.1.clone(),
        trusted_ca_file: Some(pki.ca.clone()),
        // As in etcd, a trusted CA alone makes clients need a certificate.
        client_cert_auth: false,
        crl_file: None,
    };
    let mut c = Cluster::start_with(3, |cfg| {
        cfg.client_transport_security = Some(security.clone());
        cfg.peer_transport_security = Some(security.clone());
        cfg.initial_corrupt_check = true;
    });
    let https = |i: usize| c.endpoint(i).replace("http://", "https://");
    let trusted = flags(&pki.ca, Some(&pki.client));
    wait_until(
        Duration::from_secs(20),
        "the cluster serves over TLS",
        || {
            let (ok, text) = etcdctl(&https(1), &trusted, &["put", "k", "over tls"]);
            ok.then_some(()).ok_or(text)
        },
    );
    let (ok, text) = etcdctl(&https(2), &trusted, &["get", "k", "--print-value-only"]);
    assert!(ok && text.trim() == "over tls", "{text}");
    let (ok, text) = etcdctl(&https(0), &trusted, &["member", "list"]);
    assert!(
        ok && text.matches("https://127.0.0.1:").count() == 6,
        "client and peer URLs are https: {text}"
    );
    // --cluster dials every member's advertised URL.
    let (ok, text) = etcdctl(&https(0), &trusted, &["endpoint", "health", "--cluster"]);
    assert!(ok && text.matches("is healthy").count() == 3, "{text}");

    // etcd's HTTP endpoints and its JSON gateway, over TLS (HTTP/1.1).
    let (code, body) = https_request(&pki, &c, 1, "GET /health", "");
    assert!(
        code == 200 && body.contains(r#""health":"true""#),
        "{code} {body}"
    );
    let (code, body) = https_request(&pki, &c, 1, "POST /v3/kv/range", r#"{"key":"aw=="}"#);
    assert!(
        code == 200 && body.contains(r#""value":"b3ZlciB0bHM=""#),
        "{code} {body}"
    );

    let refused = [
        ("no client certificate", flags(&pki.ca, None), https(0)),
        (
            "another CA's certificate",
            flags(&pki.ca, Some(&pki.stranger)),
            https(0),
        ),
        ("plain http", vec![], c.endpoint(0)),
    ];
    let metrics = c.cfgs[0].me().metrics.expect("a metrics address");
    let failed_handshakes = || {
        support::metric(
            &support::scrape(metrics),
            "ekmat_client_tls_handshake_failures_total",
        )
        .unwrap_or(0.0)
    };
    for (what, tls, endpoint) in refused {
        let before = failed_handshakes();
        let (ok, text) = etcdctl(&endpoint, &tls, &["get", "k"]);
        assert!(!ok, "{what} got in: {text}");
        assert!(
            failed_handshakes() > before,
            "{what}: no handshake failed on n0: {text}"
        );
        let (ok, text) = etcdctl(&https(0), &trusted, &["get", "k"]);
        assert!(ok, "n0 still serves trusted clients after {what}: {text}");
    }

    // ekmat's own client commands, with etcdctl's flags.
    let ekmat = |args: &[&str]| {
        let out = support::ekmat().args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let bare = c.cfgs[2].me().client.to_string(); // no scheme: TLS, given --cacert
    let mut with_flags: Vec<&str> = vec!["--endpoints", &bare];
    with_flags.extend(trusted.iter().map(String::as_str));
    let (code, text) = ekmat(&[&["kv", "get", "k"][..], &with_flags].concat());
    assert_eq!((code, text.as_str()), (Some(0), "k\nover tls\n"));
    let (code, text) = ekmat(&[&["status"][..], &with_flags].concat());
    assert!(code == Some(0) && text.contains("https://"), "{text}");
    // etcdctl's environment variables stand in for its flags.
    let out = support::ekmat()
        .args(["kv", "get", "k", "--print-value-only"])
        .env("ETCDCTL_ENDPOINTS", &bare)
        .env("ETCDCTL_CACERT", &pki.ca)
        .env("ETCDCTL_CERT", &pki.client.0)
        .env("ETCDCTL_KEY", &pki.client.1)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text == "over tls\n", "{text}");
    let https2 = https(2);
    let (code, text) = ekmat(&["kv", "get", "k", "--endpoints", &https2]);
    assert!(code == Some(2) && text.contains("give --cacert"), "{text}");
    // The leader-election demo on this cluster, over TLS: a leader, killed, replaced.
    let demo = [
        "demo",
        "leader-election",
        "--lease",
        "2s",
        "--renew",
        "500ms",
    ];
    let quick = ["--retry", "200ms", "--lead-for", "1s"];
    let (code, text) = ekmat(&[&demo[..], &quick, &with_flags].concat());
    assert!(code == Some(0) && text.contains("handover: "), "{text}");
    let (code, text) = ekmat(&[&demo[..], &["--endpoints", &https2]].concat());
    assert!(code == Some(2) && text.contains("give --cacert"), "{text}");

    // A member restarted compares its data with both peers, over TLS, before it serves.
    assert!(c.stop(0).success());
    c.spawn(0);
    wait_until(
        Duration::from_secs(20),
        "n0 checks its data against both peers",
        || {
            let log = c.log(0);
            log.contains("initial corruption check passed compared=2")
                .then_some(())
                .ok_or_else(|| support::tail(&log, 10))
        },
    );
}

#[test]
fn a_member_whose_key_file_is_missing_stops_at_start_naming_it_with_code_2() {
    let certs = tempfile::tempdir().unwrap();
    let pki = pki(certs.path());
    let c = Cluster::configure(1, |cfg| {
        cfg.client_transport_security = Some(TransportSecurity {
            cert_file: pki.server.0.clone(),
            key_file: certs.path().join("no-such-key.pem"),
            ..Default::default()
        });
    });
    let path = c.config_path(0);
    std::fs::write(&path, c.cfgs[0].to_toml()).unwrap();
    let out = support::ekmat()
        .args(["node", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a configuration mistake: {stderr}"
    );
    assert!(
        stderr.contains("key_file") && stderr.contains("no-such-key.pem"),
        "{stderr}"
    );
}

#[test]
fn ekmat_up_with_tls_makes_certificates_and_prints_the_flags_that_reach_it() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let base = support::unused_port_block(203);
    let mut up = support::ekmat()
        .args([
            "up",
            "--tls",
            "--nodes",
            "3",
            "--base-port",
            &base.to_string(),
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(up.stdout.take().unwrap()).lines();
    let line = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with("TLS on every port: etcdctl "))
        .expect("ekmat up --tls prints how to reach it");
    // `... etcdctl --endpoints https://127.0.0.1:PORT --cacert A --cert B --key C get k`
    let words: Vec<&str> = line.split_whitespace().collect();
    let flags: Vec<&str> =
        words[words.iter().position(|w| *w == "--cacert").unwrap()..words.len() - 2].to_vec();
    let endpoint = format!("127.0.0.1:{base}");
    let kv = |args: &[&str]| {
        let mut all = vec!["kv"];
        all.extend_from_slice(args);
        all.extend(["--endpoints", endpoint.as_str()]);
        all.extend(flags.iter().copied());
        support::ekmat().args(&all).output().unwrap()
    };
    assert!(kv(&["put", "k", "v"]).status.success());
    assert_eq!(String::from_utf8_lossy(&kv(&["get", "k"]).stdout), "k\nv\n");
    let key = std::fs::metadata(dir.path().join("tls/client-key.pem")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        key.permissions().mode() & 0o077,
        0,
        "a private key is its owner's alone"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(up.wait().unwrap().success());
}

/// The words of `line` after `marker` (a command line `ekmat up` printed), without the
/// leading `ekmat`.
fn printed_command(line: &str, marker: &str) -> Vec<String> {
    let at = line.find(marker).expect("the marker") + marker.len();
    let mut words: Vec<String> = line[at..].split_whitespace().map(String::from).collect();
    assert_eq!(words.remove(0), "ekmat", "{line}");
    words
}

/// Drop `--flag VALUE` pairs for each of `flags` from `words`.
fn without(words: &[String], flags: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = words.iter();
    while let Some(w) = it.next() {
        if flags.contains(&w.as_str()) {
            it.next();
        } else {
            out.push(w.clone());
        }
    }
    out
}

#[test]
fn a_pbft_cluster_over_tls_serves_the_signing_client_and_a_gateway_that_serves_tls() {
    use std::io::BufRead;
    if !support::etcdctl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = support::unused_port_block(204);
    let mut up = support::ekmat()
        .args(["up", "--tls", "--protocol", "pbft", "--nodes", "4"])
        .args(["--base-port", &base.to_string(), "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(up.stdout.take().unwrap()).lines();
    let _up = support::Stopped(up);
    let (mut etcdctl_line, mut client, mut gateway) = (None, None, None);
    for line in lines.map_while(Result::ok) {
        if line.starts_with("TLS on every port: ") {
            etcdctl_line = Some(line);
        } else if line.starts_with("signing client ") {
            client = Some(printed_command(&line, ": "));
        } else if line.starts_with("gateway for etcd clients: ") {
            gateway = Some(printed_command(&line, ": "));
            break;
        }
    }
    let (etcdctl_line, client, gateway) = (
        etcdctl_line.expect("the etcdctl line"),
        client.expect("the signing client's line"),
        gateway.expect("the gateway's line"),
    );

    // The signing client, with the TLS flags printed: believed on f+1 results.
    let put = |words: &[String]| {
        let args: Vec<String> = words
            .iter()
            .map(|w| match w.as_str() {
                "KEY" => "k".into(),
                "VALUE" => "v".into(),
                _ => w.clone(),
            })
            .collect();
        support::ekmat().args(&args).output().unwrap()
    };
    let done = put(&client);
    let out = String::from_utf8_lossy(&done.stdout).to_string();
    let err = String::from_utf8_lossy(&done.stderr).to_string();
    assert!(
        done.status.success() && out.starts_with("OK (revision"),
        "{out}{err}"
    );
    // Without them: told what to give.
    let plain = put(&without(&client, &["--cacert", "--cert", "--cert-key"]));
    let err = String::from_utf8_lossy(&plain.stderr).to_string();
    assert_eq!(plain.status.code(), Some(2), "{err}");
    assert!(
        err.contains("serve TLS") && err.contains("--cacert"),
        "{err}"
    );

    // The gateway dials the members over TLS and serves TLS to etcdctl.
    let listen = format!("127.0.0.1:{}", support::free_port());
    let gateway = support::ekmat()
        .args(&gateway)
        .args(["--listen", &listen])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _gateway = support::Stopped(gateway);
    let words: Vec<&str> = etcdctl_line.split_whitespace().collect();
    let from = words.iter().position(|w| *w == "--cacert").unwrap();
    let tls: Vec<String> = words[from..words.len() - 2]
        .iter()
        .map(|w| w.to_string())
        .collect();
    let endpoint = format!("https://{listen}");
    let mut got = (false, String::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        got = etcdctl(&endpoint, &tls, &["get", "k"]);
        if got.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(got, (true, "k\nv\n".to_string()));
    assert!(etcdctl(&endpoint, &tls, &["put", "g", "w"]).0);
    assert_eq!(etcdctl(&endpoint, &tls, &["get", "g"]).1, "g\nw\n");
    // A client without a certificate is refused by the gateway.
    let (ok, said) = etcdctl(&endpoint, &tls[..2], &["get", "k"]);
    assert!(!ok, "{said}");
}
