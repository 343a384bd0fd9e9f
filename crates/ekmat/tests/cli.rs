//! The `ekmat sim` contract other tools rely on: names, exit codes (0 clean, 1 violation,
//! 2 bad usage), JSON fields, and replay commands that reproduce failures.

use std::process::{Command, Output};

fn ekmat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ekmat"))
        .args(args)
        .output()
        .expect("the ekmat binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(stdout(o).trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

#[test]
fn lists_print_one_name_per_line() {
    let mutants = ekmat(&["sim", "--mutant", "list"]);
    assert_eq!(mutants.status.code(), Some(0));
    assert_eq!(
        stdout(&mutants).lines().collect::<Vec<_>>(),
        [
            "commit-old-term",
            "vote-without-log-check",
            "forget-vote-persist",
            "read-without-quorum",
            "install-stale-snapshot",
            "config-before-joint",
            "serve-lease-read-past-bound",
            "lease-ignores-drift"
        ]
    );
    let scenarios = ekmat(&["sim", "--scenario", "list"]);
    assert_eq!(scenarios.status.code(), Some(0));
    assert_eq!(stdout(&scenarios).lines().count(), 5);
}

#[test]
fn bad_usage_exits_2_with_a_reason() {
    let cases: &[(&[&str], &str)] = &[
        (&["sim", "--protocol", "carrier-pigeon"], "carrier-pigeon"),
        (&["sim", "--nodes", "0"], "--nodes"),
        (&["sim", "--faults", "crash,meteor"], "meteor"),
        (&["sim", "--mutant", "nope"], "unknown mutant"),
        (&["sim", "--scenario", "nope"], "unknown scenario"),
        (&["sim", "--schedule", "@1ms crash"], "--schedule"),
        (&["sim", "--schedule", "@1ms+5ms crash(9)"], "only 5 nodes"),
        (&["sim", "--trace"], "--seed"),
        (&["sim", "--seeds", "0"], "--seeds"),
        (&["sim", "--seeds", "many"], "many"),
        (&["sim", "--clients", "0"], "--clients"),
        (
            &["sim", "--protocol", "pbft", "--faults", "crash,membership"],
            "PBFT has no membership changes",
        ),
        (
            &["sim", "--protocol", "pbft", "--faults", "transfer"],
            "PBFT has no leadership transfer",
        ),
        (
            &["up", "--protocol", "pbft", "--nodes", "3"],
            "3f+1 members",
        ),
        (
            &["up", "--protocol", "pbft", "--nodes", "5"],
            "exactly 3f+1",
        ),
        (
            &[
                "up",
                "--restore",
                "/nonexistent/backup.db",
                "--base-port",
                "31000",
            ],
            "cannot read /nonexistent/backup.db",
        ),
        (
            &["up", "--restore", "Cargo.toml", "--base-port", "31000"],
            "not a bbolt database",
        ),
        (
            &["bench", "open-loop", "--compact-keep=-1"],
            "-1 is not in 0..",
        ),
        (
            &["bench", "open-loop", "--compact-every", "1ns"],
            "--compact-every must be 0 (never) or from 10ms",
        ),
        (
            &["bench", "open-loop", "--compact-every", "6s"],
            "to less than --duration",
        ),
        (
            &["bench", "open-loop", "--keys", "20000000"],
            "--keys must be at most 10000000",
        ),
    ];
    for (args, reason) in cases {
        let o = ekmat(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(reason),
            "{args:?} should mention '{reason}': {}",
            stderr(&o)
        );
        assert!(!stderr(&o).contains("panicked"), "{args:?} panicked");
    }
}

#[test]
fn a_clean_run_prints_the_contract_fields_and_exits_0() {
    let o = ekmat(&[
        "sim",
        "--protocol",
        "raft",
        "--seeds",
        "4",
        "--ops",
        "300",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let j = json(&o);
    assert_eq!(j["protocol"], "raft");
    assert_eq!(j["nodes"], 5);
    assert_eq!(j["seeds"], 4);
    assert_eq!(j["ops"], 1200);
    assert_eq!(j["violations"], 0);
    assert!(j["first_failing_seed"].is_null());
    assert!(j["replay"].is_null());
}

#[test]
fn a_table_summarises_the_run() {
    let o = ekmat(&["sim", "--seeds", "2", "--ops", "200"]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    for row in [
        "seeds",
        "client operations",
        "elections",
        "faults injected",
        "violations",
        "simulated events/s",
    ] {
        assert!(out.contains(row), "missing row '{row}':\n{out}");
    }
}

#[test]
fn a_caught_mutant_exits_1_and_its_replay_reproduces_it() {
    let o = ekmat(&["sim", "--mutant", "forget-vote-persist", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let j = json(&o);
    assert!(j["violations"].as_u64().unwrap() >= 1);
    let seed = j["first_failing_seed"].as_u64().expect("a failing seed");
    let replay = j["replay"].as_str().expect("a replay command").to_string();
    assert!(replay.starts_with("ekmat sim --protocol raft"), "{replay}");
    assert!(replay.contains(&format!("--seed {seed}")), "{replay}");
    let args: Vec<&str> = replay.split_whitespace().skip(1).collect();
    let again = ekmat(&args);
    assert_eq!(
        again.status.code(),
        Some(1),
        "the replay did not fail again: {}",
        stdout(&again)
    );
    let traced = ekmat(&[args.as_slice(), &["--trace"]].concat());
    assert!(
        stdout(&traced).lines().count() > 100,
        "--trace shows the run's events"
    );
    assert!(stdout(&traced).contains("VIOLATION"));
}

#[test]
fn shrink_reports_a_smaller_schedule_that_still_fails() {
    let o = ekmat(&["sim", "--mutant", "forget-vote-persist", "--shrink"]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("shrunk to"), "{out}");
    assert!(
        out.contains("--schedule '"),
        "the replay carries the shrunk schedule: {out}"
    );
}

#[test]
fn a_scenario_reports_pass_and_exits_0() {
    let o = ekmat(&["sim", "--scenario", "three-way-split"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).trim_end().ends_with("PASS"));
}

#[test]
fn pbft_with_one_traitor_of_four_is_clean_and_counts_views_and_evidence() {
    let o = ekmat(&[
        "sim",
        "--protocol",
        "pbft",
        "--nodes",
        "4",
        "--byzantine",
        "1",
        "--adversary",
        "equivocate",
        "--seeds",
        "3",
        "--ops",
        "300",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let j = json(&o);
    assert_eq!(j["protocol"], "pbft");
    assert_eq!(j["violations"], 0);
    assert!(j["view_changes"].is_u64() && j["evidence"].as_u64().unwrap() > 0);
}

#[test]
fn pbft_with_three_generals_and_one_traitor_exits_1_on_agreement() {
    let o = ekmat(&[
        "sim",
        "--protocol",
        "pbft",
        "--nodes",
        "3",
        "--byzantine",
        "1",
        "--adversary",
        "equivocate",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let j = json(&o);
    assert_eq!(j["violation"]["property"], "agreement");
    let replay = j["replay"].as_str().expect("a replay command");
    assert!(
        replay.contains("--byzantine 1 --adversary equivocate"),
        "{replay}"
    );
}

#[test]
fn an_open_loop_run_that_compacts_reports_its_compactions() {
    // `bench` lays a cluster out like `up`: base+i, base+100+i and base+200+i.
    let base = ekmat_node::ports::unused_port_block(201).to_string();
    let o = ekmat(&[
        "bench",
        "open-loop",
        "--protocol",
        "raft",
        "--nodes",
        "1",
        "--rates",
        "500",
        "--duration",
        "3s",
        "--warmup",
        "500ms",
        "--drain",
        "3s",
        "--keys",
        "50",
        "--compact-every",
        "400ms",
        "--compact-keep",
        "20",
        "--base-port",
        &base,
        "--unsafe-no-fsync",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let point = &json(&o)["points"][0];
    assert!(point["acknowledged"].as_u64().unwrap() > 0, "{point}");
    // Seven rounds fit in 3 s, and 500 puts/s leave more than 20 revisions behind each.
    let compactions = point["compactions"].as_u64().unwrap();
    assert!(compactions >= 3, "{compactions} compactions: {point}");
    assert_eq!(point["errors"].as_u64(), Some(0), "{point}");
    assert_eq!(point["compaction_errors"].as_u64(), Some(0), "{point}");
}
