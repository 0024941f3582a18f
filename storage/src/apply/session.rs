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

fn floor<S: StoreRead>(view: &View<'_, S>, client_id: u128) -> Result<u64, StoreError> {
    Ok(view
        .get(Table::Session, &floor_key(client_id))?
        .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0))
}

/// What to do with a request, decided by its session.
pub(crate) enum Begin {
    /// Applied before (or its answer already forgotten): return this, apply nothing.
    Answered(Response),
    /// New: apply it, then call [`finish`] with this floor.
    Apply { floor: u64 },
}

pub(crate) fn begin<S: StoreRead>(view: &mut View<'_, S>, session: &Session) -> Result<Begin, StoreError> {
    if let Some(bytes) = view.get(Table::Session, &answer_key(session.client_id, session.seq))? {
        if let Ok(previous) = bincode::deserialize::<Response>(&bytes) {
            return Ok(Begin::Answered(previous));
        }
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

/// Saves the answer and forgets those the client no longer needs. `old_floor` is what [`begin`]
/// read (nothing in between changes it: one command applies at a time).
pub(crate) fn finish<S: StoreRead>(
    view: &mut View<'_, S>,
    session: &Session,
    old_floor: u64,
    response: &Response,
) -> Result<(), StoreError> {
    let client_id = session.client_id;
    let answer = bincode::serialize(response).expect("Response serializes");
    view.put(Table::Session, answer_key(client_id, session.seq), answer);

    // The client has every answer below `first_incomplete_seq`: forget them.
    let new_floor = session.first_incomplete_seq.min(session.seq);
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
        let floor_now = if hit_limit { forgotten_upto } else { new_floor };
        view.put(Table::Session, floor_key(client_id), floor_now.to_be_bytes().to_vec());
    }
    Ok(())
}
