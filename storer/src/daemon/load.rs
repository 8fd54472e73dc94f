//! Loading the store at unlock: the audit trail first, verified as a chain,
//! then every record, unsealed and checked against the trail, into the index.
//! A record that fails a check is left out and said so (`status`, `audit`,
//! the log); nothing that fails is trusted.
//!
//! With an index snapshot (`snapshot`), the same checks cost far less: the
//! snapshot names the trail it was written from (a digest of every event
//! row) and, for each record, digests of the sealed values the storer had
//! verified or written. A row whose bytes match is the value that passed
//! then, and no event since has touched it: it is not unsealed again. Every
//! other row (new, changed, named by a newer event) is unsealed and checked
//! exactly as without a snapshot, and the trail's newer events are verified
//! one by one. A snapshot that does not match the file's trail is not used.

use std::collections::HashSet;

use sha2::{Digest, Sha256};

use super::*;
use crate::index::Check;
use iai_keyholder::client::KeyholderClient;

/// How the last unlock loaded the store (for `status` and the benchmarks).
#[derive(Clone, Debug, Default)]
pub(super) struct LoadInfo {
    /// Whether the index came from the snapshot.
    pub(super) from_snapshot: bool,
    /// Records unsealed and checked one by one.
    pub(super) checked: u64,
    /// Why no snapshot was used, if one was there.
    pub(super) snapshot_refused: Option<String>,
    pub(super) millis: u64,
}

pub(super) fn run(st: &mut State) -> Result<(), ErrorBody> {
    let started = Instant::now();
    let mut info = LoadInfo::default();
    match snapshot::parts(&st.db) {
        Ok(None) => {}
        Ok(Some(parts)) => {
            st.snap.bytes = parts.bytes();
            match from_snapshot(st, parts)? {
                Ok(checked) => {
                    info.from_snapshot = true;
                    info.checked = checked;
                }
                Err(why) => refused(st, &mut info, why),
            }
        }
        Err(why) => refused(st, &mut info, why),
    }
    if !info.from_snapshot {
        let verified = load_trail(st)?;
        let mut pass = Pass::new(&st.trail);
        let State { db, kh, index, trail, integrity, unreadable, .. } = st;
        db.for_each_batch(LOAD_BATCH, |rows| {
            let mut cx = Cx { kh, index, trail, integrity, unreadable };
            pass.check(&mut cx, rows, &verified)
        })?;
        info.checked = pass.finish(st);
    }
    st.index.tokenizer().forget_stems();
    st.index.shrink_to_fit();
    crate::sys::give_back_free_memory();
    info.millis = started.elapsed().as_millis() as u64;
    iai_policy::log!(
        "storer: loaded {} memories in {} ms ({}; {} unsealed and checked)",
        st.index.len(),
        info.millis,
        if info.from_snapshot { "from the index snapshot" } else { "index rebuilt" },
        info.checked
    );
    st.load = info;
    Ok(())
}

/// A snapshot that cannot be used: said in the log, and the index is rebuilt.
fn refused(st: &mut State, info: &mut LoadInfo, why: String) {
    iai_policy::log!("storer: the index snapshot was not used ({why}); rebuilding the index from every record");
    let model = st.index.take_model();
    st.index = Index::default();
    st.index.set_model(model);
    st.trail = Trail::default();
    st.snap.written_at = None;
    info.snapshot_refused = Some(why);
}

/// Digests of every row in the file, made while the snapshot is opened.
struct RowDigests {
    /// (seq, digest) of each event, in trail order.
    events: Vec<(i64, [u8; 16])>,
    /// (seq, id, digests) of each record; no id when its id column is malformed.
    records: Vec<(i64, Option<RecordDigest>)>,
}

type RecordDigest = ([u8; 16], Check);

fn row_digests(db: &Db) -> rusqlite::Result<RowDigests> {
    let mut events = Vec::new();
    db.for_each_event_ref(|seq, id, detail| events.push((seq, event_digest(seq, id, detail))))?;
    let mut records = Vec::new();
    db.for_each_record_ref(|seq, id, tag, body, state| {
        let id = <[u8; 16]>::try_from(id).ok();
        records.push((seq, id.map(|id| (id, row_check(seq, &id, tag, body, state)))));
    })?;
    Ok(RowDigests { events, records })
}

/// Loads through the snapshot. The outer error is fatal (the database or
/// the keyholder failed); the inner one says why the snapshot cannot be
/// used, before anything was reported or kept.
fn from_snapshot(st: &mut State, parts: snapshot::Parts) -> Result<Result<u64, String>, ErrorBody> {
    let State { db, kh, .. } = st;
    let (opened, digests) = std::thread::scope(|s| {
        // The second core unseals and decodes while this one reads the rows.
        let opening = std::thread::Builder::new().name("snapshot".into()).spawn_scoped(s, || snapshot::open(kh, parts));
        let digests = row_digests(db);
        let opened = match opening {
            Ok(h) => h.join().unwrap_or_else(|_| Err("decoding it failed".into())),
            Err(e) => Err(format!("cannot start a thread: {e}")),
        };
        (opened, digests)
    });
    let snap = match opened {
        Ok(s) => s,
        Err(why) => return Ok(Err(why)),
    };
    let digests = digests?;
    let head = snap.head_seq as usize;
    let prefix = digests.events.get(..head);
    let Some(prefix) = prefix.filter(|p| p.iter().enumerate().all(|(i, e)| e.0 == i as i64 + 1)) else {
        return Ok(Err("the audit trail in the file has lost or moved events the snapshot knew".into()));
    };
    let mut digest = Sha256::new();
    for (_, d) in prefix {
        digest.update(d);
    }
    if digest.clone().finalize()[..] != snap.trail_digest[..] {
        return Ok(Err("the audit trail in the file differs from the one the snapshot was written from".into()));
    }

    // From here on the snapshot is the index and trail; what follows is
    // checked exactly as a full load would check it.
    let model = st.index.take_model();
    st.index = snap.index;
    // Vectors another model made (or none) are made again below.
    st.index.set_model(model);
    st.trail.events = snap.events;
    st.trail.last = snap.last;
    st.trail.digest = digest;
    st.trail.next_seq = snap.head_seq + 1;
    let mut verified: HashSet<[u8; 16]> = st.trail.events.iter().map(|e| e.id).collect();
    let mut touched = HashSet::new();
    let mut newest = st.trail.events.last().map(|e| (e.seq, e.id));
    let mut expected = snap.head_seq + 1;
    let newer = st.db.events_after(snap.head_seq)?;
    for rows in newer.chunks(LOAD_BATCH) {
        take_events(st, rows, &mut expected, &mut newest, &mut verified, Some(&mut touched))?;
    }
    check_head(st, expected, newest)?;

    let mut pass = Pass::new(&st.trail);
    let mut seen = HashSet::with_capacity(digests.records.len());
    let mut todo = Vec::new();
    for (seq, row) in digests.records {
        pass.max_seq = pass.max_seq.max(seq);
        if let Some((id, check)) = row {
            seen.insert(id);
            // The bytes that passed before, and no newer event names it.
            if !touched.contains(&id) && st.index.check(&id) == Some(check) && !st.index.needs_vector(&id) {
                pass.unseen.remove(&id);
                continue;
            }
        }
        todo.push(seq);
    }
    for seqs in todo.chunks(LOAD_BATCH) {
        let rows = st.db.records_at(seqs)?;
        let State { kh, index, trail, integrity, unreadable, .. } = st;
        pass.check(&mut Cx { kh, index, trail, integrity, unreadable }, rows, &verified)?;
    }
    // Snapshot records whose row is gone from the file.
    pass.drop.extend(st.index.checks().map(|(id, _)| id).filter(|id| !seen.contains(id)));
    // No row unsealed, none dropped, nothing newer than the snapshot but
    // unlocks: the index is the snapshot's, which need not be written again
    // until something changes (`snapshot::due`). Before, every session
    // rewrote it (at 100k realistic memories 29 MB sealed, half a second
    // holding the state lock) at its first idle moment or at lock.
    let only_unlocks = st.trail.events[head..].iter().all(|e| e.kind == EventKind::Unlock);
    let unchanged = todo.is_empty() && pass.drop.is_empty() && only_unlocks;
    let checked = pass.finish(st);
    if unchanged {
        st.snap.written_at = Some(head);
    }
    Ok(Ok(checked))
}

fn load_trail(st: &mut State) -> Result<HashSet<[u8; 16]>, ErrorBody> {
    let mut verified = HashSet::new();
    let mut expected = 1i64;
    let mut newest: Option<(i64, [u8; 16])> = None;
    let mut all = Vec::new();
    st.db.for_each_event_batch(LOAD_BATCH, |rows| {
        all.push(rows);
        Ok::<(), ErrorBody>(())
    })?;
    for rows in all {
        take_events(st, &rows, &mut expected, &mut newest, &mut verified, None)?;
    }
    check_head(st, expected, newest)?;
    Ok(verified)
}

/// Unseals and verifies event rows (in trail order) onto the trail.
fn take_events(
    st: &mut State,
    rows: &[EventRow],
    expected: &mut i64,
    newest: &mut Option<(i64, [u8; 16])>,
    verified: &mut HashSet<[u8; 16]>,
    mut touched: Option<&mut HashSet<[u8; 16]>>,
) -> Result<(), ErrorBody> {
    let State { kh, trail, integrity, .. } = st;
    let items = rows
        .iter()
        .map(|r| UnsealItem { field: Field::EventDetail, row: RowId(r.id), blob: r.detail.clone() })
        .collect();
    let plain = kh.unseal(items).map_err(keyholder_error)?;
    for (row, p) in rows.iter().zip(plain) {
        if row.seq != *expected {
            integrity.report(gap(*expected, row.seq - 1));
            // The file holds events this trail cannot account for.
            trail.exact = false;
        }
        *expected = row.seq + 1;
        *newest = Some((row.seq, row.id));
        match p.ok().and_then(|p| serde_json::from_slice::<EventDetail>(&p).ok()) {
            Some(d) if d.seq == row.seq => {
                let ids: Vec<[u8; 16]> =
                    d.records.iter().filter_map(|r| uuid::Uuid::parse_str(r).ok()).map(|u| *u.as_bytes()).collect();
                if let Some(t) = touched.as_deref_mut() {
                    t.extend(ids.iter().copied());
                }
                verified.insert(row.id);
                trail.push_verified(
                    EventMeta { seq: row.seq, id: row.id, at: d.at, kind: d.kind },
                    row,
                    ids.into_iter(),
                );
            }
            Some(d) => {
                trail.exact = false;
                integrity.report(format!(
                    "the audit trail's event {} was moved from place {} to place {}",
                    uuid_str(&row.id),
                    d.seq,
                    row.seq
                ));
            }
            None => {
                trail.exact = false;
                integrity.report(format!("the audit trail's event at place {} does not authenticate", row.seq));
            }
        }
    }
    Ok(())
}

/// The head names the newest event written: anything cut from the end shows.
fn check_head(st: &mut State, expected: i64, newest: Option<(i64, [u8; 16])>) -> Result<(), ErrorBody> {
    let State { db, kh, trail, integrity, .. } = st;
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
    Ok(())
}

fn gap(from: i64, to: i64) -> String {
    if from == to {
        format!("the audit trail's event at place {from} is missing (deleted from the file)")
    } else {
        format!("the audit trail's events at places {from} to {to} are missing (deleted from the file)")
    }
}

/// The digests `Check` keeps of a row's sealed values.
pub(super) fn row_check(seq: i64, id: &[u8; 16], dup_tag: &[u8], body: &[u8], state: &[u8]) -> Check {
    Check { body: body_digest(seq, id, dup_tag, body), state: state_digest(id, state) }
}

pub(super) fn body_digest(seq: i64, id: &[u8; 16], dup_tag: &[u8], body: &[u8]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"iai-mcp record body\0");
    h.update(seq.to_le_bytes());
    h.update(id);
    h.update((dup_tag.len() as u64).to_le_bytes());
    h.update(dup_tag);
    h.update(body);
    h.finalize()[..16].try_into().expect("16 of 32 bytes")
}

pub(super) fn state_digest(id: &[u8; 16], state: &[u8]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"iai-mcp record state\0");
    h.update(id);
    h.update(state);
    h.finalize()[..16].try_into().expect("16 of 32 bytes")
}

/// What checking the record rows needs of the storer.
struct Cx<'a> {
    kh: &'a mut KeyholderClient,
    index: &'a mut Index,
    trail: &'a Trail,
    integrity: &'a mut Integrity,
    unreadable: &'a mut u64,
}

/// The records part of a load: rows are unsealed and checked in batches,
/// then what the checks found is applied to the index.
struct Pass {
    /// Records the trail knows whose row has not been seen yet.
    unseen: HashMap<[u8; 16], u32>,
    supersede: Vec<([u8; 16], [u8; 16])>,
    /// Snapshot records to take out (row changed or gone)…
    drop: HashSet<[u8; 16]>,
    /// …and those of them to add again, checked.
    again: Vec<(DocMeta, String, Check)>,
    max_seq: i64,
    checked: u64,
}

impl Pass {
    fn new(trail: &Trail) -> Pass {
        Pass {
            unseen: trail.last.clone(),
            supersede: Vec::new(),
            drop: HashSet::new(),
            again: Vec::new(),
            max_seq: 0,
            checked: 0,
        }
    }

    /// Unseals and checks `rows`, into the index when they pass.
    fn check(&mut self, cx: &mut Cx<'_>, rows: Vec<Row>, verified: &HashSet<[u8; 16]>) -> Result<(), ErrorBody> {
        if rows.is_empty() {
            return Ok(());
        }
        self.checked += rows.len() as u64;
        let mut items = Vec::with_capacity(rows.len() * 2);
        for r in &rows {
            items.push(UnsealItem { field: Field::RecordBody, row: RowId(r.id), blob: r.body.clone() });
            items.push(UnsealItem { field: Field::RecordState, row: RowId(r.id), blob: r.state.clone() });
        }
        let mut plain = cx.kh.unseal(items).map_err(keyholder_error)?.into_iter();
        for row in rows {
            self.max_seq = self.max_seq.max(row.seq);
            let digests = row_check(row.seq, &row.id, &row.dup_tag, &row.body, &row.state);
            let body = plain.next().and_then(|p| p.ok()).and_then(|p| serde_json::from_slice::<Body>(&p).ok());
            let state = plain.next().and_then(|p| p.ok()).and_then(|p| serde_json::from_slice::<RecordState>(&p).ok());
            let newest = self.unseen.remove(&row.id).map(|place| cx.trail.events[place as usize]);
            match check(&row, body, state, newest, verified, cx.integrity) {
                Ok((body, state)) => {
                    let by = state.superseded_by.as_deref().and_then(|s| uuid::Uuid::parse_str(s).ok());
                    if let Some(by) = by {
                        self.supersede.push((row.id, *by.as_bytes()));
                    }
                    match cx.index.check(&row.id) {
                        // Only its state changed: the index keeps its words.
                        Some(c) if c.body == digests.body => {
                            cx.index.set_state(&row.id, state.reinforced, None);
                            cx.index.set_check(&row.id, |c| *c = digests);
                            if cx.index.needs_vector(&row.id) {
                                cx.index.make_vector(&row.id, &body.searchable());
                            }
                        }
                        Some(_) => {
                            self.drop.insert(row.id);
                            self.again.push((meta_of(row.id, &body, state.reinforced), body.searchable(), digests));
                        }
                        None => {
                            cx.index.add(meta_of(row.id, &body, state.reinforced), &body.searchable());
                            cx.index.set_check(&row.id, |c| *c = digests);
                        }
                    }
                }
                Err(problem) => {
                    if cx.index.contains(&row.id) {
                        self.drop.insert(row.id);
                    }
                    *cx.unreadable += 1;
                    cx.integrity.report(format!("{problem}; it is left out of recall (`iai-mcp forget` removes it)"));
                }
            }
        }
        Ok(())
    }

    /// Applies what the rows showed; returns how many were unsealed.
    fn finish(self, st: &mut State) -> u64 {
        let State { index, trail, integrity, next_record_seq, .. } = st;
        index.remove_many(&self.drop);
        for (meta, text, digests) in self.again {
            let id = meta.id;
            index.add(meta, &text);
            index.set_check(&id, |c| *c = digests);
        }
        // Records the trail says exist, but the file does not have.
        let mut missing: Vec<([u8; 16], u32)> = self
            .unseen
            .into_iter()
            .filter(|(_, place)| trail.events[*place as usize].kind != EventKind::Forget)
            .collect();
        missing.sort_by_key(|m| m.1);
        for (id, place) in missing {
            integrity.report(format!(
                "memory {} is missing from the file (deleted outside iai-mcp; the audit trail last saw it at place {})",
                uuid_str(&id),
                trail.events[place as usize].seq
            ));
        }
        // A fact stays superseded only while the newer one is there.
        for (old, new) in self.supersede {
            if index.contains(&new) {
                index.supersede(&old, new);
            }
        }
        index.drop_dangling_supersedes();
        *next_record_seq = self.max_seq + 1;
        self.checked
    }
}

/// A record's checks: its sealed body and state authenticate, its clear
/// columns match what is sealed, and its state is the newest the trail knows.
fn check(
    row: &Row,
    body: Option<Body>,
    state: Option<RecordState>,
    newest: Option<EventMeta>,
    verified: &HashSet<[u8; 16]>,
    integrity: &mut Integrity,
) -> Result<(Body, RecordState), String> {
    let name = format!("memory {} (row {})", uuid_str(&row.id), row.seq);
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
            Some(e) if !verified.contains(&e) => integrity.report(format!(
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
