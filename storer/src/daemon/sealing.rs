//! Everything a write needs sealed by the keyholder: record bodies, event
//! details, duplicate tags and cursor ids, and the ids of new rows.

use super::*;

/// The sealed detail of an event: the records it touched.
#[derive(Serialize, Deserialize)]
pub(super) struct EventDetail {
    pub(super) records: Vec<String>,
}

pub(super) fn new_id(at_ms: i64) -> [u8; 16] {
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, (at_ms / 1000) as u64, ((at_ms % 1000) * 1_000_000) as u32);
    *uuid::Uuid::new_v7(ts).as_bytes()
}

/// An event row id and the item that seals its detail.
pub(super) fn event_item(records: &[[u8; 16]]) -> Result<([u8; 16], SealItem), ErrorBody> {
    let id = new_id(now_ms());
    let detail = EventDetail { records: records.iter().map(uuid_str).collect() };
    let plain = serde_json::to_vec(&detail).map_err(internal)?;
    Ok((id, SealItem { field: Field::EventDetail, row: RowId(id), plain }))
}

pub(super) fn event_row(id: [u8; 16], kind: EventKind, detail: Vec<u8>) -> EventRow {
    EventRow { id, at: now_ms(), kind: i64::from(kind.code()), detail }
}

/// What one write needs sealed: the blobs in request order, the event that
/// records the write, and the keyholder's counter to store with them.
pub(super) struct Sealed {
    pub(super) blobs: Vec<Vec<u8>>,
    pub(super) event: EventRow,
    pub(super) counter: Vec<u8>,
}

/// Seals `items` plus the detail of one event.
pub(super) fn seal_with_event(
    st: &mut State,
    mut items: Vec<SealItem>,
    kind: EventKind,
    records: &[[u8; 16]],
) -> Result<Sealed, ErrorBody> {
    let (event_id, item) = event_item(records)?;
    items.push(item);
    let (mut blobs, counter) = st.kh.seal(items).map_err(keyholder_error)?;
    let detail = blobs.pop().ok_or_else(|| internal("no sealed event"))?;
    Ok(Sealed { blobs, event: event_row(event_id, kind, detail), counter })
}

pub(super) fn dup_tag(st: &mut State, text: &str) -> Result<[u8; 32], ErrorBody> {
    let mut input = DUP_TAG_DOMAIN.to_vec();
    input.extend_from_slice(text.as_bytes());
    st.kh.tag(vec![input]).map_err(keyholder_error)?.pop().ok_or_else(|| internal("no tag"))
}

/// A new record's row (body still to be sealed), its body, and the item
/// that seals the body.
pub(super) fn new_record(r: CaptureRequest, now: i64) -> Result<(Row, Body, SealItem), ErrorBody> {
    let created_at = r.created_at.unwrap_or(now);
    let id = new_id(created_at);
    let row = Row {
        id,
        created_at,
        tier: i64::from(r.tier.code()),
        role: i64::from(r.role.code()),
        reinforced: 0,
        body: Vec::new(),
    };
    let body = Body {
        text: r.text,
        cue: r.cue,
        tags: r.tags,
        session: r.session,
        provenance: r.provenance,
        project: r.project,
    };
    let plain = serde_json::to_vec(&body).map_err(internal)?;
    Ok((row, body, SealItem { field: Field::RecordBody, row: RowId(id), plain }))
}

pub(super) const CURSOR_DOMAIN: &[u8] = b"iai-mcp cursor v1\0";

/// A cursor's row id: a keyed tag of its name, so names are not stored.
pub(super) fn cursor_id(st: &mut State, key: &str) -> Result<[u8; 16], ErrorBody> {
    let mut input = CURSOR_DOMAIN.to_vec();
    input.extend_from_slice(key.as_bytes());
    let tag = st.kh.tag(vec![input]).map_err(keyholder_error)?.pop().ok_or_else(|| internal("no tag"))?;
    let mut id = [0u8; 16];
    id.copy_from_slice(&tag[..16]);
    Ok(id)
}

pub(super) fn check_cursor(c: &Cursor) -> Result<(), ErrorBody> {
    if c.key.is_empty() {
        return Err(invalid("cursor key is empty"));
    }
    check_len("cursor key", &c.key, proto::MAX_CURSOR_KEY)?;
    check_len("cursor value", &c.value, proto::MAX_CURSOR_VALUE)
}
