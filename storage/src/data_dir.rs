//! The data directory's format stamp: which data format ([`basalt_codec::DATA_FORMAT`]) the
//! records under a node's data directory are written in.
//!
//! A node's data directory holds `FORMAT`, `LOCK`, `log/` (the Raft log, [`crate::log`]),
//! `state/` (the RocksDB state store) and `snapshots/`. `FORMAT` is one line,
//! `basalt data format N`, written before anything else in a new directory (to a temporary file,
//! fsynced, renamed, and the directory fsynced), and checked at every start before the log or the
//! state store is opened: a directory of another format is refused whole, by name, and never
//! half read. A directory with a log or state store but no `FORMAT` was written by a build of
//! format 1, which wrote no stamp.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use basalt_codec::{FormatMismatch, DATA_FORMAT};

/// The stamp's file name, in the data directory.
pub const FORMAT_FILE: &str = "FORMAT";
const STAMP_PREFIX: &str = "basalt data format ";
/// Entries that only a data directory written by Basalt holds: their presence without a stamp
/// marks format 1.
const WRITTEN_BY_BASALT: [&str; 3] = ["log", "state", "snapshots"];
/// The longest stamp read: a larger `FORMAT` file is not a stamp.
const STAMP_BYTES_MAX: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "data directory {dir} holds {mismatch}: start it with a build of that format \
         (docs/data-format.md says how a region moves to another format)"
    )]
    Format { dir: PathBuf, mismatch: FormatMismatch },
    #[error("{path} is not a cluster id (32 hex digits and a newline): {content:?}; it was damaged or edited")]
    MalformedClusterId { path: PathBuf, content: String },
    #[error("data directory {dir}: {FORMAT_FILE} is not a format stamp: {content:?}")]
    MalformedStamp { dir: PathBuf, content: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError {
    let path = path.to_path_buf();
    move |source| DataDirError::Io { op, path, source }
}

/// Checks that `dir` holds data of this build's format, stamping it first if it holds no
/// Basalt data yet. Call before opening anything else in `dir`, with the directory locked
/// against other processes.
///
/// Crash safety: the stamp is written whole (rename) and durable (file and directory fsynced)
/// before this returns, so a directory with data always has a stamp, except those of format 1.
pub fn check_or_stamp(dir: &Path) -> Result<(), DataDirError> {
    let stamp_path = dir.join(FORMAT_FILE);
    match read_stamp(dir, &stamp_path)? {
        Some(found) => {
            basalt_codec::check_format(found).map_err(|mismatch| DataDirError::Format {
                dir: dir.to_path_buf(),
                mismatch,
            })?;
            // A crash between the stamp and its subdirectories leaves some missing: create them
            // here, durably, rather than let the stores create them without a directory fsync.
            create_store_dirs(dir)
        }
        None => {
            for entry in WRITTEN_BY_BASALT {
                let path = dir.join(entry);
                if path.try_exists().map_err(io("stat", &path))? {
                    return Err(DataDirError::Format {
                        dir: dir.to_path_buf(),
                        mismatch: FormatMismatch {
                            found: 1,
                            reads: DATA_FORMAT,
                        },
                    });
                }
            }
            write_stamp(dir)
        }
    }
}

/// The format named by `dir/FORMAT`, `None` when there is no stamp. Anything but a regular file
/// of at most [`STAMP_BYTES_MAX`] bytes holding exactly `basalt data format N\n` is malformed
/// (a FIFO or a device would otherwise block the start or be read without end).
fn read_stamp(dir: &Path, path: &Path) -> Result<Option<u32>, DataDirError> {
    let malformed = |content: String| DataDirError::MalformedStamp {
        dir: dir.to_path_buf(),
        content,
    };
    if !path.try_exists().map_err(io("stat", path))? {
        return Ok(None);
    }
    let text = match read_small_file(path, STAMP_BYTES_MAX)? {
        SmallFile::Text(text) => text,
        SmallFile::Bad(why) => return Err(malformed(why)),
    };
    text.strip_prefix(STAMP_PREFIX)
        .and_then(|rest| rest.strip_suffix('\n'))
        .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse::<u32>().ok())
        .map(Some)
        .ok_or_else(|| malformed(text.clone()))
}

/// What [`read_small_file`] found.
pub(crate) enum SmallFile {
    Text(String),
    /// Not a regular file, larger than allowed or not UTF-8: why.
    Bad(String),
}

/// Reads a small text file of the data directory whole: anything but a regular file of at most
/// `bytes_max` bytes of UTF-8 is [`SmallFile::Bad`] (a FIFO or a device would otherwise block the
/// start or be read without end). The file must exist.
pub(crate) fn read_small_file(path: &Path, bytes_max: u64) -> Result<SmallFile, DataDirError> {
    let metadata = fs::metadata(path).map_err(io("stat", path))?;
    if !metadata.is_file() {
        return Ok(SmallFile::Bad(format!(
            "not a regular file ({:?})",
            metadata.file_type()
        )));
    }
    let file = File::open(path).map_err(io("open", path))?;
    let mut bytes = Vec::new();
    file.take(bytes_max + 1)
        .read_to_end(&mut bytes)
        .map_err(io("read", path))?;
    if bytes.len() as u64 > bytes_max {
        return Ok(SmallFile::Bad(format!("more than {bytes_max} bytes")));
    }
    Ok(match String::from_utf8(bytes) {
        Ok(text) => SmallFile::Text(text),
        Err(e) => SmallFile::Bad(format!("not UTF-8: {e}")),
    })
}

/// Writes `dir/name` whole and durably: to `dir/name.tmp`, fsynced, renamed over `name`, and the
/// directory fsynced, so a crash leaves the old content or the new, never a part.
pub(crate) fn write_file_durably(dir: &Path, name: &str, content: &[u8]) -> Result<(), DataDirError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(content).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("fsync", &tmp))?;
    fs::rename(&tmp, dir.join(name)).map_err(io("rename", &tmp))?;
    sync_dir(dir)
}

/// Stamps a directory that holds no Basalt data yet. Order matters for a crash at any point: the
/// stamp is durable (renamed, directory fsynced) before `log/`, `state/` and `snapshots/` are
/// created, so a directory holding them always holds its stamp; the directory itself is made
/// durable in its parent first, and its entries last.
fn write_stamp(dir: &Path) -> Result<(), DataDirError> {
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    // The new directory's own entry: in its parent (`.` for a relative path of one component).
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent)?,
        Some(_) => sync_dir(Path::new("."))?,
        None => {}
    }
    write_file_durably(dir, FORMAT_FILE, format!("{STAMP_PREFIX}{DATA_FORMAT}\n").as_bytes())?;
    create_store_dirs(dir)
}

/// Creates whichever of `log/`, `state/` and `snapshots/` is missing and makes them durable in
/// `dir` before anything is written in them: the log and RocksDB make their own files durable,
/// but not their directory's entry here.
fn create_store_dirs(dir: &Path) -> Result<(), DataDirError> {
    let mut created = false;
    for entry in WRITTEN_BY_BASALT {
        let sub = dir.join(entry);
        if !sub.try_exists().map_err(io("stat", &sub))? {
            fs::create_dir(&sub).map_err(io("create", &sub))?;
            created = true;
        }
    }
    if created {
        sync_dir(dir)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), DataDirError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_is_stamped_and_then_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("node");
        check_or_stamp(&data).expect("stamped");
        assert_eq!(
            fs::read_to_string(data.join(FORMAT_FILE)).expect("stamp"),
            format!("basalt data format {DATA_FORMAT}\n")
        );
        assert!(!data.join("FORMAT.tmp").exists());
        for entry in WRITTEN_BY_BASALT {
            assert!(data.join(entry).is_dir(), "{entry} is created after the stamp");
        }
        check_or_stamp(&data).expect("accepted again");
        // A crash between the stamp and the stores' directories: they are made at the next start.
        fs::remove_dir(data.join("snapshots")).expect("remove");
        check_or_stamp(&data).expect("accepted with a directory missing");
        assert!(data.join("snapshots").is_dir());
    }

    #[test]
    fn a_directory_of_another_format_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("state")).expect("state");
        let e = check_or_stamp(dir.path()).expect_err("format 1 data without a stamp");
        assert!(e.to_string().contains("holds data format 1, this build reads 3"), "{e}");
        assert!(
            !dir.path().join(FORMAT_FILE).exists(),
            "a refused directory is left as it was"
        );

        for (stamp, found) in [("basalt data format 2\n", 2), ("basalt data format 4\n", 4)] {
            fs::write(dir.path().join(FORMAT_FILE), stamp).expect("write");
            let e = check_or_stamp(dir.path()).expect_err("an earlier or a later format");
            assert!(
                matches!(
                    e,
                    DataDirError::Format {
                        mismatch: FormatMismatch { found: f, .. },
                        ..
                    } if f == found
                ),
                "{e}"
            );
        }

        for bad in [
            &b"three"[..],
            b"basalt data format +3\n",
            b"basalt data format 3\r\n",
            b"basalt data format 3\n\n",
            b"basalt data format \n",
            b"basalt data format \xff\n",
            &[b'2'; 100],
        ] {
            fs::write(dir.path().join(FORMAT_FILE), bad).expect("write");
            let e = check_or_stamp(dir.path()).expect_err("not a stamp");
            assert!(matches!(e, DataDirError::MalformedStamp { .. }), "{bad:?}: {e}");
        }
        fs::remove_file(dir.path().join(FORMAT_FILE)).expect("remove");
        fs::create_dir(dir.path().join(FORMAT_FILE)).expect("a directory named FORMAT");
        let e = check_or_stamp(dir.path()).expect_err("a directory is not a stamp");
        assert!(matches!(e, DataDirError::MalformedStamp { .. }), "{e}");
    }

    #[test]
    fn a_directory_holding_only_other_files_is_stamped() {
        // The lock file is created before the check; an operator's notes may be there too.
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("LOCK"), "").expect("lock");
        check_or_stamp(dir.path()).expect("no Basalt data yet: stamped");
    }
}
