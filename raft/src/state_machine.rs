//! openraft's `RaftStateMachine` over the RocksDB [`RocksStore`] and the pure [`Applier`].
//!
//! Each batch of committed entries is applied into one `WriteSet` together with the applied log
//! id and membership, and written as one RocksDB WriteBatch: exactly-once apply across crashes.
//! Responses are sent only after that write.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use basalt_storage::apply::topology::{load_topology, RegionTopology};
use basalt_storage::apply::{Applier, WriteSet};
use basalt_storage::command::Response;
use basalt_storage::hlc::Hlc;
use basalt_storage::state::rocks::RocksStore;
use basalt_storage::state::snapshot::{self, Checkpoint};
use basalt_storage::state::{StoreError, StoreRead, Table};
use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use tokio::sync::Mutex;

use crate::limits::PACK_REVERIFY_INTERVAL_MIN;
use crate::{decode, encode, LogId, SnapshotMeta, StoredMembership, TypeConfig};

const APPLIED_KEY: &[u8] = b"applied_log_id";
const MEMBERSHIP_KEY: &[u8] = b"membership";

/// The snapshot data openraft moves around: a pack file on disk.
#[derive(Debug)]
pub struct SnapshotPack {
    pub path: PathBuf,
}

pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotPack>;

#[derive(Clone)]
pub struct StateMachine {
    store: RocksStore,
    applier: Arc<Mutex<Applier>>,
    snapshot_dir: PathBuf,
    clock: Arc<Hlc>,
    /// The last applied log index, published after each batch is committed to the store: what
    /// long-polls and watchers wait on.
    applied: Arc<tokio::sync::watch::Sender<u64>>,
    /// The region topology as of the last applied batch (`None`: a region alone), published
    /// after the batch that changed it is committed.
    topology: Arc<tokio::sync::watch::Sender<Option<Arc<RegionTopology>>>>,
    /// Users and roles as of the last applied batch, published after the batch that changed
    /// them is committed (or a snapshot holding others is installed).
    auth: Arc<tokio::sync::watch::Sender<Arc<basalt_auth::AuthTable>>>,
    /// Held while a snapshot is built: openraft builds one at a time, but a damaged pack is
    /// replaced outside its knowledge ([`StateMachine::replace_damaged_pack`]), and two builds
    /// would share the checkpoint directory.
    building: Arc<std::sync::Mutex<()>>,
    /// The background checks of the packs offered ([`StateMachine::check_pack_in_background`]).
    pack_checks: Arc<std::sync::Mutex<PackChecks>>,
}

/// What the background check of offered packs knows.
#[derive(Default)]
struct PackChecks {
    /// A check is on its way.
    running: bool,
    /// The pack last checked (built or installed here, or read whole, intact or not), and
    /// when: it is not read again before [`PACK_REVERIFY_INTERVAL_MIN`] has passed, so a pack that
    /// cannot be repaired is not read over and over as transfers retry.
    checked: Option<(PackStamp, std::time::Instant)>,
}

/// Marks a background pack check as running until dropped.
struct CheckRunning(Arc<std::sync::Mutex<PackChecks>>);

impl Drop for CheckRunning {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).running = false;
    }
}

/// A pack file as it is on disk now: a pack replaced (a rename) or written to again differs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PackStamp {
    path: PathBuf,
    inode: u64,
    bytes: u64,
    modified: Option<std::time::SystemTime>,
}

impl PackStamp {
    fn of(path: &Path) -> Option<PackStamp> {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(path).ok()?;
        Some(PackStamp {
            path: path.to_path_buf(),
            inode: metadata.ino(),
            bytes: metadata.len(),
            modified: metadata.modified().ok(),
        })
    }
}

fn applied_state_of(store: &RocksStore) -> Result<(Option<LogId>, StoredMembership), io::Error> {
    let applied = store.get(Table::Meta, APPLIED_KEY)?.map(|b| decode(&b)).transpose()?;
    let membership = store
        .get(Table::Meta, MEMBERSHIP_KEY)?
        .map(|b| decode(&b))
        .transpose()?
        .unwrap_or_default();
    Ok((applied, membership))
}

impl StateMachine {
    /// Opens the state store in `dir/state`, snapshots in `dir/snapshots`. `clock` observes every
    /// applied stamp (up to its ceiling), so a node that becomes leader stamps at or above what it
    /// applied unless that ran ahead of the clock bound; apply never goes below it either way.
    /// The region's role among regions comes from the replicated topology in the store.
    pub fn open(dir: &Path, clock: Arc<Hlc>) -> Result<StateMachine, io::Error> {
        let store = RocksStore::open(dir.join("state"))?;
        let snapshot_dir = dir.join("snapshots");
        std::fs::create_dir_all(&snapshot_dir)?;
        remove_incoming_leftovers(&snapshot_dir)?;
        let applier = Applier::load(&store)?;
        clock.observe(applier.last_stamp());
        let (applied, _) = applied_state_of(&store)?;
        let (applied, _) = tokio::sync::watch::channel(applied.map_or(0, |id| id.index()));
        let (topology, _) = tokio::sync::watch::channel(load_topology(&store)?.map(Arc::new));
        let (auth, _) = tokio::sync::watch::channel(Arc::new(basalt_storage::apply::auth::load_table(&store)?));
        Ok(StateMachine {
            store,
            applier: Arc::new(Mutex::new(applier)),
            snapshot_dir,
            clock,
            applied: Arc::new(applied),
            topology: Arc::new(topology),
            auth: Arc::new(auth),
            building: Arc::default(),
            pack_checks: Arc::default(),
        })
    }

    /// Notes `path` as intact now (a pack this node just wrote, or verified whole).
    fn pack_intact(&self, path: &Path) {
        let mut checks = self
            .pack_checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        checks.checked = PackStamp::of(path).map(|stamp| (stamp, std::time::Instant::now()));
    }

    /// Verifies `path`, the pack being offered, whole on a task of its own, unless it is the
    /// pack last checked, within [`PACK_REVERIFY_INTERVAL_MIN`], or a check is on its way. Not
    /// on openraft's state machine task, which asks for the pack once per transfer attempt:
    /// reading a large pack there would hold every apply meanwhile. A pack found damaged is
    /// replaced ([`StateMachine::replace_damaged_pack`]); the attempt that offered it fails at
    /// the follower, which refuses it, and the next one gets the new pack.
    fn check_pack_in_background(&self, path: &Path) {
        let Some(stamp) = PackStamp::of(path) else {
            return;
        };
        {
            let mut checks = self
                .pack_checks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let fresh = checks
                .checked
                .as_ref()
                .is_some_and(|(checked, at)| *checked == stamp && at.elapsed() < PACK_REVERIFY_INTERVAL_MIN);
            if checks.running || fresh {
                return;
            }
            checks.running = true;
        }
        // Whatever ends the task (a panic included), the next offer may check again.
        let running = CheckRunning(Arc::clone(&self.pack_checks));
        let mut this = self.clone();
        tokio::spawn(async move {
            let _running = running;
            let path = stamp.path.clone();
            let verify_path = path.clone();
            let verified = tokio::task::spawn_blocking(move || snapshot::verify_pack(&verify_path)).await;
            let checked = match verified {
                Ok(Ok(_)) => Some(stamp),
                // Replaced meanwhile (a build, an install): the new pack is checked when offered.
                Ok(Err(_))
                    if PackStamp::of(&path).as_ref() != Some(&stamp)
                        || this.latest_pack().ok().flatten().as_ref() != Some(&path) =>
                {
                    None
                }
                Ok(Err(damage @ (StoreError::CorruptSnapshot { .. } | StoreError::SnapshotFormat { .. }))) => {
                    match this.replace_damaged_pack(&path, damage).await {
                        Ok(rebuilt) => PackStamp::of(&rebuilt.snapshot.path),
                        Err(e) => {
                            tracing::error!(path = %path.display(), error = %e, "a damaged snapshot pack could not be replaced");
                            Some(stamp)
                        }
                    }
                }
                // Unreadable for now: looked at again after the interval.
                Ok(Err(e)) => {
                    tracing::warn!(path = %path.display(), error = %e, "could not verify a snapshot pack");
                    Some(stamp)
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "the snapshot pack check ended");
                    Some(stamp)
                }
            };
            // Only while it still describes the file: a build or install that finished meanwhile
            // noted its own pack.
            if let Some(stamp) = checked.filter(|stamp| PackStamp::of(&stamp.path).as_ref() == Some(stamp)) {
                let mut checks = this
                    .pack_checks
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                checks.checked = Some((stamp, std::time::Instant::now()));
            }
        });
    }

    /// The membership as of the last applied entry (empty before any): what this node knows of
    /// the members' addresses before Raft starts.
    pub fn applied_membership(&self) -> Result<StoredMembership, io::Error> {
        applied_state_of(&self.store).map(|(_, membership)| membership)
    }

    /// Follows the region topology: it changes only after the state store has the entry that
    /// changed it (or a snapshot that holds another).
    pub fn subscribe_topology(&self) -> tokio::sync::watch::Receiver<Option<Arc<RegionTopology>>> {
        self.topology.subscribe()
    }

    /// Follows the users and roles: they change only after the state store has the entry that
    /// changed them (or a snapshot that holds others).
    pub fn subscribe_auth(&self) -> tokio::sync::watch::Receiver<Arc<basalt_auth::AuthTable>> {
        self.auth.subscribe()
    }

    /// Follows the last applied log index; it changes only after the state store has the batch.
    pub fn subscribe_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// The store, for reads served outside Raft (after a read-index check, or stale).
    pub fn store(&self) -> &RocksStore {
        &self.store
    }

    pub fn snapshot_dir(&self) -> &Path {
        &self.snapshot_dir
    }

    fn latest_pack(&self) -> Result<Option<PathBuf>, io::Error> {
        Ok(packs_in(&self.snapshot_dir)?.pop().map(|(_, p)| p))
    }

    /// Removes every pack older than `keep` (by log index). A newer one stays: a snapshot build
    /// that finishes after a newer snapshot was installed must not delete the installed one.
    fn remove_other_packs(&self, keep: &Path) -> Result<(), io::Error> {
        remove_packs_older_than(&self.snapshot_dir, keep)
    }
}

/// Removes snapshots a crash left half received (`incoming-*.part`): a transfer that did not
/// finish is sent again whole.
fn remove_incoming_leftovers(dir: &Path) -> Result<(), io::Error> {
    use crate::network::{INCOMING_PREFIX, INCOMING_SUFFIX};
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let leftover = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(INCOMING_PREFIX) && n.ends_with(INCOMING_SUFFIX));
        if leftover {
            tracing::info!(path = %path.display(), "removing a snapshot a crash left half received");
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// The snapshot packs in `dir`, by log index, oldest first.
fn packs_in(dir: &Path) -> Result<Vec<(u64, PathBuf)>, io::Error> {
    let mut packs: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| Some((pack_index(&p)?, p)))
        .collect();
    packs.sort();
    Ok(packs)
}

/// The log index a pack's file name starts with.
fn pack_index(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_suffix(".snap")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Removes the packs in `dir` older than `keep`; `keep` and any newer pack stay.
fn remove_packs_older_than(dir: &Path, keep: &Path) -> Result<(), io::Error> {
    let Some(kept) = pack_index(keep) else {
        return Ok(());
    };
    for (index, path) in packs_in(dir)? {
        if index < kept && path != keep {
            match std::fs::remove_file(&path) {
                // Removed meanwhile by another build or an install's clean-up.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
    }
    Ok(())
}

fn pack_name(meta: &SnapshotMeta) -> String {
    match &meta.last_log_id {
        Some(id) => format!("{:020}-{}.snap", id.index(), id.committed_leader_id()),
        None => "00000000000000000000-none.snap".to_string(),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotPack;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || -> Result<Snapshot, io::Error> {
            let _building = this.building.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // (The checkpoint waits for an install running beside it, and is refused when one
            // did not complete: a half-replaced state is no snapshot of any index.)
            let checkpoint = Checkpoint::create(&this.store, this.snapshot_dir.join("checkpoint.tmp"))?;
            // The meta comes from the checkpoint itself, so it matches the data exactly.
            let (last_log_id, last_membership) = applied_state_of(&checkpoint.open_read_only()?)?;
            let meta = SnapshotMeta {
                last_log_id,
                last_membership,
            };
            let path = this.snapshot_dir.join(pack_name(&meta));
            let bytes = checkpoint.pack(&encode(&meta), &path)?;
            this.remove_other_packs(&path)?;
            this.pack_intact(&path);
            tracing::info!(path = %path.display(), bytes, last_log_id = ?meta.last_log_id, "built snapshot");
            Ok(Snapshot {
                meta,
                snapshot: SnapshotPack { path },
            })
        })
        .await
        .map_err(io::Error::other)?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotPack;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        applied_state_of(&self.store)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut applier = self.applier.lock().await;
        let mut writes = WriteSet::default();
        let mut responders = Vec::new();
        let mut last_applied = None;
        let mut changed_topology = false;
        let mut changed_auth = false;
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id();
            let response = match &entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(command) => {
                    let response = applier.apply(&self.store.apply_reads(), &mut writes, log_id.index(), command)?;
                    if matches!(response, Response::Topology(_)) {
                        changed_topology = true;
                    }
                    changed_auth |= matches!(command.op, basalt_storage::command::Op::Auth(_));
                    // The applier's stamp includes what merged remote batches carried.
                    self.clock.observe(applier.last_stamp());
                    response
                }
                EntryPayload::Membership(membership) => {
                    let stored = StoredMembership::new(Some(log_id), membership.clone());
                    writes.put(Table::Meta, MEMBERSHIP_KEY.to_vec(), encode(&stored));
                    Response::None
                }
            };
            last_applied = Some(log_id);
            if let Some(responder) = responder {
                responders.push((responder, response));
            }
        }
        if let Some(log_id) = &last_applied {
            writes.put(Table::Meta, APPLIED_KEY.to_vec(), encode(log_id));
        }
        if !writes.is_empty() {
            self.store.commit(&writes)?;
        }
        if changed_topology {
            // What the store holds now, not an answer (a replayed answer can be an old one).
            self.topology.send_replace(load_topology(&self.store)?.map(Arc::new));
        }
        if changed_auth {
            self.auth
                .send_replace(Arc::new(basalt_storage::apply::auth::load_table(&self.store)?));
        }
        if let Some(log_id) = &last_applied {
            self.applied.send_replace(log_id.index());
        }
        drop(applier);
        for (responder, response) in responders {
            responder.send(response);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    /// A build openraft's policy asks for is deferred while an install is unfinished (it failed:
    /// a half-replaced state is no snapshot), instead of failing, which openraft takes as fatal
    /// and which would hide the install's own error.
    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Self::SnapshotBuilder> {
        if !force && self.store.install_incomplete() {
            return None;
        }
        Some(self.clone())
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotPack) -> Result<(), io::Error> {
        let this = self.clone();
        let installed_index = meta.last_log_id.as_ref().map(|id| id.index());
        let meta = meta.clone();
        let mut applier = self.applier.lock().await;
        let installed = tokio::task::spawn_blocking(move || -> Result<Applier, io::Error> {
            let unpacked = this.snapshot_dir.join("install.tmp");
            let packed_meta: SnapshotMeta = decode(&snapshot::unpack(&snapshot.path, &unpacked)?)?;
            if packed_meta != meta {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("snapshot pack meta {packed_meta:?} does not match {meta:?}"),
                ));
            }
            // The pack goes into place, durably, before the state is replaced: a crash between
            // the two leaves a pack ahead of the state, which is installed again at restart. The
            // other order left the state ahead of every pack, and the node served an older pack
            // than its state to followers whose entries it had purged.
            let target = this.snapshot_dir.join(pack_name(&meta));
            std::fs::rename(&snapshot.path, &target)?;
            std::fs::File::open(&this.snapshot_dir)?.sync_all()?;
            {
                let source = basalt_storage::state::rocks::RocksStore::open_read_only(&unpacked)?;
                this.store.replace_with(&source)?;
            }
            std::fs::remove_dir_all(&unpacked)?;
            // Leftovers cost disk, not correctness: the install has happened either way.
            if let Err(e) = this.remove_other_packs(&target) {
                tracing::warn!(error = %e, "removing older snapshot packs");
            }
            // Verified whole on its way in (see `network`).
            this.pack_intact(&target);
            tracing::info!(last_log_id = ?meta.last_log_id, "installed snapshot");
            // The snapshot carries the region topology of its index: the role comes with it.
            Ok(Applier::load(&this.store)?)
        })
        .await
        .map_err(io::Error::other)??;
        self.clock.observe(installed.last_stamp());
        *applier = installed;
        self.topology
            .send_replace(load_topology(&self.store).map_err(io::Error::other)?.map(Arc::new));
        self.auth.send_replace(Arc::new(
            basalt_storage::apply::auth::load_table(&self.store).map_err(io::Error::other)?,
        ));
        if let Some(index) = installed_index {
            self.applied.send_replace(index);
        }
        Ok(())
    }

    /// The newest pack: what openraft sends to a follower behind the purged log, and at start-up
    /// compares with the applied state. Only its head (the metadata) is read here; the whole
    /// pack is verified in the background ([`StateMachine::check_pack_in_background`]) and
    /// replaced if damaged. A pack whose head is damaged cannot be offered at all: it is
    /// replaced here and now.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        // A build beside this (openraft's, or a repair) may remove the pack just listed: list
        // again, a few times.
        let mut vanished: Option<PathBuf> = None;
        let (path, meta) = loop {
            let Some(path) = self.latest_pack()? else {
                return Ok(None);
            };
            match snapshot::read_pack_meta(&path) {
                Ok(meta) => break (path, meta),
                // Gone: a build put a newer pack in place (a pack that stays listed and unread
                // is an error).
                Err(StoreError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound && vanished.as_ref() != Some(&path) =>
                {
                    vanished = Some(path);
                }
                // This node wrote the pack (or verified it on its way in): another data format
                // than this build's is damage too, and the state can stand in for it (a data
                // directory of another format is refused at start-up, before this runs).
                Err(damage @ (StoreError::CorruptSnapshot { .. } | StoreError::SnapshotFormat { .. })) => {
                    return self.replace_damaged_pack(&path, damage).await.map(Some);
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.check_pack_in_background(&path);
        Ok(Some(Snapshot {
            meta: decode(&meta)?,
            snapshot: SnapshotPack { path },
        }))
    }
}

impl StateMachine {
    /// Replaces `path`, the newest pack, which failed verification on this node's own disk:
    /// sent as it is, every follower would refuse it until the next snapshot build, which a
    /// quiet region may never make, so a follower behind the purged log (or a new member) could
    /// not catch up. When the state is at or past the pack's index (the pack only copies what
    /// the state holds), a new pack is built from the state, which replaces the damaged one (same
    /// name, by an atomic rename) or, newer, makes it be removed; until then the damaged pack
    /// stays, so a crash meanwhile leaves the node a pack to find damaged and replace again at
    /// its restart. When the pack is ahead of the state (an install a crash interrupted, which
    /// only that pack can finish), nothing can replace it: an error naming the file and the
    /// damage (which stops the node when its head was damaged: openraft cannot go on without the
    /// pack; found in the background, it is logged, and the install that needs the pack fails).
    async fn replace_damaged_pack(&mut self, path: &Path, damage: StoreError) -> Result<Snapshot, io::Error> {
        let (applied, _) = applied_state_of(&self.store)?;
        let applied_index = applied.map(|id| id.index());
        let pack_index = pack_index(path);
        if pack_index.is_none() || applied_index < pack_index {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{damage}; the pack is ahead of the state (applied {applied_index:?}), so it cannot be rebuilt from it"
                ),
            ));
        }
        tracing::error!(
            path = %path.display(),
            error = %damage,
            "the newest snapshot pack is damaged; building a new one from the state to replace it"
        );
        self.build_snapshot().await
    }
}

#[cfg(test)]
mod pack_tests {
    use super::*;

    #[test]
    fn half_received_snapshots_are_swept_at_open_and_packs_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshots = dir.path().join("snapshots");
        std::fs::create_dir_all(&snapshots).expect("dir");
        let part = snapshots.join("incoming-12345.part");
        let pack = snapshots.join("00000000000000000100-1-1.snap");
        std::fs::write(&part, b"half a transfer").expect("part");
        std::fs::write(&pack, b"a pack").expect("pack");
        let _sm = StateMachine::open(dir.path(), Arc::new(basalt_storage::hlc::Hlc::new())).expect("open");
        assert!(!part.exists(), "the half-received snapshot is removed");
        assert!(pack.exists(), "packs stay");
    }

    /// A state machine whose state says it applied up to `index`, with a pack built from it.
    async fn with_a_pack(dir: &Path, index: u64) -> (StateMachine, PathBuf) {
        let mut sm = StateMachine::open(dir, Arc::new(basalt_storage::hlc::Hlc::new())).expect("open");
        let mut writes = WriteSet::default();
        writes.put(
            Table::Meta,
            APPLIED_KEY.to_vec(),
            encode(&LogId::new(
                openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 },
                index,
            )),
        );
        writes.put(Table::Kv, b"k".to_vec(), vec![7; 4096]);
        sm.store().commit(&writes).expect("commit");
        let built = sm.build_snapshot().await.expect("build");
        (sm, built.snapshot.path)
    }

    /// Flips the byte at `at` (of its length) of `path`, the file replaced whole, as a rename.
    fn damage(path: &Path, at: impl Fn(usize) -> usize) {
        let mut bytes = std::fs::read(path).expect("read pack");
        let at = at(bytes.len());
        bytes[at] ^= 0x5a;
        let damaged = path.with_extension("damaged");
        std::fs::write(&damaged, &bytes).expect("write");
        std::fs::rename(&damaged, path).expect("rename");
    }

    /// Waits for the background check of the offered pack to end.
    async fn pack_check_done(sm: &StateMachine) {
        for _ in 0..3000 {
            if !sm.pack_checks.lock().expect("lock").running {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the pack check did not end");
    }

    /// A pack damaged on this node's own disk is found by the background check of the pack
    /// offered (all followers would refuse it until the next build, which a quiet region may
    /// never make) and built again from the state, which is at the pack's index; the next offer
    /// is the new pack, which verifies.
    #[tokio::test]
    async fn a_damaged_pack_is_rebuilt_from_the_state_once_offered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut sm, pack) = with_a_pack(dir.path(), 5).await;
        damage(&pack, |len| len / 2);
        assert!(snapshot::verify_pack(&pack).is_err(), "the test damaged the pack");
        // Offered at once (its head is intact): the whole pack is read in the background.
        let offered = sm.get_current_snapshot().await.expect("current").expect("a snapshot");
        assert_eq!(offered.snapshot.path, pack);
        pack_check_done(&sm).await;
        let current = sm.get_current_snapshot().await.expect("current").expect("a snapshot");
        assert_eq!(current.meta.last_log_id.map(|id| id.index()), Some(5));
        snapshot::verify_pack(&current.snapshot.path).expect("the offered pack verifies");
        assert_eq!(
            packs_in(sm.snapshot_dir()).expect("packs").len(),
            1,
            "one pack, the new one"
        );
        // The new pack counts as checked: offering it again starts no check.
        assert!(!sm.pack_checks.lock().expect("lock").running);
    }

    /// A pack whose head is damaged cannot be offered at all: it is built again there and then.
    #[tokio::test]
    async fn a_pack_with_a_damaged_head_is_rebuilt_before_it_is_offered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut sm, pack) = with_a_pack(dir.path(), 5).await;
        // Byte 20 lies in the metadata section's length: the head no longer reads.
        damage(&pack, |_| 20);
        assert!(snapshot::read_pack_meta(&pack).is_err(), "the test damaged the head");
        let current = sm.get_current_snapshot().await.expect("current").expect("a snapshot");
        assert_eq!(current.meta.last_log_id.map(|id| id.index()), Some(5));
        snapshot::verify_pack(&current.snapshot.path).expect("the offered pack verifies");
    }

    /// A damaged pack ahead of the state (an install a crash interrupted) cannot be rebuilt from
    /// the state: a damaged head is an error naming the damage; damage found in the background
    /// is logged; the pack is kept either way.
    #[tokio::test]
    async fn a_damaged_pack_ahead_of_the_state_is_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut sm, pack) = with_a_pack(dir.path(), 5).await;
        let ahead = sm.snapshot_dir().join("00000000000000000009-1-1.snap");
        std::fs::copy(&pack, &ahead).expect("copy");
        damage(&ahead, |len| len / 2);
        let before = PackStamp::of(&pack).expect("pack 5");
        let offered = sm.get_current_snapshot().await.expect("current").expect("a snapshot");
        assert_eq!(offered.snapshot.path, ahead);
        pack_check_done(&sm).await;
        assert_eq!(
            packs_in(sm.snapshot_dir()).expect("packs").last().map(|(i, _)| *i),
            Some(9)
        );
        assert_eq!(PackStamp::of(&pack), Some(before), "nothing was built");

        damage(&ahead, |_| 20);
        let error = sm.get_current_snapshot().await.expect_err("refused");
        assert!(error.to_string().contains("ahead of the state"), "{error}");
        assert!(ahead.exists(), "the pack is kept for the operator");
    }

    #[test]
    fn a_build_finishing_after_a_newer_install_keeps_the_installed_pack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let older = dir.path().join("00000000000000000100-1-1.snap");
        let built = dir.path().join("00000000000000000200-1-1.snap");
        let installed = dir.path().join("00000000000000000300-2-1.snap");
        for pack in [&older, &built, &installed] {
            std::fs::write(pack, b"pack").expect("write");
        }
        // The build of index 200 finishes after the install of 300.
        remove_packs_older_than(dir.path(), &built).expect("remove");
        assert!(!older.exists(), "an older pack goes");
        assert!(built.exists() && installed.exists(), "the newer installed pack stays");
        assert_eq!(
            packs_in(dir.path()).expect("packs").pop().map(|(i, _)| i),
            Some(300),
            "the latest pack is the installed one"
        );
    }
}
