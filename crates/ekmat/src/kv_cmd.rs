//! `ekmat kv`: put, get, del and txn against a cluster, printing what etcdctl prints.

use std::io::Read;

use clap::{Args, Subcommand};
use ekmat_api::etcdserverpb as pb;

use crate::client::{Dialer, TlsArgs, kv, login, status_message};
use crate::exit;

#[derive(Args, Debug)]
pub struct KvArgs {
    /// Cluster endpoints, etcdctl style: host:port[,host:port...].
    #[arg(
        long,
        global = true,
        env = "ETCDCTL_ENDPOINTS",
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: String,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Log in as this user, `name:password`, for a cluster with auth enabled (etcdctl's
    /// `--user`).
    #[arg(long, global = true, env = "ETCDCTL_USER")]
    pub user: Option<String>,
    #[command(subcommand)]
    pub command: KvCommand,
}

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Put a key. Prints OK.
    Put {
        key: String,
        value: String,
        /// Attach to this lease (hexadecimal, as etcdctl prints lease ids).
        #[arg(long)]
        lease: Option<String>,
        /// Also print the previous key-value.
        #[arg(long)]
        prev_kv: bool,
    },
    /// Get a key or a range.
    Get {
        key: String,
        range_end: Option<String>,
        #[arg(long)]
        prefix: bool,
        #[arg(long)]
        from_key: bool,
        /// Read as of this revision.
        #[arg(long, default_value_t = 0)]
        rev: i64,
        #[arg(long, default_value_t = 0)]
        limit: i64,
        #[arg(long)]
        keys_only: bool,
        #[arg(long)]
        print_value_only: bool,
        #[arg(long)]
        count_only: bool,
        /// l: linearizable (default); s: serializable (served by the member, maybe stale).
        #[arg(long, default_value = "l")]
        consistency: String,
    },
    /// Delete a key or a range. Prints how many were deleted.
    Del {
        key: String,
        range_end: Option<String>,
        #[arg(long)]
        prefix: bool,
        #[arg(long)]
        from_key: bool,
        #[arg(long)]
        prev_kv: bool,
    },
    /// A transaction read from standard input, in etcdctl's format: compares, a blank
    /// line, success operations, a blank line, failure operations. For example:
    ///   mod("k") > "0"
    ///   <blank>
    ///   put k "updated"
    ///   <blank>
    ///   put k "created"
    Txn,
}

fn range_end(key: &str, end: Option<&String>, prefix: bool, from_key: bool) -> (Vec<u8>, Vec<u8>) {
    if prefix {
        if key.is_empty() {
            return (vec![0], vec![0]);
        }
        return (
            key.as_bytes().to_vec(),
            ekmat_kv::prefix_end(key.as_bytes()).to_vec(),
        );
    }
    if from_key {
        let k = if key.is_empty() {
            vec![0]
        } else {
            key.as_bytes().to_vec()
        };
        return (k, vec![0]);
    }
    (
        key.as_bytes().to_vec(),
        end.map(|e| e.as_bytes().to_vec()).unwrap_or_default(),
    )
}

pub fn run(args: KvArgs) -> u8 {
    let dialer = Dialer::from_args(&args.tls);
    let endpoints = match dialer.and_then(|d| Ok((d.endpoints(&args.endpoints)?, d))) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match rt.block_on(execute(&endpoints, args.user.as_deref(), args.command)) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            exit::OK
        }
        Err(Failure::Usage(e)) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
        Err(Failure::Server(e)) => {
            eprintln!("Error: {e}");
            exit::VIOLATION
        }
    }
}

pub enum Failure {
    Usage(String),
    Server(String),
}

fn server(s: tonic::Status) -> Failure {
    Failure::Server(status_message(&s))
}

async fn execute(
    (endpoints, dialer): &(Vec<String>, Dialer),
    user: Option<&str>,
    command: KvCommand,
) -> Result<Vec<String>, Failure> {
    if let KvCommand::Txn = command {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure::Usage(format!("reading the transaction from stdin: {e}")))?;
        let txn = parse_txn(&text).map_err(Failure::Usage)?;
        let (_, ch) = dialer
            .connect_any(endpoints)
            .await
            .map_err(Failure::Server)?;
        let token = login(&ch, user).await.map_err(Failure::Server)?;
        let r = kv(ch, token).txn(txn).await.map_err(server)?.into_inner();
        return Ok(print_txn(&r));
    }
    let (_, ch) = dialer
        .connect_any(endpoints)
        .await
        .map_err(Failure::Server)?;
    let token = login(&ch, user).await.map_err(Failure::Server)?;
    let mut client = kv(ch, token);
    match command {
        KvCommand::Put {
            key,
            value,
            lease,
            prev_kv,
        } => {
            let lease = match lease {
                None => 0,
                Some(l) => i64::from_str_radix(&l, 16)
                    .map_err(|_| Failure::Usage(format!("bad lease id '{l}' (hexadecimal)")))?,
            };
            let req = pb::PutRequest {
                key: key.into_bytes().into(),
                value: value.into_bytes().into(),
                lease,
                prev_kv,
                ..Default::default()
            };
            let r = client.put(req).await.map_err(server)?.into_inner();
            let mut out = vec!["OK".to_string()];
            if let Some(prev) = r.prev_kv {
                out.extend(kv_lines(&prev, false, false));
            }
            Ok(out)
        }
        KvCommand::Get {
            key,
            range_end: end,
            prefix,
            from_key,
            rev,
            limit,
            keys_only,
            print_value_only,
            count_only,
            consistency,
        } => {
            let serializable = match consistency.as_str() {
                "l" => false,
                "s" => true,
                other => {
                    return Err(Failure::Usage(format!(
                        "unknown consistency '{other}' (l or s)"
                    )));
                }
            };
            let (key, range_end) = range_end(&key, end.as_ref(), prefix, from_key);
            let req = pb::RangeRequest {
                key: key.into(),
                range_end: range_end.into(),
                revision: rev,
                limit,
                keys_only,
                count_only,
                serializable,
                ..Default::default()
            };
            let r = client.range(req).await.map_err(server)?.into_inner();
            if count_only {
                return Ok(vec![r.count.to_string()]);
            }
            Ok(r.kvs
                .iter()
                .flat_map(|kv| kv_lines(kv, keys_only, print_value_only))
                .collect())
        }
        KvCommand::Del {
            key,
            range_end: end,
            prefix,
            from_key,
            prev_kv,
        } => {
            let (key, range_end) = range_end(&key, end.as_ref(), prefix, from_key);
            let req = pb::DeleteRangeRequest {
                key: key.into(),
                range_end: range_end.into(),
                prev_kv,
            };
            let r = client.delete_range(req).await.map_err(server)?.into_inner();
            let mut out = vec![r.deleted.to_string()];
            out.extend(r.prev_kvs.iter().flat_map(|kv| kv_lines(kv, false, false)));
            Ok(out)
        }
        KvCommand::Txn => unreachable!("handled above"),
    }
}

fn kv_lines(kv: &ekmat_api::mvccpb::KeyValue, keys_only: bool, value_only: bool) -> Vec<String> {
    let key = String::from_utf8_lossy(&kv.key).into_owned();
    let value = String::from_utf8_lossy(&kv.value).into_owned();
    match (keys_only, value_only) {
        (true, _) => vec![key],
        (_, true) => vec![value],
        _ => vec![key, value],
    }
}

fn print_txn(r: &pb::TxnResponse) -> Vec<String> {
    use pb::response_op::Response as R;
    let mut out = vec![
        if r.succeeded { "SUCCESS" } else { "FAILURE" }.to_string(),
        String::new(),
    ];
    for op in &r.responses {
        match &op.response {
            Some(R::ResponsePut(_)) => out.push("OK".into()),
            Some(R::ResponseRange(g)) => {
                out.extend(g.kvs.iter().flat_map(|kv| kv_lines(kv, false, false)))
            }
            Some(R::ResponseDeleteRange(d)) => out.push(d.deleted.to_string()),
            Some(R::ResponseTxn(t)) => out.extend(print_txn(t)),
            None => {}
        }
        out.push(String::new());
    }
    while out.last().is_some_and(String::is_empty) {
        out.pop();
    }
    out
}

/// Split a line into words; double quotes group words and may hold `\"`.
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut in_quotes = false;
    let mut started = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                started = true;
            }
            '\\' if in_quotes => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !in_quotes => {
                if started {
                    out.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if in_quotes {
        return Err(format!("unterminated quote in '{line}'"));
    }
    if started {
        out.push(cur);
    }
    Ok(out)
}

/// One compare, e.g. `value("k") = "v"` or `mod("k") > "5"`.
fn parse_compare(line: &str) -> Result<pb::Compare, String> {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let bad = || {
        format!(
            "bad compare '{line}': expected target(\"key\") op \"value\", target one of value, version, create, mod, lease; op one of = != < >"
        )
    };
    let (target, rest) = line.split_once('(').ok_or_else(bad)?;
    let (key, rest) = rest.split_once(')').ok_or_else(bad)?;
    let key = words(key)?.pop().unwrap_or_default();
    let parts = words(rest)?;
    let [op, operand] = parts.as_slice() else {
        return Err(bad());
    };
    let result = match op.as_str() {
        "=" | "==" => R::Equal,
        "!=" => R::NotEqual,
        "<" => R::Less,
        ">" => R::Greater,
        _ => return Err(bad()),
    };
    let number = || {
        operand
            .parse::<i64>()
            .map_err(|_| format!("bad compare '{line}': '{operand}' is not a number"))
    };
    let (target, union) = match target.trim() {
        "value" | "val" => (T::Value, U::Value(operand.clone().into_bytes().into())),
        "version" | "ver" => (T::Version, U::Version(number()?)),
        "create" | "c" => (T::Create, U::CreateRevision(number()?)),
        "mod" | "m" => (T::Mod, U::ModRevision(number()?)),
        "lease" => (T::Lease, U::Lease(number()?)),
        _ => return Err(bad()),
    };
    Ok(pb::Compare {
        result: result as i32,
        target: target as i32,
        key: key.into_bytes().into(),
        target_union: Some(union),
        range_end: vec![].into(),
    })
}

/// One operation, e.g. `put k v`, `get k [end]`, `del k [end]`.
fn parse_op(line: &str) -> Result<pb::RequestOp, String> {
    use pb::request_op::Request as Q;
    let w = words(line)?;
    let request = match w.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["put", k, v] => Q::RequestPut(pb::PutRequest {
            key: k.as_bytes().to_vec().into(),
            value: v.as_bytes().to_vec().into(),
            ..Default::default()
        }),
        ["get", k] | ["get", k, ""] => Q::RequestRange(pb::RangeRequest {
            key: k.as_bytes().to_vec().into(),
            ..Default::default()
        }),
        ["get", k, end] => Q::RequestRange(pb::RangeRequest {
            key: k.as_bytes().to_vec().into(),
            range_end: end.as_bytes().to_vec().into(),
            ..Default::default()
        }),
        ["del", k] => Q::RequestDeleteRange(pb::DeleteRangeRequest {
            key: k.as_bytes().to_vec().into(),
            ..Default::default()
        }),
        ["del", k, end] => Q::RequestDeleteRange(pb::DeleteRangeRequest {
            key: k.as_bytes().to_vec().into(),
            range_end: end.as_bytes().to_vec().into(),
            ..Default::default()
        }),
        _ => {
            return Err(format!(
                "bad operation '{line}': expected put KEY VALUE, get KEY [END] or del KEY [END]"
            ));
        }
    };
    Ok(pb::RequestOp {
        request: Some(request),
    })
}

/// etcdctl's non-interactive txn format.
pub fn parse_txn(text: &str) -> Result<pb::TxnRequest, String> {
    let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            if sections.len() < 3 {
                sections.push(Vec::new());
            }
            continue;
        }
        sections
            .last_mut()
            .expect("at least one section")
            .push(line);
    }
    sections.resize(3, Vec::new());
    Ok(pb::TxnRequest {
        compare: sections[0]
            .iter()
            .map(|l| parse_compare(l))
            .collect::<Result<_, _>>()?,
        success: sections[1]
            .iter()
            .map(|l| parse_op(l))
            .collect::<Result<_, _>>()?,
        failure: sections[2]
            .iter()
            .map(|l| parse_op(l))
            .collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcdctl_txn_syntax_parses() {
        let t = parse_txn(
            "mod(\"k\") > \"0\"\nvalue(\"x\") = \"a b\"\n\nput k \"new value\"\nget k\n\ndel k\n",
        )
        .unwrap();
        assert_eq!(t.compare.len(), 2);
        assert_eq!(t.success.len(), 2);
        assert_eq!(t.failure.len(), 1);
        let Some(pb::compare::TargetUnion::Value(v)) = &t.compare[1].target_union else {
            panic!()
        };
        assert_eq!(&v[..], b"a b");
    }

    #[test]
    fn bad_txn_lines_are_explained() {
        assert!(
            parse_txn("val(\"k\") ~ \"x\"\n")
                .unwrap_err()
                .contains("bad compare")
        );
        assert!(
            parse_txn("\nfrobnicate k\n")
                .unwrap_err()
                .contains("bad operation")
        );
        assert!(
            parse_txn("mod(\"k\") > \"x\"\n")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(
            parse_txn("\nput \"k v\n")
                .unwrap_err()
                .contains("unterminated")
        );
    }

    #[test]
    fn prefix_and_from_key_ranges() {
        assert_eq!(
            range_end("ab", None, true, false),
            (b"ab".to_vec(), b"ac".to_vec())
        );
        assert_eq!(range_end("", None, true, false), (vec![0], vec![0]));
        assert_eq!(range_end("k", None, false, true), (b"k".to_vec(), vec![0]));
    }
}
