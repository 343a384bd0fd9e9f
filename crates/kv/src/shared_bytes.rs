//! Values decoded from a logged command as slices of the command's own buffer rather
//! than copies. The store keeps every value it is given (until a compaction), and the
//! protocol keeps the command until its next snapshot, so a copy per put was memory
//! held twice: a PBFT member under 100-put txns grew ~1,300 bytes per put with copies,
//! ~760 with slices.
//!
//! A shared value keeps its whole command alive. That is at most [`MAX_SHARE`] times
//! its own size (a smaller value is copied), and only ever memory the uncompacted
//! history held anyway: after a compaction that drops the other values of a txn, the
//! one left keeps the txn's bytes. Commands must be buffers of their own, not slices of
//! a larger one (a frame): the transports and the log copy each out when decoding.

use std::cell::RefCell;
use std::fmt;

use bytes::Bytes;
use serde::Deserializer;
use serde::de::{self, SeqAccess, Visitor};

/// How many times its own size a shared value may keep alive.
const MAX_SHARE: usize = 128;

thread_local! {
    /// The buffer being decoded by [`decoding`], if any.
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Run `decode` (which reads from `source`) with `source` as the buffer that values
/// deserialized with [`deserialize`] may share.
pub(crate) fn decoding<T>(source: &Bytes, decode: impl FnOnce(&[u8]) -> T) -> T {
    struct Reset(Option<Bytes>);
    impl Drop for Reset {
        fn drop(&mut self) {
            SOURCE.with(|s| *s.borrow_mut() = self.0.take());
        }
    }
    let _reset = Reset(SOURCE.with(|s| s.borrow_mut().replace(source.clone())));
    decode(source)
}

/// A slice of the buffer being decoded, if `part` lies in it and is a fair part of it.
fn shared(part: &[u8]) -> Option<Bytes> {
    SOURCE.with(|s| {
        let s = s.borrow();
        let source = s.as_ref()?;
        let range = source.as_ptr_range();
        let within = range.start <= part.as_ptr() && part.as_ptr_range().end <= range.end;
        let fair = part.len().saturating_mul(MAX_SHARE) >= source.len();
        (within && fair && !part.is_empty()).then(|| source.slice_ref(part))
    })
}

/// Deserialize `Bytes`, sharing the buffer being decoded where it can (see the module
/// documentation); otherwise, or from any other deserializer, a copy.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    deserializer.deserialize_bytes(SharedBytes)
}

struct SharedBytes;

impl<'de> Visitor<'de> for SharedBytes {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
        Ok(shared(v).unwrap_or_else(|| Bytes::copy_from_slice(v)))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    // As `Bytes`'s own deserializer does, for formats that write bytes as text.
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v.as_bytes()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(Bytes::from(v))
    }
}
