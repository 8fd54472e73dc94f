//! What makes tampering with the files visible: the audit trail as a chain
//! (every event sealed with its place in it, the newest one named by a sealed
//! head), the per-record sealed state that names the last event that changed
//! it, and the list of problems found.
//!
//! Someone who can write the files but has no passphrase cannot make a sealed
//! value; they can only delete rows, move them, or put back older sealed
//! values. Each of those breaks one of these links:
//! - an event removed or moved: a gap or a place that does not match its seal;
//! - events cut from the end: the head names a newer one;
//! - a record's state replaced by an older one (un-superseding a fact,
//!   lowering its reinforcement): the state names an event older than the
//!   newest event that lists the record;
//! - a record deleted: the trail's newest event for it is not a forget;
//! - a forgotten record put back: its newest event is a forget.
//!
//! What it cannot see: the whole store replaced by an older copy of itself
//! (SECURITY.md says so).

use sha2::{Digest, Sha256};

use super::*;

/// Problems kept for `status` and `audit`; the rest are only counted.
const KEPT_PROBLEMS: usize = 20;
/// Problems written to the log; the rest are only counted.
const LOGGED_PROBLEMS: u64 = 200;

/// The sealed detail of an event.
#[derive(Serialize, Deserialize)]
pub(super) struct EventDetail {
    /// `events.seq`: its place in the trail.
    pub(super) seq: i64,
    pub(super) at: i64,
    pub(super) kind: EventKind,
    /// The records it touched (as users see their ids).
    pub(super) records: Vec<String>,
}

/// The sealed `meta.event_head`: the newest event.
#[derive(Serialize, Deserialize)]
pub(super) struct Head {
    pub(super) seq: i64,
    pub(super) id: String,
}

/// The row id the head is sealed under (there is one head).
pub(super) const HEAD_ROW: RowId = RowId([0; 16]);

/// The sealed `records.state`: what changes about a record after capture.
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct RecordState {
    pub(super) reinforced: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) superseded_by: Option<String>,
    /// The newest event that lists this record (none only for a record a
    /// format-1 store had no event for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) event: Option<String>,
}

/// One event as the storer keeps it in memory (its records stay sealed).
#[derive(Clone, Copy)]
pub(super) struct EventMeta {
    pub(super) seq: i64,
    pub(super) id: [u8; 16],
    pub(super) at: i64,
    pub(super) kind: EventKind,
}

/// The verified audit trail, oldest first.
pub(super) struct Trail {
    pub(super) events: Vec<EventMeta>,
    /// `events.seq` of the next event.
    pub(super) next_seq: i64,
    /// Each record's newest event (its place in `events`), forgotten ones included.
    pub(super) last: HashMap<[u8; 16], u32>,
    /// SHA-256 over every event row in order, as verified or written: the
    /// index snapshot names it, and unlock compares it with the file.
    pub(super) digest: Sha256,
    /// False once the file may hold an event this trail did not see pass
    /// (a failed write, a gap): no snapshot is written from it.
    pub(super) exact: bool,
    /// The event `seal_with_event` sealed, until its write commits.
    pending: Option<Pending>,
}

struct Pending {
    seq: i64,
    id: [u8; 16],
    /// `event_digest` of its row.
    digest: [u8; 16],
    records: Vec<[u8; 16]>,
}

impl Default for Trail {
    fn default() -> Self {
        Trail {
            events: Vec::new(),
            next_seq: 1,
            last: HashMap::new(),
            digest: Sha256::new(),
            exact: true,
            pending: None,
        }
    }
}

/// Adds one event row to a trail digest: the digest of the trail is the
/// SHA-256 of its rows' digests, so that the rows can be digested while the
/// snapshot is still being opened, and chained once its length is known.
pub(super) fn digest_event(h: &mut Sha256, row: &EventRow) {
    h.update(event_digest(row.seq, &row.id, &row.detail));
}

/// One event row's digest.
pub(super) fn event_digest(seq: i64, id: &[u8], detail: &[u8]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"iai-mcp event\0");
    h.update(seq.to_le_bytes());
    h.update((id.len() as u64).to_le_bytes());
    h.update(id);
    h.update(detail);
    h.finalize()[..16].try_into().expect("16 of 32 bytes")
}

impl Trail {
    /// The next event, not yet written: `push` it once its write committed.
    pub(super) fn next(&self, kind: EventKind) -> EventMeta {
        EventMeta { seq: self.next_seq, id: new_id(), at: now_ms(), kind }
    }

    /// An event whose write committed joins the trail (with the records and
    /// row `seal_with_event` sealed for it).
    pub(super) fn push(&mut self, e: EventMeta) {
        match self.pending.take() {
            Some(p) if p.seq == e.seq && p.id == e.id => {
                self.digest.update(p.digest);
                for id in p.records {
                    self.last.insert(id, self.events.len() as u32);
                }
            }
            _ => self.exact = false,
        }
        self.next_seq = e.seq + 1;
        self.events.push(e);
    }

    /// An event read from the file and verified (at unlock).
    pub(super) fn push_verified(&mut self, e: EventMeta, row: &EventRow, records: impl Iterator<Item = [u8; 16]>) {
        digest_event(&mut self.digest, row);
        for id in records {
            self.last.insert(id, self.events.len() as u32);
        }
        self.events.push(e);
    }
}

/// Changes found in the files that iai-mcp did not make.
#[derive(Default)]
pub(super) struct Integrity {
    pub(super) count: u64,
    pub(super) first: Vec<String>,
}

impl Integrity {
    pub(super) fn report(&mut self, problem: String) {
        self.count += 1;
        if self.count <= LOGGED_PROBLEMS {
            iai_policy::log!("storer: integrity: {problem}");
        } else if self.count == LOGGED_PROBLEMS + 1 {
            iai_policy::log!("storer: integrity: more problems; only counted from here on");
        }
        if self.first.len() < KEPT_PROBLEMS {
            self.first.push(problem);
        }
    }
}

/// The item that seals a record's state under the event `event`.
pub(super) fn state_item(
    id: [u8; 16],
    reinforced: u32,
    superseded_by: Option<[u8; 16]>,
    event: &EventMeta,
) -> SealItem {
    let state = RecordState {
        reinforced,
        superseded_by: superseded_by.as_ref().map(uuid_str),
        event: Some(uuid_str(&event.id)),
    };
    let plain = serde_json::to_vec(&state).expect("a record state always serialises");
    SealItem { field: Field::RecordState, row: RowId(id), plain }
}

/// What one write has sealed: the blobs of `items` in order, the event row,
/// the new head, and the keyholder's counter to store with them.
pub(super) struct Sealed {
    pub(super) blobs: Vec<Vec<u8>>,
    pub(super) event: EventRow,
    pub(super) head: Vec<u8>,
    pub(super) counter: Vec<u8>,
}

/// Seals `items` together with the detail of `event` and the head naming it.
pub(super) fn seal_with_event(
    st: &mut State,
    mut items: Vec<SealItem>,
    event: &EventMeta,
    records: &[[u8; 16]],
) -> Result<Sealed, ErrorBody> {
    let detail =
        EventDetail { seq: event.seq, at: event.at, kind: event.kind, records: records.iter().map(uuid_str).collect() };
    let head = Head { seq: event.seq, id: uuid_str(&event.id) };
    items.push(SealItem {
        field: Field::EventDetail,
        row: RowId(event.id),
        plain: serde_json::to_vec(&detail).map_err(internal)?,
    });
    items.push(SealItem {
        field: Field::EventHead,
        row: HEAD_ROW,
        plain: serde_json::to_vec(&head).map_err(internal)?,
    });
    let (mut blobs, counter) = st.kh.seal(items).map_err(keyholder_error)?;
    let head = blobs.pop().ok_or_else(|| internal("no sealed head"))?;
    let detail = blobs.pop().ok_or_else(|| internal("no sealed event"))?;
    let row = EventRow { seq: event.seq, id: event.id, detail };
    st.trail.pending = Some(Pending {
        seq: row.seq,
        id: row.id,
        digest: event_digest(row.seq, &row.id, &row.detail),
        records: records.to_vec(),
    });
    Ok(Sealed { blobs, event: row, head, counter })
}

/// Runs one write that records `event`; once it committed, the event joins
/// the trail.
pub(super) fn commit<T>(
    st: &mut State,
    event: EventMeta,
    counter: &[u8],
    f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
) -> Result<T, ErrorBody> {
    match st.db.write(Some(counter), f) {
        Ok(out) => {
            st.trail.push(event);
            Ok(out)
        }
        Err(e) => {
            resync(st);
            Err(storage(e))
        }
    }
}

/// After a failed write: a commit can fail after it reached the disk (an
/// fsync error), so the next row and event numbers are read back from the
/// file rather than assumed, and the next write cannot collide with it.
pub(super) fn resync(st: &mut State) {
    st.trail.exact = false;
    if let Ok(n) = st.db.next_record_seq() {
        st.next_record_seq = st.next_record_seq.max(n);
    }
    if let Ok(n) = st.db.next_event_seq() {
        st.trail.next_seq = st.trail.next_seq.max(n);
    }
}

/// The record's current reinforcement and superseder, from the index.
pub(super) fn current_state(st: &State, id: &[u8; 16]) -> Option<(u32, Option<[u8; 16]>)> {
    st.index.meta(id).map(|m| (m.reinforced, m.superseded_by))
}

pub(super) fn new_id() -> [u8; 16] {
    // Random, not time-ordered: ids in the clear must not tell when anything happened.
    *uuid::Uuid::new_v4().as_bytes()
}
