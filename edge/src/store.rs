//! The node's in-memory object store: stored responses under a byte budget, found by path and
//! `Vary` variant, and purged by URL, prefix or tag.
//!
//! Eviction and admission are moka's (W-TinyLFU weighed by bytes): a one-off scan of cold URLs
//! does not push out the objects that are asked for often. Bodies stay on this node: nothing here
//! is replicated, only purges are (by the caller, through Raft and the regions' feed), and a
//! restart starts cold.
//!
//! **Purge contract.** Once [`EdgeStore::purge`] returns, no lookup returns an object stored
//! before it that the purge matches, and no fetch that began before it (its [`FetchTicket`] is
//! older) can store what it fetched if the purge matches it: the origin may have answered before
//! the purge reached it. Purges are remembered for the last [`PURGE_LOG_ENTRIES_MAX`] purges;
//! a fetch older than every remembered purge stores nothing (its answer is still served to the
//! requests that waited for it).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderMap, StatusCode};
use moka::notification::RemovalCause;

use crate::freshness::Lifetime;
use crate::limits::{OBJECT_OVERHEAD_BYTES, PURGE_LOG_ENTRIES_MAX, STORED_OBJECT_BYTES_MAX};
use crate::vary;

/// A stored response.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub lifetime: Lifetime,
    /// When its response head arrived (ages count from here).
    pub response_time: SystemTime,
    /// Its purge tags ([`crate::tags::parse`]).
    pub tags: Vec<Vec<u8>>,
}

impl StoredObject {
    /// What it costs in the byte budget: body, headers, tags, key and a fixed overhead.
    fn weight(&self, key: &ObjectKey) -> u64 {
        let headers: usize = self.headers.iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
        let tags: usize = self.tags.iter().map(Vec::len).sum();
        (self.body.len() + headers + tags + key.path.len() + key.variant.len()) as u64 + OBJECT_OVERHEAD_BYTES
    }
}

/// Where an object is stored: its path (with query) as the client asked for it, and its variant
/// ([`vary::secondary_key`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub path: Arc<str>,
    pub variant: Vec<u8>,
}

/// What a purge removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeTarget {
    /// Every variant of this exact path (with query).
    Url(String),
    /// Every object whose path starts with this.
    Prefix(String),
    /// Every object carrying this tag (ASCII case-insensitively).
    Tag(Vec<u8>),
    /// Everything stored.
    Everything,
}

impl PurgeTarget {
    pub fn matches(&self, path: &str, tags: &[Vec<u8>]) -> bool {
        match self {
            PurgeTarget::Url(url) => path == url,
            PurgeTarget::Prefix(prefix) => path.starts_with(prefix.as_str()),
            // Stored tags are lower-cased (`tags::normalise`); the purge's may not be.
            PurgeTarget::Tag(tag) => tags.iter().any(|t| t.eq_ignore_ascii_case(tag)),
            PurgeTarget::Everything => true,
        }
    }
}

/// Taken before asking the origin; [`EdgeStore::insert`] uses it to refuse what a purge made
/// since then covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchTicket {
    /// Purges numbered above this came after the fetch began.
    purges_seen: u64,
}

/// A lookup's result.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A stored object for this request (fresh or not: ask its `lifetime`).
    Found(Arc<StoredObject>),
    /// Nothing stored for this request.
    Missing,
    /// The request's values of the headers the path varies on are too long to key: pass it
    /// through, store nothing.
    Unkeyable,
}

/// Why an object was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotInserted {
    #[error("a purge since the fetch began covers it")]
    Purged,
    #[error("object of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    #[error("the request's varied header values are too long to key")]
    Unkeyable,
}

/// Counts for `basalt cache stats` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    pub objects: u64,
    pub bytes: u64,
    pub evictions: u64,
}

/// The purges the store still checks fetches against.
#[derive(Debug, Default)]
struct PurgeLog {
    /// The number of the last purge (0: none yet).
    last: u64,
    /// The last purges, oldest first, at most [`PURGE_LOG_ENTRIES_MAX`].
    recent: VecDeque<(u64, PurgeTarget)>,
}

impl PurgeLog {
    /// Whether a purge after `seen` covers an object at `path` with `tags`, or such a purge may
    /// have been forgotten.
    fn covers_since(&self, seen: u64, path: &str, tags: &[Vec<u8>]) -> bool {
        if seen == self.last {
            return false;
        }
        let oldest_kept = self.recent.front().map_or(self.last + 1, |(seq, _)| *seq);
        if seen + 1 < oldest_kept {
            return true; // purges it should be checked against were forgotten
        }
        self.recent
            .iter()
            .rev()
            .take_while(|(seq, _)| *seq > seen)
            .any(|(_, target)| target.matches(path, tags))
    }
}

/// The object store of one node. Cheap to share (`Arc`); every method may be called from any
/// thread.
pub struct EdgeStore {
    objects: moka::sync::Cache<ObjectKey, Arc<StoredObject>>,
    /// The headers each path varies on, as its last stored response said.
    vary_of: moka::sync::Cache<Arc<str>, Arc<Vec<HeaderName>>>,
    /// Held for reading by an insert (its check and its insert), for writing by a purge (its log
    /// entry and its invalidation), so that an insert either lands before a purge, which then
    /// removes it, or sees the purge in the log.
    purges: RwLock<PurgeLog>,
    evictions: Arc<AtomicU64>,
}

impl EdgeStore {
    /// A store holding at most `budget_bytes` (by [`StoredObject`] weight).
    pub fn new(budget_bytes: u64) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&evictions);
        let objects = moka::sync::Cache::builder()
            .max_capacity(budget_bytes)
            .weigher(|key: &ObjectKey, object: &Arc<StoredObject>| {
                u32::try_from(object.weight(key)).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |_key, _object, cause| {
                if cause == RemovalCause::Size {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            })
            .support_invalidation_closures()
            .build();
        // One small entry per path; bounded by count, as many as objects could be.
        let vary_of = moka::sync::Cache::builder()
            .max_capacity(budget_bytes / OBJECT_OVERHEAD_BYTES + 1)
            .build();
        Self {
            objects,
            vary_of,
            purges: RwLock::new(PurgeLog::default()),
            evictions,
        }
    }

    /// Before asking the origin for something to store.
    pub fn begin_fetch(&self) -> FetchTicket {
        FetchTicket {
            purges_seen: self.read_purges().last,
        }
    }

    /// The object stored for a request of `path` with these request headers.
    pub fn lookup(&self, path: &str, request: &HeaderMap) -> Lookup {
        let Some(names) = self.vary_of.get(path) else {
            return Lookup::Missing;
        };
        let Some(variant) = vary::secondary_key(&names, request) else {
            return Lookup::Unkeyable;
        };
        let key = ObjectKey {
            path: Arc::from(path),
            variant,
        };
        match self.objects.get(&key) {
            Some(object) => Lookup::Found(object),
            None => Lookup::Missing,
        }
    }

    /// The request's variant under the headers `path` varies on, as far as the store knows them
    /// (`None`: nothing stored for the path yet, or a variant too long to key).
    pub fn variant(&self, path: &str, request: &HeaderMap) -> Option<Vec<u8>> {
        let names = self.vary_of.get(path)?;
        vary::secondary_key(&names, request)
    }

    /// Whether a purge numbered after `ticket` covers an object at `path` with `tags` (or such a
    /// purge may have been forgotten): an answer fetched under `ticket` is not to be handed out
    /// as stored any more.
    pub fn purged_since(&self, ticket: FetchTicket, path: &str, tags: &[Vec<u8>]) -> bool {
        self.read_purges().covers_since(ticket.purges_seen, path, tags)
    }

    /// Removes what is stored for a request of `path` (its variant under the path's `Vary`), if
    /// anything: the origin no longer lets it be stored.
    pub fn remove(&self, path: &str, request: &HeaderMap) {
        if let Some(variant) = self.variant(path, request) {
            self.objects.invalidate(&ObjectKey {
                path: Arc::from(path),
                variant,
            });
        }
    }

    /// Stores the answer to a request of `path` (with these request headers) that varies on
    /// `vary` and was fetched under `ticket`, replacing what was stored for that variant.
    pub fn insert(
        &self,
        ticket: FetchTicket,
        path: &str,
        vary: Vec<HeaderName>,
        request: &HeaderMap,
        object: Arc<StoredObject>,
    ) -> Result<(), NotInserted> {
        let variant = vary::secondary_key(&vary, request).ok_or(NotInserted::Unkeyable)?;
        let key = ObjectKey {
            path: Arc::from(path),
            variant,
        };
        let weight = object.weight(&key);
        if weight > STORED_OBJECT_BYTES_MAX {
            return Err(NotInserted::TooLarge {
                len: weight,
                max: STORED_OBJECT_BYTES_MAX,
            });
        }
        let purges = self.read_purges();
        if purges.covers_since(ticket.purges_seen, path, &object.tags) {
            return Err(NotInserted::Purged);
        }
        self.vary_of.insert(Arc::clone(&key.path), Arc::new(vary));
        self.objects.insert(key, object);
        drop(purges);
        Ok(())
    }

    /// Removes every stored object the target matches (see the purge contract above); returns
    /// the purge's number. A purge that matches nothing changes nothing else.
    pub fn purge(&self, target: PurgeTarget) -> u64 {
        let mut purges = self.purges.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        purges.last += 1;
        let seq = purges.last;
        if purges.recent.len() == PURGE_LOG_ENTRIES_MAX {
            purges.recent.pop_front();
        }
        purges.recent.push_back((seq, target.clone()));
        // moka applies the closure to every entry last written at or before this call, on every
        // later `get` (documented: "must not return invalidated values"); entries written after
        // it were checked against the log by `insert`.
        self.invalidate_if(move |key, object| target.matches(&key.path, &object.tags));
        drop(purges);
        seq
    }

    fn invalidate_if(&self, matches: impl Fn(&ObjectKey, &Arc<StoredObject>) -> bool + Send + Sync + 'static) {
        // Never fails: closures are enabled in `new`.
        if self.objects.invalidate_entries_if(matches).is_err() {
            unreachable!("invalidation closures are enabled when the store is built");
        }
    }

    fn read_purges(&self) -> std::sync::RwLockReadGuard<'_, PurgeLog> {
        // A panic while holding the lock leaves a consistent log (each update is one push).
        self.purges.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Objects and bytes stored, evictions so far. Counts settle after pending maintenance.
    pub fn stats(&self) -> StoreStats {
        self.objects.run_pending_tasks();
        StoreStats {
            objects: self.objects.entry_count(),
            bytes: self.objects.weighted_size(),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;
    use http::HeaderValue;
    use std::time::{Duration, UNIX_EPOCH};

    fn object(body: &str, tags: &[&str]) -> StoredObject {
        StoredObject {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
            lifetime: Lifetime {
                fresh_for: Duration::from_secs(60),
                initial_age: Duration::ZERO,
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
            },
            response_time: UNIX_EPOCH,
            tags: tags.iter().map(|t| t.as_bytes().to_vec()).collect(),
        }
    }

    fn found(store: &EdgeStore, path: &str, request: &HeaderMap) -> Option<String> {
        match store.lookup(path, request) {
            Lookup::Found(object) => Some(String::from_utf8(object.body.to_vec()).expect("utf8")),
            Lookup::Missing => None,
            Lookup::Unkeyable => panic!("unkeyable"),
        }
    }

    fn put(store: &EdgeStore, path: &str, body: &str, tags: &[&str]) {
        let ticket = store.begin_fetch();
        store
            .insert(ticket, path, vec![], &HeaderMap::new(), Arc::new(object(body, tags)))
            .expect("stored");
    }

    #[test]
    fn purges_by_url_prefix_and_tag_remove_exactly_what_they_match() {
        let store = EdgeStore::new(1 << 20);
        let none = HeaderMap::new();
        put(&store, "/a/1", "a1", &["red"]);
        put(&store, "/a/2", "a2", &["blue"]);
        put(&store, "/a/2?x=1", "a2x", &[]);
        put(&store, "/b/1", "b1", &["red", "blue"]);

        store.purge(PurgeTarget::Url("/a/2".into()));
        assert_eq!(found(&store, "/a/2", &none), None);
        assert_eq!(
            found(&store, "/a/2?x=1", &none).as_deref(),
            Some("a2x"),
            "the query is part of the URL"
        );

        store.purge(PurgeTarget::Tag(b"RED".to_vec()));
        assert_eq!(found(&store, "/a/1", &none), None);
        assert_eq!(found(&store, "/b/1", &none), None);

        put(&store, "/b/2", "b2", &[]);
        store.purge(PurgeTarget::Prefix("/a/".into()));
        assert_eq!(found(&store, "/a/2?x=1", &none), None);
        assert_eq!(found(&store, "/b/2", &none).as_deref(), Some("b2"));
        // Purging what is not stored changes nothing.
        store.purge(PurgeTarget::Tag(b"nothing".to_vec()));
        assert_eq!(found(&store, "/b/2", &none).as_deref(), Some("b2"));
        store.purge(PurgeTarget::Everything);
        assert_eq!(found(&store, "/b/2", &none), None);
        // Stored again after a purge: found again.
        put(&store, "/a/1", "a1'", &["red"]);
        assert_eq!(found(&store, "/a/1", &none).as_deref(), Some("a1'"));
    }

    #[test]
    fn a_fetch_that_began_before_a_matching_purge_stores_nothing() {
        let store = EdgeStore::new(1 << 20);
        let before = store.begin_fetch();
        store.purge(PurgeTarget::Tag(b"product-42".to_vec()));
        let refused = store.insert(
            before,
            "/p/42",
            vec![],
            &HeaderMap::new(),
            Arc::new(object("old", &["product-42"])),
        );
        assert_eq!(refused, Err(NotInserted::Purged));
        assert_eq!(found(&store, "/p/42", &HeaderMap::new()), None);
        // A purge that does not match does not stop it; a fetch begun after the purge stores.
        store
            .insert(
                before,
                "/p/43",
                vec![],
                &HeaderMap::new(),
                Arc::new(object("ok", &["product-43"])),
            )
            .expect("not covered");
        let after = store.begin_fetch();
        store
            .insert(
                after,
                "/p/42",
                vec![],
                &HeaderMap::new(),
                Arc::new(object("new", &["product-42"])),
            )
            .expect("began after the purge");
    }

    #[test]
    fn purged_since_and_remove() {
        let store = EdgeStore::new(1 << 20);
        let ticket = store.begin_fetch();
        put(&store, "/x", "x", &["t"]);
        assert!(!store.purged_since(ticket, "/x", &[b"t".to_vec()]));
        store.purge(PurgeTarget::Tag(b"t".to_vec()));
        assert!(store.purged_since(ticket, "/x", &[b"t".to_vec()]));
        assert!(!store.purged_since(store.begin_fetch(), "/x", &[b"t".to_vec()]));
        put(&store, "/y", "y", &[]);
        store.remove("/y", &HeaderMap::new());
        assert_eq!(found(&store, "/y", &HeaderMap::new()), None);
        store.remove("/never", &HeaderMap::new());
    }

    #[test]
    fn a_fetch_older_than_every_remembered_purge_stores_nothing() {
        let store = EdgeStore::new(1 << 20);
        let ancient = store.begin_fetch();
        for i in 0..=PURGE_LOG_ENTRIES_MAX {
            store.purge(PurgeTarget::Url(format!("/other/{i}")));
        }
        let refused = store.insert(ancient, "/p", vec![], &HeaderMap::new(), Arc::new(object("x", &[])));
        assert_eq!(refused, Err(NotInserted::Purged));
        let recent = store.begin_fetch();
        store.purge(PurgeTarget::Url("/other".into()));
        store
            .insert(recent, "/p", vec![], &HeaderMap::new(), Arc::new(object("x", &[])))
            .expect("one purge behind, and it is remembered");
    }

    #[test]
    fn variants_are_found_by_the_headers_the_path_varies_on() {
        let store = EdgeStore::new(1 << 20);
        let gzip = HeaderMap::from_iter([(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"))]);
        let br = HeaderMap::from_iter([(header::ACCEPT_ENCODING, HeaderValue::from_static("br"))]);
        let vary = vec![header::ACCEPT_ENCODING];
        store
            .insert(
                store.begin_fetch(),
                "/app.js",
                vary.clone(),
                &gzip,
                Arc::new(object("gz", &[])),
            )
            .expect("stored");
        store
            .insert(store.begin_fetch(), "/app.js", vary, &br, Arc::new(object("br", &[])))
            .expect("stored");
        assert_eq!(found(&store, "/app.js", &gzip).as_deref(), Some("gz"));
        assert_eq!(found(&store, "/app.js", &br).as_deref(), Some("br"));
        assert_eq!(found(&store, "/app.js", &HeaderMap::new()), None);
        store.purge(PurgeTarget::Url("/app.js".into()));
        assert_eq!(found(&store, "/app.js", &gzip), None);
        assert_eq!(found(&store, "/app.js", &br), None);
    }

    #[test]
    fn the_byte_budget_holds_and_evictions_are_counted() {
        let store = EdgeStore::new(64 * 1024);
        let body = "x".repeat(4096);
        for i in 0..200 {
            put(&store, &format!("/o/{i}"), &body, &[]);
        }
        let stats = store.stats();
        assert!(stats.bytes <= 64 * 1024, "{stats:?}");
        assert!(stats.objects < 200 && stats.objects > 0, "{stats:?}");
        assert!(stats.evictions > 0, "{stats:?}");
    }

    #[test]
    fn an_object_over_the_size_limit_is_refused() {
        let store = EdgeStore::new(u64::MAX);
        let mut big = object("", &[]);
        big.body = Bytes::from(vec![0u8; STORED_OBJECT_BYTES_MAX as usize]);
        assert!(matches!(
            store.insert(store.begin_fetch(), "/big", vec![], &HeaderMap::new(), Arc::new(big)),
            Err(NotInserted::TooLarge { .. })
        ));
    }

    /// Purges racing inserts on threads: whatever the interleaving, an object whose fetch began
    /// before a matching purge is never found after that purge returned.
    #[test]
    fn a_racing_insert_never_survives_a_purge_that_covers_it() {
        for round in 0..50 {
            let store = Arc::new(EdgeStore::new(1 << 20));
            let ticket = store.begin_fetch();
            let inserter = {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let _ = store.insert(
                        ticket,
                        "/race",
                        vec![],
                        &HeaderMap::new(),
                        Arc::new(object("old", &["t"])),
                    );
                })
            };
            store.purge(PurgeTarget::Tag(b"t".to_vec()));
            // After the purge returned: never found, whether the insert ran before or after.
            let seen_now = found(&store, "/race", &HeaderMap::new());
            inserter.join().expect("inserter");
            let seen_later = found(&store, "/race", &HeaderMap::new());
            assert_eq!((seen_now, seen_later), (None, None), "round {round}");
        }
    }
}
