//! Combining: concurrent writes of one key from many connections become one write.
//!
//! Every command that writes one key goes through here (`SET`, `INCR`, `APPEND`, `EXPIRE`,
//! `HSET`, `ZADD`, ...): each is a decision over the key as read (`decide`), so a group of any
//! of them is applied in order with [`KeyState`] and written once.
//!
//! Redis runs commands one at a time, so fifty clients incrementing one counter cost it
//! nothing. On Basalt each write is a Raft round, and two writes of one key cannot share a log
//! entry; the naive mapping of `INCR` (read, then compare-and-set) makes fifty clients retry
//! each other to a crawl. So the writes of a key that arrive while one is on its way wait, and
//! go next as one group: the group is applied to the value in arrival order, written once
//! (conditioned on the revision read, retried if another writer came in between), and each
//! command gets the reply its place in that order gives (`INCR` from five clients answers 1..5).
//!
//! Why this is linearizable: every command in a group was sent before the group's write began
//! and is answered after it committed, so all of them may take effect at that one instant, in
//! the group's order; no read can fall between them, which is why the intermediate values are
//! never seen by anyone but the command that produced them.
//!
//! A connection's commands in a group are in its own order: it waits for each reply before
//! running its next command, except for a pipeline's run of writes of one key, which joins a
//! group together, side by side and in order ([`Combiner::write_all`]). A group shares its fate:
//! when its write fails, every command in it gets that error (nothing was applied, or for an
//! uncertain outcome, all or none of them were).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use basalt_client::txn::{Compare, Condition};
use basalt_client::{Client, KvEntry, PutOptions, TxnOp, TxnOpResult, TxnOutcome};
use tokio::sync::{oneshot, Notify};

use crate::command::Command;
use crate::decide::{Change, KeyState};
use crate::frame::Reply;
use crate::keys::{now_ms, op_refusal, put_op, NewTtl};
use crate::limits::{CAS_ATTEMPTS_MAX, ROUND_GATHER_CALLERS_MAX, ROUND_GATHER_WAIT_MAX, ROUND_ITEMS_MAX};
use crate::reply_error::client_error;

/// A write of one key that can join a group.
#[derive(Clone, Debug, PartialEq)]
pub enum KeyWrite {
    /// `SET key value [EX|PX ...]` without conditions (the value already checked storable): the
    /// value and its time to live. A group of only these is written without a read.
    Set { value: Vec<u8>, ttl: Option<Duration> },
    /// Any other command that writes the key (see `decide`).
    Command(Command),
}

/// Applies `writes` in order to `state`: each write's reply. Pure, so the combining rule is
/// tested without a cluster.
pub fn apply_group(state: &mut KeyState, writes: &[KeyWrite], now: i64) -> Vec<Reply> {
    writes
        .iter()
        .map(|write| match write {
            KeyWrite::Set { value, ttl } => {
                let ttl = ttl.map_or(NewTtl::Never, NewTtl::After);
                state.apply(Change::Put(value.clone(), ttl, Reply::ok()), now)
            }
            // Replies of writers do not differ by protocol (a double is shaped when encoded).
            KeyWrite::Command(command) => state.run(command, now, false),
        })
        .collect()
}

struct Waiting {
    write: KeyWrite,
    reply: oneshot::Sender<Reply>,
}

/// Per key, what waits for the next round, shared by the connections and the key's runner. A
/// key is in the map exactly while a runner owns it: [`KeyQueues::join`] says when the caller
/// must start one, and [`KeyQueues::take`] ends it (removing the key) in the same step that
/// finds nothing waiting, so a later arrival always starts a new runner and never waits on an
/// ended one. The write and read combiners both stand on it.
pub struct KeyQueues<T> {
    queues: Arc<Mutex<HashMap<Vec<u8>, Queue<T>>>>,
}

/// One key's waiting items, and what its runner gathers for.
struct Queue<T> {
    /// Per caller, in arrival order, its items (a pipeline's run of writes is one caller of
    /// many items, kept side by side).
    callers: VecDeque<Vec<T>>,
    /// While the runner gathers: how many callers end its wait (0: it does not wait).
    wanted: usize,
    /// Told when `wanted` callers wait; a new one for each gathering, so that a wakeup left
    /// from an earlier one (it came after that wait ran out) cannot end the next at once.
    gathered: Arc<Notify>,
}

impl<T> Queue<T> {
    fn new(items: Vec<T>) -> Queue<T> {
        Queue {
            callers: VecDeque::from([items]),
            wanted: 0,
            gathered: Arc::new(Notify::new()),
        }
    }
}

impl<T> Clone for KeyQueues<T> {
    fn clone(&self) -> Self {
        KeyQueues {
            queues: Arc::clone(&self.queues),
        }
    }
}

impl<T> Default for KeyQueues<T> {
    fn default() -> Self {
        KeyQueues { queues: Arc::default() }
    }
}

impl<T> KeyQueues<T> {
    /// Queues `item` on `key`; true when no runner owns the key and the caller must start one.
    pub fn join(&self, key: &[u8], item: T) -> bool {
        self.join_all(key, vec![item])
    }

    /// Queues `items` on `key` together, in order (no other caller's item comes between them);
    /// true when the caller must start a runner. `items` is not empty.
    pub fn join_all(&self, key: &[u8], items: Vec<T>) -> bool {
        if items.is_empty() {
            return false;
        }
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        match queues.get_mut(key) {
            Some(queue) => {
                queue.callers.push_back(items);
                if queue.wanted > 0 && queue.callers.len() >= queue.wanted {
                    queue.wanted = 0;
                    queue.gathered.notify_one();
                }
                false
            }
            None => {
                queues.insert(key.to_vec(), Queue::new(items));
                true
            }
        }
    }

    /// How many callers wait on `key`.
    fn waiting(&self, key: &[u8]) -> usize {
        let queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        queues.get(key).map_or(0, |queue| queue.callers.len())
    }

    /// Asks to be told once `wanted` callers wait on `key`: `None` when they already do (or the
    /// key has no runner).
    fn gather(&self, key: &[u8], wanted: usize) -> Option<Arc<Notify>> {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = queues.get_mut(key)?;
        if queue.callers.len() >= wanted {
            return None;
        }
        queue.wanted = wanted;
        queue.gathered = Arc::new(Notify::new());
        Some(Arc::clone(&queue.gathered))
    }

    /// What waits on `key`, for the runner's next round, with the number of callers it came
    /// from: whole callers in arrival order, up to [`ROUND_ITEMS_MAX`] items (at least one
    /// caller), the rest staying for the next round. Empty when nothing waits, and then the key
    /// has left the map (the runner ends).
    pub fn take(&self, key: &[u8]) -> (Vec<T>, usize) {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        match queues.get_mut(key) {
            Some(queue) if !queue.callers.is_empty() => {
                queue.wanted = 0;
                let mut round = Vec::new();
                let mut callers = 0;
                while let Some(next) = queue.callers.front() {
                    if callers > 0 && round.len() + next.len() > ROUND_ITEMS_MAX {
                        break;
                    }
                    round.extend(queue.callers.pop_front().unwrap_or_default());
                    callers += 1;
                }
                (round, callers)
            }
            _ => {
                queues.remove(key);
                (Vec::new(), 0)
            }
        }
    }

    /// Removes `key` with what still waits on it: for a runner that ends any other way than by
    /// finding nothing (a panic), so that its waiters get an answer instead of waiting forever.
    fn abandon(&self, key: &[u8]) -> Vec<T> {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        queues
            .remove(key)
            .map_or_else(Vec::new, |queue| queue.callers.into_iter().flatten().collect())
    }
}

/// Held by a runner: if dropped before the runner saw its queue empty, abandons the key and
/// answers everything still waiting with `fail`.
pub(crate) struct RunnerGuard<T> {
    queues: KeyQueues<T>,
    key: Vec<u8>,
    done: bool,
    fail: fn(T),
    gathering: Gathering,
    /// When the last round began, if there was one.
    last_began: Option<Instant>,
    /// Callers waiting when the last round's first answer went out ([`RunnerGuard::answering`]):
    /// none of them is one of that round's, which may come back before the next round begins.
    waiting_at_answer: Option<usize>,
}

impl<T> Drop for RunnerGuard<T> {
    fn drop(&mut self) {
        if !self.done {
            for item in self.queues.abandon(&self.key) {
                (self.fail)(item);
            }
        }
    }
}

impl<T> RunnerGuard<T> {
    pub(crate) fn new(queues: &KeyQueues<T>, key: &[u8], fail: fn(T)) -> Self {
        RunnerGuard {
            queues: queues.clone(),
            key: key.to_vec(),
            done: false,
            fail,
            gathering: Gathering::default(),
            last_began: None,
            waiting_at_answer: None,
        }
    }

    /// Called before a round's first answer is sent (again before later ones is harmless): notes
    /// who waits then, before any caller of this round can have come back.
    pub(crate) fn answering(&mut self) {
        if self.waiting_at_answer.is_none() {
            self.waiting_at_answer = Some(self.queues.waiting(&self.key));
        }
    }

    /// The next round's items; empty (and the guard disarmed) when the runner is to end.
    ///
    /// Gathers first (see [`Gathering`]): waits, about half the last round's time and at most
    /// [`ROUND_GATHER_WAIT_MAX`] (the runtime's timer rounds both up to its next millisecond),
    /// for the callers of the round just ended that are expected back. Every item of a round
    /// still arrived before its request was sent, so gathering changes when a round goes, never
    /// what it may answer.
    pub(crate) async fn next_round(&mut self) -> Vec<T> {
        // Those that waited before the last round's answers went out are not its callers; those
        // counted now may already include some that came back.
        let waiting = self
            .waiting_at_answer
            .take()
            .unwrap_or_else(|| self.queues.waiting(&self.key));
        let expected = self.gathering.expected_back();
        let mut gathered = true;
        if let (Some(began), true) = (self.last_began, expected > 0) {
            let wanted = (waiting + expected).min(ROUND_GATHER_CALLERS_MAX);
            if let Some(told) = self.queues.gather(&self.key, wanted) {
                let wait = (began.elapsed() / 2).min(ROUND_GATHER_WAIT_MAX);
                gathered = tokio::time::timeout(wait, told.notified()).await.is_ok();
            }
        }
        let (round, callers) = self.queues.take(&self.key);
        self.gathering.round_taken(waiting, callers, gathered);
        self.done = round.is_empty();
        self.last_began = Some(Instant::now());
        round
    }
}

/// How a key's runner learns whether to wait between rounds for the callers of the round just
/// ended. Pure, so its rule is tested without a runtime.
///
/// The callers of a round are answered together and, if they keep writing the key (fifty
/// clients incrementing one counter), send their next commands at once. A round that set off
/// without them would leave them for the round after, splitting the callers into two halves
/// that take turns: every round half as full as it could be, twice the rounds (each a Raft
/// entry on three nodes) for the same work. So the runner waits for the share of the last
/// round it has seen come back. Callers that go elsewhere (writes spread over many keys) would
/// make that wait run out every time: a wait that runs out lowers the share to what did come
/// back, a wait that ends by the callers' arrival raises it halfway to all, and with no wait the
/// share creeps back up so that a change of pattern is found again.
#[derive(Clone, Debug)]
pub struct Gathering {
    /// Callers the last round took.
    last_round: usize,
    /// The share of a round's callers expected back, 0 to 1.
    share_back: f64,
}

impl Default for Gathering {
    fn default() -> Self {
        Gathering {
            last_round: 0,
            share_back: 1.0,
        }
    }
}

impl Gathering {
    /// How much the share climbs per round that did not wait (so that after some rounds without
    /// waiting, a round tries waiting again).
    const SHARE_CREEP: f64 = 0.05;

    /// How many of the last round's callers to wait for before the next round.
    pub fn expected_back(&self) -> usize {
        (self.last_round as f64 * self.share_back).floor() as usize
    }

    /// A round took the items of `taken` callers, `waiting_before` of them already waiting
    /// before any wait; `gathered`: the wait (if any) ended because the callers wanted came.
    pub fn round_taken(&mut self, waiting_before: usize, taken: usize, gathered: bool) {
        let expected = self.expected_back();
        if expected == 0 {
            self.share_back = (self.share_back + Self::SHARE_CREEP).min(1.0);
        } else if gathered {
            self.share_back = (self.share_back + 1.0) / 2.0;
        } else {
            let came_back = taken.saturating_sub(waiting_before);
            self.share_back = (came_back as f64 / self.last_round as f64).min(1.0);
        }
        self.last_round = taken;
    }
}

/// The groups of one node's RESP server: per key, the writes waiting for the next round.
#[derive(Clone, Default)]
pub struct Combiner {
    waiting: KeyQueues<Waiting>,
}

impl Combiner {
    /// Applies `write` to `key`, with whatever other connections write to it meanwhile.
    pub async fn write(&self, client: &Client, key: &[u8], write: KeyWrite) -> Reply {
        self.write_all(client, key, vec![write])
            .await
            .pop()
            .unwrap_or_else(|| Reply::error("UNCERTAIN the node stopped while the write was on its way"))
    }
}

impl Combiner {
    /// Applies `writes` to `key` in order, as one connection's pipelined commands of one key:
    /// they join one group together, so that a pipeline of increments of a counter is one
    /// round, not one round per increment. Each write's reply, in order.
    pub async fn write_all(&self, client: &Client, key: &[u8], writes: Vec<KeyWrite>) -> Vec<Reply> {
        let (waiting, answers): (Vec<Waiting>, Vec<_>) = writes
            .into_iter()
            .map(|write| {
                let (reply, answer) = oneshot::channel();
                (Waiting { write, reply }, answer)
            })
            .unzip();
        if waiting.is_empty() {
            return Vec::new();
        }
        if self.waiting.join_all(key, waiting) {
            // Its own task: a connection that goes away must not take other connections'
            // writes with it.
            tokio::spawn(run(self.waiting.clone(), client.clone(), key.to_vec()));
        }
        let mut replies = Vec::with_capacity(answers.len());
        for answer in answers {
            replies.push(
                answer
                    .await
                    .unwrap_or_else(|_| Reply::error("UNCERTAIN the node stopped while the write was on its way")),
            );
        }
        replies
    }
}

async fn run(queues: KeyQueues<Waiting>, client: Client, key: Vec<u8>) {
    let mut guard = RunnerGuard::new(&queues, &key, |w: Waiting| {
        let _ = w
            .reply
            .send(Reply::error("ERR the write's round failed; nothing was applied"));
    });
    // What this runner last wrote: the next group tries its write on it without reading first
    // (the write is conditioned on its revision, so a stale guess only costs a read).
    let mut known = None;
    loop {
        let group = guard.next_round().await;
        if group.is_empty() {
            return;
        }
        let writes: Vec<KeyWrite> = group.iter().map(|w| w.write.clone()).collect();
        let replies = write_group(&client, &key, &writes, &mut known).await;
        guard.answering();
        for (waiting, reply) in group.into_iter().zip(replies) {
            let _ = waiting.reply.send(reply);
        }
    }
}

/// The key as this runner's last write left it.
#[derive(Clone, Debug)]
struct Known {
    /// `None`: the write deleted it.
    entry: Option<KvEntry>,
    /// What the next write is conditioned on (0: absent).
    revision: u64,
}

/// One round: the group's writes applied and written once. Every reply is the same error when
/// the write fails. `known` is the state the runner's previous round left (tried first instead
/// of a read), and what this round leaves.
async fn write_group(client: &Client, key: &[u8], writes: &[KeyWrite], known: &mut Option<Known>) -> Vec<Reply> {
    let all = |reply: Reply| vec![reply; writes.len()];
    let mut guess = known.take();
    // Only SETs: the value before does not matter, the last one is written as it is.
    if let Some(KeyWrite::Set { value, ttl }) = writes.last() {
        if writes.iter().all(|w| matches!(w, KeyWrite::Set { .. })) {
            return match client.kv().put_with(key, value, PutOptions { ttl: *ttl }).await {
                Ok(revision) => {
                    // With a TTL, the expiry the cluster gave it is not known here: the next
                    // round reads.
                    if ttl.is_none() {
                        *known = Some(Known {
                            entry: Some(entry_of(value.clone(), revision, None)),
                            revision,
                        });
                    }
                    all(Reply::ok())
                }
                Err(e) => all(client_error(&e)),
            };
        }
    }
    let mut attempt = 0;
    while attempt < CAS_ATTEMPTS_MAX {
        let now = now_ms();
        // A cached key whose expiry has passed is gone for the cluster: read it (the condition
        // would refuse the write anyway, at the cost of a round).
        if guess.as_ref().is_some_and(|k| {
            k.entry
                .as_ref()
                .and_then(|e| e.expires_at_ms)
                .is_some_and(|at| at as i64 <= now)
        }) {
            guess = None;
        }
        let from_cache = guess.is_some();
        let (entry, revision) = match guess.take() {
            Some(k) => (k.entry, k.revision),
            None => match client.kv().get(key).await {
                Ok(entry) => {
                    let revision = entry.as_ref().map_or(0, |e| e.mod_revision);
                    (entry, revision)
                }
                Err(e) => return all(client_error(&e)),
            },
        };
        let mut state = KeyState::new(entry);
        let replies = apply_group(&mut state, writes, now);
        let Some(ttl) = state.written else {
            if from_cache {
                // Nothing to write means nothing commits, so nothing shows the cached value is
                // still the key's: read it, and answer from what the cluster holds.
                continue;
            }
            return replies;
        };
        let op = match &state.entry {
            Some(entry) => put_op(key, entry.value.clone(), ttl),
            None => TxnOp::delete(key.to_vec()),
        };
        let outcome = client
            .txn()
            .when(Condition::mod_revision(key.to_vec(), Compare::Eq, revision))
            .then(op)
            .commit()
            .await;
        match outcome {
            Ok(TxnOutcome::Committed {
                succeeded: true,
                results,
            }) => {
                // Known exactly unless the write set a new expiry (the cluster counts it from
                // when it applies): then the next round reads.
                *known = match (state.entry, results.first()) {
                    (None, _) => Some(Known {
                        entry: None,
                        revision: 0,
                    }),
                    (Some(entry), Some(TxnOpResult::Written { revision, .. })) if !matches!(ttl, NewTtl::After(_)) => {
                        Some(Known {
                            entry: Some(entry_of(entry.value, *revision, entry.expires_at_ms)),
                            revision: *revision,
                        })
                    }
                    _ => None,
                };
                return replies;
            }
            // Another writer came in between (or the guess was stale): read and go again,
            // after a pause that grows so that contending writers spread out.
            Ok(TxnOutcome::Committed { succeeded: false, .. }) => {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_micros(50 * u64::from(attempt.min(40)))).await;
                }
                attempt += 1;
            }
            Ok(TxnOutcome::Aborted { reason, .. }) => return all(op_refusal(reason)),
            Err(e) => return all(client_error(&e)),
        }
    }
    all(Reply::error(format!(
        "TRYAGAIN the key changed under {CAS_ATTEMPTS_MAX} attempts in a row; nothing was applied"
    )))
}

/// An entry as this runner wrote it (only its value, revision and expiry are used).
fn entry_of(value: Vec<u8>, revision: u64, expires_at_ms: Option<u64>) -> KvEntry {
    KvEntry {
        value,
        create_revision: 0,
        mod_revision: revision,
        version: 0,
        expires_at_ms,
    }
}

/// What a combined read answers: the key's entry, or the error every reader gets.
type ReadAnswer = Result<Option<KvEntry>, Reply>;

/// Combined linearizable reads: the reads of one key that arrive while one is on its way share
/// the next one. Linearizable, because that read starts after every reader of its group was
/// sent and ends before any is answered, so its moment lies within each reader's own.
#[derive(Clone, Default)]
pub struct ReadCombiner {
    waiting: KeyQueues<oneshot::Sender<ReadAnswer>>,
}

impl ReadCombiner {
    /// The key's entry, read linearizably.
    pub async fn read(&self, client: &Client, key: &[u8]) -> ReadAnswer {
        let (answer, wait) = oneshot::channel();
        if self.waiting.join(key, answer) {
            tokio::spawn(read_rounds(self.waiting.clone(), client.clone(), key.to_vec()));
        }
        wait.await
            .unwrap_or_else(|_| Err(Reply::error("TRYAGAIN the node stopped while the read was on its way")))
    }
}

/// Reads `key` once per group of waiting readers until none wait.
async fn read_rounds(queues: KeyQueues<oneshot::Sender<ReadAnswer>>, client: Client, key: Vec<u8>) {
    let mut guard = RunnerGuard::new(&queues, &key, |reader: oneshot::Sender<ReadAnswer>| {
        let _ = reader.send(Err(Reply::error("TRYAGAIN the read's round failed")));
    });
    loop {
        let group = guard.next_round().await;
        if group.is_empty() {
            return;
        }
        let answer = client.kv().get(&key).await.map_err(|e| client_error(&e));
        guard.answering();
        for reader in group {
            let _ = reader.send(answer.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::errors;
    use std::future::Future;
    use std::task::Poll;

    fn state(value: Option<&str>) -> KeyState {
        KeyState::new(value.map(|v| KvEntry {
            value: v.as_bytes().to_vec(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            expires_at_ms: None,
        }))
    }

    fn incr(by: i64) -> KeyWrite {
        KeyWrite::Command(Command::IncrBy(b"k".to_vec(), by))
    }

    fn value(state: &KeyState) -> Option<&[u8]> {
        state.entry.as_ref().map(|e| e.value.as_slice())
    }

    /// A key has a runner exactly while it is in the map: the first arrival starts one, later
    /// ones queue, a round takes them all, and the round that finds none ends the runner so the
    /// next arrival starts a new one; an abandoned key hands back what still waits.
    #[test]
    fn key_queues_start_one_runner_per_key_and_end_it_when_empty() {
        let queues: KeyQueues<u32> = KeyQueues::default();
        assert!(queues.join(b"k", 1), "first arrival starts a runner");
        assert!(!queues.join(b"k", 2), "a runner owns the key");
        assert!(queues.join(b"other", 9), "keys are independent");
        assert_eq!(queues.take(b"k").0, vec![1, 2]);
        assert!(!queues.join(b"k", 3), "still owned between rounds");
        assert_eq!(queues.take(b"k").0, vec![3]);
        assert_eq!(queues.take(b"k").0, Vec::<u32>::new(), "nothing waits: the runner ends");
        assert!(queues.join(b"k", 4), "the next arrival starts a new runner");
        assert_eq!(queues.abandon(b"k"), vec![4]);
        assert!(queues.join(b"k", 5), "an abandoned key is free again");
        // A runner's guard dropped before its queue ran empty (a panic) answers what waits
        // through `fail` and frees the key.
        static FAILED: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());
        drop(RunnerGuard::new(&queues, b"k", |n| {
            FAILED.lock().expect("lock").push(n)
        }));
        assert_eq!(*FAILED.lock().expect("lock"), vec![5]);
        assert!(queues.join(b"k", 6), "the dropped guard freed the key");
        // A pipeline's run is one caller of many items, side by side.
        assert!(!queues.join_all(b"k", vec![7, 8, 9]));
        assert!(!queues.join(b"k", 10));
        assert_eq!(queues.waiting(b"k"), 3, "three callers");
        assert_eq!(queues.take(b"k"), (vec![6, 7, 8, 9, 10], 3));
    }

    /// Callers that keep writing the key are waited for; callers that go elsewhere make the
    /// runner stop waiting for them, and it tries again after a while.
    #[test]
    fn gathering_waits_for_the_callers_that_come_back() {
        let mut g = Gathering::default();
        assert_eq!(g.expected_back(), 0, "the first round waits for nobody");
        g.round_taken(50, 50, true);
        assert_eq!(g.expected_back(), 50, "fifty callers of one key: wait for all of them");
        g.round_taken(0, 50, true);
        assert_eq!(g.expected_back(), 50);
        // Writes spread over many keys: of a round of 10, 2 came back before the wait ran out.
        g.round_taken(0, 10, true);
        g.round_taken(0, 2, false);
        assert_eq!(
            g.expected_back(),
            0,
            "2 of 10 came back: wait for 2 of the next 2 is 0.4 of one"
        );
        let mut rounds_until_it_waits_again = 0;
        while g.expected_back() == 0 {
            g.round_taken(0, 2, true);
            rounds_until_it_waits_again += 1;
            assert!(rounds_until_it_waits_again < 100, "the share creeps back up");
        }
        assert!(rounds_until_it_waits_again > 1, "but not at once");
        // A wait that ends by the callers' arrival raises the share halfway to all.
        let mut g = Gathering::default();
        g.round_taken(0, 10, true);
        // Ten new callers waited, none of the last round's came back.
        g.round_taken(10, 10, false);
        assert_eq!(g.expected_back(), 0, "none came back");
        while g.expected_back() == 0 {
            g.round_taken(0, 10, false);
        }
        // It waits again, for one of them; each wait that ends by the callers' arrival takes
        // the share halfway to all.
        assert_eq!(g.expected_back(), 1);
        let mut expected = Vec::new();
        for _ in 0..4 {
            g.round_taken(0, 10, true);
            expected.push(g.expected_back());
        }
        assert_eq!(expected, vec![5, 7, 8, 9]);
    }

    /// The runner's next round takes the callers of the last round that come back while it
    /// waits, with the one already waiting: one round of four, not a round of one and then one
    /// of three, even when one of them came back before the runner began to wait. Callers that
    /// do not come back end the wait by its bound, and the runner.
    #[tokio::test(flavor = "current_thread")]
    async fn a_runner_gathers_the_callers_of_its_last_round() {
        let queues: KeyQueues<&'static str> = KeyQueues::default();
        assert!(queues.join(b"k", "a"));
        queues.join(b"k", "b");
        queues.join(b"k", "c");
        let mut guard = RunnerGuard::new(&queues, b"k", |_| {});
        assert_eq!(guard.next_round().await, vec!["a", "b", "c"]);
        // The round's write takes a while; meanwhile another caller arrives.
        tokio::time::sleep(Duration::from_millis(10)).await;
        queues.join(b"k", "d");
        guard.answering();
        // a is answered and back before the runner looks again; b and c come while it waits.
        queues.join(b"k", "a");
        {
            let round = guard.next_round();
            tokio::pin!(round);
            let waits = std::future::poll_fn(|cx| Poll::Ready(round.as_mut().poll(cx).is_pending())).await;
            assert!(waits, "the runner waits for b and c");
            queues.join(b"k", "b");
            queues.join(b"k", "c");
            // Its wait may have run out meanwhile (a loaded machine): the callers are looked at
            // first, so the round is the same.
            assert_eq!(round.await, vec!["d", "a", "b", "c"]);
        }
        // The wait ended by their arrival (a, back early, was not counted twice): all four are
        // waited for next time.
        assert_eq!(guard.gathering.expected_back(), 4);
        let began = Instant::now();
        assert!(guard.next_round().await.is_empty(), "nobody came back: the runner ends");
        assert!(began.elapsed() < Duration::from_secs(1), "the wait is bounded");
        assert!(queues.join(b"k", "e"), "and the key is free again");
    }

    /// A wakeup that came after a gathering's wait ran out does not end the next one at once;
    /// a round takes whole callers up to its bound, the rest staying for the next.
    #[test]
    fn a_late_wakeup_is_dropped_and_rounds_are_bounded_by_whole_callers() {
        let queues: KeyQueues<usize> = KeyQueues::default();
        assert!(queues.join(b"k", 0));
        let first = queues.gather(b"k", 3).expect("fewer than 3 callers wait");
        queues.join(b"k", 1);
        queues.join(b"k", 2);
        assert!(
            first.notified().now_or_never_ready(),
            "the gathering was told when its callers came"
        );
        assert_eq!(queues.take(b"k"), (vec![0, 1, 2], 3));
        assert!(!queues.join(b"k", 3));
        let second = queues.gather(b"k", 2).expect("one caller waits");
        assert!(!second.notified().now_or_never_ready(), "a new gathering starts untold");
        assert!(!queues.join_all(b"k", Vec::new()), "an empty run joins nothing");
        assert_eq!(queues.waiting(b"k"), 1);
        // A round stops before the caller that would take it past ROUND_ITEMS_MAX items.
        queues.join_all(b"k", (0..ROUND_ITEMS_MAX - 1).collect());
        queues.join_all(b"k", vec![7, 8]);
        let (round, callers) = queues.take(b"k");
        assert_eq!((round.len(), callers), (ROUND_ITEMS_MAX, 2));
        assert_eq!(queues.take(b"k"), (vec![7, 8], 1));
        // One caller larger than the bound still goes, alone.
        queues.join_all(b"k", vec![0; ROUND_ITEMS_MAX + 1]);
        assert_eq!(queues.take(b"k").1, 1);
        assert_eq!(queues.take(b"k"), (Vec::new(), 0), "nothing waits: the key is freed");
    }

    /// Whether a `Notified` is already told, without waiting for it.
    trait ToldNow {
        fn now_or_never_ready(self) -> bool;
    }

    impl ToldNow for tokio::sync::futures::Notified<'_> {
        fn now_or_never_ready(self) -> bool {
            let notified = std::pin::pin!(self);
            let waker = std::task::Waker::noop();
            notified.poll(&mut std::task::Context::from_waker(waker)).is_ready()
        }
    }

    #[test]
    fn a_group_of_increments_answers_each_its_own_value_in_order() {
        let mut s = state(Some("10"));
        let replies = apply_group(&mut s, &[incr(1), incr(5), incr(-2)], 0);
        assert_eq!(
            replies,
            vec![Reply::Integer(11), Reply::Integer(16), Reply::Integer(14)]
        );
        assert_eq!(value(&s), Some(&b"14"[..]));
        // An increment keeps the key's time to live as the cluster has it, as in Redis.
        assert_eq!(s.written, Some(NewTtl::Keep));
    }

    #[test]
    fn a_set_in_a_group_resets_the_value_and_its_expiry_for_the_writes_after_it() {
        let mut s = state(Some("10"));
        let replies = apply_group(
            &mut s,
            &[
                incr(1),
                KeyWrite::Set {
                    value: b"100".to_vec(),
                    ttl: None,
                },
                incr(1),
                KeyWrite::Command(Command::IncrByFloat(b"k".to_vec(), 0.5)),
            ],
            0,
        );
        assert_eq!(
            replies,
            vec![
                Reply::Integer(11),
                Reply::ok(),
                Reply::Integer(101),
                Reply::Bulk(b"101.5".to_vec())
            ]
        );
        assert_eq!(s.written, Some(NewTtl::Never));
    }

    #[test]
    fn a_refused_write_changes_nothing_and_the_others_still_apply() {
        let mut s = state(Some("9223372036854775806"));
        let replies = apply_group(&mut s, &[incr(1), incr(1), incr(-5)], 0);
        assert_eq!(
            replies,
            vec![
                Reply::Integer(i64::MAX),
                Reply::error(errors::OVERFLOW),
                Reply::Integer(i64::MAX - 5)
            ]
        );
        assert!(s.written.is_some());
        let mut text = state(Some("abc"));
        let replies = apply_group(&mut text, &[incr(1)], 0);
        assert_eq!(replies, vec![Reply::error(errors::NOT_INTEGER)]);
        assert!(text.written.is_none(), "nothing to write when every write was refused");
    }

    /// Writes of any kind to one key combine: a hash's field changes from several connections
    /// are applied in order to one value, then a DEL-like removal of the last field deletes it.
    #[test]
    fn a_group_of_hash_and_expiry_changes_is_applied_in_order() {
        let mut s = state(None);
        let hset = |f: &str, v: &str| {
            KeyWrite::Command(Command::HSet {
                key: b"k".to_vec(),
                pairs: vec![(f.as_bytes().to_vec(), v.as_bytes().to_vec())],
                answer_ok: false,
            })
        };
        let replies = apply_group(
            &mut s,
            &[
                hset("a", "1"),
                hset("a", "2"),
                KeyWrite::Command(Command::HIncrBy(b"k".to_vec(), b"a".to_vec(), 3)),
                KeyWrite::Command(Command::Expire {
                    key: b"k".to_vec(),
                    expiry: crate::command::Expiry::In(1000),
                    condition: None,
                }),
                incr(1),
                KeyWrite::Command(Command::HDel(b"k".to_vec(), vec![b"a".to_vec()])),
            ],
            0,
        );
        assert_eq!(
            replies,
            vec![
                Reply::Integer(1),
                Reply::Integer(0),
                Reply::Integer(5),
                Reply::Integer(1),
                Reply::error(crate::keys::WRONGTYPE),
                Reply::Integer(1),
            ]
        );
        assert!(s.entry.is_none(), "the hash left empty is deleted");
        assert_eq!(s.written, Some(NewTtl::Never));
    }
}
