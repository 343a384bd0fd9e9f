//! Random histories of appends, syncs, checkpoints, clean reopens and crashes, checked
//! against a model: every synced record comes back, in order, after the right checkpoint.

use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use ekmat_storage::{Recovered, Wal};

use crate::{fast, segments};

const SEGMENT: u64 = 128;

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<u8>),
    Sync,
    Checkpoint(Vec<u8>),
    /// A checkpoint written beside the log, with these appends made while it is written.
    Detached {
        state: Vec<u8>,
        meanwhile: Vec<Vec<u8>>,
    },
    /// Drop the log without syncing and open it again.
    Reopen,
    /// Lose everything since the last sync, except `extra` bytes written after it into
    /// the last synced segment (a torn write), then open again.
    Crash {
        extra: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..60).prop_map(Op::Append),
        3 => Just(Op::Sync),
        1 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(Op::Checkpoint),
        1 => (
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..60), 0..6),
        )
            .prop_map(|(state, meanwhile)| Op::Detached { state, meanwhile }),
        1 => Just(Op::Reopen),
        2 => (0u64..80).prop_map(|extra| Op::Crash { extra }),
    ]
}

/// What the log must hold.
struct Model {
    checkpoint: Option<Vec<u8>>,
    first_seq: u64,
    records: Vec<Vec<u8>>,
    synced: usize,
    /// Segment files and their bytes at the last sync: the disk a crash falls back to.
    /// Whole files, not lengths: a reused spare holds stale records after its own.
    durable_image: Vec<(PathBuf, Vec<u8>)>,
}

impl Model {
    fn last_seq(&self) -> u64 {
        self.first_seq + self.records.len() as u64 - 1
    }

    fn synced_now(&mut self, dir: &Path) {
        self.synced = self.records.len();
        self.durable_image = segments(dir)
            .into_iter()
            .map(|path| {
                let bytes = fs::read(&path).unwrap();
                (path, bytes)
            })
            .collect();
    }

    /// Checks what a reopen recovered and adopts it: records past the synced ones may or
    /// may not have survived, but only as a prefix of what was appended.
    fn check_and_adopt(&mut self, recovered: Recovered, dir: &Path) -> Result<(), TestCaseError> {
        prop_assert_eq!(&recovered.checkpoint, &self.checkpoint);
        prop_assert_eq!(recovered.first_seq_after_checkpoint, self.first_seq);
        let got = recovered.records.len();
        prop_assert!(
            got >= self.synced,
            "lost synced records: {} < {}",
            got,
            self.synced
        );
        prop_assert!(got <= self.records.len(), "records from nowhere");
        prop_assert_eq!(&recovered.records[..], &self.records[..got]);
        self.records.truncate(got);
        prop_assert_eq!(recovered.last_seq, self.last_seq());
        self.synced_now(dir);
        Ok(())
    }

    /// Puts the disk back to the last sync, plus `extra` bytes of what the last file was
    /// written since (a torn write: from the first byte that changed).
    fn crash(&self, dir: &Path, extra: u64) {
        let last = self.durable_image.last().map(|(path, _)| path.clone());
        for path in segments(dir) {
            let Some((_, durable)) = self.durable_image.iter().find(|(p, _)| *p == path) else {
                fs::remove_file(&path).unwrap();
                continue;
            };
            let mut bytes = durable.clone();
            if Some(&path) == last.as_ref() {
                let now = fs::read(&path).unwrap();
                let changed = (0..now.len())
                    .find(|&i| durable.get(i) != Some(&now[i]))
                    .unwrap_or(now.len());
                let end = now.len().min(changed + extra as usize);
                if end > bytes.len() {
                    bytes.resize(end, 0);
                }
                bytes[changed.min(end)..end].copy_from_slice(&now[changed.min(end)..end]);
            }
            fs::write(&path, &bytes).unwrap();
        }
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut wal, recovered) = Wal::open(dir, fast(SEGMENT)).unwrap();
    let mut model = Model {
        checkpoint: None,
        first_seq: 1,
        records: Vec::new(),
        synced: 0,
        durable_image: Vec::new(),
    };
    model.check_and_adopt(recovered, dir)?;
    for op in ops {
        match op {
            Op::Append(payload) => {
                let seq = wal.append(&payload).unwrap();
                model.records.push(payload);
                prop_assert_eq!(seq, model.last_seq());
            }
            Op::Sync => {
                prop_assert_eq!(wal.sync().unwrap(), model.last_seq());
                model.synced_now(dir);
            }
            Op::Checkpoint(state) => {
                wal.checkpoint(&state).unwrap();
                model.first_seq = model.last_seq() + 1;
                model.checkpoint = Some(state);
                model.records.clear();
                model.synced_now(dir);
            }
            Op::Detached { state, meanwhile } => {
                let job = wal.begin_checkpoint().unwrap();
                prop_assert_eq!(job.covers(), model.last_seq());
                // Nothing new is durable yet; the old segments are whole on disk.
                model.synced_now(dir);
                let first_after = model.last_seq() + 1;
                for payload in &meanwhile {
                    wal.append(payload).unwrap();
                }
                let done = job.write(state.len(), |out| out.write_all(&state)).unwrap();
                wal.finish_checkpoint(done).unwrap();
                model.checkpoint = Some(state);
                model.first_seq = first_after;
                model.records = meanwhile;
                model.synced = 0;
            }
            Op::Reopen | Op::Crash { .. } => {
                drop(wal);
                if let Op::Crash { extra } = op {
                    model.crash(dir, extra);
                }
                let (reopened, recovered) = Wal::open(dir, fast(SEGMENT)).unwrap();
                if matches!(op, Op::Reopen) {
                    // Whole writes only: nothing torn to repair, stale bytes or not.
                    prop_assert_eq!(&recovered.repaired, &None);
                }
                wal = reopened;
                model.check_and_adopt(recovered, dir)?;
            }
        }
        prop_assert_eq!(wal.last_seq(), model.last_seq());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn recovery_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
