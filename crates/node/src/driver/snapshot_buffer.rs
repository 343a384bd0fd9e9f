//! The buffer a snapshot is encoded into, used again for the next one.
//!
//! A snapshot is the whole store, hundreds of megabytes in a long run, and a fresh
//! buffer that size is memory the kernel must fault in and zero page by page (encoding
//! a 306 MB store took 270 ms into fresh buffers, 155 ms into one used before). So the
//! buffer of a snapshot the protocol has let go of (every copy of its bytes dropped)
//! comes back here, and the next snapshot is encoded into it: only the pages it grew
//! by are new. The protocol keeps a snapshot until the next one replaces it, so two
//! buffers take turns; at most one waits here, the larger. That holds on to one
//! snapshot's worth of memory between snapshots, which the member needed anyway while
//! both the old and the new snapshot were alive; a buffer more than twice its
//! snapshot's size (the store shrank: a compaction) is let go, so the spare does not
//! keep a store's old peak for ever.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

type Slot = Mutex<Option<Vec<u8>>>;

/// Where a snapshot's buffer returns once no one holds its bytes.
#[derive(Clone, Default)]
pub(crate) struct SnapshotBuffers {
    spare: Arc<Slot>,
}

impl SnapshotBuffers {
    /// The spare buffer, if there is one (its old bytes still in it: the encoder
    /// empties it and sizes it), or a new one.
    pub(crate) fn take(&self) -> Vec<u8> {
        lock(&self.spare).take().unwrap_or_default()
    }

    /// `buf` as bytes that hand it back here when the last of them is dropped.
    pub(crate) fn freeze(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Returning {
            buf,
            home: Arc::downgrade(&self.spare),
        })
    }
}

struct Returning {
    buf: Vec<u8>,
    home: Weak<Slot>,
}

impl AsRef<[u8]> for Returning {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        let Some(home) = self.home.upgrade() else {
            return;
        };
        let buf = std::mem::take(&mut self.buf);
        if buf.capacity() / 2 > buf.len() {
            return;
        }
        let mut spare = lock(&home);
        if spare.as_ref().is_none_or(|s| s.capacity() < buf.capacity()) {
            *spare = Some(buf);
        }
    }
}

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_snapshots_buffer_is_used_again() {
        let buffers = SnapshotBuffers::default();
        let mut buf = buffers.take();
        buf.resize(1 << 20, 7);
        let first_at = buf.as_ptr();
        let bytes = buffers.freeze(buf);
        let copy = bytes.slice(6..);
        drop(bytes);
        // Still held by a slice: the next snapshot gets a buffer of its own.
        assert_eq!(buffers.take().capacity(), 0);
        drop(copy);
        let again = buffers.take();
        assert_eq!(again.as_ptr(), first_at);
        assert!(again.capacity() >= 1 << 20);
    }

    #[test]
    fn the_larger_of_two_returned_buffers_is_kept() {
        let buffers = SnapshotBuffers::default();
        let filled = |len| {
            let mut buf = buffers.take();
            buf.resize(len, 7);
            buffers.freeze(buf)
        };
        let small = filled(10);
        let large = filled(1 << 16);
        drop(large);
        drop(small);
        assert!(buffers.take().capacity() >= 1 << 16);
    }

    #[test]
    fn a_buffer_far_larger_than_its_snapshot_is_let_go() {
        let buffers = SnapshotBuffers::default();
        let mut big = Vec::with_capacity(1 << 20);
        big.extend_from_slice(&[1; 1000]);
        drop(buffers.freeze(big));
        assert_eq!(buffers.take().capacity(), 0);
    }

    #[test]
    fn bytes_outliving_their_buffers_free_them() {
        let buffers = SnapshotBuffers::default();
        let bytes = buffers.freeze(b"kept".to_vec());
        drop(buffers);
        assert_eq!(&bytes[..], b"kept");
    }
}
