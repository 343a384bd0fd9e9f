//! etcd's JSON gateway (`POST /v3/...` on the client port), as curl and HTTP-only tools
//! use it: the same requests sent to a 3-process ekmat cluster and to a real etcd 3.4
//! must get the same answers, but for the fields that name the cluster (ids, term).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use support::{Cluster, Etcd};

/// An HTTP/1.0 request (so a streamed answer comes unchunked), and the open response.
fn request(url: &str, method: &str, path: &str, body: &str) -> (u16, BufReader<TcpStream>) {
    request_with(url, method, path, body, "")
}

/// [`request`] with more header lines (each ending in CRLF).
fn request_with(
    url: &str,
    method: &str,
    path: &str,
    body: &str,
    headers: &str,
) -> (u16, BufReader<TcpStream>) {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let code = status.split_whitespace().nth(1).unwrap().parse().unwrap();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            return (code, reader);
        }
    }
}

/// POST a body the server answers before reading it whole: its answer, read while
/// the body is still being written. The server then closes with the rest unread, and
/// the reset that follows can overtake the answer, so a lost answer is asked again.
fn refused_early(url: &str, path: &str, body: &str) -> (u16, Value) {
    let addr = url.trim_start_matches("http://");
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut writer = s.try_clone().unwrap();
        let request = format!(
            "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let writing = std::thread::spawn(move || {
            let _ = writer.write_all(request.as_bytes());
        });
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let _ = writing.join();
        if let Some((head, json)) = text.split_once("\r\n\r\n") {
            let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
            return (code, serde_json::from_str(json).unwrap());
        }
    }
    panic!("{path}: no answer in 5 tries");
}

/// POST `body` to `path`: the status and the JSON answer, without what names the
/// cluster (header ids and term), which differ between any two clusters.
fn post(url: &str, path: &str, body: &str) -> (u16, Value) {
    post_as(url, path, body, None)
}

/// [`post`] with a token in the `Authorization` header, as etcd's gateway takes it.
fn post_as(url: &str, path: &str, body: &str, token: Option<&str>) -> (u16, Value) {
    let header = token.map_or(String::new(), |t| format!("Authorization: {t}\r\n"));
    let (code, mut reader) = request_with(url, "POST", path, body, &header);
    let mut text = String::new();
    reader.read_to_string(&mut text).unwrap();
    let mut value: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{path} answered {code} {text:?}, not JSON: {e}"));
    anonymise(&mut value);
    (code, value)
}

/// The first `n` lines of a streamed answer, anonymised.
fn post_stream(url: &str, path: &str, body: &str, n: usize) -> Vec<Value> {
    let (code, mut reader) = request(url, "POST", path, body);
    assert_eq!(code, 200, "{path}");
    (0..n)
        .map(|_| {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut value: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{path} streamed {line:?}, not JSON: {e}"));
            anonymise(&mut value);
            value
        })
        .collect()
}

fn anonymise(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if let Some(header) = object.get_mut("header").and_then(Value::as_object_mut) {
                for field in ["cluster_id", "member_id", "raft_term"] {
                    header.remove(field);
                }
            }
            object.values_mut().for_each(anonymise);
        }
        Value::Array(items) => items.iter_mut().for_each(anonymise),
        _ => {}
    }
}

/// base64 of `text`, as the gateway's JSON carries keys and values.
fn b64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The script both servers run, from a fresh start: every answer, in order.
fn script(url: &str) -> Vec<(String, u16, Value)> {
    let key = b64("foo");
    let steps: Vec<(&str, String)> = vec![
        (
            "/v3/kv/put",
            format!(r#"{{"key":"{key}","value":"{}"}}"#, b64("bar")),
        ),
        (
            "/v3/kv/put",
            format!(
                r#"{{"key":"{key}","value":"{}","prev_kv":true}}"#,
                b64("baz")
            ),
        ),
        (
            "/v3/kv/put",
            format!(r#"{{"key":"{}","value":"{}"}}"#, b64("fop"), b64("1")),
        ),
        ("/v3/kv/range", format!(r#"{{"key":"{key}"}}"#)),
        (
            "/v3/kv/range",
            format!(
                r#"{{"key":"{key}","range_end":"{}","keys_only":true}}"#,
                b64("fp")
            ),
        ),
        (
            "/v3/kv/range",
            format!(r#"{{"key":"{key}","revision":"2"}}"#),
        ),
        (
            "/v3/kv/range",
            format!(r#"{{"key":"{key}","revision":100}}"#),
        ),
        ("/v3/kv/range", String::new()),
        (
            "/v3beta/kv/range",
            format!(r#"{{"key":"{key}","countOnly":true,"unknown":1}}"#),
        ),
        (
            "/v3/kv/txn",
            format!(
                r#"{{"compare":[{{"target":"VERSION","key":"{key}","version":"2"}}],
                    "success":[{{"request_put":{{"key":"{key}","value":"{}"}}}}],
                    "failure":[{{"request_range":{{"key":"{key}"}}}}]}}"#,
                b64("qux")
            ),
        ),
        (
            "/v3/kv/txn",
            format!(
                r#"{{"compare":[{{"target":"VALUE","result":"NOT_EQUAL","key":"{key}","value":"{}"}}],
                    "failure":[{{"requestRange":{{"key":"{key}"}}}}]}}"#,
                b64("qux")
            ),
        ),
        ("/v3/lease/grant", r#"{"TTL":60,"ID":1000}"#.into()),
        (
            "/v3/kv/put",
            format!(r#"{{"key":"{}","value":"","lease":"1000"}}"#, b64("leased")),
        ),
        (
            "/v3/kv/put",
            format!(r#"{{"key":"{}","value":"","lease":"5"}}"#, b64("x")),
        ),
        ("/v3/lease/revoke", r#"{"ID":"5"}"#.into()),
        ("/v3/kv/lease/leases", "{}".into()),
        (
            "/v3/lock/lock",
            format!(r#"{{"name":"{}","lease":"1000"}}"#, b64("lk")),
        ),
        (
            "/v3/kv/deleterange",
            format!(
                r#"{{"key":"{key}","range_end":"{}","prev_kv":true}}"#,
                b64("fp")
            ),
        ),
        ("/v3/kv/deleterange", format!(r#"{{"key":"{key}"}}"#)),
        (
            "/v3/kv/compaction",
            r#"{"revision":"3","physical":true}"#.into(),
        ),
        (
            "/v3/kv/range",
            format!(r#"{{"key":"{key}","revision":"2"}}"#),
        ),
    ];
    steps
        .into_iter()
        .map(|(path, body)| {
            let (code, value) = post(url, path, &body);
            (path.to_string(), code, value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_json_gateway_answers_as_etcds_does() {
    let c = Cluster::start(3);
    let leader = c.leader(Duration::from_secs(15)).await;
    let url = c.endpoint((leader + 1) % 3); // a follower: answers go through the leader
    support::wait_applied(&url, 1, Duration::from_secs(10)).await;
    let ours = script(&url);

    // Malformed JSON: etcd's message is Go's, so only the status and code are compared.
    let (code, bad) = post(&url, "/v3/kv/put", r#"{"key":1}"#);
    assert_eq!((code, &bad["code"]), (400, &Value::from(3)), "{bad}");
    let (code, _) = request(&url, "GET", "/v3/kv/range", "");
    assert_eq!(code, 405, "the gateway takes POST only, as etcd's");
    let (code, _) = request(&url, "POST", "/v3/nothing/here", "{}");
    assert_eq!(code, 404);
    let status = post(&url, "/v3/maintenance/status", "").1;
    assert!(
        status["leader"].as_str().is_some_and(|l| l != "0"),
        "{status}"
    );
    let members = post(&url, "/v3/cluster/member/list", "").1;
    assert_eq!(
        members["members"].as_array().map(Vec::len),
        Some(3),
        "{members}"
    );
    assert!(
        members["header"].get("revision").is_none(),
        "etcd's carries none: {members}"
    );

    // Beyond any request etcd takes: refused before it is read whole.
    let huge = format!(
        r#"{{"key":"{}","value":"{}"}}"#,
        b64("k"),
        "A".repeat(4 << 20)
    );
    let (code, too_large) = refused_early(&url, "/v3/kv/put", &huge);
    assert_eq!(code, 400, "{too_large}");
    assert_eq!(too_large["error"], "etcdserver: request is too large");
    // A stream whose first request is malformed is refused whole.
    let (code, mut reader) = request(&url, "POST", "/v3/watch", r#"{"create_request":{"key":1}}"#);
    let mut text = String::new();
    reader.read_to_string(&mut text).unwrap();
    assert_eq!(code, 400, "{text}");
    assert!(text.contains(r#""code":3"#), "{text}");

    let key = b64("foo");
    let watch =
        format!(r#"{{"create_request":{{"key":"{key}","start_revision":"4","prev_kv":true}}}}"#);
    let our_watch = post_stream(&url, "/v3/watch", &watch, 2);
    let keep_alive = post_stream(&url, "/v3/lease/keepalive", r#"{"ID":"1000"}{"ID":"7"}"#, 2);

    // Just over etcd's request limit (1.5 MiB), and a later malformed request in a
    // stream, which ends the client's side only: the watch is still created.
    let over_limit = format!(r#"{{"key":"{key}","value":"{}"}}"#, "A".repeat(2_200_000));
    let ours_over_limit = post(&url, "/v3/kv/put", &over_limit);
    let broken_watch = format!(r#"{{"create_request":{{"key":"{key}"}}}} xx"#);
    let our_broken_watch = post_stream(&url, "/v3/watch", &broken_watch, 1);
    let (our_preflight, _) = request(&url, "OPTIONS", "/v3/kv/put", "");

    let Some(etcd) = Etcd::start() else {
        return;
    };
    etcd.wait_ready().await;
    assert_eq!(post(&etcd.url, "/v3/kv/put", &over_limit), ours_over_limit);
    assert_eq!(
        request(&etcd.url, "OPTIONS", "/v3/kv/put", "").0,
        our_preflight
    );
    let theirs = script(&etcd.url);
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a, b, "step {i}: ekmat's answer, then etcd's");
    }
    assert_eq!(ours.len(), theirs.len());
    assert_eq!(post_stream(&etcd.url, "/v3/watch", &watch, 2), our_watch);
    let their_keep_alive = post_stream(
        &etcd.url,
        "/v3/lease/keepalive",
        r#"{"ID":"1000"}{"ID":"7"}"#,
        2,
    );
    assert_eq!(their_keep_alive, keep_alive);
    let their_broken_watch = post_stream(&etcd.url, "/v3/watch", &broken_watch, 1);
    // Only whether the watch was made: the revisions differ by then.
    let created = |lines: &[Value]| lines[0]["result"]["created"].clone();
    assert_eq!(created(&their_broken_watch), created(&our_broken_watch));
    assert_eq!(created(&our_broken_watch), Value::Bool(true));
}

/// Users, login and a token in the Authorization header, as etcd's gateway takes them:
/// each answer (status and JSON, the token itself left out) against etcd's.
fn auth_script(url: &str) -> Vec<(u16, Value)> {
    let mut seen = Vec::new();
    let mut step = |path: &str, body: &str, token: Option<&str>| {
        let (code, mut value) = post_as(url, path, body, token);
        let token = value
            .get("token")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if token.is_some() {
            value["token"] = Value::from("<token>");
        }
        seen.push((code, value));
        token
    };
    step(
        "/v3/auth/user/add",
        r#"{"name":"root","password":"pw"}"#,
        None,
    );
    step(
        "/v3/auth/user/grant",
        r#"{"user":"root","role":"root"}"#,
        None,
    );
    step("/v3/auth/enable", "{}", None);
    let get = format!(r#"{{"key":"{}"}}"#, b64("foo"));
    step("/v3/kv/range", &get, None);
    step(
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"no"}"#,
        None,
    );
    let token = step(
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"pw"}"#,
        None,
    )
    .expect("a token");
    let put = format!(r#"{{"key":"{}","value":"{}"}}"#, b64("foo"), b64("bar"));
    step("/v3/kv/put", &put, Some(&token));
    step("/v3/kv/range", &get, Some(&token));
    step("/v3/kv/range", &get, Some("not-a-token"));
    step("/v3/auth/user/list", "{}", Some(&token));
    step("/v3/auth/role/get", r#"{"role":"root"}"#, Some(&token));
    step("/v3/auth/disable", "{}", Some(&token));
    step("/v3/kv/range", &get, None);
    seen
}

#[tokio::test]
async fn the_json_gateways_auth_answers_as_etcds_does() {
    let c = Cluster::start(3);
    let leader = c.leader(Duration::from_secs(15)).await;
    let url = c.endpoint((leader + 1) % 3);
    support::wait_applied(&url, 1, Duration::from_secs(10)).await;
    let ours = auth_script(&url);
    let Some(etcd) = Etcd::start() else {
        return;
    };
    etcd.wait_ready().await;
    let theirs = auth_script(&etcd.url);
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a, b, "step {i}: ekmat's answer, then etcd's");
    }
}
