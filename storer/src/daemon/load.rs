//! Loading the store at unlock: the audit trail first, verified as a chain,
//! then every record, unsealed and checked against the trail, into the index.
//! A record that fails a check is left out and said so (`status`, `audit`,
//! the log); nothing that fails is trusted.

use std::collections::HashSet;

use super::*;

/// What the trail says about records.
struct Known {
    /// Each record's newest event (its place in `Trail::events`).
    last: HashMap<[u8; 16], u32>,
    /// The events that were read and verified.
    verified: HashSet<[u8; 16]>,
}

pub(super) fn run(st: &mut State) -> Result<(), ErrorBody> {
    let known = load_trail(st)?;
    load_records(st, known)
}

fn load_trail(st: &mut State) -> Result<Known, ErrorBody> {
    let State { db, kh, trail, integrity, .. } = st;
    let mut known = Known { last: HashMap::new(), verified: HashSet::new() };
    let mut expected = 1i64;
    let mut newest: Option<(i64, [u8; 16])> = None;
    db.for_each_event_batch(LOAD_BATCH, |rows| {
        let items = rows
            .iter()
            .map(|r| UnsealItem { field: Field::EventDetail, row: RowId(r.id), blob: r.detail.clone() })
            .collect();
        let plain = kh.unseal(items).map_err(keyholder_error)?;
        for (row, p) in rows.into_iter().zip(plain) {
            if row.seq != expected {
                integrity.report(gap(expected, row.seq - 1));
            }
            expected = row.seq + 1;
            newest = Some((row.seq, row.id));
            match p.ok().and_then(|p| serde_json::from_slice::<EventDetail>(&p).ok()) {
                Some(d) if d.seq == row.seq => {
                    let place = trail.events.len() as u32;
                    for id in d.records.iter().filter_map(|r| uuid::Uuid::parse_str(r).ok()) {
                        known.last.insert(*id.as_bytes(), place);
                    }
                    known.verified.insert(row.id);
                    trail.events.push(EventMeta { seq: row.seq, id: row.id, at: d.at, kind: d.kind });
                }
                Some(d) => {
                    integrity.report(format!(
                        "the audit trail's event {} was moved from place {} to place {}",
                        uuid_str(&row.id),
                        d.seq,
                        row.seq
                    ));
                }
                None => {
                    integrity.report(format!("the audit trail's event at place {} does not authenticate", row.seq));
                }
            }
        }
        Ok::<(), ErrorBody>(())
    })?;

    // The head names the newest event written: anything cut from the end shows.
    let head_blob = db.event_head()?;
    let head_missing = head_blob.is_none();
    let head = match head_blob {
        None => None,
        Some(blob) => {
            let plain = kh
                .unseal(vec![UnsealItem { field: Field::EventHead, row: HEAD_ROW, blob }])
                .map_err(keyholder_error)?;
            let head =
                plain.into_iter().next().and_then(|p| p.ok()).and_then(|p| serde_json::from_slice::<Head>(&p).ok());
            if head.is_none() {
                integrity.report("the head of the audit trail does not authenticate".into());
            }
            head.map(|h| (h.seq, uuid::Uuid::parse_str(&h.id).map(|u| *u.as_bytes()).unwrap_or_default()))
        }
    };
    match (head, newest) {
        (None, Some((seq, _))) if head_missing => {
            integrity.report(format!("the head of the audit trail is missing (the trail has {seq} places)"))
        }
        (Some((hseq, _)), Some((seq, _))) if hseq > seq => integrity.report(gap(seq + 1, hseq)),
        (Some((hseq, _)), None) => integrity.report(gap(1, hseq)),
        (Some((hseq, hid)), Some((seq, id))) if hseq < seq || (hseq == seq && hid != id) => integrity.report(format!(
            "the head of the audit trail names event {} at place {hseq}, not the newest one: an older head was put back",
            uuid_str(&hid)
        )),
        _ => {}
    }
    // A gap stays a gap: new events never reuse the places of missing ones.
    trail.next_seq = expected.max(head.map_or(0, |h| h.0 + 1));
    Ok(known)
}

fn gap(from: i64, to: i64) -> String {
    if from == to {
        format!("the audit trail's event at place {from} is missing (deleted from the file)")
    } else {
        format!("the audit trail's events at places {from} to {to} are missing (deleted from the file)")
    }
}

fn load_records(st: &mut State, mut known: Known) -> Result<(), ErrorBody> {
    let State { db, kh, index, trail, integrity, unreadable, next_record_seq, .. } = st;
    let mut supersede = Vec::new();
    let mut max_seq = 0;
    db.for_each_batch(LOAD_BATCH, |rows| {
        let mut items = Vec::with_capacity(rows.len() * 2);
        for r in &rows {
            items.push(UnsealItem { field: Field::RecordBody, row: RowId(r.id), blob: r.body.clone() });
            items.push(UnsealItem { field: Field::RecordState, row: RowId(r.id), blob: r.state.clone() });
        }
        let mut plain = kh.unseal(items).map_err(keyholder_error)?.into_iter();
        for row in rows {
            max_seq = max_seq.max(row.seq);
            let body = plain.next().and_then(|p| p.ok()).and_then(|p| serde_json::from_slice::<Body>(&p).ok());
            let state = plain.next().and_then(|p| p.ok()).and_then(|p| serde_json::from_slice::<RecordState>(&p).ok());
            match check(&row, body, state, &mut known, trail, integrity) {
                Ok((body, state)) => {
                    index.add(meta_of(row.id, &body, state.reinforced), &body.searchable());
                    if let Some(by) = state.superseded_by.as_deref().and_then(|s| uuid::Uuid::parse_str(s).ok()) {
                        supersede.push((row.id, *by.as_bytes()));
                    }
                }
                Err(problem) => {
                    *unreadable += 1;
                    integrity.report(format!("{problem}; it is left out of recall (`iai-mcp forget` removes it)"));
                }
            }
        }
        Ok::<(), ErrorBody>(())
    })?;
    // Records the trail says exist, but the file does not have.
    let mut missing: Vec<([u8; 16], u32)> =
        known.last.into_iter().filter(|(_, place)| trail.events[*place as usize].kind != EventKind::Forget).collect();
    missing.sort_by_key(|m| m.1);
    for (id, place) in missing {
        integrity.report(format!(
            "memory {} is missing from the file (deleted outside iai-mcp; the audit trail last saw it at place {})",
            uuid_str(&id),
            trail.events[place as usize].seq
        ));
    }
    // A fact stays superseded only while the newer one is there.
    for (old, new) in supersede {
        if index.contains(&new) {
            index.supersede(&old, new);
        }
    }
    *next_record_seq = max_seq + 1;
    Ok(())
}

/// A record's checks: its sealed body and state authenticate, its clear
/// columns match what is sealed, and its state is the newest the trail knows.
fn check(
    row: &Row,
    body: Option<Body>,
    state: Option<RecordState>,
    known: &mut Known,
    trail: &Trail,
    integrity: &mut Integrity,
) -> Result<(Body, RecordState), String> {
    let name = format!("memory {} (row {})", uuid_str(&row.id), row.seq);
    let newest = known.last.remove(&row.id).map(|place| trail.events[place as usize]);
    let body = body.ok_or_else(|| format!("{name}: its sealed body does not authenticate"))?;
    let state = state.ok_or_else(|| format!("{name}: its sealed state is missing or does not authenticate"))?;
    if body.seq != row.seq {
        return Err(format!("{name}: it was moved in capture order (it was captured as row {})", body.seq));
    }
    if newest.is_some_and(|e| e.kind == EventKind::Forget) {
        return Err(format!("{name}: it was forgotten and has been put back into the file"));
    }
    let names = state.event.as_deref().and_then(|s| uuid::Uuid::parse_str(s).ok()).map(|u| *u.as_bytes());
    if names != newest.map(|e| e.id) {
        match names {
            // The event it names is among those the trail lost: what came
            // after it is unknown, so the state can be neither trusted nor refuted.
            Some(e) if !known.verified.contains(&e) => integrity.report(format!(
                "{name}: its state names an event the audit trail has lost; it cannot be confirmed as the newest"
            )),
            _ => {
                return Err(format!(
                    "{name}: its state (reinforcement, superseded by) is older than the audit trail's newest event \
                     for it: an earlier copy was put back"
                ))
            }
        }
    }
    if hex(&row.dup_tag) != body.dup_tag {
        integrity.report(format!("{name}: its duplicate-tag column was changed in the file (not trusted)"));
    }
    Ok((body, state))
}
