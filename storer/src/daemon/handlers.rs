//! The requests the storer serves, one function each.

use super::*;

/// Serves one request; the reply comes encoded (results go straight from
/// their types to the frame, never through an intermediate JSON value).
pub(super) fn handle(st: &mut State, req: Request) -> Result<Vec<u8>, ErrorBody> {
    fn ok<T: Serialize>(r: Result<T, ErrorBody>) -> Result<Vec<u8>, ErrorBody> {
        r.map(|v| proto::encode_ok(&v))
    }
    match req {
        Request::Capture(c) => ok(capture(st, c)),
        Request::Recall(r) => ok(recall(st, r)),
        Request::Forget { id } => ok(forget(st, &id)),
        Request::Contradict(c) => ok(contradict(st, c)),
        Request::Reinforce { ids } => ok(reinforce(st, &ids)),
        Request::Events(e) => ok(events(st, e)),
        Request::Recent(r) => ok(recent(st, r)),
        Request::CaptureBatch(b) => ok(capture_batch(st, b)),
        Request::GetCursor { key } => ok(get_cursor(st, &key)),
        Request::Stats => ok(stats(st)),
        Request::Export(e) => ok(export(st, e)),
        Request::Import(i) => ok(import(st, i)),
        Request::Rotate(r) => ok(super::rotate::step(st, r)),
        Request::Shutdown => Err(internal("shutdown is handled by the connection")),
    }
}

/// Inserts a record, or reinforces the identical one. `supersedes` marks
/// that one as superseded by the new record in the same transaction.
pub(super) fn store_record(
    st: &mut State,
    r: CaptureRequest,
    supersedes: Option<[u8; 16]>,
) -> Result<([u8; 16], CaptureStatus), ErrorBody> {
    validate(&r)?;
    let old_state = match supersedes {
        Some(old) => Some(current_state(st, &old).ok_or_else(|| not_found(&old))?),
        None => None,
    };
    let tag = dup_tag(st, &r.text)?;
    let duplicate = find_duplicate(st, &tag)?;
    if duplicate.is_some() && duplicate == supersedes {
        return Err(invalid("the new fact is identical to the memory it contradicts"));
    }
    let kind = match (supersedes, duplicate) {
        (Some(_), _) => EventKind::Contradict,
        (None, Some(_)) => EventKind::Reinforce,
        (None, None) => EventKind::Capture,
    };
    let event = st.trail.next(kind);
    let (id, new, mut items) = match duplicate {
        Some(id) => {
            let (reinforced, by) = current_state(st, &id).ok_or_else(|| internal("a duplicate left the index"))?;
            (id, None, vec![state_item(id, reinforced.saturating_add(1), by, &event)])
        }
        None => {
            let (row, body, item) = new_record(r, now_ms(), st.next_record_seq, &tag)?;
            let id = row.id;
            (id, Some((row, body)), vec![item, state_item(id, 0, None, &event)])
        }
    };
    if let (Some(old), Some((reinforced, _))) = (supersedes, old_state) {
        items.push(state_item(old, reinforced, Some(id), &event));
    }
    let touched: Vec<[u8; 16]> = std::iter::once(id).chain(supersedes).collect();
    let Sealed { blobs, event: event_row, head, counter } = seal_with_event(st, items, &event, &touched)?;
    let mut blobs = blobs.into_iter();
    let mut new = new;
    if let Some((row, _)) = &mut new {
        row.body = blobs.next().ok_or_else(|| internal("no sealed body"))?;
    }
    let state = blobs.next().ok_or_else(|| internal("no sealed state"))?;
    let old_blob = blobs.next();
    // What the index snapshot will vouch for (`load`).
    let body_check = new.as_ref().map(|(row, _)| load::body_digest(row.seq, &row.id, &row.dup_tag, &row.body));
    let state_check = load::state_digest(&id, &state);
    let old_check = supersedes.zip(old_blob.as_ref()).map(|(old, b)| (old, load::state_digest(&old, b)));
    commit(st, event, &counter, |tx| {
        match &new {
            Some((row, _)) => db::insert_record(tx, row, &state)?,
            None => db::set_state(tx, &id, &state)?,
        }
        if let (Some(old), Some(blob)) = (supersedes, &old_blob) {
            db::set_state(tx, &old, blob)?;
        }
        db::insert_event(tx, &event_row, &head)
    })?;
    let status = match new {
        Some((_, body)) => {
            st.next_record_seq += 1;
            st.index.add(meta_of(id, &body, 0), &body.searchable());
            CaptureStatus::Inserted
        }
        None => {
            st.index.reinforce(&id, 1);
            CaptureStatus::Reinforced
        }
    };
    if let Some(old) = supersedes {
        st.index.supersede(&old, id);
    }
    st.index.set_check(&id, |c| {
        if let Some(b) = body_check {
            c.body = b;
        }
        c.state = state_check;
    });
    if let Some((old, d)) = old_check {
        st.index.set_check(&old, |c| c.state = d);
    }
    Ok((id, status))
}

fn not_found(id: &[u8; 16]) -> ErrorBody {
    ErrorBody::new(ErrorCode::NotFound, format!("no memory with id {}", uuid_str(id)))
}

pub(super) fn capture(st: &mut State, c: CaptureRequest) -> Result<CaptureResult, ErrorBody> {
    let (id, status) = store_record(st, c, None)?;
    Ok(CaptureResult { id: uuid_str(&id), status })
}

pub(super) fn get_cursor(st: &mut State, key: &str) -> Result<CursorValue, ErrorBody> {
    check_len("cursor key", key, proto::MAX_CURSOR_KEY)?;
    let id = cursor_id(st, key)?;
    Ok(CursorValue { value: read_cursor(st, id)? })
}

/// A cursor's value by its keyed id (none if it was never set).
fn read_cursor(st: &mut State, id: [u8; 16]) -> Result<Option<String>, ErrorBody> {
    let Some(blob) = st.db.cursor(&id).map_err(storage)? else { return Ok(None) };
    let plain =
        st.kh.unseal(vec![UnsealItem { field: Field::MetaValue, row: RowId(id), blob }]).map_err(keyholder_error)?;
    let value = plain.into_iter().next().and_then(|p| p.ok()).and_then(|p| String::from_utf8(p).ok());
    match value {
        Some(v) => Ok(Some(v)),
        None => Err(internal("a stored cursor does not authenticate")),
    }
}

/// One item of a batch: a new record (row and body), or the id it duplicates.
pub(super) struct Planned {
    pub(super) new: Option<(Row, Body)>,
    pub(super) id: [u8; 16],
}

/// Captures many records in one transaction (one fsync), with the cursor.
pub(super) fn capture_batch(st: &mut State, b: CaptureBatchRequest) -> Result<CaptureBatchResult, ErrorBody> {
    if b.items.len() > proto::MAX_BATCH {
        return Err(invalid(format!("{} items; a batch holds at most {}", b.items.len(), proto::MAX_BATCH)));
    }
    if let Some(c) = &b.cursor {
        check_cursor(c)?;
    }
    let records = b.items;
    for (i, r) in records.iter().enumerate() {
        validate(r).map_err(|e| ErrorBody::new(e.code, format!("item {i}: {}", e.message)))?;
    }
    let inputs = records
        .iter()
        .map(|r| {
            let mut input = DUP_TAG_DOMAIN.to_vec();
            input.extend_from_slice(r.text.as_bytes());
            input
        })
        .collect();
    let tags = if records.is_empty() { Vec::new() } else { st.kh.tag(inputs).map_err(keyholder_error)? };
    let cursor_row = match &b.cursor {
        Some(c) => Some(cursor_id(st, &c.key)?),
        None => None,
    };
    if let (Some(c), Some(id)) = (&b.cursor, cursor_row) {
        if let Some(from) = &c.from {
            let now = read_cursor(st, id)?.unwrap_or_default();
            if now != *from {
                return Err(ErrorBody::new(
                    ErrorCode::Conflict,
                    format!(
                        "the position {:?} is at {now:?}, not {from:?}: another capture of it ran meanwhile; \
                         nothing was stored",
                        c.key
                    ),
                ));
            }
        }
    }

    // Decide per item: reinforce an existing record (or an earlier item), or
    // insert; and count what each touched record ends up with.
    let now = now_ms();
    let event = st.trail.next(EventKind::Capture);
    let mut plan: Vec<Planned> = Vec::with_capacity(records.len());
    let mut seen: Vec<([u8; 32], [u8; 16])> = Vec::new();
    // (id, reinforcement after the batch, superseded by), in first-touch order.
    let mut touched: Vec<([u8; 16], u32, Option<[u8; 16]>)> = Vec::new();
    let mut bodies = Vec::new();
    let mut seq = st.next_record_seq;
    for (r, tag) in records.into_iter().zip(&tags) {
        let existing = match seen.iter().find(|(t, _)| t == tag) {
            Some((_, id)) => Some(*id),
            None => find_duplicate(st, tag)?,
        };
        if let Some(id) = existing {
            match touched.iter_mut().find(|t| t.0 == id) {
                Some(t) => t.1 = t.1.saturating_add(1),
                None => {
                    let (reinforced, by) =
                        current_state(st, &id).ok_or_else(|| internal("a duplicate left the index"))?;
                    touched.push((id, reinforced.saturating_add(1), by));
                }
            }
            if !seen.iter().any(|(t, _)| t == tag) {
                seen.push((*tag, id));
            }
            plan.push(Planned { new: None, id });
            continue;
        }
        let (row, body, item) = new_record(r, now, seq, tag)?;
        seq += 1;
        let id = row.id;
        bodies.push(item);
        seen.push((*tag, id));
        touched.push((id, 0, None));
        plan.push(Planned { new: Some((row, body)), id });
    }
    if plan.is_empty() {
        if let (Some(c), Some(row)) = (&b.cursor, cursor_row) {
            // Only the position moved (lines with no turn in them): no event for that.
            let item = SealItem { field: Field::MetaValue, row: RowId(row), plain: c.value.clone().into_bytes() };
            let (mut blobs, counter) = st.kh.seal(vec![item]).map_err(keyholder_error)?;
            let blob = blobs.pop().ok_or_else(|| internal("missing sealed cursor"))?;
            st.db.write(Some(&counter), |tx| db::set_cursor(tx, &row, &blob)).map_err(storage)?;
        }
        return Ok(CaptureBatchResult { results: Vec::new() });
    }
    let inserted = bodies.len();
    let mut items = bodies;
    items.extend(touched.iter().map(|&(id, reinforced, by)| state_item(id, reinforced, by, &event)));
    if let (Some(c), Some(row)) = (&b.cursor, cursor_row) {
        items.push(SealItem { field: Field::MetaValue, row: RowId(row), plain: c.value.clone().into_bytes() });
    }
    let ids: Vec<[u8; 16]> = touched.iter().map(|t| t.0).collect();
    let Sealed { blobs, event: event_row, head, counter } = seal_with_event(st, items, &event, &ids)?;
    let mut blobs = blobs.into_iter();
    for p in plan.iter_mut() {
        if let Some((row, _)) = &mut p.new {
            row.body = blobs.next().ok_or_else(|| internal("missing sealed blob"))?;
        }
    }
    let states: Vec<Vec<u8>> = blobs.by_ref().take(touched.len()).collect();
    let sealed_cursor = if cursor_row.is_some() { blobs.next() } else { None };
    if states.len() != touched.len() || (cursor_row.is_some() && sealed_cursor.is_none()) {
        return Err(internal("missing sealed blobs"));
    }
    debug_assert_eq!(plan.iter().filter(|p| p.new.is_some()).count(), inserted);
    commit(st, event, &counter, |tx| {
        for ((id, ..), state) in touched.iter().zip(&states) {
            match plan.iter().find_map(|p| p.new.as_ref().filter(|(row, _)| row.id == *id)) {
                Some((row, _)) => db::insert_record(tx, row, state)?,
                None => db::set_state(tx, id, state)?,
            }
        }
        if let (Some(id), Some(blob)) = (cursor_row, &sealed_cursor) {
            db::set_cursor(tx, &id, blob)?;
        }
        db::insert_event(tx, &event_row, &head)
    })?;
    st.next_record_seq = seq;
    let mut results = Vec::with_capacity(plan.len());
    for p in plan {
        let status = match p.new {
            Some((row, body)) => {
                st.index.add(meta_of(row.id, &body, 0), &body.searchable());
                let b = load::body_digest(row.seq, &row.id, &row.dup_tag, &row.body);
                st.index.set_check(&row.id, |c| c.body = b);
                CaptureStatus::Inserted
            }
            None => {
                st.index.reinforce(&p.id, 1);
                CaptureStatus::Reinforced
            }
        };
        results.push(CaptureResult { id: uuid_str(&p.id), status });
    }
    for ((id, ..), state) in touched.iter().zip(&states) {
        let d = load::state_digest(id, state);
        st.index.set_check(id, |c| c.state = d);
    }
    Ok(CaptureBatchResult { results })
}

/// The newest memories (the project's first), unsealed.
pub(super) fn recent(st: &mut State, r: RecentRequest) -> Result<RecallResult, ErrorBody> {
    let limit = r.limit.unwrap_or(proto::DEFAULT_RECALL_LIMIT);
    if limit == 0 || limit > proto::MAX_RECALL_LIMIT {
        return Err(invalid(format!("limit must be between 1 and {}", proto::MAX_RECALL_LIMIT)));
    }
    let metas = st.index.recent(r.project.as_deref(), limit as usize);
    hits_for(st, metas.into_iter().map(|m| (m, 0.0)).collect(), false)
}

pub(super) fn contradict(st: &mut State, c: ContradictRequest) -> Result<ContradictResult, ErrorBody> {
    let old = parse_id(&c.id)?;
    if !st.index.contains(&old) {
        return Err(not_found(&old));
    }
    let r = CaptureRequest {
        text: c.text,
        cue: c.cue,
        tier: c.tier,
        role: c.role,
        session: c.session,
        tags: c.tags,
        ..Default::default()
    };
    let (id, status) = store_record(st, r, Some(old))?;
    Ok(ContradictResult { id: uuid_str(&id), status, supersedes: uuid_str(&old) })
}

pub(super) fn reinforce(st: &mut State, ids: &[String]) -> Result<ReinforceResult, ErrorBody> {
    if ids.is_empty() || ids.len() > proto::MAX_REINFORCE_IDS {
        return Err(invalid(format!("give between 1 and {} ids", proto::MAX_REINFORCE_IDS)));
    }
    let mut parsed = Vec::with_capacity(ids.len());
    for id in ids {
        let p = parse_id(id)?;
        if !parsed.contains(&p) {
            parsed.push(p);
        }
    }
    let missing: Vec<String> = parsed.iter().filter(|id| !st.index.contains(id)).map(uuid_str).collect();
    if !missing.is_empty() {
        return Err(ErrorBody::new(ErrorCode::NotFound, format!("no memory with id {}", missing.join(", "))));
    }
    // Which memories were useful together is kept in the event (sealed).
    let event = st.trail.next(EventKind::Reinforce);
    let mut items = Vec::with_capacity(parsed.len());
    for id in &parsed {
        let (reinforced, by) = current_state(st, id).ok_or_else(|| not_found(id))?;
        items.push(state_item(*id, reinforced.saturating_add(1), by, &event));
    }
    let Sealed { blobs, event: event_row, head, counter } = seal_with_event(st, items, &event, &parsed)?;
    if blobs.len() != parsed.len() {
        return Err(internal("missing sealed states"));
    }
    commit(st, event, &counter, |tx| {
        for (id, state) in parsed.iter().zip(&blobs) {
            db::set_state(tx, id, state)?;
        }
        db::insert_event(tx, &event_row, &head)
    })?;
    for (id, state) in parsed.iter().zip(&blobs) {
        st.index.reinforce(id, 1);
        let d = load::state_digest(id, state);
        st.index.set_check(id, |c| c.state = d);
    }
    Ok(ReinforceResult { ids: parsed.iter().map(uuid_str).collect() })
}

pub(super) fn recall(st: &mut State, r: RecallRequest) -> Result<RecallResult, ErrorBody> {
    if r.cue.trim().is_empty() {
        return Err(invalid("cue is empty"));
    }
    check_len("cue", &r.cue, proto::MAX_CUE)?;
    let limit = r.limit.unwrap_or(proto::DEFAULT_RECALL_LIMIT);
    if limit == 0 || limit > proto::MAX_RECALL_LIMIT {
        return Err(invalid(format!("limit must be between 1 and {}", proto::MAX_RECALL_LIMIT)));
    }
    let offset = r.offset.unwrap_or(0);
    if offset.saturating_add(limit) > proto::MAX_RECALL_DEPTH {
        return Err(invalid(format!("offset + limit must be at most {}", proto::MAX_RECALL_DEPTH)));
    }
    if let (Some(a), Some(b)) = (r.since, r.until) {
        if a >= b {
            return Err(invalid("since must be before until"));
        }
    }
    let filter = Filter {
        tier: r.tier.map(Tier::code),
        role: r.role.map(Role::code),
        session: r.session,
        since: r.since,
        until: r.until,
        project: r.project,
    };
    let (ranked, more) = st.index.search(&r.cue, offset as usize, limit as usize, &filter, now_ms());
    hits_for(st, ranked, more)
}

/// Unseals the records behind ranked index entries into hits.
pub(super) fn hits_for(st: &mut State, ranked: Vec<(DocMeta, f64)>, more: bool) -> Result<RecallResult, ErrorBody> {
    let mut rows = Vec::with_capacity(ranked.len());
    for (meta, score) in ranked {
        if let Some(row) = st.db.get(&meta.id).map_err(storage)? {
            rows.push((row, meta, score));
        }
    }
    let items = rows
        .iter()
        .map(|(row, _, _)| UnsealItem { field: Field::RecordBody, row: RowId(row.id), blob: row.body.clone() })
        .collect();
    let plain = st.kh.unseal(items).map_err(keyholder_error)?;
    let mut hits = Vec::with_capacity(rows.len());
    for ((row, meta, score), p) in rows.into_iter().zip(plain) {
        let Some(body) = p.ok().and_then(|p| serde_json::from_slice::<Body>(&p).ok()) else {
            iai_policy::log!("storer: record {} does not authenticate; left out of the results", uuid_str(&row.id));
            continue;
        };
        hits.push(Hit::from_record(body.into_record(&row.id, meta.reinforced, meta.superseded_by), score));
    }
    let more = fit_reply(&mut hits) || more;
    Ok(RecallResult { hits, more })
}

/// Keeps the longest prefix of `items` whose JSON fits [`REPLY_BUDGET`]
/// (always at least one: a single record fits by construction); true if
/// any were left out, for the next page.
pub(super) fn fit_reply<T: Serialize>(items: &mut Vec<T>) -> bool {
    let mut used = 0usize;
    let mut keep = 0usize;
    for item in items.iter() {
        let n = crate::limits::json_len(item).saturating_add(1);
        if keep > 0 && used.saturating_add(n) > crate::limits::REPLY_BUDGET {
            break;
        }
        used = used.saturating_add(n);
        keep += 1;
    }
    let cut = keep < items.len();
    items.truncate(keep);
    cut
}

pub(super) fn forget(st: &mut State, id: &str) -> Result<ForgetResult, ErrorBody> {
    let id = parse_id(id)?;
    // A record left out at unlock (it failed its checks) can still be forgotten.
    let Some(row) = st.db.get(&id).map_err(storage)? else {
        return Err(not_found(&id));
    };
    let plain = st
        .kh
        .unseal(vec![UnsealItem { field: Field::RecordBody, row: RowId(id), blob: row.body }])
        .map_err(keyholder_error)?;
    let body = plain.into_iter().next().and_then(|p| p.ok()).and_then(|p| serde_json::from_slice::<Body>(&p).ok());
    let event = st.trail.next(EventKind::Forget);
    let Sealed { event: event_row, head, counter, .. } = seal_with_event(st, Vec::new(), &event, &[id])?;
    let deleted = st.db.delete(&id, &event_row, &head, &counter).map_err(|e| match storage(e) {
        full if full.code == ErrorCode::DiskFull => ErrorBody::new(
            ErrorCode::DiskFull,
            "the disk holding the iai-mcp store is full and its space reserve is used up: nothing was \
             forgotten. Free some space on it, then forget again",
        ),
        other => other,
    });
    let (_, erased) = match deleted {
        Ok(d) => d,
        Err(e) => {
            resync(st);
            return Err(e);
        }
    };
    st.trail.push(event);
    snapshot::dropped(st);
    if !erased {
        iai_policy::log!("storer: a forgotten record's old pages wait for a checkpoint (the disk is full)");
    }
    if let Some(body) = body {
        st.index.remove(&id, &body.searchable());
    }
    Ok(ForgetResult { id: uuid_str(&id), forgotten: true, erased })
}

pub(super) fn events(st: &mut State, e: EventsRequest) -> Result<EventsResult, ErrorBody> {
    let limit = e.limit.unwrap_or(proto::DEFAULT_EVENTS_LIMIT);
    if limit == 0 || limit > proto::MAX_EVENTS_LIMIT {
        return Err(invalid(format!("limit must be between 1 and {}", proto::MAX_EVENTS_LIMIT)));
    }
    let since = e.since.unwrap_or(i64::MIN);
    let chosen: Vec<EventMeta> = st
        .trail
        .events
        .iter()
        .rev()
        .filter(|m| m.at >= since && e.kind.is_none_or(|k| k == m.kind))
        .take(limit as usize)
        .copied()
        .collect();
    let mut rows = Vec::with_capacity(chosen.len());
    for m in &chosen {
        match st.db.event(m.seq).map_err(storage)? {
            Some(row) if row.id == m.id => rows.push(row),
            _ => {
                st.integrity.report(format!("event {} (place {}) left the file while unlocked", uuid_str(&m.id), m.seq))
            }
        }
    }
    let items = rows
        .iter()
        .map(|r| UnsealItem { field: Field::EventDetail, row: RowId(r.id), blob: r.detail.clone() })
        .collect();
    let plain = st.kh.unseal(items).map_err(keyholder_error)?;
    let mut events = Vec::with_capacity(rows.len());
    for (row, p) in rows.into_iter().zip(plain) {
        let detail = p.ok().and_then(|p| serde_json::from_slice::<EventDetail>(&p).ok()).filter(|d| d.seq == row.seq);
        let Some(d) = detail else {
            st.integrity.report(format!("event {} (place {}) was changed while unlocked", uuid_str(&row.id), row.seq));
            continue;
        };
        events.push(Event { id: uuid_str(&row.id), at: d.at, kind: d.kind, records: d.records });
    }
    let more = fit_reply(&mut events);
    Ok(EventsResult { events, more })
}

/// Records that the store was unlocked. On a full disk the event is left
/// out (and said so in the log and in `status`): memories must stay readable.
pub(super) fn log_unlock(st: &mut State) -> Result<(), ErrorBody> {
    let event = st.trail.next(EventKind::Unlock);
    let Sealed { event: row, head, counter, .. } = seal_with_event(st, Vec::new(), &event, &[])?;
    match st.db.write(Some(&counter), |tx| db::insert_event(tx, &row, &head)) {
        Ok(()) => {
            st.trail.push(event);
            Ok(())
        }
        Err(e) if db::is_disk_full(&e) => {
            iai_policy::log!("storer: the disk is full: unlocked without recording an unlock event");
            resync(st);
            Ok(())
        }
        Err(e) => {
            resync(st);
            Err(storage(e))
        }
    }
}

pub(super) fn stats(st: &mut State) -> Result<Stats, ErrorBody> {
    let counts = st.index.tier_counts();
    let per_tier = Tier::ALL
        .into_iter()
        .map(|t| TierCount { tier: t, records: counts.get(&t.code()).copied().unwrap_or(0) })
        .collect();
    let store_bytes = std::fs::read_dir(st.home.store_dir())
        .map(|rd| rd.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0);
    let info = st.kh.info();
    Ok(Stats {
        version: env!("CARGO_PKG_VERSION").to_string(),
        records: st.index.len(),
        per_tier,
        events: st.trail.events.len() as u64,
        unreadable: st.unreadable,
        integrity_problems: st.integrity.count,
        integrity: st.integrity.first.clone(),
        store_bytes,
        storer_pid: std::process::id(),
        keyholder_pid: st.keyholder_pid,
        seal_count: info.seal_count,
        seal_limit: info.seal_limit,
        degraded: st.degraded.clone(),
        disk_full: st.db.disk_full(),
        memory_locked: st.memory_locked,
        key_id: hex(&info.key_id.0),
        previous_key_id: info.previous.map(|k| hex(&k.0)),
        old_key_values: st.rotation.as_ref().map_or(0, |r| r.remaining),
        index: proto::IndexStats {
            from_snapshot: st.load.from_snapshot,
            checked: st.load.checked,
            load_ms: st.load.millis,
            snapshot_not_used: st.load.snapshot_refused.clone(),
            snapshot_bytes: st.snap.bytes,
            snapshot_off: snapshot::why_not(st).map(str::to_string),
            snapshot_error: st.snap.error.clone(),
            model: st.index.model().map(|m| m.info()),
            model_error: st.model_error.clone(),
            missing_vectors: st.index.missing_vectors(),
        },
    })
}

/// One page of every live memory, in capture order, with what the store knows
/// about it. Records left out at unlock (they failed their checks) are not
/// exported.
pub(super) fn export(st: &mut State, r: ExportRequest) -> Result<ExportResult, ErrorBody> {
    let limit = r.limit.unwrap_or(proto::MAX_EXPORT_PAGE);
    if limit == 0 || limit > proto::MAX_EXPORT_PAGE {
        return Err(invalid(format!("limit must be between 1 and {}", proto::MAX_EXPORT_PAGE)));
    }
    let rows = st.db.records_after(r.after.unwrap_or(0), limit).map_err(storage)?;
    let (scanned, scanned_to) = (rows.len(), rows.last().map(|row| row.seq));
    let live: Vec<Row> = rows.into_iter().filter(|row| st.index.contains(&row.id)).collect();
    let items = live
        .iter()
        .map(|row| UnsealItem { field: Field::RecordBody, row: RowId(row.id), blob: row.body.clone() })
        .collect();
    let plain = st.kh.unseal(items).map_err(keyholder_error)?;
    let mut records = Vec::with_capacity(live.len());
    let mut seqs = Vec::with_capacity(live.len());
    for (row, p) in live.into_iter().zip(plain) {
        let Some(body) = p.ok().and_then(|p| serde_json::from_slice::<Body>(&p).ok()) else {
            st.integrity
                .report(format!("memory {} changed in the file while unlocked; not exported", uuid_str(&row.id)));
            continue;
        };
        let (reinforced, superseded_by) = current_state(st, &row.id).unwrap_or_default();
        records.push(body.into_record(&row.id, reinforced, superseded_by));
        seqs.push(row.seq);
    }
    let cut = fit_reply(&mut records);
    let next = if cut {
        // The reply was full: go on after the last record it holds.
        records.len().checked_sub(1).and_then(|i| seqs.get(i).copied())
    } else if scanned == limit as usize {
        // A full page of rows: there may be more after it.
        scanned_to
    } else {
        None
    };
    Ok(ExportResult { records, next })
}

/// Memories from an export: each keeps its id, dates, tier, role, counts and
/// supersedes; an id or a text the store already has is a duplicate, not an
/// error, so importing twice adds nothing.
pub(super) fn import(st: &mut State, r: ImportRequest) -> Result<ImportResult, ErrorBody> {
    if r.items.len() > proto::MAX_BATCH {
        return Err(invalid(format!("{} items; an import batch holds at most {}", r.items.len(), proto::MAX_BATCH)));
    }
    let now = now_ms();
    let mut ids = Vec::with_capacity(r.items.len());
    for (i, m) in r.items.iter().enumerate() {
        let at = |e: ErrorBody| ErrorBody::new(e.code, format!("item {i}: {}", e.message));
        ids.push(parse_id(&m.id).map_err(at)?);
        m.as_capture().validate(now).map_err(at)?;
        if let Some(by) = &m.superseded_by {
            parse_id(by).map_err(at)?;
        }
    }
    let inputs: Vec<Vec<u8>> = r.items.iter().map(|m| [DUP_TAG_DOMAIN, m.text.as_bytes()].concat()).collect();
    let tags = if inputs.is_empty() { Vec::new() } else { st.kh.tag(inputs).map_err(keyholder_error)? };
    let event = st.trail.next(EventKind::Capture);
    let mut results = Vec::with_capacity(r.items.len());
    let mut new: Vec<(Row, Body, u32, Option<[u8; 16]>)> = Vec::new();
    let mut items = Vec::new();
    let mut seen: Vec<([u8; 32], [u8; 16])> = Vec::new();
    let mut seq = st.next_record_seq;
    for ((m, id), tag) in r.items.into_iter().zip(ids).zip(&tags) {
        let taken = st.index.contains(&id)
            || st.db.get(&id).map_err(storage)?.is_some()
            || new.iter().any(|(row, ..)| row.id == id);
        let same = match seen.iter().find(|(t, _)| t == tag) {
            Some((_, other)) => Some(*other),
            None if taken => None,
            None => find_duplicate(st, tag)?,
        };
        if taken || same.is_some() {
            results.push(ImportItemResult {
                id: m.id.clone(),
                status: ImportStatus::Duplicate,
                same_as: same.filter(|s| *s != id).as_ref().map(uuid_str),
            });
            continue;
        }
        let superseded_by = m.superseded_by.as_deref().and_then(|s| parse_id(s).ok());
        let reinforced = m.reinforced;
        let body = Body {
            text: m.text,
            created_at: m.created_at,
            tier: m.tier,
            role: m.role,
            seq,
            dup_tag: hex(tag),
            cue: m.cue,
            tags: m.tags,
            session: m.session,
            provenance: m.provenance,
            project: m.project,
        };
        items.push(SealItem {
            field: Field::RecordBody,
            row: RowId(id),
            plain: serde_json::to_vec(&body).map_err(internal)?,
        });
        items.push(state_item(id, reinforced, superseded_by, &event));
        new.push((
            Row { seq, id, dup_tag: tag.to_vec(), body: Vec::new(), state: Vec::new() },
            body,
            reinforced,
            superseded_by,
        ));
        seen.push((*tag, id));
        seq += 1;
        results.push(ImportItemResult { id: m.id, status: ImportStatus::Inserted, same_as: None });
    }
    if new.is_empty() {
        return Ok(ImportResult { results });
    }
    let ids: Vec<[u8; 16]> = new.iter().map(|(row, ..)| row.id).collect();
    let Sealed { blobs, event: event_row, head, counter } = seal_with_event(st, items, &event, &ids)?;
    if blobs.len() != new.len() * 2 {
        return Err(internal("missing sealed blobs"));
    }
    let mut blobs = blobs.into_iter();
    for (row, ..) in new.iter_mut() {
        row.body = blobs.next().unwrap_or_default();
        row.state = blobs.next().unwrap_or_default();
    }
    commit(st, event, &counter, |tx| {
        for (row, ..) in &new {
            db::insert_record(tx, row, &row.state)?;
        }
        db::insert_event(tx, &event_row, &head)
    })?;
    st.next_record_seq = seq;
    for (row, body, reinforced, superseded_by) in new {
        st.index.add(meta_of(row.id, &body, reinforced), &body.searchable());
        let check = load::row_check(row.seq, &row.id, &row.dup_tag, &row.body, &row.state);
        st.index.set_check(&row.id, |c| *c = check);
        if let Some(by) = superseded_by {
            st.index.supersede(&row.id, by);
        }
    }
    Ok(ImportResult { results })
}
