//! Snapshots: a RocksDB checkpoint packed into one file, so it can be streamed to a follower.
//!
//! Pack layout: the magic `BASALTSNAP`, the data format of its records as one ASCII digit and
//! `\n` (`BASALTSNAP3\n`; a pack of another format is refused by name), then sections
//! `[kind u8][name_len u32][name][data_len u64][data][crc32 u32]` (little-endian; the crc covers
//! kind, name and data). Kind 1 is the metadata blob (always first), 2 a checkpoint file, 3 the
//! end marker. Unpacking verifies every crc and refuses a pack without its end marker.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::rocks::RocksStore;
use super::StoreError;

const MAGIC_PREFIX: &[u8; 10] = b"BASALTSNAP";
/// The magic of a pack of this build's data format.
const MAGIC: [u8; 12] = magic(basalt_codec::DATA_FORMAT);

const fn magic(data_format: u32) -> [u8; 12] {
    assert!(data_format < 10, "the pack magic holds one digit of data format");
    let mut magic = [0u8; 12];
    let mut i = 0;
    while i < MAGIC_PREFIX.len() {
        magic[i] = MAGIC_PREFIX[i];
        i += 1;
    }
    magic[10] = b'0' + data_format as u8;
    magic[11] = b'\n';
    magic
}
const KIND_META: u8 = 1;
const KIND_FILE: u8 = 2;
const KIND_END: u8 = 3;
/// Longest file name of a pack section: a longer length field is damage, refused.
const NAME_BYTES_MAX: u32 = 4096;
/// Largest metadata section (a snapshot's Raft metadata: log id, membership): a larger length
/// field is damage, refused before anything is buffered.
const META_BYTES_MAX: u64 = 16 * 1024 * 1024;

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::CorruptSnapshot {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A checkpoint directory, removed when dropped.
pub struct Checkpoint {
    dir: PathBuf,
}

impl Checkpoint {
    pub fn create(store: &RocksStore, dir: PathBuf) -> Result<Checkpoint, StoreError> {
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io("remove stale checkpoint", &dir))?;
        }
        store.checkpoint(&dir)?;
        Ok(Checkpoint { dir })
    }

    pub fn open_read_only(&self) -> Result<RocksStore, StoreError> {
        RocksStore::open_read_only(&self.dir)
    }

    /// Packs the checkpoint with `meta` into `target`, durably (written to a temporary name,
    /// fsynced, renamed).
    pub fn pack(&self, meta: &[u8], target: &Path) -> Result<u64, StoreError> {
        let tmp = target.with_extension("tmp");
        let file = File::create(&tmp).map_err(io("create pack", &tmp))?;
        let mut out = BufWriter::new(file);
        out.write_all(&MAGIC).map_err(io("write pack", &tmp))?;
        write_section(&mut out, KIND_META, "", &mut &meta[..], meta.len() as u64).map_err(io("write pack", &tmp))?;
        let mut names: Vec<_> = fs::read_dir(&self.dir)
            .map_err(io("list checkpoint", &self.dir))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            let path = self.dir.join(&name);
            let len = fs::metadata(&path).map_err(io("stat", &path))?.len();
            let mut src = BufReader::new(File::open(&path).map_err(io("open", &path))?);
            write_section(&mut out, KIND_FILE, &name, &mut src, len).map_err(io("write pack", &tmp))?;
        }
        write_section(&mut out, KIND_END, "", &mut &[][..], 0).map_err(io("write pack", &tmp))?;
        let file = out.into_inner().map_err(|e| StoreError::Io {
            op: "flush pack",
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io("sync pack", &tmp))?;
        let size = file.metadata().map_err(io("stat pack", &tmp))?.len();
        fs::rename(&tmp, target).map_err(io("rename pack", target))?;
        if let Some(parent) = target.parent() {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io("sync dir", parent))?;
        }
        Ok(size)
    }
}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn write_section(out: &mut impl Write, kind: u8, name: &str, data: &mut impl Read, len: u64) -> std::io::Result<()> {
    let mut crc = crc32fast::Hasher::new();
    let name_len = u32::try_from(name.len()).map_err(std::io::Error::other)?;
    out.write_all(&[kind])?;
    out.write_all(&name_len.to_le_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&len.to_le_bytes())?;
    crc.update(&[kind]);
    crc.update(name.as_bytes());
    let mut remaining = len;
    let mut buf = vec![0u8; 256 * 1024];
    while remaining > 0 {
        let want = remaining.min(buf.len() as u64) as usize;
        let n = data.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "file shrank while packing",
            ));
        }
        crc.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        remaining -= n as u64;
    }
    out.write_all(&crc.finalize().to_le_bytes())
}

struct Section {
    kind: u8,
    name: String,
}

/// Reads one section header and streams its data into `sink`, verifying the crc.
fn read_section(input: &mut impl Read, path: &Path, sink: &mut impl Write) -> Result<Section, StoreError> {
    let mut head = [0u8; 5];
    input
        .read_exact(&mut head)
        .map_err(|_| corrupt(path, "truncated section header"))?;
    let kind = head[0];
    let name_len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes"));
    if !(KIND_META..=KIND_END).contains(&kind) || name_len > NAME_BYTES_MAX {
        return Err(corrupt(
            path,
            format!("bad section header (kind {kind}, name length {name_len})"),
        ));
    }
    let mut name = vec![0u8; name_len as usize];
    input
        .read_exact(&mut name)
        .map_err(|_| corrupt(path, "truncated section name"))?;
    let name = String::from_utf8(name).map_err(|_| corrupt(path, "section name is not utf-8"))?;
    if name.contains('/') || name == ".." {
        return Err(corrupt(
            path,
            format!("section name {name:?} escapes the snapshot directory"),
        ));
    }
    let mut len = [0u8; 8];
    input
        .read_exact(&mut len)
        .map_err(|_| corrupt(path, "truncated section length"))?;
    let mut remaining = u64::from_le_bytes(len);
    if kind == KIND_META && remaining > META_BYTES_MAX {
        return Err(corrupt(
            path,
            format!("metadata section of {remaining} bytes, over the limit of {META_BYTES_MAX}"),
        ));
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(name.as_bytes());
    let mut buf = vec![0u8; 256 * 1024];
    while remaining > 0 {
        let want = remaining.min(buf.len() as u64) as usize;
        input
            .read_exact(&mut buf[..want])
            .map_err(|_| corrupt(path, format!("truncated section {name:?}")))?;
        crc.update(&buf[..want]);
        sink.write_all(&buf[..want]).map_err(io("write snapshot file", path))?;
        remaining -= want as u64;
    }
    let mut stored = [0u8; 4];
    input
        .read_exact(&mut stored)
        .map_err(|_| corrupt(path, "truncated section checksum"))?;
    if u32::from_le_bytes(stored) != crc.finalize() {
        return Err(corrupt(path, format!("checksum mismatch in section {name:?}")));
    }
    Ok(Section { kind, name })
}

fn open_pack(path: &Path) -> Result<BufReader<File>, StoreError> {
    let mut input = BufReader::new(File::open(path).map_err(io("open pack", path))?);
    let mut magic = [0u8; 12];
    input
        .read_exact(&mut magic)
        .map_err(|_| corrupt(path, "missing magic"))?;
    if magic[..10] != MAGIC_PREFIX[..] || magic[11] != b'\n' || !magic[10].is_ascii_digit() {
        return Err(corrupt(path, "bad magic"));
    }
    if let Err(mismatch) = basalt_codec::check_format(u32::from(magic[10] - b'0')) {
        return Err(StoreError::SnapshotFormat {
            path: path.to_path_buf(),
            mismatch,
        });
    }
    Ok(input)
}

/// Reads only the metadata blob of a pack.
pub fn read_pack_meta(path: &Path) -> Result<Vec<u8>, StoreError> {
    let mut input = open_pack(path)?;
    let mut meta = Vec::new();
    let section = read_section(&mut input, path, &mut meta)?;
    if section.kind != KIND_META {
        return Err(corrupt(path, "first section is not the metadata"));
    }
    Ok(meta)
}

/// Reads a whole pack, verifying every section's crc, the end marker and that nothing follows
/// it, without writing anything. Returns the metadata blob. For a pack received from another
/// node: a truncated or damaged transfer is refused here, before it is offered for install.
pub fn verify_pack(path: &Path) -> Result<Vec<u8>, StoreError> {
    let mut input = open_pack(path)?;
    let mut meta = Vec::new();
    if read_section(&mut input, path, &mut meta)?.kind != KIND_META {
        return Err(corrupt(path, "first section is not the metadata"));
    }
    loop {
        match read_section(&mut input, path, &mut std::io::sink())?.kind {
            KIND_FILE => {}
            KIND_END => break,
            _ => return Err(corrupt(path, "metadata section repeated")),
        }
    }
    let mut trailing = [0u8; 1];
    match input.read(&mut trailing) {
        Ok(0) => Ok(meta),
        Ok(_) => Err(corrupt(path, "bytes after the end marker")),
        Err(e) => Err(StoreError::Io {
            op: "read pack",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Unpacks a pack into `target` (a new directory), verifying it whole. Returns the metadata blob.
pub fn unpack(path: &Path, target: &Path) -> Result<Vec<u8>, StoreError> {
    if target.exists() {
        fs::remove_dir_all(target).map_err(io("remove stale unpack dir", target))?;
    }
    fs::create_dir_all(target).map_err(io("create unpack dir", target))?;
    let mut input = open_pack(path)?;
    let mut meta = Vec::new();
    if read_section(&mut input, path, &mut meta)?.kind != KIND_META {
        return Err(corrupt(path, "first section is not the metadata"));
    }
    loop {
        let tmp = target.join(".incoming");
        let mut sink = BufWriter::new(File::create(&tmp).map_err(io("create", &tmp))?);
        let section = read_section(&mut input, path, &mut sink)?;
        sink.flush().map_err(io("write", &tmp))?;
        drop(sink);
        match section.kind {
            KIND_FILE => fs::rename(&tmp, target.join(&section.name)).map_err(io("rename", &tmp))?,
            KIND_END => {
                fs::remove_file(&tmp).map_err(io("remove", &tmp))?;
                return Ok(meta);
            }
            _ => return Err(corrupt(path, "metadata section repeated")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::WriteSet;
    use crate::state::{KeyRange, StoreRead, Table};

    #[test]
    fn checkpoint_pack_unpack_replace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = RocksStore::open(dir.path().join("a")).expect("open a");
        let mut writes = WriteSet::default();
        for i in 0..100u32 {
            writes.put(Table::Kv, format!("k{i:03}").into_bytes(), vec![i as u8; 64]);
        }
        source.commit(&writes).expect("commit");

        let checkpoint = Checkpoint::create(&source, dir.path().join("ckpt")).expect("checkpoint");
        let pack = dir.path().join("1.snap");
        checkpoint.pack(b"meta-blob", &pack).expect("pack");
        drop(checkpoint);
        assert!(!dir.path().join("ckpt").exists(), "checkpoint dir removed");
        assert_eq!(read_pack_meta(&pack).expect("meta"), b"meta-blob");
        assert_eq!(verify_pack(&pack).expect("verify"), b"meta-blob");

        let unpacked = dir.path().join("unpacked");
        assert_eq!(unpack(&pack, &unpacked).expect("unpack"), b"meta-blob");
        let target = RocksStore::open(dir.path().join("b")).expect("open b");
        let mut stale = WriteSet::default();
        stale.put(Table::Counter, b"stale".to_vec(), vec![1; 8]);
        target.commit(&stale).expect("commit stale");
        target
            .replace_with(&RocksStore::open_read_only(&unpacked).expect("open unpacked"))
            .expect("replace");
        assert_eq!(
            target.get(Table::Counter, b"stale").expect("get"),
            None,
            "old state replaced"
        );
        assert_eq!(
            target.scan(Table::Kv, &KeyRange::all(), 1000).expect("scan"),
            source.scan(Table::Kv, &KeyRange::all(), 1000).expect("scan")
        );
    }

    #[test]
    fn corrupt_pack_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path().join("a")).expect("open");
        let mut writes = WriteSet::default();
        writes.put(Table::Kv, b"k".to_vec(), vec![7; 1000]);
        store.commit(&writes).expect("commit");
        let pack = dir.path().join("1.snap");
        Checkpoint::create(&store, dir.path().join("ckpt"))
            .expect("ckpt")
            .pack(b"m", &pack)
            .expect("pack");
        let whole = fs::read(&pack).expect("read");
        let mut bytes = whole.clone();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xFF;
        fs::write(&pack, &bytes).expect("write");
        assert!(matches!(
            unpack(&pack, &dir.path().join("u")),
            Err(StoreError::CorruptSnapshot { .. })
        ));
        assert!(matches!(verify_pack(&pack), Err(StoreError::CorruptSnapshot { .. })));
        // A transfer cut short anywhere after the metadata (the sender stopped early).
        for cut in [whole.len() - 1, whole.len() - 10, whole.len() / 2, 40] {
            fs::write(&pack, &whole[..cut]).expect("write");
            assert!(matches!(
                unpack(&pack, &dir.path().join("u")),
                Err(StoreError::CorruptSnapshot { .. })
            ));
            assert!(
                matches!(verify_pack(&pack), Err(StoreError::CorruptSnapshot { .. })),
                "cut at {cut}"
            );
        }
        let mut longer = whole.clone();
        longer.extend_from_slice(b"tail");
        fs::write(&pack, &longer).expect("write");
        assert!(matches!(verify_pack(&pack), Err(StoreError::CorruptSnapshot { .. })));
        fs::write(&pack, &whole).expect("write");
        assert_eq!(verify_pack(&pack).expect("the intact pack"), b"m");
    }

    /// A pack from a build of data format 1 (magic `BASALTSNAP1\n`, bincode records) or 2
    /// (`BASALTSNAP2\n`, flat ops) is refused by name on every way in, before any of its records
    /// could be misread.
    #[test]
    fn a_pack_of_another_data_format_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path().join("a")).expect("open");
        let pack = dir.path().join("1.snap");
        Checkpoint::create(&store, dir.path().join("ckpt"))
            .expect("ckpt")
            .pack(b"m", &pack)
            .expect("pack");
        let mut bytes = fs::read(&pack).expect("read");
        assert_eq!(&bytes[..12], b"BASALTSNAP3\n");
        for older in [b'1', b'2'] {
            bytes[10] = older;
            fs::write(&pack, &bytes).expect("write");
            for refused in [
                verify_pack(&pack).map(drop),
                read_pack_meta(&pack).map(drop),
                unpack(&pack, &dir.path().join("u")).map(drop),
            ] {
                let e = refused.expect_err("an older format is refused");
                assert!(matches!(e, StoreError::SnapshotFormat { .. }), "{e}");
                let expected = format!("is of data format {}, this build reads 3", older as char);
                assert!(e.to_string().ends_with(&expected), "{e}");
            }
        }
    }
}
