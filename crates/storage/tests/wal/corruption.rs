//! Damage that is not a torn tail refuses to start, names the file and byte, and leaves the
//! files as they were.

use std::fs;

use crate::{
    append_synced, corrupt, encode_record, encoded_len, fast, flip_byte, open, payload, payloads,
    record_offsets, records_only, segment_path, segments,
};

/// A log in one segment holding records `1..=count`.
fn single_segment(count: u64) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), fast(1 << 20));
    append_synced(&mut wal, 1..=count);
    tmp
}

/// A log of many small segments holding records `1..=count`.
fn many_segments(count: u64) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), fast(150));
    append_synced(&mut wal, 1..=count);
    assert!(segments(tmp.path()).len() >= 4);
    tmp
}

#[test]
fn a_flipped_byte_in_an_early_record_is_corruption_at_that_record() {
    let tmp = single_segment(10);
    let file = segment_path(tmp.path(), 1);
    let before = fs::read(&file).unwrap();
    let at = record_offsets(1, 10)[2];
    flip_byte(&file, at + 20);
    let (named, offset, reason, display) = corrupt(tmp.path());
    assert_eq!((named.clone(), offset), (file.clone(), at));
    assert!(reason.contains("checksum"), "{reason}");
    assert!(reason.contains("valid record follows"), "{reason}");
    assert!(
        display.starts_with(&format!(
            "corrupt write-ahead log: {} at byte {at}: ",
            file.display()
        )),
        "{display}"
    );
    assert!(display.contains("refusing to start"), "{display}");
    // Nothing was repaired or truncated.
    let mut after = fs::read(&file).unwrap();
    after[(at + 20) as usize] ^= 0x5a;
    assert_eq!(after, before);
}

#[test]
fn every_flipped_byte_is_corruption_unless_it_is_in_the_last_record() {
    const COUNT: u64 = 8;
    let tmp = single_segment(COUNT);
    let file = segment_path(tmp.path(), 1);
    let original = fs::read(&file).unwrap();
    let offsets = record_offsets(1, COUNT);
    for (index, &start) in offsets.iter().enumerate() {
        let seq = index as u64 + 1;
        for at in start..start + encoded_len(seq) {
            fs::write(&file, &original).unwrap();
            flip_byte(&file, at);
            if seq < COUNT {
                let (named, offset, _, _) = corrupt(tmp.path());
                assert_eq!((named, offset), (file.clone(), start), "flip at {at}");
            } else {
                // A damaged last record is indistinguishable from a torn write.
                let (_, recovered) = open(tmp.path(), fast(1 << 20));
                assert_eq!(recovered.records, payloads(1..=COUNT - 1), "flip at {at}");
                assert_eq!(recovered.repaired.unwrap().offset, start);
            }
        }
    }
}

#[test]
fn a_length_running_past_the_end_with_records_after_it_is_corruption() {
    let tmp = single_segment(10);
    let file = segment_path(tmp.path(), 1);
    let at = record_offsets(1, 10)[3];
    let mut bytes = fs::read(&file).unwrap();
    bytes[at as usize + 4..at as usize + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    fs::write(&file, bytes).unwrap();
    let (named, offset, reason, _) = corrupt(tmp.path());
    assert_eq!((named, offset), (file, at));
    assert!(reason.contains("past the end"), "{reason}");
}

#[test]
fn damage_in_a_segment_that_is_not_the_last_is_corruption() {
    let tmp = many_segments(60);
    let files = segments(tmp.path());
    let second = &files[1];
    let base: u64 = second
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = fs::read(second).unwrap();
    // The last record of the segment: were it the last segment, this would be a torn tail.
    let offsets = record_offsets(base, count_records(&bytes));
    let last = *offsets.last().unwrap();
    flip_byte(second, last + 10);
    let (named, offset, reason, _) = corrupt(tmp.path());
    assert_eq!((&named, offset), (second, last));
    assert!(reason.contains("not the last"), "{reason}");
}

#[test]
fn a_short_segment_that_is_not_the_last_is_corruption() {
    let tmp = many_segments(60);
    let files = segments(tmp.path());
    let len = fs::metadata(&files[2]).unwrap().len();
    fs::File::options()
        .write(true)
        .open(&files[2])
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let (named, _, reason, _) = corrupt(tmp.path());
    assert_eq!(named, files[2]);
    assert!(reason.contains("not the last"), "{reason}");
}

#[test]
fn a_missing_middle_segment_is_a_gap() {
    let tmp = many_segments(60);
    let files = segments(tmp.path());
    fs::remove_file(&files[2]).unwrap();
    let (named, offset, reason, _) = corrupt(tmp.path());
    assert_eq!((named, offset), (files[3].clone(), 0));
    assert!(reason.contains("gap"), "{reason}");
    // Refusing to start deleted nothing.
    assert_eq!(segments(tmp.path()).len(), files.len() - 1);
}

#[test]
fn a_missing_first_segment_is_corruption() {
    let tmp = many_segments(60);
    let files = segments(tmp.path());
    fs::remove_file(&files[0]).unwrap();
    let (named, offset, reason, _) = corrupt(tmp.path());
    assert_eq!((named, offset), (files[1].clone(), 0));
    assert!(reason.contains("no checkpoint"), "{reason}");
}

#[test]
fn a_record_out_of_sequence_is_corruption() {
    let tmp = single_segment(5);
    let file = segment_path(tmp.path(), 1);
    let mut bytes = records_only(&file);
    // A valid record, but for seq 3 again, where 6 belongs.
    bytes.extend(encode_record(1, 3, &payload(3)));
    fs::write(&file, &bytes).unwrap();
    let (named, offset, reason, _) = corrupt(tmp.path());
    assert_eq!((named, offset), (file, record_offsets(1, 6)[5]));
    assert!(reason.contains("seq 3 where seq 6 belongs"), "{reason}");
}

#[test]
fn a_renamed_segment_is_corruption() {
    let tmp = many_segments(60);
    let files = segments(tmp.path());
    let last = files.last().unwrap();
    let base: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    fs::rename(last, segment_path(tmp.path(), base + 1)).unwrap();
    let (_, _, reason, _) = corrupt(tmp.path());
    assert!(reason.contains("gap"), "{reason}");
}

#[test]
fn a_directory_where_a_segment_belongs_is_refused() {
    let tmp = single_segment(3);
    fs::create_dir(segment_path(tmp.path(), 4)).unwrap();
    let (_, _, reason, _) = corrupt(tmp.path());
    assert!(reason.contains("not a regular file"), "{reason}");
}

fn count_records(bytes: &[u8]) -> u64 {
    let (mut at, mut count) = (0usize, 0);
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        at += ekmat_storage::HEADER_LEN + len;
        count += 1;
    }
    count
}

mod arbitrary_content {
    use proptest::prelude::*;

    use ekmat_storage::Wal;

    use crate::{fast, segment_path};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// No content of a segment file makes recovery panic or hang.
        #[test]
        fn never_panics(first in proptest::collection::vec(any::<u8>(), 0..300),
                        second in proptest::collection::vec(any::<u8>(), 0..300),
                        second_base in 1u64..40) {
            let tmp = tempfile::tempdir().unwrap();
            std::fs::write(segment_path(tmp.path(), 1), &first).unwrap();
            std::fs::write(segment_path(tmp.path(), second_base), &second).unwrap();
            if let Ok((mut wal, _)) = Wal::open(tmp.path(), fast(128)) {
                let seq = wal.append(b"after").unwrap();
                wal.sync().unwrap();
                drop(wal);
                let (_, recovered) = Wal::open(tmp.path(), fast(128)).unwrap();
                prop_assert_eq!(recovered.last_seq, seq);
            }
        }
    }
}
