//! The file operations the segment log makes, behind a small trait, so the crash suite can run the
//! real log code over a simulated disk that keeps written and durable bytes apart
//! (`sim_file_system`, tests only), and the node runs it over the real one ([`RealFileSystem`]).
//!
//! # Contract (what the log relies on, and what the simulation models)
//! - `write_at`, `set_len`: visible to later reads at once; durable only after `sync` of that file.
//! - `sync`: the file's data and length are durable when it returns `Ok` (`fdatasync`). After an
//!   `Err` nothing about the file's unsynced data is known, not even after a later `Ok`: the log
//!   stops (see `docs/log-format.md`, "When an fsync fails").
//! - `create_new`, `remove`, `rename`: visible at once; durable only after `sync_dir` of the
//!   directory holding them.
//! - A crash keeps the durable state plus, per file, some prefix of the writes made since its last
//!   `sync` (the last one possibly cut short: bytes it did not write keep their old content, new
//!   space past the old end may be missing, zeros or garbage), and some prefix of the directory
//!   changes made since the last `sync_dir`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
// std's Arc, also under loom: file handles are not part of what loom models, and loom's Arc
// cannot hold a trait object.
use std::sync::Arc;

/// An open file of the log directory.
pub trait LogFile: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset` (an error, never a short read).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn byte_len(&self) -> io::Result<u64>;
    /// Makes the file's data and length durable (`fdatasync`).
    fn sync(&self) -> io::Result<()>;
}

/// The directory operations of the log.
pub trait LogFileSystem: Send + Sync {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the entries of `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates an empty file; fails if it exists.
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn LogFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn LogFile>>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, removals, renames) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFileSystem;

impl LogFile for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn byte_len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
}

impl LogFileSystem for RealFileSystem {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        Ok(Arc::new(file))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Arc::new(file))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}
