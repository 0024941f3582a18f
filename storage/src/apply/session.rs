//! Exactly-once apply for retried requests (RIFL): the answer to `(client_id, seq)` is saved in
//! the same write batch as the effects, and a retry gets the saved answer back.
//!
//! Keys in `Table::Session`: `client_id (16 bytes BE)` holds the client's floor (the oldest seq
//! whose answer is still kept); `client_id ++ seq (8 bytes BE)` holds a saved answer.

use super::View;
use crate::command::{OpError, Response, Session};
use crate::state::{KeyRange, StoreError, StoreRead, Table};

/// Most saved answers one request may garbage-collect; the rest go with later requests.
const FORGET_PER_REQUEST_MAX: usize = 256;

fn floor_key(client_id: u128) -> Vec<u8> {
    client_id.to_be_bytes().to_vec()
}

fn answer_key(client_id: u128, seq: u64) -> Vec<u8> {
    let mut k = client_id.to_be_bytes().to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The floor record: `floor (u64 BE) ++ last_active_ms (u64 BE)`.
fn floor_record(floor: u64, last_active_ms: u64) -> Vec<u8> {
    let mut v = floor.to_be_bytes().to_vec();
    v.extend_from_slice(&last_active_ms.to_be_bytes());
    v
}

fn decode_floor_record(bytes: &[u8]) -> Option<(u64, u64)> {
    let floor = u64::from_be_bytes(bytes.get(0..8)?.try_into().ok()?);
    let last_active_ms = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((floor, last_active_ms))
}

/// The client's floor (0 for a client never seen). A record that does not decode is corruption:
/// read as 0 it would let a forgotten request apply again.
fn floor<S: StoreRead>(view: &View<'_, S>, client_id: u128) -> Result<u64, StoreError> {
    let key = floor_key(client_id);
    match view.get(Table::Session, &key)? {
        None => Ok(0),
        Some(bytes) => decode_floor_record(&bytes)
            .map(|(floor, _)| floor)
            .ok_or_else(|| super::corrupt(Table::Session, &key, format!("floor record of {} bytes", bytes.len()))),
    }
}

/// What to do with a request, decided by its session.
pub(crate) enum Begin {
    /// Applied before (or its answer already forgotten): return this, apply nothing.
    Answered(Response),
    /// New: apply it, then call [`finish`] with this floor.
    Apply { floor: u64 },
}

pub(crate) fn begin<S: StoreRead>(view: &mut View<'_, S>, session: &Session) -> Result<Begin, StoreError> {
    let key = answer_key(session.client_id, session.seq);
    if let Some(bytes) = view.get(Table::Session, &key)? {
        // A saved answer that does not decode is corruption, not "never applied": applying the
        // request again would break exactly-once. Fail-stop naming the record.
        let previous: Response = super::decode(Table::Session, &key, &bytes)?;
        return Ok(Begin::Answered(previous));
    }
    let floor = floor(view, session.client_id)?;
    if session.seq < floor {
        return Ok(Begin::Answered(Response::Refused(OpError::SessionExpired {
            client_id: session.client_id,
            seq: session.seq,
        })));
    }
    Ok(Begin::Apply { floor })
}

/// Whether the request of `session` was applied before, in `store`'s applied state: its answer
/// is kept, or its seq lies below the client's floor (forgotten: a retry is refused). A long-poll
/// retried after its answer was lost proposes at once, to get that answer back, instead of first
/// waiting for something new. A floor record that does not decode counts as not answered here:
/// the proposal, which reads it too, fail-stops naming it.
pub fn answered<S: StoreRead + ?Sized>(store: &S, session: &Session) -> Result<bool, StoreError> {
    if store
        .get(Table::Session, &answer_key(session.client_id, session.seq))?
        .is_some()
    {
        return Ok(true);
    }
    Ok(store
        .get(Table::Session, &floor_key(session.client_id))?
        .and_then(|bytes| decode_floor_record(&bytes))
        .is_some_and(|(floor, _)| session.seq < floor))
}

/// Saves the answer and forgets those the client no longer needs. `old_floor` is what [`begin`]
/// read (nothing in between changes it: one command applies at a time).
pub(crate) fn finish<S: StoreRead>(
    view: &mut View<'_, S>,
    session: &Session,
    old_floor: u64,
    now_ms: u64,
    response: &Response,
) -> Result<(), StoreError> {
    let client_id = session.client_id;
    let answer = basalt_codec::encode(response);
    view.put(Table::Session, answer_key(client_id, session.seq), answer);

    // The client has every answer below `first_incomplete_seq`: forget them.
    let new_floor = session.first_incomplete_seq.min(session.seq);
    let mut floor_now = old_floor;
    if new_floor > old_floor {
        // Bounded to this client's answers below the new floor: other clients' keys, and the
        // tombstones of their forgotten answers, are never visited.
        let range = KeyRange::between(answer_key(client_id, old_floor), answer_key(client_id, new_floor));
        let done = view.scan(Table::Session, &range, FORGET_PER_REQUEST_MAX)?;
        let hit_limit = done.len() == FORGET_PER_REQUEST_MAX;
        let mut forgotten_upto = old_floor;
        for (key, _) in done {
            let seq = u64::from_be_bytes(key[16..24].try_into().expect("answer keys are 24 bytes"));
            view.delete(Table::Session, key);
            forgotten_upto = seq + 1;
        }
        // If the scan stopped at its limit, the floor advances only as far as we cleaned, so no
        // saved answer is ever left below the floor.
        floor_now = if hit_limit { forgotten_upto } else { new_floor };
    }
    // Written on every request: it also records when the client was last active.
    view.put(Table::Session, floor_key(client_id), floor_record(floor_now, now_ms));
    Ok(())
}

/// Most keys removed for one idle client per sweep step; a client never has more saved answers
/// than requests in flight, so this is generous.
const CLIENT_KEYS_MAX: usize = 4096;

/// Forgets clients idle for at least `idle_ms`: their floor and every saved answer. Visits at most
/// `limit` clients after `after`, one seek per client (answers are skipped, not read).
///
/// After this, a retry of one of their requests would be applied again: exactly-once holds for
/// retries made within `idle_ms` of the client's last request (the SDK gives up after seconds).
pub(crate) fn sweep_idle<S: StoreRead>(
    view: &mut View<'_, S>,
    now_ms: u64,
    idle_ms: u64,
    after: Option<u128>,
    limit: u32,
) -> Result<Response, StoreError> {
    let mut cursor = match after {
        None => Vec::new(),
        Some(id) => match id.checked_add(1) {
            Some(next) => floor_key(next),
            None => {
                return Ok(Response::SessionsSwept {
                    removed: 0,
                    resume_after: None,
                })
            }
        },
    };
    let mut removed = 0u32;
    let mut last_visited = None;
    for _ in 0..limit {
        let next = view.scan(
            Table::Session,
            &KeyRange {
                start: cursor.clone(),
                end: None,
            },
            1,
        )?;
        let Some((key, value)) = next.into_iter().next() else {
            return Ok(Response::SessionsSwept {
                removed,
                resume_after: None,
            });
        };
        let Some(client_bytes) = key.get(0..16) else {
            // Not a session key: step over it.
            cursor = key;
            cursor.push(0);
            continue;
        };
        let client_id = u128::from_be_bytes(client_bytes.try_into().expect("16 bytes"));
        let idle = match key.len() {
            16 => {
                let (_, last_active_ms) = decode_floor_record(&value).ok_or_else(|| {
                    super::corrupt(Table::Session, &key, format!("floor record of {} bytes", value.len()))
                })?;
                now_ms.saturating_sub(last_active_ms) >= idle_ms
            }
            // Answers left without their floor record: a client whose forgetting an earlier
            // version stopped half-way. Nothing can ask for them any more.
            _ => true,
        };
        if idle {
            // The answers first, the floor record last: a client with more answers than one
            // step removes keeps its floor record, and the next step comes back to it.
            let prefix = floor_key(client_id);
            let answers = view.scan(
                Table::Session,
                &KeyRange::prefix_from(&prefix, answer_key(client_id, 0)),
                CLIENT_KEYS_MAX,
            )?;
            let all_answers = answers.len() < CLIENT_KEYS_MAX;
            for (k, _) in answers {
                view.delete(Table::Session, k);
            }
            if !all_answers {
                return Ok(Response::SessionsSwept {
                    removed,
                    resume_after: client_id.checked_sub(1).or(last_visited),
                });
            }
            view.delete(Table::Session, prefix);
            removed += 1;
        }
        last_visited = Some(client_id);
        match client_id.checked_add(1) {
            Some(next) => cursor = floor_key(next),
            None => {
                return Ok(Response::SessionsSwept {
                    removed,
                    resume_after: None,
                })
            }
        }
    }
    Ok(Response::SessionsSwept {
        removed,
        resume_after: last_visited,
    })
}
