//! bbolt's file format (etcd's backend database), written in one pass and read back.
//!
//! A backup is a database made once, never updated, so the writer builds each bucket's
//! B+tree bottom-up from sorted entries: leaf pages, then branch pages over them until
//! one page remains, its root. No transactions, no free pages: every page below the
//! high-water mark is reachable, which is what `bbolt check` (and `etcdctl snapshot
//! status`) verify. The reader walks any bbolt file's top-level buckets, inline ones
//! included (etcd writes its small buckets inline), and refuses what it cannot follow
//! with an error, never a panic: its input is whatever file a user names.
//!
//! Layout (little-endian, as bbolt writes it on every platform etcd supports):
//! - page header, 16 bytes: id u64, flags u16, count u16, overflow u32 (the pages after
//!   this one that it spans);
//! - pages 0 and 1: meta (magic, version 2, page size, flags, root bucket {root page,
//!   sequence}, freelist page, page count, txid, then the FNV-1a 64 of those 56 bytes);
//! - leaf element, 16 bytes: flags u32 (1: a sub-bucket), pos u32 (from the element to
//!   its key), key size u32, value size u32; the value follows the key;
//! - branch element, 16 bytes: pos u32, key size u32, child page u64;
//! - a bucket's value: its root page u64 and sequence u64, then, when the root is 0,
//!   the bucket's one page inline.

use std::collections::HashSet;
use std::hash::Hasher;

/// The page size written; a reader takes whatever the file's meta page says.
pub const PAGE_SIZE: usize = 4096;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const HEADER: usize = 16;
const ELEMENT: usize = 16;
const META_LEN: usize = 64;
/// The meta fields the checksum covers: all of them but the checksum.
const META_SUMMED: usize = 56;

const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const FREELIST_PAGE: u16 = 0x10;
const BUCKET_LEAF: u32 = 0x01;
/// A bucket header: root page and sequence.
const BUCKET_HEADER: usize = 16;
/// No bucket tree is this deep; a file claiming so is refused rather than followed.
const MAX_DEPTH: usize = 64;

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// A top-level bucket: its name and its entries in key order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub name: Vec<u8>,
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BoltError {
    #[error("not a bbolt database: {0}")]
    Invalid(String),
    #[error("bbolt page {page}: {why}")]
    Page { page: u64, why: String },
}

fn page_error(page: u64, why: impl Into<String>) -> BoltError {
    BoltError::Page {
        page,
        why: why.into(),
    }
}

/// The database holding `buckets` (names unique; each bucket's keys strictly
/// increasing, which the caller's sorted source guarantees and this checks).
pub fn write(buckets: &[Bucket]) -> Vec<u8> {
    let mut w = Writer {
        file: vec![0; 3 * PAGE_SIZE],
        next: 3,
    };
    // Page 2: the freelist, empty.
    w.header(2, FREELIST_PAGE, 0, 0);
    let mut sorted: Vec<&Bucket> = buckets.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut root_entries = Vec::with_capacity(sorted.len());
    for bucket in sorted {
        let root = w.tree(bucket.entries.iter().map(|(k, v)| (0, &k[..], &v[..])));
        let mut header = root.to_le_bytes().to_vec();
        header.extend_from_slice(&0u64.to_le_bytes()); // sequence
        root_entries.push((bucket.name.clone(), header));
    }
    let root = w.tree(
        root_entries
            .iter()
            .map(|(k, v)| (BUCKET_LEAF, &k[..], &v[..])),
    );
    for (page, txid) in [(0u64, 1u64), (1, 2)] {
        w.meta(page, root, txid);
    }
    w.file
}

struct Writer {
    file: Vec<u8>,
    next: u64,
}

impl Writer {
    fn header(&mut self, page: u64, flags: u16, count: u16, overflow: u32) {
        let at = page as usize * PAGE_SIZE;
        let h = &mut self.file[at..at + HEADER];
        h[..8].copy_from_slice(&page.to_le_bytes());
        h[8..10].copy_from_slice(&flags.to_le_bytes());
        h[10..12].copy_from_slice(&count.to_le_bytes());
        h[12..16].copy_from_slice(&overflow.to_le_bytes());
    }

    fn meta(&mut self, page: u64, root: u64, txid: u64) {
        self.header(page, META_PAGE, 0, 0);
        let mut m = Vec::with_capacity(META_LEN);
        for word in [MAGIC, VERSION, PAGE_SIZE as u32, 0] {
            m.extend_from_slice(&word.to_le_bytes());
        }
        for word in [root, 0, 2, self.next, txid] {
            m.extend_from_slice(&word.to_le_bytes());
        }
        m.extend_from_slice(&fnv64a(&m).to_le_bytes());
        let at = page as usize * PAGE_SIZE + HEADER;
        self.file[at..at + META_LEN].copy_from_slice(&m);
    }

    /// A new page of `len` bytes (spanning more pages if it must). Returns its id.
    fn allocate(&mut self, len: usize) -> u64 {
        let id = self.next;
        let pages = len.div_ceil(PAGE_SIZE).max(1);
        self.next += pages as u64;
        self.file.resize(self.next as usize * PAGE_SIZE, 0);
        id
    }

    /// Write a B+tree of `entries` (flags, key, value; keys increasing) and return its
    /// root page.
    fn tree<'a>(&mut self, entries: impl Iterator<Item = (u32, &'a [u8], &'a [u8])>) -> u64 {
        let mut level: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut page: Vec<(u32, &[u8], &[u8])> = Vec::new();
        let mut size = HEADER;
        let mut last: Option<&[u8]> = None;
        for (flags, key, value) in entries {
            assert!(
                last < Some(key),
                "bbolt keys must be written in increasing order"
            );
            last = Some(key);
            let len = ELEMENT + key.len() + value.len();
            if !page.is_empty() && size + len > PAGE_SIZE {
                level.push(self.leaf(&page, size));
                page.clear();
                size = HEADER;
            }
            page.push((flags, key, value));
            size += len;
        }
        if !page.is_empty() || level.is_empty() {
            level.push(self.leaf(&page, size));
        }
        while level.len() > 1 {
            level = self.branches(&level);
        }
        level[0].1
    }

    /// One leaf page; returns its first key and id.
    fn leaf(&mut self, entries: &[(u32, &[u8], &[u8])], size: usize) -> (Vec<u8>, u64) {
        let id = self.allocate(size);
        self.header(id, LEAF_PAGE, entries.len() as u16, overflow(size));
        let base = id as usize * PAGE_SIZE;
        let mut data = base + HEADER + entries.len() * ELEMENT;
        for (i, (flags, key, value)) in entries.iter().enumerate() {
            let element = base + HEADER + i * ELEMENT;
            let fields = [
                *flags,
                (data - element) as u32,
                key.len() as u32,
                value.len() as u32,
            ];
            self.put_words(element, &fields);
            self.file[data..data + key.len()].copy_from_slice(key);
            data += key.len();
            self.file[data..data + value.len()].copy_from_slice(value);
            data += value.len();
        }
        (entries.first().map_or_else(Vec::new, |e| e.1.to_vec()), id)
    }

    /// Branch pages over `children` (first key, page); returns the level above.
    fn branches(&mut self, children: &[(Vec<u8>, u64)]) -> Vec<(Vec<u8>, u64)> {
        let mut above = Vec::new();
        let mut start = 0;
        while start < children.len() {
            let mut size = HEADER;
            let mut end = start;
            // At least two children per page, so every level shrinks.
            while end < children.len()
                && (end < start + 2 || size + ELEMENT + children[end].0.len() <= PAGE_SIZE)
            {
                size += ELEMENT + children[end].0.len();
                end += 1;
            }
            above.push(self.branch(&children[start..end], size));
            start = end;
        }
        above
    }

    fn branch(&mut self, children: &[(Vec<u8>, u64)], size: usize) -> (Vec<u8>, u64) {
        let id = self.allocate(size);
        self.header(id, BRANCH_PAGE, children.len() as u16, overflow(size));
        let base = id as usize * PAGE_SIZE;
        let mut data = base + HEADER + children.len() * ELEMENT;
        for (i, (key, child)) in children.iter().enumerate() {
            let element = base + HEADER + i * ELEMENT;
            self.put_words(element, &[(data - element) as u32, key.len() as u32]);
            self.file[element + 8..element + 16].copy_from_slice(&child.to_le_bytes());
            self.file[data..data + key.len()].copy_from_slice(key);
            data += key.len();
        }
        (children[0].0.clone(), id)
    }

    fn put_words(&mut self, at: usize, words: &[u32]) {
        for (i, w) in words.iter().enumerate() {
            self.file[at + 4 * i..at + 4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
    }
}

fn overflow(size: usize) -> u32 {
    (size.div_ceil(PAGE_SIZE).max(1) - 1) as u32
}

fn fnv64a(bytes: &[u8]) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(bytes);
    h.finish()
}

/// Every top-level bucket of the database in `file`, in name order, with its entries.
/// Buckets nested inside them are refused (etcd's backend has none).
pub fn read(file: &[u8]) -> Result<Vec<Bucket>, BoltError> {
    let meta = Meta::newest(file)?;
    if file.len() < 2 * meta.page_size {
        return Err(BoltError::Invalid("shorter than its two meta pages".into()));
    }
    let mut r = Reader {
        file,
        page_size: meta.page_size,
        pages: meta.pages,
        seen: HashSet::new(),
    };
    let mut buckets = Vec::new();
    for (flags, name, value) in r.entries(Node::Page(meta.root), 0)? {
        if flags & BUCKET_LEAF == 0 {
            return Err(BoltError::Invalid(format!(
                "a plain key {:?} among the top-level buckets",
                String::from_utf8_lossy(&name)
            )));
        }
        let node = bucket_root(&value)?;
        let mut entries = Vec::new();
        for (flags, key, value) in r.entries(node, 0)? {
            if flags & BUCKET_LEAF != 0 {
                return Err(BoltError::Invalid("a nested bucket".into()));
            }
            entries.push((key, value));
        }
        buckets.push(Bucket { name, entries });
    }
    Ok(buckets)
}

struct Meta {
    page_size: usize,
    root: u64,
    pages: u64,
    txid: u64,
}

impl Meta {
    /// The valid meta page with the highest transaction id, as bbolt opens a file.
    fn newest(file: &[u8]) -> Result<Meta, BoltError> {
        let first = Meta::parse(file, HEADER);
        let second = first
            .as_ref()
            .ok()
            .map(|m| Meta::parse(file, m.page_size + HEADER));
        match (first, second) {
            (Ok(a), Some(Ok(b))) => Ok(if b.txid > a.txid { b } else { a }),
            (Ok(a), _) => Ok(a),
            // bbolt then looks for the second at its own page size.
            (Err(e), _) => Meta::parse(file, PAGE_SIZE + HEADER).map_err(|_| e),
        }
    }

    fn parse(file: &[u8], at: usize) -> Result<Meta, BoltError> {
        let bytes = file
            .get(at..at + META_LEN)
            .ok_or_else(|| BoltError::Invalid("too short for a meta page".into()))?;
        let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let long = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        if word(0) != MAGIC {
            return Err(BoltError::Invalid("no bbolt magic number".into()));
        }
        if word(4) != VERSION {
            return Err(BoltError::Invalid(format!("version {}", word(4))));
        }
        if long(56) != 0 && long(56) != fnv64a(&bytes[..META_SUMMED]) {
            return Err(BoltError::Invalid("meta page checksum mismatch".into()));
        }
        let page_size = word(8) as usize;
        if !(512..=1 << 16).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(BoltError::Invalid(format!("page size {page_size}")));
        }
        Ok(Meta {
            page_size,
            root: long(16),
            pages: long(40),
            txid: long(48),
        })
    }
}

/// Where a tree's nodes are: a page of the file, or a bucket's one page inline.
enum Node<'a> {
    Page(u64),
    Inline(&'a [u8]),
}

fn bucket_root(value: &[u8]) -> Result<Node<'_>, BoltError> {
    let header = value
        .get(..BUCKET_HEADER)
        .ok_or_else(|| BoltError::Invalid("a bucket value shorter than its header".into()))?;
    let root = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
    Ok(if root == 0 {
        Node::Inline(&value[BUCKET_HEADER..])
    } else {
        Node::Page(root)
    })
}

struct Reader<'a> {
    file: &'a [u8],
    page_size: usize,
    pages: u64,
    /// Pages already visited: a page reached twice means a cycle or a shared subtree.
    seen: HashSet<u64>,
}

type Element = (u32, Vec<u8>, Vec<u8>);

impl<'a> Reader<'a> {
    /// The leaf entries under `node`, in order.
    fn entries(&mut self, node: Node<'_>, depth: usize) -> Result<Vec<Element>, BoltError> {
        let (id, page) = match node {
            Node::Page(id) => (id, self.page(id)?),
            Node::Inline(bytes) => (0, bytes),
        };
        if depth > MAX_DEPTH {
            return Err(page_error(id, "the tree is deeper than any real one"));
        }
        let flags = u16::from_le_bytes(field(page, 8, 2, id)?.try_into().expect("2 bytes"));
        let count = u16::from_le_bytes(field(page, 10, 2, id)?.try_into().expect("2 bytes"));
        let mut out = Vec::new();
        for i in 0..count as usize {
            let at = HEADER + i * ELEMENT;
            let element = field(page, at, ELEMENT, id)?;
            let word = |j: usize| u32::from_le_bytes(element[j..j + 4].try_into().expect("4"));
            if flags & LEAF_PAGE != 0 {
                let key_at = at + word(4) as usize;
                let key = field(page, key_at, word(8) as usize, id)?.to_vec();
                let value = field(page, key_at + key.len(), word(12) as usize, id)?.to_vec();
                out.push((word(0), key, value));
            } else if flags & BRANCH_PAGE != 0 {
                let child = u64::from_le_bytes(element[8..16].try_into().expect("8 bytes"));
                out.extend(self.entries(Node::Page(child), depth + 1)?);
            } else {
                return Err(page_error(id, format!("flags {flags:#x}: not a tree page")));
            }
        }
        Ok(out)
    }

    /// Page `id` with the pages it overflows into.
    fn page(&mut self, id: u64) -> Result<&'a [u8], BoltError> {
        if id < 2 || id >= self.pages || !self.seen.insert(id) {
            return Err(page_error(id, "not a page a tree may use (or used twice)"));
        }
        let start = id as usize * self.page_size;
        let head = self
            .file
            .get(start..start + HEADER)
            .ok_or_else(|| page_error(id, "beyond the end of the file"))?;
        let overflow = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes")) as usize;
        let end = start + (overflow + 1) * self.page_size;
        self.file
            .get(start..end)
            .ok_or_else(|| page_error(id, "beyond the end of the file"))
    }
}

fn field(page: &[u8], at: usize, len: usize, id: u64) -> Result<&[u8], BoltError> {
    at.checked_add(len)
        .and_then(|end| page.get(at..end))
        .ok_or_else(|| page_error(id, "an element points outside its page"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(name: &str, entries: Vec<Entry>) -> Bucket {
        Bucket {
            name: name.into(),
            entries,
        }
    }

    #[test]
    fn buckets_come_back_in_name_order_with_their_entries() {
        let many: Vec<Entry> = (0..5_000u32)
            .map(|i| (i.to_be_bytes().to_vec(), vec![i as u8; (i % 300) as usize]))
            .collect();
        let buckets = vec![
            bucket("meta", vec![(b"a".to_vec(), b"1".to_vec())]),
            bucket("key", many),
            bucket("empty", vec![]),
            bucket("big", vec![(b"v".to_vec(), vec![7; 3 * PAGE_SIZE + 5])]),
        ];
        let file = write(&buckets);
        assert_eq!(file.len() % PAGE_SIZE, 0);
        let mut expected = buckets.clone();
        expected.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(read(&file).unwrap(), expected);
    }

    #[test]
    fn a_damaged_meta_page_or_page_reference_is_an_error() {
        let file = write(&[bucket("k", vec![(b"a".to_vec(), b"b".to_vec())])]);
        assert!(matches!(read(&file[..100]), Err(BoltError::Invalid(_))));
        let mut bad_sum = file.clone();
        bad_sum[HEADER + 20] ^= 1;
        bad_sum[PAGE_SIZE + HEADER + 20] ^= 1;
        assert_eq!(
            read(&bad_sum),
            Err(BoltError::Invalid("meta page checksum mismatch".into()))
        );
        // Every page but the first two and the freelist is cut off.
        assert!(matches!(
            read(&file[..3 * PAGE_SIZE]),
            Err(BoltError::Page { .. })
        ));
        assert!(read(b"not a database at all").is_err());
    }

    #[test]
    fn any_damage_to_a_small_database_is_read_or_refused_without_panicking() {
        let entries = (0..200u32)
            .map(|i| (i.to_be_bytes().to_vec(), vec![1; 40]))
            .collect();
        let mut file = write(&[bucket("key", entries), bucket("meta", vec![])]);
        for at in 0..file.len() {
            for bit in [0x01, 0x80] {
                file[at] ^= bit;
                let _ = read(&file);
                file[at] ^= bit;
            }
        }
    }
}
