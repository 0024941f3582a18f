//! A simulated disk for the log's crash suite (tests only).
//!
//! Every file keeps the bytes the process sees apart from the bytes that are durable, and the
//! directory keeps its entries apart from its durable entries. [`SimFileSystem::crash`] builds the
//! disk a power loss could leave, following the contract in `file_system.rs`: the durable state,
//! plus per file a prefix of the writes since its last sync (the last one possibly cut short: the
//! bytes it did not write keep their old content, and new space past the old end is missing,
//! zeros or garbage), plus a prefix of the directory changes since the last directory sync. The
//! process "dies" at a chosen mutating call: that call and every later one fail;
//! [`SimFileSystem::restart_process`] then models a process restart without a power loss.
//!
//! It can also fail one fsync the way Linux does (the "fsyncgate" behaviour): the call answers
//! `EIO`, the unsynced writes stay visible to reads but will never reach the disk, and later
//! fsyncs succeed.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::file_system::{LogFile, LogFileSystem};

/// A small deterministic generator (SplitMix64): the crash suite is reproducible from its seed.
pub(crate) struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

#[derive(Clone, Debug)]
enum FileOp {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Clone, Default)]
struct Inode {
    /// What reads see.
    data: Vec<u8>,
    /// What survives a crash for sure.
    durable: Vec<u8>,
    /// Changes since the last sync, oldest first: `durable` + all of them = `data`, except for
    /// the writes a failed sync lost.
    pending: Vec<FileOp>,
    /// Byte ranges whose writes a failed sync lost: visible, but never written to the disk.
    lost: Vec<(u64, usize)>,
}

#[derive(Clone, Debug)]
enum DirOp {
    Link(PathBuf, usize),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
}

#[derive(Default)]
struct SimState {
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    /// Directory changes since the last directory sync, oldest first.
    dir_ops: Vec<DirOp>,
    /// Mutating calls made so far.
    mutations: u64,
    /// The mutating call (1-based) at which the process dies.
    crash_at: Option<u64>,
    crashed: bool,
    /// The `sync` call (1-based, counting file syncs) that fails with `EIO`.
    fail_sync_at: Option<u64>,
    syncs: u64,
    /// Every read fails with `EIO` (a bad sector).
    fail_reads: bool,
    /// The mutating calls made, for a failing case's report.
    trace: Vec<String>,
}

fn apply_write(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let offset = offset as usize;
    if data.len() < offset + bytes.len() {
        data.resize(offset + bytes.len(), 0);
    }
    data[offset..offset + bytes.len()].copy_from_slice(bytes);
}

fn apply(data: &mut Vec<u8>, op: &FileOp) {
    match op {
        FileOp::Write { offset, bytes } => apply_write(data, *offset, bytes),
        FileOp::SetLen(len) => data.resize(*len as usize, 0),
    }
}

fn apply_dir(names: &mut BTreeMap<PathBuf, usize>, op: &DirOp) {
    match op {
        DirOp::Link(path, inode) => {
            names.insert(path.clone(), *inode);
        }
        DirOp::Unlink(path) => {
            names.remove(path);
        }
        DirOp::Rename(from, to) => {
            if let Some(inode) = names.remove(from) {
                names.insert(to.clone(), inode);
            }
        }
    }
}

/// `ranges` (offset, length) without the bytes `offset .. offset + len`.
fn subtract(ranges: &[(u64, usize)], offset: u64, len: usize) -> Vec<(u64, usize)> {
    let (cut_start, cut_end) = (offset, offset + len as u64);
    let mut out = Vec::new();
    for &(start, length) in ranges {
        let end = start + length as u64;
        if start < cut_start {
            out.push((start, (end.min(cut_start) - start) as usize));
        }
        if end > cut_end {
            let from = start.max(cut_end);
            out.push((from, (end - from) as usize));
        }
    }
    out
}

fn crashed_error() -> io::Error {
    io::Error::other("simulated crash: the process is gone")
}

impl SimState {
    /// Counts a mutating call; at the crash point the process dies (this call fails, and every
    /// later one). Returns whether the call dies.
    fn mutation(&mut self, what: impl FnOnce() -> String) -> io::Result<bool> {
        if self.crashed {
            return Err(crashed_error());
        }
        self.mutations += 1;
        self.trace.push(what());
        if Some(self.mutations) == self.crash_at {
            self.crashed = true;
            return Ok(true);
        }
        Ok(false)
    }

    fn alive(&self) -> io::Result<()> {
        if self.crashed {
            Err(crashed_error())
        } else {
            Ok(())
        }
    }

    fn record_dir_op(&mut self, op: DirOp) {
        apply_dir(&mut self.names, &op);
        self.dir_ops.push(op);
    }
}

/// The simulated disk; clones share it.
#[derive(Clone, Default)]
pub(crate) struct SimFileSystem {
    state: Arc<Mutex<SimState>>,
}

struct SimFile {
    state: Arc<Mutex<SimState>>,
    inode: usize,
    name: PathBuf,
}

impl SimFileSystem {
    fn state(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The process dies at the `n`-th mutating call from now (1-based).
    pub fn crash_after(&self, n: u64) {
        let mut state = self.state();
        state.crash_at = Some(state.mutations + n);
    }

    /// The process died but the machine did not: a new process sees every file as the old one
    /// left it, through the same page cache (including the writes a failed fsync lost, which
    /// read back but are not on the disk). Nothing more is durable than before.
    pub fn restart_process(&self) {
        let mut state = self.state();
        state.crashed = false;
        state.crash_at = None;
        state.fail_sync_at = None;
    }

    /// Makes the `nth` file sync from the disk's creation fail (1-based).
    pub fn fail_sync_at(&self, nth: u64) {
        self.state().fail_sync_at = Some(nth);
    }

    /// Makes every read fail from now on.
    pub fn fail_reads(&self) {
        self.state().fail_reads = true;
    }

    pub fn mutations(&self) -> u64 {
        self.state().mutations
    }

    pub fn syncs(&self) -> u64 {
        self.state().syncs
    }

    pub fn has_crashed(&self) -> bool {
        self.state().crashed
    }

    /// Kills the process now, if it is still running.
    pub fn kill(&self) {
        self.state().crashed = true;
    }

    pub fn trace(&self) -> Vec<String> {
        self.state().trace.clone()
    }

    /// A fresh disk holding what a power loss at this moment could leave, chosen by `rng`.
    pub fn crash(&self, rng: &mut SimRng) -> SimFileSystem {
        let state = self.state();
        let mut names = state.durable_names.clone();
        let dir_ops_kept = rng.below(state.dir_ops.len() as u64 + 1) as usize;
        for op in &state.dir_ops[..dir_ops_kept] {
            apply_dir(&mut names, op);
        }
        let mut inodes = Vec::new();
        let mut renumbered = BTreeMap::new();
        let mut new_names = BTreeMap::new();
        for (path, old) in names {
            let inode = *renumbered.entry(old).or_insert_with(|| {
                let node = &state.inodes[old];
                let mut bytes = node.durable.clone();
                let kept = rng.below(node.pending.len() as u64 + 1) as usize;
                for op in &node.pending[..kept] {
                    apply(&mut bytes, op);
                }
                // The next change may have been cut short. Of what it did not write, bytes that
                // existed keep their old content (a sector holds its old or its new bytes); new
                // space past the old end may be missing, or read back as zeros (the size got out
                // first) or as garbage.
                if let Some(FileOp::Write { offset, bytes: written }) = node.pending.get(kept) {
                    if rng.chance(2) {
                        let cut = rng.below(written.len() as u64 + 1) as usize;
                        let old_len = bytes.len();
                        apply_write(&mut bytes, *offset, &written[..cut]);
                        let unwritten_start = (*offset as usize + cut).max(old_len);
                        let end = *offset as usize + written.len();
                        if unwritten_start < end {
                            let fill: Vec<u8> = match rng.below(3) {
                                0 => Vec::new(),
                                1 => vec![0; end - unwritten_start],
                                _ => (unwritten_start..end).map(|_| rng.next_u64() as u8).collect(),
                            };
                            apply_write(&mut bytes, unwritten_start as u64, &fill);
                        }
                    }
                }
                inodes.push(Inode {
                    data: bytes.clone(),
                    durable: bytes,
                    pending: Vec::new(),
                    lost: Vec::new(),
                });
                inodes.len() - 1
            });
            new_names.insert(path, inode);
        }
        SimFileSystem {
            state: Arc::new(Mutex::new(SimState {
                inodes,
                names: new_names.clone(),
                durable_names: new_names,
                ..SimState::default()
            })),
        }
    }
}

impl LogFileSystem for SimFileSystem {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        self.state().alive()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.state();
        state.alive()?;
        Ok(state
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .collect())
    }

    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        let mut state = self.state();
        state.alive()?;
        if state.names.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, path.display().to_string()));
        }
        let dies = state.mutation(|| format!("create {}", path.display()))?;
        state.inodes.push(Inode::default());
        let inode = state.inodes.len() - 1;
        state.record_dir_op(DirOp::Link(path.to_path_buf(), inode));
        if dies {
            return Err(crashed_error());
        }
        Ok(Arc::new(SimFile {
            state: self.state.clone(),
            inode,
            name: path.to_path_buf(),
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        let state = self.state();
        state.alive()?;
        let inode = *state
            .names
            .get(path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, path.display().to_string()))?;
        Ok(Arc::new(SimFile {
            state: self.state.clone(),
            inode,
            name: path.to_path_buf(),
        }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state();
        state.alive()?;
        if !state.names.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::NotFound, path.display().to_string()));
        }
        let dies = state.mutation(|| format!("remove {}", path.display()))?;
        state.record_dir_op(DirOp::Unlink(path.to_path_buf()));
        if dies {
            return Err(crashed_error());
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state();
        state.alive()?;
        if !state.names.contains_key(from) {
            return Err(io::Error::new(io::ErrorKind::NotFound, from.display().to_string()));
        }
        let dies = state.mutation(|| format!("rename {} {}", from.display(), to.display()))?;
        state.record_dir_op(DirOp::Rename(from.to_path_buf(), to.to_path_buf()));
        if dies {
            return Err(crashed_error());
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state();
        if state.mutation(|| format!("sync_dir {}", dir.display()))? {
            return Err(crashed_error());
        }
        state.durable_names = state.names.clone();
        state.dir_ops.clear();
        Ok(())
    }
}

impl SimFile {
    fn state(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn change(&self, op: FileOp, what: String) -> io::Result<()> {
        let mut state = self.state();
        let dies = state.mutation(|| what)?;
        let inode = &mut state.inodes[self.inode];
        if let FileOp::Write { offset, bytes } = &op {
            // Written again, lost pages are dirty again: the next sync writes them.
            inode.lost = subtract(&inode.lost, *offset, bytes.len());
        }
        apply(&mut inode.data, &op);
        inode.pending.push(op);
        if dies {
            return Err(crashed_error());
        }
        Ok(())
    }
}

impl LogFile for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let state = self.state();
        state.alive()?;
        if state.fail_reads {
            return Err(io::Error::other("simulated EIO from read"));
        }
        let data = &state.inodes[self.inode].data;
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| data.get(o..o.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.change(
            FileOp::Write {
                offset,
                bytes: buf.to_vec(),
            },
            format!("write {} @{offset} +{}", self.name.display(), buf.len()),
        )
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.change(FileOp::SetLen(len), format!("set_len {} {len}", self.name.display()))
    }

    fn byte_len(&self) -> io::Result<u64> {
        let state = self.state();
        state.alive()?;
        Ok(state.inodes[self.inode].data.len() as u64)
    }

    fn sync(&self) -> io::Result<()> {
        let mut state = self.state();
        if state.mutation(|| format!("sync {}", self.name.display()))? {
            return Err(crashed_error());
        }
        state.syncs += 1;
        let fails = Some(state.syncs) == state.fail_sync_at;
        let inode = &mut state.inodes[self.inode];
        if fails {
            // Linux after a failed writeback: the pages are marked clean, so the writes stay
            // visible but never reach the disk, and the next fsync has nothing left to report.
            for op in std::mem::take(&mut inode.pending) {
                if let FileOp::Write { offset, bytes } = op {
                    inode.lost.push((offset, bytes.len()));
                }
            }
            return Err(io::Error::other("simulated EIO from fsync"));
        }
        let mut durable = inode.data.clone();
        for &(offset, len) in &inode.lost {
            for at in offset as usize..(offset as usize + len).min(durable.len()) {
                durable[at] = inode.durable.get(at).copied().unwrap_or(0);
            }
        }
        inode.durable = durable;
        inode.pending.clear();
        Ok(())
    }
}
