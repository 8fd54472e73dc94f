//! The one-time conversion of a format-1 store (tier, role, times,
//! reinforcement and edges in clear columns) into format 2, at unlock, in one
//! transaction: a crash leaves format 1 as it was, and the next unlock tries
//! again. Format 1 never authenticated those columns, so what they hold is
//! taken as it is found; from here on it is sealed.
//!
//! Format-1 ids were time-ordered (UUIDv7: the first 48 bits are the capture
//! time in milliseconds), so every record and event gets a new random id:
//! the clear columns must not tell when anything happened. The events' sealed
//! lists of records are rewritten to the new ids.

use super::*;

/// A format-1 record body.
#[derive(Deserialize)]
struct BodyV1 {
    text: String,
    #[serde(default)]
    cue: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    provenance: Option<String>,
    #[serde(default)]
    project: Option<String>,
}

/// A format-1 event detail.
#[derive(Deserialize)]
struct EventDetailV1 {
    records: Vec<String>,
}

/// Seals `items` (none: no round trip), keeping the keyholder's newest counter.
fn seal_batch(
    kh: &mut KeyholderClient,
    items: Vec<SealItem>,
    counter: &mut Option<Vec<u8>>,
) -> Result<std::vec::IntoIter<Vec<u8>>, ErrorBody> {
    if items.is_empty() {
        return Ok(Vec::new().into_iter());
    }
    let (blobs, c) = kh.seal(items).map_err(keyholder_error)?;
    *counter = Some(c);
    Ok(blobs.into_iter())
}

pub(super) fn run(st: &mut State) -> Result<(), ErrorBody> {
    let started = Instant::now();
    let State { db, kh, .. } = st;
    let (mut records, mut events) = (0u64, 0u64);
    iai_policy::log!("storer: upgrading the store from format 1 to format {}", db::SCHEMA_VERSION);
    db.upgrade(|tx| {
        let mut counter = None;
        let renamed: HashMap<[u8; 16], [u8; 16]> = db::v1_ids(tx)?.into_iter().map(|old| (old, new_id())).collect();
        let rename = |r: &str| match uuid::Uuid::parse_str(r).ok().and_then(|u| renamed.get(u.as_bytes())) {
            Some(new) => uuid_str(new),
            // A forgotten record: its old id stays only inside the seal.
            None => r.to_owned(),
        };
        // Events: each record's newest event, and the trail in its old order.
        let mut last: HashMap<[u8; 16], [u8; 16]> = HashMap::new();
        let mut seq = 0i64;
        let mut newest = None;
        for chunk in db::v1_events(tx)?.chunks(LOAD_BATCH) {
            let items = chunk
                .iter()
                .map(|e| UnsealItem { field: Field::EventDetail, row: RowId(e.id), blob: e.detail.clone() })
                .collect();
            let plain = kh.unseal(items).map_err(keyholder_error)?;
            let mut items = Vec::new();
            let mut rows = Vec::new();
            for (e, p) in chunk.iter().zip(plain) {
                seq += 1;
                let detail = p.ok().and_then(|p| serde_json::from_slice::<EventDetailV1>(&p).ok());
                match (detail, EventKind::from_code(e.kind)) {
                    (Some(d), Some(kind)) => {
                        // Format-1 event ids were time-ordered (they told when
                        // each thing happened): each gets a new random one.
                        let id = new_id();
                        let records: Vec<String> = d.records.iter().map(|r| rename(r)).collect();
                        for r in records.iter().filter_map(|r| uuid::Uuid::parse_str(r).ok()) {
                            last.insert(*r.as_bytes(), id);
                        }
                        let v2 = EventDetail { seq, at: e.at, kind, records };
                        let plain = serde_json::to_vec(&v2).map_err(internal)?;
                        items.push(SealItem { field: Field::EventDetail, row: RowId(id), plain });
                        rows.push((seq, id, None));
                        newest = Some((seq, id));
                    }
                    // Kept as found (its seal binds its id): it never
                    // authenticated, and every unlock reports it.
                    _ => {
                        rows.push((seq, e.id, Some(e.detail.clone())));
                        newest = Some((seq, e.id));
                    }
                }
            }
            let mut blobs = seal_batch(kh, items, &mut counter)?;
            for (seq, id, kept) in rows {
                let detail = match kept {
                    Some(old) => old,
                    None => blobs.next().ok_or_else(|| internal("missing sealed event"))?,
                };
                db::insert_event_row(tx, &EventRow { seq, id, detail })?;
                events += 1;
            }
        }
        if let Some((seq, id)) = newest {
            let head = serde_json::to_vec(&Head { seq, id: uuid_str(&id) }).map_err(internal)?;
            let (mut blobs, c) = kh
                .seal(vec![SealItem { field: Field::EventHead, row: HEAD_ROW, plain: head }])
                .map_err(keyholder_error)?;
            counter = Some(c);
            db::set_event_head(tx, &blobs.pop().ok_or_else(|| internal("missing sealed head"))?)?;
        }

        // Records, in their old (time) order, with what the clear columns said.
        let superseded: HashMap<[u8; 16], [u8; 16]> = db::v1_contradictions(tx)?
            .into_iter()
            .filter_map(|(new, old)| Some((*renamed.get(&old)?, *renamed.get(&new)?)))
            .collect();
        let mut rseq = 0i64;
        db::for_each_v1_batch(tx, LOAD_BATCH, |rows| {
            let items = rows
                .iter()
                .map(|r| UnsealItem { field: Field::RecordBody, row: RowId(r.id), blob: r.body.clone() })
                .collect();
            let bodies: Vec<Option<BodyV1>> = kh
                .unseal(items)
                .map_err(keyholder_error)?
                .into_iter()
                .map(|p| p.ok().and_then(|p| serde_json::from_slice::<BodyV1>(&p).ok()))
                .collect();
            let inputs: Vec<Vec<u8>> =
                bodies.iter().flatten().map(|b| [DUP_TAG_DOMAIN, b.text.as_bytes()].concat()).collect();
            let mut tags =
                if inputs.is_empty() { Vec::new() } else { kh.tag(inputs).map_err(keyholder_error)? }.into_iter();
            let mut items = Vec::new();
            let mut planned = Vec::new();
            for (r, body) in rows.into_iter().zip(bodies) {
                rseq += 1;
                let Some(b) = body else {
                    // Its seal binds its old id, so that one stays.
                    // Kept as found; the next unlock reports it.
                    planned.push((
                        Row { seq: rseq, id: r.id, dup_tag: r.dup_tag, body: r.body, state: Vec::new() },
                        false,
                    ));
                    continue;
                };
                let tag = tags.next().ok_or_else(|| internal("missing tag"))?;
                let id = *renamed.get(&r.id).ok_or_else(|| internal("a record without a new id"))?;
                let body = Body {
                    text: b.text,
                    created_at: r.created_at,
                    tier: Tier::from_code(r.tier).unwrap_or_default(),
                    role: Role::from_code(r.role).unwrap_or_default(),
                    seq: rseq,
                    dup_tag: hex(&tag),
                    cue: b.cue,
                    tags: b.tags,
                    session: b.session,
                    provenance: b.provenance,
                    project: b.project,
                };
                let state = RecordState {
                    reinforced: u32::try_from(r.reinforced.max(0)).unwrap_or(u32::MAX),
                    superseded_by: superseded.get(&id).map(uuid_str),
                    event: last.get(&id).map(uuid_str),
                };
                items.push(SealItem {
                    field: Field::RecordBody,
                    row: RowId(id),
                    plain: serde_json::to_vec(&body).map_err(internal)?,
                });
                items.push(SealItem {
                    field: Field::RecordState,
                    row: RowId(id),
                    plain: serde_json::to_vec(&state).map_err(internal)?,
                });
                planned.push((Row { seq: rseq, id, dup_tag: tag.to_vec(), body: Vec::new(), state: Vec::new() }, true));
            }
            let mut blobs = seal_batch(kh, items, &mut counter)?;
            for (mut row, sealed) in planned {
                if sealed {
                    row.body = blobs.next().ok_or_else(|| internal("missing sealed body"))?;
                    row.state = blobs.next().ok_or_else(|| internal("missing sealed state"))?;
                }
                db::insert_record(tx, &row, &row.state)?;
                records += 1;
            }
            Ok::<(), ErrorBody>(())
        })?;
        Ok::<_, ErrorBody>(counter)
    })?;
    iai_policy::log!(
        "storer: upgraded the store to format {}: {records} memories, {events} events, in {} ms; memories have new \
         ids (the old ones told their capture time)",
        db::SCHEMA_VERSION,
        started.elapsed().as_millis()
    );
    Ok(())
}
