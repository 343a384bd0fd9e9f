//! A parser for the client-operation lines of Jepsen's 2014 etcd logs:
//!
//! ```text
//! INFO  jepsen.util - 3 :invoke :cas [3 0]
//! INFO  jepsen.util - 3 :fail :cas [3 0]
//! INFO  jepsen.util - 0 :ok :read nil
//! INFO  jepsen.util - 4 :info :write :timed-out
//! ```
//!
//! The last four fields are separated by tabs in most lines and by spaces in
//! some. What the completion types mean, from Jepsen's etcd client, checked
//! against the published verdicts:
//! - `:ok`: the operation happened and returned the value shown (for reads).
//! - `:fail` on a cas: etcd refused the swap because the value differed, so
//!   it is a cas that returned "not swapped". (Dropping it as "no effect"
//!   gives the same verdicts on every log; treating it as an unknown outcome
//!   turns most non-linearizable verdicts into linearizable ones.)
//! - `:fail` on a read (a timeout): nothing was learned and nothing changed,
//!   so the read is dropped.
//! - `:info` (a timeout on a write or cas): the outcome is unknown, so the
//!   operation stays pending forever; the process never invokes again.
//!   (Dropping it, or completing it at the `:info` line, turns linearizable
//!   verdicts into non-linearizable ones.)
//! - An invocation without any completion before the log ends is unknown too.
//!
//! Time is the line number, which is monotonic across processes.

use std::collections::BTreeMap;

use ekmat_linearizability::Operation;

use crate::register::{RegisterInput, RegisterOutput};

/// One register operation as read from a log.
pub type RegisterOp = Operation<RegisterInput, RegisterOutput>;

/// Parses a whole log; errors name the offending line (1-based).
pub fn parse(text: &str) -> Result<Vec<RegisterOp>, String> {
    let mut parser = Parser::default();
    for (number, line) in (1u64..).zip(text.lines()) {
        parser
            .line(number, line)
            .map_err(|e| format!("line {number}: {e}: {line:?}"))?;
    }
    Ok(parser.finish())
}

#[derive(Default)]
struct Parser {
    /// Operations in invocation order; `None` once known to have no effect.
    ops: Vec<Option<RegisterOp>>,
    /// The operation each process has in flight.
    pending: BTreeMap<u64, usize>,
}

impl Parser {
    fn line(&mut self, time: u64, line: &str) -> Result<(), String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        // `INFO  jepsen.util - PROCESS TYPE F VALUE...`; anything else is noise.
        if words.len() < 4 || words[1] != "jepsen.util" || words[3] == ":nemesis" {
            return Ok(());
        }
        let [process, kind, f, value @ ..] = &words[3..] else {
            return Err("too few fields".into());
        };
        let process: u64 = process
            .parse()
            .map_err(|_| format!("bad process {process:?}"))?;
        if *kind == ":invoke" {
            return self.invoke(process, time, parse_input(f, value)?);
        }
        let index = self
            .pending
            .remove(&process)
            .ok_or_else(|| format!("{kind} without an invocation by process {process}"))?;
        let Some(op) = self.ops[index].as_mut() else {
            return Err("completion of a dropped operation".into());
        };
        if input_name(&op.input) != *f {
            return Err(format!("completes {f} but {:?} was invoked", op.input));
        }
        match (*kind, op.input) {
            (":ok", input) => complete(op, time, ok_output(input, value)?),
            (":fail", RegisterInput::Cas(..)) => complete(op, time, RegisterOutput::Cas(false)),
            (":fail", _) => self.ops[index] = None,
            (":info", _) => {}
            _ => return Err(format!("unknown completion type {kind:?}")),
        }
        Ok(())
    }

    fn invoke(&mut self, process: u64, time: u64, input: RegisterInput) -> Result<(), String> {
        if self.pending.insert(process, self.ops.len()).is_some() {
            return Err(format!("process {process} invokes twice"));
        }
        self.ops.push(Some(Operation {
            client: process,
            input,
            call: time,
            ret: None,
            output: None,
        }));
        Ok(())
    }

    fn finish(self) -> Vec<RegisterOp> {
        self.ops.into_iter().flatten().collect()
    }
}

fn complete(op: &mut RegisterOp, time: u64, output: RegisterOutput) {
    op.ret = Some(time);
    op.output = Some(output);
}

fn input_name(input: &RegisterInput) -> &'static str {
    match input {
        RegisterInput::Read => ":read",
        RegisterInput::Write(_) => ":write",
        RegisterInput::Cas(..) => ":cas",
    }
}

fn parse_input(f: &str, value: &[&str]) -> Result<RegisterInput, String> {
    match (f, value) {
        (":read", _) => Ok(RegisterInput::Read),
        (":write", [v]) => Ok(RegisterInput::Write(parse_number(v)?)),
        (":cas", [from, to]) => {
            let from = from.strip_prefix('[').ok_or("cas value lacks '['")?;
            let to = to.strip_suffix(']').ok_or("cas value lacks ']'")?;
            Ok(RegisterInput::Cas(parse_number(from)?, parse_number(to)?))
        }
        _ => Err(format!("unknown operation {f} {value:?}")),
    }
}

fn ok_output(input: RegisterInput, value: &[&str]) -> Result<RegisterOutput, String> {
    Ok(match (input, value) {
        (RegisterInput::Read, ["nil"]) => RegisterOutput::Read(None),
        (RegisterInput::Read, [v]) => RegisterOutput::Read(Some(parse_number(v)?)),
        (RegisterInput::Read, _) => return Err("a read returns one value".into()),
        (RegisterInput::Write(_), _) => RegisterOutput::Written,
        (RegisterInput::Cas(..), _) => RegisterOutput::Cas(true),
    })
}

fn parse_number(word: &str) -> Result<u64, String> {
    word.parse().map_err(|_| format!("bad number {word:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_completion_type() {
        let log = "\
INFO  jepsen.util - 0\t:invoke\t:write\t4
INFO  jepsen.util - 1\t:invoke\t:cas\t[4 1]
INFO  jepsen.util - 2 :invoke :read nil
INFO  jepsen.util - :nemesis\t:info\t:start\tnil
INFO  jepsen.util - 0\t:ok\t:write\t4
INFO  jepsen.util - 1\t:fail\t:cas\t[4 1]
INFO  jepsen.util - 2\t:fail\t:read\t:timed-out
INFO  jepsen.util - 3\t:invoke\t:cas\t[4 2]
INFO  jepsen.util - 3\t:info\t:cas\t:timed-out
INFO  jepsen.util - 5\t:invoke\t:read\tnil
INFO  jepsen.util - 5\t:ok\t:read\t4
INFO  jepsen.util - 6\t:invoke\t:write\t1
INFO  jepsen.core - done
";
        let ops = parse(log).unwrap();
        let summary: Vec<_> = ops
            .iter()
            .map(|op| (op.client, op.input, op.call, op.ret, op.output))
            .collect();
        use RegisterInput as I;
        use RegisterOutput as O;
        assert_eq!(
            summary,
            vec![
                (0, I::Write(4), 1, Some(5), Some(O::Written)),
                (1, I::Cas(4, 1), 2, Some(6), Some(O::Cas(false))),
                (3, I::Cas(4, 2), 8, None, None),
                (5, I::Read, 10, Some(11), Some(O::Read(Some(4)))),
                (6, I::Write(1), 12, None, None),
            ]
        );
    }

    #[test]
    fn rejects_a_completion_without_invocation() {
        let err = parse("INFO  jepsen.util - 0\t:ok\t:write\t4\n").unwrap_err();
        assert!(err.starts_with("line 1:"), "{err}");
    }
}
