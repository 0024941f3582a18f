use std::collections::BTreeMap;
use std::fs;
use std::sync::mpsc;

use proptest::prelude::*;

use super::*;

fn small_options() -> LogOptions {
    LogOptions {
        segment_bytes_max: 4096,
        segment_entries_max: 8,
    }
}

fn payload(index: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (index as usize * 31 + i) as u8).collect()
}

fn append_durably(log: &mut SegmentedLog, records: &[(u64, Vec<u8>)]) {
    let (tx, rx) = mpsc::channel();
    log.append(
        records.iter().map(|(i, p)| (*i, p.as_slice())),
        Some(Box::new(move |r| tx.send(r.is_ok()).expect("test receiver"))),
    )
    .expect("append");
    assert!(rx.recv().expect("durable callback"), "fsync failed");
}

fn all_records(log: &SegmentedLog) -> Vec<(u64, Vec<u8>)> {
    log.read_range(0, u64::MAX).expect("read")
}

#[test]
fn append_read_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records: Vec<_> = (1..=50).map(|i| (i, payload(i, 100))).collect();
    {
        let mut log = SegmentedLog::open(dir.path(), small_options()).expect("open");
        append_durably(&mut log, &records);
        assert!(log.segment_count() > 1, "segments rolled");
        assert_eq!(all_records(&log), records);
    }
    let log = SegmentedLog::open(dir.path(), small_options()).expect("reopen");
    assert_eq!(log.first_index(), Some(1));
    assert_eq!(log.last_index(), Some(50));
    assert_eq!(all_records(&log), records);
    assert_eq!(log.read_range(10, 13).expect("read"), records[9..12].to_vec());
}

#[test]
fn out_of_order_append_is_rejected_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = SegmentedLog::open(dir.path(), small_options()).expect("open");
    append_durably(&mut log, &[(1, b"a".to_vec())]);
    let err = log.append([(3u64, &b"c"[..])], None).expect_err("gap");
    assert!(matches!(err, LogError::OutOfOrder { expected: 2, got: 3 }));
    assert_eq!(log.last_index(), Some(1));
}

#[test]
fn purge_then_truncate_everything_then_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = SegmentedLog::open(dir.path(), small_options()).expect("open");
    let records: Vec<_> = (1..=20).map(|i| (i, payload(i, 10))).collect();
    append_durably(&mut log, &records);
    log.purge_upto(20).expect("purge");
    assert_eq!(log.first_index(), None);
    assert_eq!(log.segment_count(), 0, "every segment was fully purged");
    append_durably(&mut log, &[(21, b"next".to_vec())]);
    drop(log);
    let log = SegmentedLog::open(dir.path(), small_options()).expect("reopen");
    assert_eq!(log.first_index(), Some(21));
    assert_eq!(log.purged_upto(), Some(20));
}

#[test]
fn meta_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = SegmentedLog::open(dir.path(), small_options()).expect("open");
    log.save_meta("vote", b"term-7").expect("save");
    drop(log);
    let log = SegmentedLog::open(dir.path(), small_options()).expect("reopen");
    assert_eq!(log.meta("vote"), Some(&b"term-7"[..]));
}

fn last_segment_path(dir: &Path) -> PathBuf {
    let mut logs: Vec<_> = fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs.pop().expect("a segment")
}

/// Appends `records` without waiting for their fsync and closes the log: they are in the file,
/// the durable mark does not cover them.
fn append_unacknowledged(log: &mut SegmentedLog, records: &[(u64, Vec<u8>)]) {
    log.append(records.iter().map(|(i, p)| (*i, p.as_slice())), None)
        .expect("append");
}

/// A crash during an append can leave any prefix of its record on disk: recovery must keep every
/// acknowledged record and drop the partial one, at every cut point.
#[test]
fn torn_unacknowledged_record_at_every_byte_offset() {
    let template = tempfile::tempdir().expect("tempdir");
    let records: Vec<_> = (1..=3).map(|i| (i, payload(i, 40))).collect();
    {
        let mut log = SegmentedLog::open(template.path(), LogOptions::default()).expect("open");
        append_durably(&mut log, &records[..2]);
        append_unacknowledged(&mut log, &records[2..]);
    }
    let seg = last_segment_path(template.path());
    let full = fs::read(&seg).expect("read segment");
    let last_frame_len = format::HEADER_BYTES + 40;
    let last_start = full.len() - last_frame_len;
    for cut in last_start..full.len() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(seg.file_name().expect("name"));
        fs::write(&path, &full[..cut]).expect("write torn copy");
        let log = SegmentedLog::open(dir.path(), LogOptions::default()).expect("recovers from torn tail");
        assert_eq!(all_records(&log), records[..2].to_vec(), "cut at {cut}");
        assert_eq!(
            fs::metadata(&path).expect("stat").len(),
            last_start as u64,
            "torn bytes cut off"
        );
    }
}

fn expect_corrupt_at(dir: &Path, options: LogOptions, path: &Path, offset: u64) -> String {
    match SegmentedLog::open(dir, options).err().expect("must refuse") {
        LogError::Corrupt {
            path: p,
            offset: o,
            reason,
        } => {
            assert_eq!((p.as_path(), o), (path, offset), "{reason}");
            reason
        }
        other => panic!("expected Corrupt, got {other}"),
    }
}

/// A flipped bit in a record that is followed by valid records is corruption, not a torn write:
/// open must fail naming the file and offset instead of dropping acknowledged data.
#[test]
fn bit_flip_in_the_middle_is_a_startup_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records: Vec<_> = (1..=5).map(|i| (i, payload(i, 32))).collect();
    {
        let mut log = SegmentedLog::open(dir.path(), LogOptions::default()).expect("open");
        append_durably(&mut log, &records);
    }
    let seg = last_segment_path(dir.path());
    let mut bytes = fs::read(&seg).expect("read");
    let second_record = format::SEGMENT_HEADER_AREA_BYTES as usize + format::HEADER_BYTES + 32;
    bytes[second_record + format::HEADER_BYTES + 5] ^= 0x10;
    fs::write(&seg, &bytes).expect("write");
    expect_corrupt_at(dir.path(), LogOptions::default(), &seg, second_record as u64);
}

/// The same in records no fsync covered yet (no durable mark): the intact successor still tells
/// the damage from a torn append.
#[test]
fn bit_flip_before_an_intact_unacknowledged_record_is_a_startup_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records: Vec<_> = (1..=3).map(|i| (i, payload(i, 32))).collect();
    {
        let mut log = SegmentedLog::open(dir.path(), LogOptions::default()).expect("open");
        append_unacknowledged(&mut log, &records);
    }
    let seg = last_segment_path(dir.path());
    let mut bytes = fs::read(&seg).expect("read");
    let second_record = format::SEGMENT_HEADER_AREA_BYTES as usize + format::HEADER_BYTES + 32;
    bytes[second_record + format::HEADER_BYTES + 5] ^= 0x10;
    fs::write(&seg, &bytes).expect("write");
    let reason = expect_corrupt_at(dir.path(), LogOptions::default(), &seg, second_record as u64);
    assert!(reason.contains("intact"), "{reason}");
}

/// A flipped bit in the last record, acknowledged and covered by the durable mark, is corruption:
/// it used to be cut as if it were a torn append, dropping an acknowledged record.
#[test]
fn bit_flip_in_the_last_acknowledged_record_is_a_startup_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records: Vec<_> = (1..=3).map(|i| (i, payload(i, 32))).collect();
    {
        let mut log = SegmentedLog::open(dir.path(), LogOptions::default()).expect("open");
        append_durably(&mut log, &records);
    }
    let seg = last_segment_path(dir.path());
    let mut bytes = fs::read(&seg).expect("read");
    let n = bytes.len();
    bytes[n - 3] ^= 0x01;
    fs::write(&seg, &bytes).expect("write");
    let last_record = (n - format::HEADER_BYTES - 32) as u64;
    let reason = expect_corrupt_at(dir.path(), LogOptions::default(), &seg, last_record);
    assert!(reason.contains("durable mark"), "{reason}");
    // A file cut short below the mark (acknowledged records gone) is refused the same way.
    fs::write(&seg, &bytes[..last_record as usize]).expect("write");
    expect_corrupt_at(dir.path(), LogOptions::default(), &seg, last_record);
}

/// The same flip in a last record no fsync covered is a torn append: only it is dropped.
#[test]
fn bit_flip_in_an_unacknowledged_last_record_drops_only_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records: Vec<_> = (1..=3).map(|i| (i, payload(i, 32))).collect();
    {
        let mut log = SegmentedLog::open(dir.path(), LogOptions::default()).expect("open");
        append_durably(&mut log, &records[..2]);
        append_unacknowledged(&mut log, &records[2..]);
    }
    let seg = last_segment_path(dir.path());
    let mut bytes = fs::read(&seg).expect("read");
    let n = bytes.len();
    bytes[n - 3] ^= 0x01;
    fs::write(&seg, &bytes).expect("write");
    let log = SegmentedLog::open(dir.path(), LogOptions::default()).expect("open");
    assert_eq!(all_records(&log), records[..2].to_vec());
}

/// A segment of the first format (frames from offset 0, no header) is refused by name, never
/// read as something else.
#[test]
fn a_segment_without_a_header_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut frames = Vec::new();
    for i in 1..=300u64 {
        format::encode(i, &payload(i, 20), &mut frames);
    }
    let seg = dir.path().join(format!("{:020}.log", 1));
    fs::write(&seg, &frames).expect("write");
    let reason = expect_corrupt_at(dir.path(), LogOptions::default(), &seg, 0);
    assert!(reason.contains("format version 1"), "{reason}");
}

#[test]
fn corruption_in_an_earlier_segment_is_a_startup_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records: Vec<_> = (1..=20).map(|i| (i, payload(i, 10))).collect();
    {
        let mut log = SegmentedLog::open(dir.path(), small_options()).expect("open");
        append_durably(&mut log, &records);
    }
    let first = dir.path().join(format!("{:020}.log", 1));
    let mut bytes = fs::read(&first).expect("read");
    let n = bytes.len();
    bytes[n - 1] ^= 0x01; // last record of a sealed segment
    fs::write(&first, &bytes).expect("write");
    assert!(matches!(
        SegmentedLog::open(dir.path(), small_options()),
        Err(LogError::Corrupt { .. })
    ));
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<usize>),
    TruncateAfter(u8),
    Purge(u8),
    Reopen,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(0usize..300, 1..6).prop_map(Op::Append),
        1 => any::<u8>().prop_map(Op::TruncateAfter),
        1 => any::<u8>().prop_map(Op::Purge),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random append / truncate / purge / reopen sequences against a BTreeMap model.
    #[test]
    fn matches_model(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = SegmentedLog::open(dir.path(), small_options()).expect("open");
        let mut model: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut next = 1u64;
        for op in ops {
            match op {
                Op::Append(lens) => {
                    let recs: Vec<_> = lens.iter().enumerate().map(|(k, len)| (next + k as u64, payload(next + k as u64, *len))).collect();
                    append_durably(&mut log, &recs);
                    for (i, p) in recs { model.insert(i, p); }
                    next += lens.len() as u64;
                }
                Op::TruncateAfter(back) => {
                    let Some((&first, _)) = model.first_key_value() else { continue };
                    let keep = (next - 1).saturating_sub(u64::from(back) % 8).max(first);
                    log.truncate_after(Some(keep)).expect("truncate");
                    model.retain(|&i, _| i <= keep);
                    next = keep + 1;
                }
                Op::Purge(fwd) => {
                    let Some((&first, _)) = model.first_key_value() else { continue };
                    let upto = (first + u64::from(fwd) % 8).min(next - 1);
                    log.purge_upto(upto).expect("purge");
                    model.retain(|&i, _| i > upto);
                }
                Op::Reopen => {
                    drop(log);
                    log = SegmentedLog::open(dir.path(), small_options()).expect("reopen");
                }
            }
            let expected: Vec<_> = model.iter().map(|(i, p)| (*i, p.clone())).collect();
            prop_assert_eq!(all_records(&log), expected);
            prop_assert_eq!(log.last_index(), model.last_key_value().map(|(i, _)| *i));
        }
    }
}

/// A format-1 segment small enough to fit in the header area is refused too, never removed as a
/// creation a crash interrupted (that would drop acknowledged records on an upgrade).
#[test]
fn a_small_segment_without_a_header_is_refused_not_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut frames = Vec::new();
    for i in 7..=9u64 {
        format::encode(i, &payload(i, 20), &mut frames);
    }
    let seg = dir.path().join(format!("{:020}.log", 7));
    fs::write(&seg, &frames).expect("write");
    let reason = expect_corrupt_at(dir.path(), LogOptions::default(), &seg, 0);
    assert!(reason.contains("format version 1"), "{reason}");
    assert!(seg.exists(), "the file is left for the operator");
}

/// A segment of another version (written by a build of another data format) is refused by its
/// version and left in place, also when it holds no record yet and fits the header area: it is
/// never removed as a creation a crash interrupted. One slot or the other may be the whole one.
#[test]
fn a_segment_of_another_version_is_refused_not_removed() {
    for (slot, version) in [(0u64, 2u32), (1, 2), (0, 3), (1, 3)] {
        let dir = tempfile::tempdir().expect("tempdir");
        // A whole header slot, crc included, of an earlier version (data formats 1 and 2).
        let mut header = [0u8; format::HEADER_SLOT_BYTES];
        header[..8].copy_from_slice(b"BASALTSG");
        header[8..12].copy_from_slice(&version.to_le_bytes());
        header[12..20].copy_from_slice(&slot.to_le_bytes());
        header[20..28].copy_from_slice(&1u64.to_le_bytes());
        header[36..44].copy_from_slice(&format::SEGMENT_HEADER_AREA_BYTES.to_le_bytes());
        let crc = crc32fast::hash(&header[..44]);
        header[44..48].copy_from_slice(&crc.to_le_bytes());
        let mut area = vec![0u8; format::SEGMENT_HEADER_AREA_BYTES as usize];
        let at = (slot * format::HEADER_SLOT_STRIDE_BYTES) as usize;
        area[at..at + format::HEADER_SLOT_BYTES].copy_from_slice(&header);
        let seg = dir.path().join(format!("{:020}.log", 1));
        fs::write(&seg, &area).expect("write");
        match SegmentedLog::open(dir.path(), LogOptions::default()) {
            Err(LogError::OtherVersion { found, reads, path }) => {
                assert_eq!(found, version);
                assert_eq!(reads, format::SEGMENT_FORMAT_VERSION);
                assert_eq!(path, seg);
            }
            Err(e) => panic!("slot {slot}: refused for another reason: {e}"),
            Ok(_) => panic!("slot {slot}: a segment of version {version} was opened"),
        }
        assert_eq!(
            fs::read(&seg).expect("read"),
            area,
            "slot {slot}: the file is left as it was"
        );
    }
}

/// A file named like a segment but larger than any segment is refused by name, without reading
/// it into memory.
#[test]
fn an_oversized_segment_file_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seg = dir.path().join(format!("{:020}.log", 1));
    let file = fs::File::create(&seg).expect("create");
    file.set_len(crate::limits::SEGMENT_FILE_BYTES_MAX + 1)
        .expect("sparse length");
    let reason = expect_corrupt_at(dir.path(), LogOptions::default(), &seg, 0);
    assert!(reason.contains("more than any segment"), "{reason}");
}

/// A last record acknowledged in a segment that was sealed (the log rolled past it) is under
/// that segment's mark, so a flip in it is caught even after a truncation makes the segment the
/// last one again.
#[test]
fn a_sealed_segment_has_all_its_records_under_its_mark() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records: Vec<_> = (1..=12).map(|i| (i, payload(i, 10))).collect();
    {
        let mut log = SegmentedLog::open(dir.path(), small_options()).expect("open");
        // One batch crossing the roll: its records in the first segment are acknowledged through
        // the second segment's ticket.
        append_durably(&mut log, &records);
        log.truncate_after(Some(8)).expect("back into the first segment");
    }
    let first = dir.path().join(format!("{:020}.log", 1));
    let mut bytes = fs::read(&first).expect("read");
    let n = bytes.len();
    bytes[n - 2] ^= 0x04;
    fs::write(&first, &bytes).expect("write");
    let reason = expect_corrupt_at(
        dir.path(),
        small_options(),
        &first,
        (n - format::HEADER_BYTES - 10) as u64,
    );
    assert!(reason.contains("durable mark"), "{reason}");
}

#[test]
fn a_byte_budget_bounds_a_range_but_always_gives_one_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = SegmentedLog::open(dir.path(), small_options()).expect("open");
    // 100-byte payloads: 116-byte frames, several segments.
    let records: Vec<_> = (1..=20).map(|i| (i, payload(i, 100))).collect();
    append_durably(&mut log, &records);
    assert!(log.segment_count() > 1);
    let frame = (format::HEADER_BYTES + 100) as u64;
    assert_eq!(log.end_within_bytes(1, 21, 3 * frame), 4, "three records fit");
    assert_eq!(log.end_within_bytes(1, 21, 3 * frame - 1), 3);
    assert_eq!(log.end_within_bytes(5, 21, 0), 6, "one record even over the budget");
    assert_eq!(
        log.end_within_bytes(7, 21, 100 * frame),
        21,
        "across segments, up to the end"
    );
    assert_eq!(log.end_within_bytes(7, 9, 100 * frame), 9, "up to the range's end");
    assert_eq!(log.end_within_bytes(25, 30, frame), 30, "past the log: left as asked");
}

/// A crash leaves at most one record-less segment at the end (a roll it interrupted); it is
/// removed. Two of them are damage, and refused.
#[test]
fn one_trailing_empty_segment_is_removed_two_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records: Vec<_> = (1..=3).map(|i| (i, payload(i, 10))).collect();
    {
        let mut log = SegmentedLog::open(dir.path(), LogOptions::default()).expect("open");
        append_durably(&mut log, &records);
    }
    // An interrupted roll: the next segment's file exists, empty.
    let next = dir.path().join(format!("{:020}.log", 4));
    fs::write(&next, b"").expect("write");
    let log = SegmentedLog::open(dir.path(), LogOptions::default()).expect("open");
    assert_eq!(all_records(&log), records);
    assert!(!next.exists(), "removed");
    drop(log);
    // Two empty segments after the records.
    fs::write(&next, b"").expect("write");
    fs::write(dir.path().join(format!("{:020}.log", 5)), b"").expect("write");
    assert!(matches!(
        SegmentedLog::open(dir.path(), LogOptions::default()),
        Err(LogError::Corrupt { .. })
    ));
}
