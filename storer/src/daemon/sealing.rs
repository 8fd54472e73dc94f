//! Everything a write needs sealed by the keyholder besides the trail
//! (`trail`): record bodies, duplicate tags and cursor ids.

use super::*;

pub(super) fn dup_tag(st: &mut State, text: &str) -> Result<[u8; 32], ErrorBody> {
    let mut input = DUP_TAG_DOMAIN.to_vec();
    input.extend_from_slice(text.as_bytes());
    st.kh.tag(vec![input]).map_err(keyholder_error)?.pop().ok_or_else(|| internal("no tag"))
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The live record that holds exactly the text whose tag is `tag`, if any.
/// The tag column is only a lookup: a candidate counts when its sealed body
/// carries the same tag; one that does not was changed in the file.
pub(super) fn find_duplicate(st: &mut State, tag: &[u8; 32]) -> Result<Option<[u8; 16]>, ErrorBody> {
    let candidates: Vec<_> =
        st.db.find_by_tag(tag).map_err(storage)?.into_iter().filter(|(id, _)| st.index.contains(id)).collect();
    if candidates.is_empty() {
        return Ok(None);
    }
    let items = candidates
        .iter()
        .map(|(id, body)| UnsealItem { field: Field::RecordBody, row: RowId(*id), blob: body.clone() })
        .collect();
    let plain = st.kh.unseal(items).map_err(keyholder_error)?;
    let want = hex(tag);
    for ((id, _), p) in candidates.into_iter().zip(plain) {
        match p.ok().and_then(|p| serde_json::from_slice::<Body>(&p).ok()) {
            Some(body) if body.dup_tag == want => return Ok(Some(id)),
            _ => st.integrity.report(format!(
                "memory {}: its duplicate-tag column was changed in the file; it is not taken as a duplicate",
                uuid_str(&id)
            )),
        }
    }
    Ok(None)
}

/// A new record's row (body and state still to be sealed), its body, and
/// the item that seals the body.
pub(super) fn new_record(
    r: CaptureRequest,
    now: i64,
    seq: i64,
    tag: &[u8; 32],
) -> Result<(Row, Body, SealItem), ErrorBody> {
    let id = new_id();
    let row = Row { seq, id, dup_tag: tag.to_vec(), body: Vec::new(), state: Vec::new() };
    let body = Body {
        text: r.text,
        created_at: r.created_at.unwrap_or(now),
        tier: r.tier,
        role: r.role,
        seq,
        dup_tag: hex(tag),
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
