//! Key rotation, the storer's part (`iai-mcp rotate` drives it step by step).
//!
//! The CLI has written a key file whose data key is new and whose
//! previous-key slot holds the old one, and restarted the pair: the keyholder
//! seals with the new key and unseals with whichever key a blob names. Each
//! step here finds values still sealed under the old key (their key id is in
//! the clear, at the start of the blob), has the keyholder re-seal them —
//! their plaintext never leaves it — and writes them back in one transaction.
//! Any step may be cut short by a crash: the blobs themselves say what is
//! left, so the next run simply carries on. When none is left the old bytes
//! are erased from the files and the keyholder wipes the old key; only then
//! does the CLI remove the old key's slot.

use super::*;
use crate::db::{Place, Scan};

/// A rotation under way in this storer.
pub(super) struct Rotation {
    scan: Scan,
    /// Values still under the old key (counted at unlock, then kept up to date).
    pub(super) remaining: u64,
    /// Values under the old key that did not authenticate, in this pass.
    damaged: Vec<String>,
}

/// At unlock: a keyholder that holds a previous key means a rotation is under way.
pub(super) fn resume(st: &mut State) -> Result<(), ErrorBody> {
    if let Some(prev) = st.kh.info().previous {
        let remaining = st.db.count_under(&prev.0)?;
        iai_policy::log!("storer: a key rotation is under way: {remaining} values are still under the old key");
        st.rotation = Some(Rotation { scan: Scan::Start, remaining, damaged: Vec::new() });
        // It is sealed under the old key, and every digest in it is about to change.
        snapshot::stop(st, "a key rotation was under way in this session");
    }
    Ok(())
}

fn item(place: &Place, blob: Vec<u8>) -> UnsealItem {
    let (field, row) = match *place {
        Place::Head => (Field::EventHead, HEAD_ROW),
        Place::Cursor(id) => (Field::MetaValue, RowId(id)),
        Place::Event { id, .. } => (Field::EventDetail, RowId(id)),
        Place::Body { id, .. } => (Field::RecordBody, RowId(id)),
        Place::State { id, .. } => (Field::RecordState, RowId(id)),
    };
    UnsealItem { field, row, blob }
}

fn describe(place: &Place) -> String {
    match place {
        Place::Head => "the head of the audit trail".into(),
        Place::Cursor(_) => "a transcript position".into(),
        Place::Event { seq, .. } => format!("the audit trail's event at place {seq}"),
        Place::Body { id, .. } => format!("memory {} (its body)", uuid_str(id)),
        Place::State { id, .. } => format!("memory {} (its state)", uuid_str(id)),
    }
}

pub(super) fn step(st: &mut State, r: proto::RotateRequest) -> Result<proto::RotateResult, ErrorBody> {
    let limit = r.limit.unwrap_or(500);
    if limit == 0 || limit > proto::MAX_ROTATE_STEP {
        return Err(invalid(format!("limit must be between 1 and {}", proto::MAX_ROTATE_STEP)));
    }
    let info = st.kh.info();
    let mut result = proto::RotateResult { key_id: hex(&info.key_id.0), ..Default::default() };
    let Some(prev) = info.previous else {
        // Nothing to rotate in this pair: say whether everything is under its key.
        result.finished = st.rotation.is_none();
        return Ok(result);
    };
    result.previous_key_id = Some(hex(&prev.0));
    let rot = st.rotation.get_or_insert_with(|| Rotation { scan: Scan::Start, remaining: 0, damaged: Vec::new() });
    let (values, next) = st.db.sealed_under(&prev.0, rot.scan, limit)?;
    if !values.is_empty() {
        let (places, items): (Vec<Place>, Vec<UnsealItem>) =
            values.into_iter().map(|(place, blob)| (place, item(&place, blob))).unzip();
        let (blobs, counter) = st.kh.reseal(items).map_err(keyholder_error)?;
        let mut done = Vec::with_capacity(blobs.len());
        let rot = st.rotation.as_mut().ok_or_else(|| internal("no rotation"))?;
        for (place, blob) in places.into_iter().zip(blobs) {
            match blob {
                Ok(b) => done.push((place, b)),
                Err(_) => rot.damaged.push(describe(&place)),
            }
        }
        st.db.write(Some(&counter), |tx| done.iter().try_for_each(|(place, b)| db::replace_sealed(tx, place, b)))?;
        result.resealed = done.len() as u64;
    }
    let rot = st.rotation.as_mut().ok_or_else(|| internal("no rotation"))?;
    rot.remaining = rot.remaining.saturating_sub(result.resealed);
    rot.scan = next;
    result.remaining = rot.remaining;
    if next != Scan::Done {
        return Ok(result);
    }
    // A full pass is over: count exactly what is left (a memory forgotten
    // meanwhile, or one the pass had already gone by).
    let left = st.db.count_under(&prev.0)?;
    let rot = st.rotation.as_mut().ok_or_else(|| internal("no rotation"))?;
    rot.remaining = left;
    result.remaining = left;
    let damaged = std::mem::take(&mut rot.damaged);
    rot.scan = Scan::Start;
    if left > 0 {
        if left as usize <= damaged.len() {
            result.damaged = damaged;
        }
        return Ok(result);
    }
    finish(st, &prev.0)?;
    result.finished = true;
    Ok(result)
}

/// Nothing is under the old key any more: the counter moves to the new key,
/// the old bytes leave the files, and the keyholder forgets the old key.
fn finish(st: &mut State, prev: &[u8; 16]) -> Result<(), ErrorBody> {
    if st.db.counter_under(prev)? {
        let (_, counter) = st.kh.seal_nothing().map_err(keyholder_error)?;
        st.db.set_counter(&counter)?;
    }
    snapshot::stop(st, "a key rotation was under way in this session");
    // Freed cells were zeroed as they went (secure_delete); the rebuild
    // clears the stale copies page moves left, and the checkpoint the WAL.
    st.db.erase()?;
    st.kh.forget_previous().map_err(keyholder_error)?;
    st.rotation = None;
    iai_policy::log!("storer: key rotation finished: every value is under the new key; the old key is wiped");
    Ok(())
}
