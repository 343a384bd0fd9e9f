//! Every named scenario ends the way the protocol promises.

use ekmat_sim::scenario::{self, ScenarioConfig};

fn passes(name: &str) {
    let s = scenario::find(name).expect("scenario exists");
    let report = (s.run)(&ScenarioConfig { quick: true });
    assert!(report.passed(), "{report}");
}

#[test]
fn monsoon_partition() {
    passes("monsoon-partition");
}

#[test]
fn three_way_split() {
    passes("three-way-split");
}

#[test]
fn election_storm() {
    passes("election-storm");
}

#[test]
fn degraded_wan() {
    passes("degraded-wan");
}

#[test]
fn three_generals() {
    passes("three-generals");
}

#[test]
fn scenarios_are_listed_by_name() {
    let names: Vec<&str> = scenario::ALL.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "monsoon-partition",
            "three-way-split",
            "election-storm",
            "degraded-wan",
            "three-generals"
        ]
    );
    assert!(scenario::find("nope").is_none());
}
