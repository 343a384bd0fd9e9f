//! Entries that touch many keys are applied off the driver (`driver/apply.rs`) while the
//! protocol runs on: what commits behind one waits for it and is applied after it, in
//! order, and nothing acknowledged is lost.

mod support;

use std::time::Duration;

use etcd_client::{Client, DeleteOptions, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use support::Cluster;

const WAIT: Duration = Duration::from_secs(20);
const KEYS: usize = 20_000;
const WRITERS: usize = 4;
const PUTS_EACH: usize = 50;

async fn revision(client: &mut Client) -> i64 {
    client
        .get("none", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_committed_behind_a_big_ranged_delete_apply_after_it_in_order() {
    let c = Cluster::start(3);
    c.leader(WAIT).await;
    let mut client = Client::connect(c.endpoints(), None).await.unwrap();
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(128) {
        let puts: Vec<TxnOp> = chunk
            .iter()
            .map(|i| TxnOp::put(format!("big/{i:06}"), "v", None))
            .collect();
        client.txn(Txn::new().and_then(puts)).await.unwrap();
    }
    let start = revision(&mut client).await;
    let mut events = client
        .watch("big/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();

    // Writers keep putting while the delete is applied; each remembers what was acked.
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let endpoints = c.endpoints();
            tokio::spawn(async move {
                let mut client = Client::connect(endpoints, None).await.unwrap();
                let mut acked = Vec::new();
                for i in 0..PUTS_EACH {
                    let key = format!("other/{w}/{i}");
                    let r = client.put(key.clone(), i.to_string(), None).await.unwrap();
                    acked.push((key, r.header().unwrap().revision()));
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let deleted = client
        .delete("big/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(deleted.deleted(), KEYS as i64);
    let delete_rev = deleted.header().unwrap().revision();
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }

    // One revision for the delete and one per put, none lost, none twice.
    let mut revs: Vec<i64> = acked.iter().map(|(_, r)| *r).collect();
    revs.push(delete_rev);
    revs.sort_unstable();
    let expected: Vec<i64> = (start + 1..=start + revs.len() as i64).collect();
    assert_eq!(
        revs, expected,
        "every write took its own revision, in one sequence"
    );
    assert_eq!(revision(&mut client).await, start + revs.len() as i64);
    for (key, rev) in &acked {
        let got = client.get(key.as_str(), None).await.unwrap();
        assert_eq!(got.kvs()[0].mod_revision(), *rev, "{key}");
    }
    let left = client
        .get(
            "big/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(left.count(), 0);

    // Watchers see the delete whole: every key's DELETE at the delete's revision.
    let mut seen = 0;
    while seen < KEYS {
        let r = tokio::time::timeout(WAIT, events.message())
            .await
            .expect("watch events in time")
            .unwrap()
            .expect("the watch stream is open");
        for e in r.events() {
            assert_eq!(e.event_type(), EventType::Delete);
            assert_eq!(e.kv().unwrap().mod_revision(), delete_rev);
            seen += 1;
        }
    }
}
