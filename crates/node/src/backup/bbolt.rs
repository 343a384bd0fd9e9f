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

/// A bucket to write: its name and its `len` entries, produced by index in key order
/// (keys strictly increasing, which is checked). Each entry is produced twice: once to
/// lay the pages out, once to write them, so the database never has to be held whole.
pub struct BucketSource<'a> {
    pub name: Vec<u8>,
    pub len: usize,
    pub entry: Box<dyn Fn(usize) -> Entry + Send + 'a>,
}

impl<'a> BucketSource<'a> {
    /// A bucket whose entries are already in memory.
    pub fn of(name: &[u8], entries: Vec<Entry>) -> BucketSource<'a> {
        BucketSource {
            name: name.to_vec(),
            len: entries.len(),
            entry: Box::new(move |i| entries[i].clone()),
        }
    }
}

/// The database holding `buckets`, whole (panics on unsorted keys).
#[cfg(test)]
pub fn write(buckets: &[Bucket]) -> Vec<u8> {
    let sources: Vec<BucketSource<'_>> = buckets
        .iter()
        .map(|b| BucketSource::of(&b.name, b.entries.clone()))
        .collect();
    let plan = Plan::of(&sources).expect("test buckets are sorted");
    plan.pages(&sources).flatten().collect()
}

/// Where every page of the database goes, worked out before any is written.
pub struct Plan {
    pages: Vec<PagePlan>,
    /// The page count: the file is this many pages long.
    count: u64,
    root: u64,
    /// Each bucket's root page, by source index.
    bucket_roots: Vec<u64>,
    /// Source indexes in name order.
    order: Vec<usize>,
}

/// One page (with its overflow), in file order.
enum PagePlan {
    Meta {
        txid: u64,
    },
    Freelist,
    /// Entries `start..end` of a bucket (`None`: the root bucket, listing the others).
    Leaf {
        bucket: Option<usize>,
        start: usize,
        end: usize,
        size: usize,
    },
    Branch {
        children: Vec<(Vec<u8>, u64)>,
        size: usize,
    },
}

impl Plan {
    /// Lay out the database of `buckets`. Refused if two buckets share a name or a
    /// bucket's keys are not strictly increasing.
    pub fn of(buckets: &[BucketSource<'_>]) -> Result<Plan, String> {
        let mut order: Vec<usize> = (0..buckets.len()).collect();
        order.sort_by(|&a, &b| buckets[a].name.cmp(&buckets[b].name));
        let mut plan = Plan {
            pages: vec![
                PagePlan::Meta { txid: 1 },
                PagePlan::Meta { txid: 2 },
                PagePlan::Freelist,
            ],
            count: 3,
            root: 0,
            bucket_roots: vec![0; buckets.len()],
            order,
        };
        for at in 0..plan.order.len() {
            let b = plan.order[at];
            let source = &buckets[b];
            let sizes = (0..source.len).map(|i| {
                let (k, v) = (source.entry)(i);
                let len = ELEMENT + k.len() + v.len();
                (k, len)
            });
            plan.bucket_roots[b] = plan
                .tree(Some(b), sizes)
                .map_err(|e| format!("bucket {}: {e}", String::from_utf8_lossy(&source.name)))?;
        }
        let names: Vec<(Vec<u8>, usize)> = plan
            .order
            .iter()
            .map(|&b| {
                let name = buckets[b].name.clone();
                let len = ELEMENT + name.len() + BUCKET_HEADER;
                (name, len)
            })
            .collect();
        plan.root = plan
            .tree(None, names.into_iter())
            .map_err(|_| "two buckets share a name".to_string())?;
        Ok(plan)
    }

    /// The file's length in bytes.
    pub fn file_len(&self) -> u64 {
        self.count * PAGE_SIZE as u64
    }

    fn allocate(&mut self, page: PagePlan, size: usize) -> u64 {
        let id = self.count;
        self.count += size.div_ceil(PAGE_SIZE).max(1) as u64;
        self.pages.push(page);
        id
    }

    /// Lay out a B+tree over entries given as (key, element size); returns its root.
    fn tree(
        &mut self,
        bucket: Option<usize>,
        entries: impl Iterator<Item = (Vec<u8>, usize)>,
    ) -> Result<u64, String> {
        let mut level: Vec<(Vec<u8>, u64)> = Vec::new();
        let (mut start, mut size) = (0, HEADER);
        let mut first: Option<Vec<u8>> = None;
        let mut last: Option<Vec<u8>> = None;
        let mut n = 0;
        for (key, len) in entries {
            if last.as_ref().is_some_and(|l| *l >= key) {
                return Err(format!("keys out of order at {key:?}"));
            }
            if n > start && size + len > PAGE_SIZE {
                let id = self.leaf(bucket, start..n, size);
                level.push((first.take().expect("a page's first key"), id));
                (start, size) = (n, HEADER);
            }
            if first.is_none() {
                first = Some(key.clone());
            }
            size += len;
            last = Some(key);
            n += 1;
        }
        if n > start || level.is_empty() {
            let id = self.leaf(bucket, start..n, size);
            level.push((first.unwrap_or_default(), id));
        }
        while level.len() > 1 {
            level = self.branches(level);
        }
        Ok(level[0].1)
    }

    /// A leaf page holding entries `range` of `bucket`; returns its id.
    fn leaf(&mut self, bucket: Option<usize>, range: std::ops::Range<usize>, size: usize) -> u64 {
        let leaf = PagePlan::Leaf {
            bucket,
            start: range.start,
            end: range.end,
            size,
        };
        self.allocate(leaf, size)
    }

    /// Branch pages over `children` (first key, page); returns the level above.
    fn branches(&mut self, children: Vec<(Vec<u8>, u64)>) -> Vec<(Vec<u8>, u64)> {
        let mut above = Vec::new();
        let mut page: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut size = HEADER;
        for child in children {
            let len = ELEMENT + child.0.len();
            // At least two children per page, so every level shrinks.
            if page.len() >= 2 && size + len > PAGE_SIZE {
                above.push(self.branch(std::mem::take(&mut page), size));
                size = HEADER;
            }
            size += len;
            page.push(child);
        }
        if !page.is_empty() {
            above.push(self.branch(page, size));
        }
        above
    }

    fn branch(&mut self, children: Vec<(Vec<u8>, u64)>, size: usize) -> (Vec<u8>, u64) {
        let first = children[0].0.clone();
        let id = self.allocate(PagePlan::Branch { children, size }, size);
        (first, id)
    }

    /// The pages, in file order, each rendered when asked for.
    pub fn pages<'p>(
        &'p self,
        buckets: &'p [BucketSource<'_>],
    ) -> impl Iterator<Item = Vec<u8>> + 'p {
        let mut id = 0u64;
        self.pages.iter().map(move |page| {
            let bytes = self.render(page, id, buckets);
            id += (bytes.len() / PAGE_SIZE) as u64;
            bytes
        })
    }

    fn render(&self, page: &PagePlan, id: u64, buckets: &[BucketSource<'_>]) -> Vec<u8> {
        match page {
            PagePlan::Meta { txid } => {
                let mut p = header(id, META_PAGE, 0, PAGE_SIZE);
                p.extend_from_slice(&meta(self.root, self.count, *txid));
                p.resize(PAGE_SIZE, 0);
                p
            }
            PagePlan::Freelist => {
                let mut p = header(id, FREELIST_PAGE, 0, PAGE_SIZE);
                p.resize(PAGE_SIZE, 0);
                p
            }
            PagePlan::Leaf {
                bucket,
                start,
                end,
                size,
            } => {
                let entries: Vec<(u32, Entry)> = match bucket {
                    Some(b) => (*start..*end)
                        .map(|i| (0, (buckets[*b].entry)(i)))
                        .collect(),
                    None => self.order[*start..*end]
                        .iter()
                        .map(|&b| {
                            let mut value = self.bucket_roots[b].to_le_bytes().to_vec();
                            value.extend_from_slice(&0u64.to_le_bytes()); // sequence
                            (BUCKET_LEAF, (buckets[b].name.clone(), value))
                        })
                        .collect(),
                };
                leaf(id, &entries, *size)
            }
            PagePlan::Branch { children, size } => branch(id, children, *size),
        }
    }
}

fn header(id: u64, flags: u16, count: u16, size: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(size.next_multiple_of(PAGE_SIZE).max(PAGE_SIZE));
    p.extend_from_slice(&id.to_le_bytes());
    p.extend_from_slice(&flags.to_le_bytes());
    p.extend_from_slice(&count.to_le_bytes());
    p.extend_from_slice(&overflow(size).to_le_bytes());
    p
}

fn meta(root: u64, pages: u64, txid: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(META_LEN);
    for word in [MAGIC, VERSION, PAGE_SIZE as u32, 0] {
        m.extend_from_slice(&word.to_le_bytes());
    }
    // Root bucket (root page, sequence), freelist page, page count, txid.
    for word in [root, 0, 2, pages, txid] {
        m.extend_from_slice(&word.to_le_bytes());
    }
    m.extend_from_slice(&fnv64a(&m).to_le_bytes());
    m
}

/// A leaf page: the elements, then each key followed by its value.
fn leaf(id: u64, entries: &[(u32, Entry)], size: usize) -> Vec<u8> {
    let mut p = header(id, LEAF_PAGE, entries.len() as u16, size);
    let mut data = HEADER + entries.len() * ELEMENT;
    for (i, (flags, (key, value))) in entries.iter().enumerate() {
        let element = HEADER + i * ELEMENT;
        for word in [
            *flags,
            (data - element) as u32,
            key.len() as u32,
            value.len() as u32,
        ] {
            p.extend_from_slice(&word.to_le_bytes());
        }
        data += key.len() + value.len();
    }
    for (_, (key, value)) in entries {
        p.extend_from_slice(key);
        p.extend_from_slice(value);
    }
    debug_assert_eq!(p.len(), size);
    p.resize(size.next_multiple_of(PAGE_SIZE).max(PAGE_SIZE), 0);
    p
}

/// A branch page: the elements (key position, key size, child page), then the keys.
fn branch(id: u64, children: &[(Vec<u8>, u64)], size: usize) -> Vec<u8> {
    let mut p = header(id, BRANCH_PAGE, children.len() as u16, size);
    let mut data = HEADER + children.len() * ELEMENT;
    for (i, (key, child)) in children.iter().enumerate() {
        let element = HEADER + i * ELEMENT;
        p.extend_from_slice(&((data - element) as u32).to_le_bytes());
        p.extend_from_slice(&(key.len() as u32).to_le_bytes());
        p.extend_from_slice(&child.to_le_bytes());
        data += key.len();
    }
    for (key, _) in children {
        p.extend_from_slice(key);
    }
    debug_assert_eq!(p.len(), size);
    p.resize(size.next_multiple_of(PAGE_SIZE).max(PAGE_SIZE), 0);
    p
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
        // No page lies past the end of the file, whatever the meta page claims.
        pages: meta.pages.min((file.len() / meta.page_size) as u64),
        seen: HashSet::new(),
        budget: file.len(),
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
        let mut entries: Vec<Entry> = Vec::new();
        for (flags, key, value) in r.entries(node, 0)? {
            if flags & BUCKET_LEAF != 0 {
                return Err(BoltError::Invalid("a nested bucket".into()));
            }
            if entries.last().is_some_and(|(last, _)| *last >= key) {
                return Err(BoltError::Invalid("keys out of order in a bucket".into()));
            }
            entries.push((key, value));
        }
        buckets.push(Bucket { name, entries });
    }
    if buckets.windows(2).any(|w| w[0].name >= w[1].name) {
        return Err(BoltError::Invalid("buckets out of order".into()));
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
    /// Bytes of keys and values still allowed: a real file stores no byte twice, so
    /// entries adding up to more than the file are elements pointing at shared bytes.
    budget: usize,
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
                let key = field(page, key_at, word(8) as usize, id)?;
                let value = field(page, key_at + key.len(), word(12) as usize, id)?;
                self.budget = self
                    .budget
                    .checked_sub(key.len() + value.len())
                    .ok_or_else(|| page_error(id, "elements share their bytes"))?;
                out.push((word(0), key.to_vec(), value.to_vec()));
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
        let unusable = || page_error(id, "not a page a tree may use (or used twice)");
        if id < 2 || id >= self.pages {
            return Err(unusable());
        }
        // Below `pages`, which the file's length bounds: no overflow.
        let start = id as usize * self.page_size;
        let head = self
            .file
            .get(start..start + HEADER)
            .ok_or_else(|| page_error(id, "beyond the end of the file"))?;
        let overflow = u64::from(u32::from_le_bytes(
            head[12..16].try_into().expect("4 bytes"),
        ));
        let last = id + overflow;
        if last >= self.pages {
            return Err(page_error(id, "overflows past the end of the file"));
        }
        for page in id..=last {
            if !self.seen.insert(page) {
                return Err(unusable());
            }
        }
        let end = (last as usize + 1) * self.page_size;
        Ok(&self.file[start..end])
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

    #[test]
    fn a_meta_page_claiming_pages_past_the_file_is_refused() {
        let mut file = write(&[bucket("k", vec![(b"a".to_vec(), b"b".to_vec())])]);
        for page in [0, PAGE_SIZE] {
            let meta = page + HEADER;
            file[meta + 16..meta + 24].copy_from_slice(&(1u64 << 60).to_le_bytes()); // root
            file[meta + 40..meta + 48].copy_from_slice(&u64::MAX.to_le_bytes()); // pages
            file[meta + 56..meta + 64].copy_from_slice(&0u64.to_le_bytes()); // no checksum
        }
        assert!(matches!(read(&file), Err(BoltError::Page { .. })));
    }

    #[test]
    fn elements_sharing_their_bytes_are_refused() {
        // A leaf whose 200 elements all point at one 800-byte value: 160 KB of
        // entries out of a few pages.
        let mut file = write(&[bucket("k", vec![(b"a".to_vec(), vec![1; 800])])]);
        let leaf = 3 * PAGE_SIZE; // the bucket's only page, after meta, meta, freelist
        assert_eq!(file[leaf + 8], LEAF_PAGE as u8);
        file[leaf + 10..leaf + 12].copy_from_slice(&200u16.to_le_bytes());
        let data = HEADER + ELEMENT; // where the single element's key was
        for i in 0..200usize {
            let at = leaf + HEADER + i * ELEMENT;
            let pos = (data + 16 * 200).saturating_sub(HEADER + i * ELEMENT) as u32;
            for (j, w) in [0u32, pos, 0, 800].iter().enumerate() {
                file[at + 4 * j..at + 4 * j + 4].copy_from_slice(&w.to_le_bytes());
            }
        }
        let err = read(&file).unwrap_err().to_string();
        assert!(err.contains("share their bytes"), "{err}");
    }
}
