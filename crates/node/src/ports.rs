//! Ports for tests and local clusters that must not collide with one another.
//!
//! Asking the kernel for port 0 and closing the socket hands out ephemeral ports, which
//! the kernel may give again to the next caller or to an outgoing connection before the
//! node binds them. These come from below the ephemeral range instead, and this process
//! never hands out the same one twice.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

const FIRST: u32 = 10_000;
const LAST: u32 = 32_000; // Linux's ephemeral range starts at 32768
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A port nothing listens on now and that this process has not handed out before.
pub fn unused_port() -> u16 {
    unused_port_block(1)
}

/// The first of `len` consecutive ports, each as [`unused_port`] promises.
pub fn unused_port_block(len: u16) -> u16 {
    let len = u32::from(len.max(1));
    for _ in 0..(LAST - FIRST) {
        let start = claim(len);
        if (start..start + len).all(|p| TcpListener::bind(("127.0.0.1", p as u16)).is_ok()) {
            return start as u16;
        }
    }
    panic!("no {len} consecutive free ports between {FIRST} and {LAST}");
}

fn claim(len: u32) -> u32 {
    let span = LAST - FIRST;
    // Processes that run side by side start in different places.
    let offset = std::process::id() * 7919 % span;
    let _ = NEXT.compare_exchange(0, offset + 1, Ordering::Relaxed, Ordering::Relaxed);
    loop {
        let at = NEXT.fetch_add(len, Ordering::Relaxed) - 1;
        let start = FIRST + at % span;
        if start + len <= LAST {
            return start;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_below_the_ephemeral_range_and_blocks_are_whole() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let p = unused_port();
            assert!((FIRST as u16..LAST as u16).contains(&p));
            assert!(seen.insert(p), "port {p} handed out twice");
        }
        let b = unused_port_block(300);
        assert!((b..b + 300).all(|p| !seen.contains(&p)));
    }
}
