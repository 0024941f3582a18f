//! Consumer groups: membership with session timeouts, generations, server-side assignment (range
//! or sticky), and offset commits fenced by generation.
//!
//! The leader assigns, as in Kafka's KIP-848 protocol: a join, leave, expiry or partition-count
//! change computes the new assignment in apply and bumps the generation; members learn it from
//! their next heartbeat. Expiry is judged from entry stamps, so every replica drops the same
//! member at the same log position.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::queue::check_name;
use super::stream::{partition_state, topic_config};
use super::{load, named, save, OpContext, View};
use crate::command::{GroupOp, OpError, Response, StreamError};
use crate::limits::{SESSION_TIMEOUT_MS_MAX, TOPICS_PER_MEMBER_MAX};
use crate::state::{KeyRange, StoreError, StoreRead, Table};
use crate::stream::{Assignment, Assignor, GroupView, TopicPartition};

/// Applies one consumer-group op.
pub(super) fn apply_op<S: StoreRead>(
    view: &mut View<'_, S>,
    ctx: OpContext,
    op: &GroupOp,
) -> Result<Response, StoreError> {
    let now_ms = ctx.now_ms;
    match op {
        GroupOp::Join {
            group,
            member,
            topics,
            session_timeout_ms,
            assignor,
        } => join(
            view,
            now_ms,
            Join {
                group,
                member,
                topics,
                session_timeout_ms: *session_timeout_ms,
                assignor: *assignor,
            },
        ),
        GroupOp::Heartbeat { group, member } => heartbeat(view, now_ms, group, member),
        GroupOp::Leave { group, member } => leave(view, now_ms, group, member),
        GroupOp::Commit {
            group,
            member,
            generation,
            offsets,
        } => commit(
            view,
            now_ms,
            Commit {
                group,
                member,
                generation: *generation,
                offsets,
            },
        ),
        GroupOp::Sweep { limit } => sweep(view, now_ms, *limit),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Member {
    topics: Vec<Vec<u8>>,
    session_timeout_ms: u64,
    deadline_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct GroupState {
    generation: u64,
    assignor: Assignor,
    members: BTreeMap<String, Member>,
    assignment: Assignment,
    /// The deadline this group is indexed under in `StreamGroupExpiry`.
    indexed_deadline: Option<u64>,
}

fn expiry_key(deadline_ms: u64, group: &[u8]) -> Vec<u8> {
    let mut k = deadline_ms.to_be_bytes().to_vec();
    k.extend_from_slice(&named(group));
    k
}

fn offset_key(group: &[u8], topic: &[u8], partition: u32) -> Vec<u8> {
    let mut k = named(group);
    k.extend_from_slice(&named(topic));
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// Spreads each topic's partitions over the members subscribed to it, evenly (counts differ by
/// at most one per topic). `Sticky` keeps a partition with its previous owner whenever the even
/// spread allows, so a member leaving moves only that member's partitions.
pub fn assign(
    assignor: Assignor,
    subscriptions: &BTreeMap<String, Vec<Vec<u8>>>,
    partitions: &BTreeMap<Vec<u8>, u32>,
    previous: &Assignment,
) -> Assignment {
    let mut out: Assignment = subscriptions.keys().map(|m| (m.clone(), Vec::new())).collect();
    let previous_owner: BTreeMap<&TopicPartition, &String> = previous
        .iter()
        .flat_map(|(member, owned)| owned.iter().map(move |tp| (tp, member)))
        .collect();
    for (topic, &count) in partitions {
        let eligible: Vec<&String> = subscriptions
            .iter()
            .filter(|(_, topics)| topics.contains(topic))
            .map(|(m, _)| m)
            .collect();
        if eligible.is_empty() || count == 0 {
            continue;
        }
        let k = eligible.len() as u32;
        let (base, extra) = (count / k, count % k);
        let mut owner: Vec<Option<usize>> = vec![None; count as usize];
        match assignor {
            Assignor::Range => {
                let mut next = 0u32;
                for (i, _) in eligible.iter().enumerate() {
                    let take = base + u32::from((i as u32) < extra);
                    for p in next..next + take {
                        owner[p as usize] = Some(i);
                    }
                    next += take;
                }
            }
            Assignor::Sticky => {
                let mut counts = vec![0u32; eligible.len()];
                let previous_of = |p: u32| {
                    previous_owner
                        .get(&(topic.clone(), p))
                        .and_then(|m| eligible.iter().position(|e| e == m))
                };
                // Keep previous owners up to the floor, then let `extra` of them keep one more.
                for p in 0..count {
                    if let Some(i) = previous_of(p) {
                        if counts[i] < base {
                            owner[p as usize] = Some(i);
                            counts[i] += 1;
                        }
                    }
                }
                let mut ceil_slots = extra;
                for p in 0..count {
                    if owner[p as usize].is_some() || ceil_slots == 0 {
                        continue;
                    }
                    if let Some(i) = previous_of(p) {
                        if counts[i] == base {
                            owner[p as usize] = Some(i);
                            counts[i] += 1;
                            ceil_slots -= 1;
                        }
                    }
                }
                // The rest go to whoever has fewest (ties to the smallest id).
                for p in 0..count {
                    if owner[p as usize].is_none() {
                        let i = (0..eligible.len())
                            .min_by_key(|&i| (counts[i], i))
                            .expect("eligible is not empty");
                        owner[p as usize] = Some(i);
                        counts[i] += 1;
                    }
                }
            }
        }
        for (p, o) in owner.into_iter().enumerate() {
            if let Some(i) = o {
                if let Some(owned) = out.get_mut(eligible[i]) {
                    owned.push((topic.clone(), p as u32));
                }
            }
        }
    }
    out
}

fn check_member_id(member: &str) -> Result<(), OpError> {
    check_name("member id", member.as_bytes())
}

pub(crate) fn validate_join(
    group: &[u8],
    member: &str,
    topics: &[Vec<u8>],
    session_timeout_ms: u64,
) -> Result<(), OpError> {
    check_name("group name", group)?;
    check_member_id(member)?;
    if topics.is_empty() {
        return Err(OpError::Empty {
            what: "topic list".into(),
        });
    }
    if topics.len() > TOPICS_PER_MEMBER_MAX {
        return Err(OpError::BatchTooLarge {
            len: topics.len(),
            max: TOPICS_PER_MEMBER_MAX,
        });
    }
    for t in topics {
        check_name("topic name", t)?;
    }
    if session_timeout_ms == 0 || session_timeout_ms > SESSION_TIMEOUT_MS_MAX {
        return Err(OpError::OutOfRange {
            what: "session timeout (ms)".into(),
            expected: format!("1..={SESSION_TIMEOUT_MS_MAX}"),
            got: session_timeout_ms.to_string(),
        });
    }
    Ok(())
}

fn load_group<S: StoreRead + ?Sized>(store: &S, group: &[u8]) -> Result<Option<GroupState>, StoreError> {
    load(store, Table::StreamGroup, &named(group))
}

/// Drops members past their deadline, recomputes the assignment, and bumps the generation if it
/// changed; then saves the group and its expiry index entry.
fn settle<S: StoreRead>(
    view: &mut View<'_, S>,
    now_ms: u64,
    group: &[u8],
    state: &mut GroupState,
) -> Result<(), StoreError> {
    let before = state.members.len();
    state.members.retain(|_, m| m.deadline_ms > now_ms);
    let mut membership_changed = state.members.len() != before;
    let mut partitions = BTreeMap::new();
    let subscriptions: BTreeMap<String, Vec<Vec<u8>>> = state
        .members
        .iter()
        .map(|(id, m)| (id.clone(), m.topics.clone()))
        .collect();
    for topics in subscriptions.values() {
        for topic in topics {
            if !partitions.contains_key(topic) {
                let count = topic_config(view, topic)?.map_or(0, |c| c.partitions);
                partitions.insert(topic.clone(), count);
            }
        }
    }
    let assignment = assign(state.assignor, &subscriptions, &partitions, &state.assignment);
    if assignment != state.assignment {
        state.assignment = assignment;
        membership_changed = true;
    }
    if membership_changed {
        state.generation += 1;
    }
    let deadline = state.members.values().map(|m| m.deadline_ms).min();
    if deadline != state.indexed_deadline {
        if let Some(old) = state.indexed_deadline {
            view.delete(Table::StreamGroupExpiry, expiry_key(old, group));
        }
        if let Some(new) = deadline {
            view.put(Table::StreamGroupExpiry, expiry_key(new, group), Vec::new());
        }
        state.indexed_deadline = deadline;
    }
    save(view, Table::StreamGroup, named(group), state);
    Ok(())
}

fn view_of(state: &GroupState, member: &str) -> GroupView {
    GroupView {
        generation: state.generation,
        assigned: state.assignment.get(member).cloned().unwrap_or_default(),
        members: state.members.len() as u32,
    }
}

fn unknown_member(group: &[u8], member: &str) -> OpError {
    OpError::NotFound {
        what: "group member (expired or never joined: join again)".into(),
        name: format!("{}/{member}", String::from_utf8_lossy(group)),
    }
}

pub(crate) struct Join<'a> {
    pub group: &'a [u8],
    pub member: &'a str,
    pub topics: &'a [Vec<u8>],
    pub session_timeout_ms: u64,
    pub assignor: Assignor,
}

pub(crate) fn join<S: StoreRead>(view: &mut View<'_, S>, now_ms: u64, j: Join<'_>) -> Result<Response, StoreError> {
    refuse_on_err!(validate_join(j.group, j.member, j.topics, j.session_timeout_ms));
    for topic in j.topics {
        refuse_on_err!(topic_config(view, topic)?);
    }
    let mut state = load_group(view, j.group)?.unwrap_or(GroupState {
        generation: 0,
        assignor: j.assignor,
        members: BTreeMap::new(),
        assignment: Assignment::new(),
        indexed_deadline: None,
    });
    let mut topics = j.topics.to_vec();
    topics.sort();
    topics.dedup();
    state.members.insert(
        j.member.to_string(),
        Member {
            topics,
            session_timeout_ms: j.session_timeout_ms,
            deadline_ms: now_ms + j.session_timeout_ms,
        },
    );
    settle(view, now_ms, j.group, &mut state)?;
    Ok(Response::Group(view_of(&state, j.member)))
}

/// The group with `member` still in it after expiring the others, or the refusal.
fn live_member<S: StoreRead>(
    view: &mut View<'_, S>,
    now_ms: u64,
    group: &[u8],
    member: &str,
) -> Result<Result<GroupState, OpError>, StoreError> {
    if let Err(e) = check_name("group name", group).and_then(|_| check_member_id(member)) {
        return Ok(Err(e));
    }
    let Some(mut state) = load_group(view, group)? else {
        return Ok(Err(unknown_member(group, member)));
    };
    let alive = state.members.get(member).is_some_and(|m| m.deadline_ms > now_ms);
    if !alive {
        // Its partitions go to the others now, whoever notices the expiry first.
        settle(view, now_ms, group, &mut state)?;
        return Ok(Err(unknown_member(group, member)));
    }
    Ok(Ok(state))
}

pub(crate) fn heartbeat<S: StoreRead>(
    view: &mut View<'_, S>,
    now_ms: u64,
    group: &[u8],
    member: &str,
) -> Result<Response, StoreError> {
    let mut state = match live_member(view, now_ms, group, member)? {
        Ok(s) => s,
        // An expiry noticed here must stick, so this is an answer, not a refusal (which would
        // discard the entry's writes).
        Err(e) => return Ok(Response::GroupRefused(e)),
    };
    if let Some(m) = state.members.get_mut(member) {
        m.deadline_ms = now_ms + m.session_timeout_ms;
    }
    settle(view, now_ms, group, &mut state)?;
    Ok(Response::Group(view_of(&state, member)))
}

pub(crate) fn leave<S: StoreRead>(
    view: &mut View<'_, S>,
    now_ms: u64,
    group: &[u8],
    member: &str,
) -> Result<Response, StoreError> {
    refuse_on_err!(check_name("group name", group).and_then(|_| check_member_id(member)));
    let Some(mut state) = load_group(view, group)? else {
        return Ok(Response::GroupLeft { was_member: false });
    };
    let was_member = state.members.remove(member).is_some();
    settle(view, now_ms, group, &mut state)?;
    Ok(Response::GroupLeft { was_member })
}

pub(crate) struct Commit<'a> {
    pub group: &'a [u8],
    pub member: &'a str,
    pub generation: u64,
    pub offsets: &'a [(Vec<u8>, u32, u64)],
}

pub(crate) fn commit<S: StoreRead>(view: &mut View<'_, S>, now_ms: u64, c: Commit<'_>) -> Result<Response, StoreError> {
    refuse_on_err!(super::check_batch(c.offsets.len()));
    let state = match live_member(view, now_ms, c.group, c.member)? {
        Ok(s) => s,
        Err(e) => return Ok(Response::GroupRefused(e)),
    };
    if c.generation != state.generation {
        return Ok(Response::Refused(OpError::Stream(StreamError::IllegalGeneration {
            group: String::from_utf8_lossy(c.group).into_owned(),
            given: c.generation,
            current: state.generation,
        })));
    }
    let owned = state.assignment.get(c.member).cloned().unwrap_or_default();
    for (topic, partition, offset) in c.offsets {
        if !owned.iter().any(|(t, p)| t == topic && p == partition) {
            return Ok(Response::Refused(OpError::Stream(StreamError::NotAssigned {
                topic: String::from_utf8_lossy(topic).into_owned(),
                partition: *partition,
                member: c.member.to_string(),
            })));
        }
        let bounds = refuse_on_err!(partition_state(view, topic, *partition)?);
        if *offset > bounds.next_offset {
            return Ok(Response::Refused(OpError::Stream(StreamError::OffsetOutOfRange {
                offset: *offset,
                log_start: bounds.start_offset,
                high_watermark: bounds.next_offset,
            })));
        }
        view.put(
            Table::StreamOffset,
            offset_key(c.group, topic, *partition),
            offset.to_be_bytes().to_vec(),
        );
    }
    Ok(Response::OffsetsCommitted)
}

/// The group's committed offsets for `topic`, by partition.
pub fn committed<S: StoreRead + ?Sized>(store: &S, group: &[u8], topic: &[u8]) -> Result<Vec<(u32, u64)>, StoreError> {
    let mut prefix = named(group);
    prefix.extend_from_slice(&named(topic));
    let rows = store.scan(
        Table::StreamOffset,
        &KeyRange::prefix_from(&prefix, prefix.clone()),
        usize::MAX,
    )?;
    rows.into_iter()
        .map(|(k, v)| {
            let corrupt = || StoreError::CorruptRecord {
                table: Table::StreamOffset,
                key: format!("{k:02x?}"),
                reason: "offset entries hold a partition and an offset".into(),
            };
            let partition = k
                .get(prefix.len()..)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes);
            let offset = v.as_slice().try_into().ok().map(u64::from_be_bytes);
            Ok((partition.ok_or_else(corrupt)?, offset.ok_or_else(corrupt)?))
        })
        .collect()
}

/// The group's members and assignment, for status displays.
pub fn describe<S: StoreRead + ?Sized>(store: &S, group: &[u8]) -> Result<Option<(u64, Assignment)>, StoreError> {
    Ok(load_group(store, group)?.map(|s| (s.generation, s.assignment)))
}

/// Drops members whose session timed out, in groups whose earliest deadline is due.
pub(crate) fn sweep<S: StoreRead>(view: &mut View<'_, S>, now_ms: u64, limit: u32) -> Result<Response, StoreError> {
    let due_range = KeyRange::between(Vec::new(), now_ms.saturating_add(1).to_be_bytes().to_vec());
    let due = view.scan(Table::StreamGroupExpiry, &due_range, limit as usize)?;
    let mut removed = 0u32;
    for (key, _) in due {
        let group = key[9..].to_vec();
        let Some(mut state) = load_group(view, &group)? else {
            view.delete(Table::StreamGroupExpiry, key);
            continue;
        };
        let before = state.members.len();
        settle(view, now_ms, &group, &mut state)?;
        removed += (before - state.members.len()) as u32;
    }
    Ok(Response::Swept { removed })
}
