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
use std::io::Write;
use std::path::{Path, PathBuf};

use basalt_codec::{FormatMismatch, DATA_FORMAT};

/// The stamp's file name, in the data directory.
pub const FORMAT_FILE: &str = "FORMAT";
const FORMAT_TMP_FILE: &str = "FORMAT.tmp";
const STAMP_PREFIX: &str = "basalt data format ";
/// Entries that only a data directory written by Basalt holds: their presence without a stamp
/// marks format 1.
const WRITTEN_BY_BASALT: [&str; 3] = ["log", "state", "snapshots"];
/// The longest stamp read: a larger `FORMAT` file is not a stamp.
const STAMP_BYTES_MAX: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "data directory {dir} holds {mismatch}: start it with a build of its format, or move it \
         away and let this node rejoin its region from an empty directory (it then receives a snapshot)"
    )]
    Format { dir: PathBuf, mismatch: FormatMismatch },
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

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError {
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
        Some(found) => basalt_codec::check_format(found).map_err(|mismatch| DataDirError::Format {
            dir: dir.to_path_buf(),
            mismatch,
        }),
        None => {
            for entry in WRITTEN_BY_BASALT {
                if dir.join(entry).exists() {
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

/// The format named by `dir/FORMAT`, `None` when there is no stamp.
fn read_stamp(dir: &Path, path: &Path) -> Result<Option<u32>, DataDirError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("open", path)(e)),
    };
    let len = file.metadata().map_err(io("stat", path))?.len();
    let malformed = |content: String| DataDirError::MalformedStamp {
        dir: dir.to_path_buf(),
        content,
    };
    if len > STAMP_BYTES_MAX {
        return Err(malformed(format!("{len} bytes")));
    }
    let text = fs::read_to_string(path).map_err(io("read", path))?;
    text.strip_prefix(STAMP_PREFIX)
        .and_then(|n| n.trim_end_matches('\n').parse::<u32>().ok())
        .map(Some)
        .ok_or_else(|| malformed(text.clone()))
}

fn write_stamp(dir: &Path) -> Result<(), DataDirError> {
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    let tmp = dir.join(FORMAT_TMP_FILE);
    let mut file = File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(format!("{STAMP_PREFIX}{DATA_FORMAT}\n").as_bytes())
        .map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("fsync", &tmp))?;
    let path = dir.join(FORMAT_FILE);
    fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
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
        assert!(!data.join(FORMAT_TMP_FILE).exists());
        check_or_stamp(&data).expect("accepted again");
    }

    #[test]
    fn a_directory_of_another_format_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("state")).expect("state");
        let e = check_or_stamp(dir.path()).expect_err("format 1 data without a stamp");
        assert!(e.to_string().contains("holds data format 1, this build reads 2"), "{e}");
        assert!(
            !dir.path().join(FORMAT_FILE).exists(),
            "a refused directory is left as it was"
        );

        fs::write(dir.path().join(FORMAT_FILE), "basalt data format 3\n").expect("write");
        let e = check_or_stamp(dir.path()).expect_err("a later format");
        assert!(
            matches!(
                e,
                DataDirError::Format {
                    mismatch: FormatMismatch { found: 3, .. },
                    ..
                }
            ),
            "{e}"
        );

        fs::write(dir.path().join(FORMAT_FILE), "three").expect("write");
        let e = check_or_stamp(dir.path()).expect_err("not a stamp");
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
