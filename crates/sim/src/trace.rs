//! What happened in a run: a running hash of every event (two runs of one seed must
//! agree on it) and, when asked for, a readable line per event.

use std::fmt::Debug;
use std::hash::{Hash, Hasher};

use ekmat_core::Time;
use rustc_hash::FxHasher;

#[derive(Debug, Default)]
pub struct Trace {
    hash: u64,
    lines: Option<Vec<String>>,
}

/// Longest message rendering kept in a trace line.
const MAX_LINE: usize = 240;

impl Trace {
    pub fn new(record_lines: bool) -> Trace {
        Trace {
            hash: 0,
            lines: record_lines.then(Vec::new),
        }
    }

    /// Fold an event into the hash.
    pub fn hash_event(&mut self, now: Time, what: impl Hash) {
        let mut h = FxHasher::default();
        self.hash.hash(&mut h);
        now.hash(&mut h);
        what.hash(&mut h);
        self.hash = h.finish();
    }

    pub fn recording(&self) -> bool {
        self.lines.is_some()
    }

    /// Record a readable line (only when recording; `line` is not evaluated otherwise).
    pub fn line(&mut self, now: Time, line: impl FnOnce() -> String) {
        if let Some(lines) = &mut self.lines {
            let mut text = line();
            if text.len() > MAX_LINE {
                let mut cut = MAX_LINE;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push('…');
            }
            lines.push(format!("[{now:>10}] {text}"));
        }
    }

    pub fn debug_line(&mut self, now: Time, prefix: &str, value: &impl Debug) {
        self.line(now, || format!("{prefix}{value:?}"));
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn take_lines(&mut self) -> Vec<String> {
        self.lines.take().unwrap_or_default()
    }
}
