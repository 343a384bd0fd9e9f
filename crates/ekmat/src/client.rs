//! Talking to a cluster as a client: endpoints in etcdctl's form, tried in order until
//! one answers.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ekmat_api::etcdserverpb as pb;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// etcdctl's TLS flags, for members that serve TLS on their client port; as with
/// etcdctl, `ETCDCTL_CACERT`, `ETCDCTL_CERT` and `ETCDCTL_KEY` stand in for them.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// CA certificate (PEM) to verify the members with; endpoints without a scheme are
    /// then dialled over TLS.
    #[arg(long, global = true, env = "ETCDCTL_CACERT")]
    pub cacert: Option<PathBuf>,
    /// This client's certificate (PEM), for members that ask for one.
    #[arg(
        long = "cert",
        id = "client_cert",
        value_name = "CERT",
        env = "ETCDCTL_CERT",
        global = true,
        requires = "client_key"
    )]
    pub cert: Option<PathBuf>,
    /// The key of --cert (PEM).
    #[arg(
        long = "key",
        id = "client_key",
        value_name = "KEY",
        env = "ETCDCTL_KEY",
        global = true,
        requires = "client_cert"
    )]
    pub key: Option<PathBuf>,
}

/// How a client command reaches the members: over TLS (with etcdctl's flags) or not.
#[derive(Clone, Debug, Default)]
pub struct Dialer {
    tls: Option<ClientTlsConfig>,
    /// Whether it shows a client certificate.
    certified: bool,
}

impl Dialer {
    /// Plain connections, for commands that take no TLS flags.
    pub fn plain() -> Dialer {
        Dialer::default()
    }

    pub fn from_args(args: &TlsArgs) -> Result<Dialer, String> {
        Dialer::from_flags(args, "key")
    }

    /// As [`Dialer::from_args`], the client certificate's key given as `--{key_flag}`.
    pub fn from_flags(args: &TlsArgs, key_flag: &str) -> Result<Dialer, String> {
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("--{flag} {}: {e}", path.display()))
        };
        let mut tls = None;
        if let Some(ca) = &args.cacert {
            let config =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("cacert", ca)?));
            tls = Some(config);
        }
        if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
            let identity = Identity::from_pem(read("cert", cert)?, read(key_flag, key)?);
            let Some(config) = tls.take() else {
                return Err(format!(
                    "--cert and --{key_flag} need --cacert, the CA to verify the members with"
                ));
            };
            tls = Some(config.identity(identity));
        }
        let certified = args.cert.is_some() && tls.is_some();
        Ok(Dialer { tls, certified })
    }

    /// Parse etcdctl-style endpoints: `host:port` or `http(s)://host:port`,
    /// comma-separated. Without a scheme, a dialer with TLS uses https, as etcdctl does.
    pub fn endpoints(&self, list: &str) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let url = match (raw.contains("://"), self.tls.is_some()) {
                (true, _) => raw.to_string(),
                (false, true) => format!("https://{raw}"),
                (false, false) => format!("http://{raw}"),
            };
            if url.starts_with("https://") && self.tls.is_none() {
                return Err(format!(
                    "endpoint '{raw}' speaks TLS: give --cacert (and --cert and --key if the members ask clients for a certificate); `ekmat kv`, `status`, `bench kv` and `demo` take them, other commands speak no TLS yet"
                ));
            }
            Endpoint::from_shared(url.clone()).map_err(|e| format!("endpoint '{raw}': {e}"))?;
            out.push(url);
        }
        if out.is_empty() {
            return Err("no endpoints given".into());
        }
        Ok(out)
    }

    pub async fn connect(&self, url: &str) -> Result<Channel, tonic::transport::Error> {
        self.endpoint(url)?
            .timeout(Duration::from_secs(10))
            .connect()
            .await
    }

    /// A channel with no per-call deadline, for calls that wait as long as they must (a
    /// campaign waits as long as the leader leads).
    pub async fn connect_without_deadline(
        &self,
        url: &str,
    ) -> Result<Channel, tonic::transport::Error> {
        self.endpoint(url)?.connect().await
    }

    /// Whether it dials over TLS.
    pub fn speaks_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether it shows a client certificate when it does.
    pub fn shows_certificate(&self) -> bool {
        self.certified
    }

    /// A channel that connects on first use, and again after it breaks.
    pub fn connect_lazy(&self, url: &str) -> Result<Channel, String> {
        let endpoint = self
            .endpoint(url)
            .map_err(|e| ekmat_node::with_causes(format!("{url}: {e}"), &e))?;
        Ok(endpoint.connect_lazy())
    }

    fn endpoint(&self, url: &str) -> Result<Endpoint, tonic::transport::Error> {
        let endpoint =
            Endpoint::from_shared(url.to_string())?.connect_timeout(Duration::from_secs(2));
        match &self.tls {
            Some(tls) if url.starts_with("https://") => endpoint.tls_config(tls.clone()),
            _ => Ok(endpoint),
        }
    }

    /// The first endpoint that accepts a connection.
    pub async fn connect_any(&self, endpoints: &[String]) -> Result<(String, Channel), String> {
        let mut errors = Vec::new();
        for url in endpoints {
            match self.connect(url).await {
                Ok(ch) => return Ok((url.clone(), ch)),
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
        Err(format!("no endpoint answered ({})", errors.join("; ")))
    }
}

/// [`Dialer::connect`] of a plain dialer.
pub async fn connect(url: &str) -> Result<Channel, tonic::transport::Error> {
    Dialer::plain().connect(url).await
}

/// A KV client that sends `token` with every request.
pub fn kv(
    ch: Channel,
    token: Token,
) -> pb::kv_client::KvClient<InterceptedService<Channel, Token>> {
    pb::kv_client::KvClient::with_interceptor(ch, token)
}

/// What a logged-in client sends with each request (etcd's `token` metadata); none for
/// a client that did not log in.
#[derive(Clone, Debug, Default)]
pub struct Token(Option<MetadataValue<Ascii>>);

impl Interceptor for Token {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("token", token.clone());
        }
        Ok(request)
    }
}

/// Log in over `ch` as `user`, given as etcdctl's `--user` takes it (`name:password`);
/// none: stay anonymous.
pub async fn login(ch: &Channel, user: Option<&str>) -> Result<Token, String> {
    let Some(user) = user else {
        return Ok(Token::default());
    };
    let Some((name, password)) = user.split_once(':') else {
        return Err(format!("--user '{user}': give it as name:password"));
    };
    let request = pb::AuthenticateRequest {
        name: name.into(),
        password: password.into(),
    };
    let token = pb::auth_client::AuthClient::new(ch.clone())
        .authenticate(request)
        .await
        .map_err(|s| status_message(&s))?
        .into_inner()
        .token;
    let token = MetadataValue::try_from(token).map_err(|e| format!("the token: {e}"))?;
    Ok(Token(Some(token)))
}

/// A gRPC failure as a one-line message (etcd's message when the server sent one).
pub fn status_message(s: &tonic::Status) -> String {
    if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        s.message().to_string()
    }
}
