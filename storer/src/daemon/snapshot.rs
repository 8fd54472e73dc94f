//! The index snapshot: the recall index and the verified audit trail as the
//! storer holds them in memory, sealed by the keyholder in parts and kept in
//! the database, so that unlock loads them instead of rebuilding the index
//! from every record (`load` says how it is checked against the file).
//!
//! It is only ever a shortcut. It is written while the storer is idle after
//! enough changes, and when the store is locked; never from a trail or index
//! that is not exactly the file's (after a failed write, an integrity
//! problem, during or after a key rotation). A forget removes it in the same
//! transaction that removes the record, before the erasure, so that the
//! forgotten words leave the files with the record. A snapshot that is
//! missing, stale, damaged or sealed under another key costs only time:
//! the records it does not vouch for are checked one by one, or the whole
//! index is rebuilt, and the log says which.

use std::time::Duration;

use sha2::Digest;

use super::*;

/// The payload's layout version.
const FORMAT: u32 = 1;
/// Plaintext bytes per sealed part: small enough that the buffers of a
/// keyholder round trip are reused, not mapped and faulted in afresh.
const PART_BYTES: usize = 64 << 10;
/// Parts sealed or unsealed per keyholder request (4 MiB).
const GROUP: usize = 64;
/// A snapshot whose last write took longer is not written at lock (the
/// storer has a few seconds to stop); the idle writer keeps it current.
const EXIT_WRITE_BUDGET: Duration = Duration::from_secs(2);
/// Without a write measured in this session: the largest store written at
/// lock (writes take about half a second per 100,000 records).
const EXIT_WRITE_RECORDS: u64 = 300_000;
/// Changes (audit-trail events) after which an idle storer writes a new snapshot…
const MIN_CHANGES: usize = 64;
/// …or, in a large store, this share of its records (1/50).
const CHANGE_SHARE: u64 = 50;
/// How long without a request counts as idle.
pub(super) const IDLE: Duration = Duration::from_secs(10);
/// How often the idle writer looks.
pub(super) const IDLE_CHECK: Duration = Duration::from_secs(2);

/// What a snapshot holds, decoded.
pub(super) struct Snapshot {
    /// The place of the newest event it knew (its trail covers 1..=head_seq).
    pub(super) head_seq: i64,
    /// `trail::digest_event` over those events' rows.
    pub(super) trail_digest: [u8; 32],
    pub(super) events: Vec<EventMeta>,
    pub(super) last: HashMap<[u8; 16], u32>,
    pub(super) index: Index,
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
    head_seq: i64,
    trail_digest: [u8; 32],
    /// (seq, id, at, kind code)
    events: Vec<(i64, [u8; 16], i64, u8)>,
    last: Vec<([u8; 16], u32)>,
}

/// The storer's bookkeeping of snapshots in this session.
pub(super) struct Book {
    /// Trail length when the snapshot in the file was written or loaded.
    pub(super) written_at: Option<usize>,
    /// Why no snapshot may be written in this session.
    pub(super) off: Option<&'static str>,
    /// When the last request other than a status poll was answered.
    pub(super) last_request: Instant,
    /// Size of the last one written or loaded (sealed bytes).
    pub(super) bytes: u64,
    /// Why the last write failed (cleared by one that succeeds).
    pub(super) error: Option<String>,
    /// How long the last write took.
    pub(super) took: Option<Duration>,
}

impl Default for Book {
    fn default() -> Self {
        Book { written_at: None, off: None, last_request: Instant::now(), bytes: 0, error: None, took: None }
    }
}

/// The row id a part is sealed under: the snapshot's random id, the part's
/// number and the number of parts, so that parts of different snapshots,
/// moved or cut off, do not authenticate together.
fn part_row(snap: &[u8; 8], i: usize, n: usize) -> RowId {
    let mut row = [0u8; 16];
    row[..8].copy_from_slice(snap);
    row[8..12].copy_from_slice(&(i as u32).to_le_bytes());
    row[12..].copy_from_slice(&(n as u32).to_le_bytes());
    RowId(row)
}

/// The sealed parts of the snapshot in the file, as read.
pub(super) struct Parts {
    id: [u8; 8],
    blobs: Vec<Vec<u8>>,
}

impl Parts {
    pub(super) fn bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.len() as u64).sum()
    }
}

/// Reads the snapshot's sealed parts: `None` when there is none, an error
/// saying why when they cannot be one snapshot.
pub(super) fn parts(db: &Db) -> Result<Option<Parts>, String> {
    let rows = db.index_snapshot().map_err(|e| format!("cannot read it: {e}"))?;
    let Some(first) = rows.first() else { return Ok(None) };
    let id: [u8; 8] = first.1.as_slice().try_into().map_err(|_| "its id is not 8 bytes")?;
    if rows.iter().enumerate().any(|(i, (part, snap, _))| *part != i as i64 || snap[..] != id[..]) {
        return Err("its parts are not those of one snapshot, or some are missing".into());
    }
    Ok(Some(Parts { id, blobs: rows.into_iter().map(|r| r.2).collect() }))
}

/// Unseals and decodes the parts (runs beside the digests of the rows).
pub(super) fn open(kh: &mut KeyholderClient, parts: Parts) -> Result<Snapshot, String> {
    let n = parts.blobs.len();
    let mut payload = Vec::with_capacity(n * PART_BYTES);
    let mut blobs = parts.blobs.into_iter().enumerate().peekable();
    // A group at a time: the sealed and the plain copies of the whole never
    // coexist.
    while let Some(&(first, _)) = blobs.peek() {
        let items = blobs
            .by_ref()
            .take(GROUP)
            .map(|(i, blob)| UnsealItem { field: Field::IndexSnapshot, row: part_row(&parts.id, i, n), blob })
            .collect::<Vec<_>>();
        let plain = kh.unseal(items).map_err(|e| format!("the keyholder failed: {e}"))?;
        for (i, p) in plain.into_iter().enumerate() {
            match p {
                Ok(p) => payload.extend_from_slice(&p),
                Err(_) => {
                    return Err(format!(
                        "part {} does not authenticate (changed, moved, or sealed under another key)",
                        first + i
                    ))
                }
            }
        }
    }
    decode(&payload)
}

fn decode(payload: &[u8]) -> Result<Snapshot, String> {
    if payload.len() < 8 {
        return Err("it is too short".into());
    }
    let header_len = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes")) as usize;
    let rest = &payload[8..];
    if header_len > rest.len() {
        return Err("its header is cut short".into());
    }
    let (header, image) = rest.split_at(header_len);
    let h: Header = postcard::from_bytes(header).map_err(|e| format!("its header does not decode: {e}"))?;
    if h.format != FORMAT {
        return Err(format!("it is in format {}, not {FORMAT}", h.format));
    }
    let mut events = Vec::with_capacity(h.events.len());
    for (seq, id, at, kind) in h.events {
        let kind = EventKind::from_code(i64::from(kind)).ok_or("it names an unknown kind of event")?;
        events.push(EventMeta { seq, id, at, kind });
    }
    if events.iter().enumerate().any(|(i, e)| e.seq != i as i64 + 1) || events.len() as i64 != h.head_seq {
        return Err("its audit trail is not in order".into());
    }
    if h.last.iter().any(|&(_, place)| place as usize >= events.len()) {
        return Err("it names events it does not have".into());
    }
    let index = Index::from_image(image).map_err(|e| format!("its index is unusable: {e}"))?;
    Ok(Snapshot {
        head_seq: h.head_seq,
        trail_digest: h.trail_digest,
        events,
        last: h.last.into_iter().collect(),
        index,
    })
}

/// Whether a snapshot should be written now (`at_exit`: the store is being
/// locked; otherwise the storer is idle).
pub(super) fn due(st: &State, at_exit: bool) -> bool {
    if writable(st).is_err() {
        return false;
    }
    // An unlock changes nothing the snapshot holds: its event is read from
    // the file at the next unlock like any other newer event.
    let changed = |e: &&EventMeta| e.kind != EventKind::Unlock;
    let Some(written) = st.snap.written_at else {
        // None current in this session: any memory is worth one (checked
        // first: this runs under the state lock at every idle tick, and the
        // whole trail can be long).
        return !st.index.is_empty() || st.trail.events.iter().any(|e| changed(&e));
    };
    let changes = st.trail.events[written.min(st.trail.events.len())..].iter().filter(changed).count();
    if at_exit {
        // Unmeasured in this session: judged by the store's size.
        changes > 0 && st.snap.took.map_or(st.index.len() <= EXIT_WRITE_RECORDS, |t| t <= EXIT_WRITE_BUDGET)
    } else {
        changes >= MIN_CHANGES.max((st.index.len() / CHANGE_SHARE) as usize)
    }
}

/// Why no snapshot can be written now, if so.
pub(super) fn why_not(st: &State) -> Option<&'static str> {
    writable(st).err()
}

/// Why the trail and index in memory cannot be written as a snapshot.
fn writable(st: &State) -> Result<(), &'static str> {
    if let Some(why) = st.snap.off {
        return Err(why);
    }
    if !st.trail.exact {
        return Err("the audit trail in memory may differ from the file's");
    }
    if st.integrity.count > 0 || st.unreadable > 0 {
        return Err("the store has integrity problems (it is checked in full at every unlock)");
    }
    if st.rotation.is_some() {
        return Err("a key rotation is under way");
    }
    if st.trail.events.last().is_some_and(|e| e.seq != st.trail.events.len() as i64) {
        return Err("the audit trail has gaps");
    }
    Ok(())
}

/// Seals the index and the trail and replaces the snapshot in the file.
pub(super) fn write(st: &mut State) -> Result<(), String> {
    writable(st).map_err(str::to_string)?;
    let started = Instant::now();
    // Set first: a write that fails is tried again only after as many changes.
    st.snap.written_at = Some(st.trail.events.len());
    let header = Header {
        format: FORMAT,
        head_seq: st.trail.events.len() as i64,
        trail_digest: st.trail.digest.clone().finalize().into(),
        events: st.trail.events.iter().map(|e| (e.seq, e.id, e.at, e.kind.code())).collect(),
        last: st.trail.last.iter().map(|(&id, &place)| (id, place)).collect(),
    };
    let header = postcard::to_stdvec(&header).map_err(|e| format!("cannot encode: {e}"))?;
    let image = st.index.image();
    let mut payload = Vec::with_capacity(8 + header.len() + image.len());
    payload.extend_from_slice(&(header.len() as u64).to_le_bytes());
    payload.extend_from_slice(&header);
    payload.extend_from_slice(&image);
    drop(image);
    // Captures come first: never spend the space they need on a shortcut.
    let need = 2 * payload.len() as u64 + SPARE_BYTES;
    match free_bytes(st) {
        Some(free) if free < need => {
            return Err(format!(
                "only {} MB are free on the store's disk; it needs {} MB and captures come first",
                free >> 20,
                need >> 20
            ))
        }
        Some(_) => {}
        None => return Err("cannot tell how much space is free on the store's disk".into()),
    }
    let snap: [u8; 8] = new_id()[..8].try_into().expect("8 of 16 bytes");
    let n = payload.len().div_ceil(PART_BYTES);
    let mut parts = Vec::with_capacity(n);
    let mut counter = Vec::new();
    for (g, group) in payload.chunks(PART_BYTES * GROUP).enumerate() {
        let items = group
            .chunks(PART_BYTES)
            .enumerate()
            .map(|(i, chunk)| SealItem {
                field: Field::IndexSnapshot,
                row: part_row(&snap, g * GROUP + i, n),
                plain: chunk.to_vec(),
            })
            .collect();
        let (blobs, c) = st.kh.seal(items).map_err(|e| format!("the keyholder failed: {e}"))?;
        parts.extend(blobs);
        counter = c;
    }
    if parts.len() != n {
        return Err("the keyholder sealed too few parts".into());
    }
    drop(payload);
    st.db.write_index_snapshot(&snap, &parts, &counter).map_err(|e| format!("cannot store it: {e}"))?;
    st.snap.bytes = parts.iter().map(|p| p.len() as u64).sum();
    drop(parts);
    crate::sys::give_back_free_memory();
    st.snap.took = Some(started.elapsed());
    iai_policy::log!(
        "storer: wrote the index snapshot ({} memories, {} events, {:.1} MB sealed) in {} ms",
        st.index.len(),
        st.trail.events.len(),
        st.snap.bytes as f64 / 1e6,
        started.elapsed().as_millis()
    );
    Ok(())
}

/// Space left free beside what a snapshot's write takes (its parts, and the
/// old ones until the write commits).
const SPARE_BYTES: u64 = 64 << 20;

/// Bytes free to this user on the disk holding the store.
fn free_bytes(st: &State) -> Option<u64> {
    let db = std::fs::File::open(st.home.db()).ok()?;
    let s = nix::sys::statvfs::fstatvfs(&db).ok()?;
    Some(s.blocks_available().saturating_mul(s.fragment_size()))
}

/// Writes a snapshot if one is due; failures are logged (the next unlock
/// only takes longer).
pub(super) fn write_if_due(st: &mut State, at_exit: bool) {
    if due(st, at_exit) {
        match write(st) {
            Ok(()) => st.snap.error = None,
            Err(e) => {
                iai_policy::log!("storer: could not write the index snapshot: {e}");
                st.snap.error = Some(e);
            }
        }
    }
}

/// No snapshot from here on in this session, and none left in the file.
pub(super) fn stop(st: &mut State, why: &'static str) {
    st.snap.off = Some(why);
    match st.db.drop_index_snapshot() {
        Ok(()) => st.snap.bytes = 0,
        Err(e) => iai_policy::log!("storer: could not remove the index snapshot: {e}"),
    }
}

/// A forget removed the snapshot with the record.
pub(super) fn dropped(st: &mut State) {
    st.snap.bytes = 0;
    st.snap.written_at = None;
}
