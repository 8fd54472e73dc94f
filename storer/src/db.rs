//! The SQLite store (format 2). A stolen copy of the files shows row
//! numbers, random ids, sizes and sealed blobs, nothing more: a record's
//! time, tier, role, session and project live in its sealed body, what
//! changes after capture (reinforcement, superseded by) in its sealed
//! state, and every event's time and kind in its sealed detail. The keyed
//! duplicate tag (an HMAC, useless without the key) is the one lookup column.
//! Format 1 kept tier, role, times, counters and edges in the clear;
//! `daemon::upgrade` converts it once, at unlock.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, Transaction};

pub const SCHEMA_VERSION: i64 = 2;
const COUNTER_KEY: &str = "seal_counter";
const EVENT_HEAD_KEY: &str = "event_head";
/// Set with every delete, cleared once the files are rebuilt.
const ERASE_PENDING: &str = "erase_pending";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS records(
         seq INTEGER PRIMARY KEY,
         id BLOB NOT NULL UNIQUE,
         dup_tag BLOB NOT NULL,
         body BLOB NOT NULL,
         state BLOB NOT NULL);
     CREATE INDEX IF NOT EXISTS records_dup_tag ON records(dup_tag);
     CREATE TABLE IF NOT EXISTS events(
         seq INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, detail BLOB NOT NULL);
     CREATE TABLE IF NOT EXISTS cursors(id BLOB PRIMARY KEY, value BLOB NOT NULL);
     CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v BLOB NOT NULL);";

/// One stored record, still sealed. `seq` is its place in capture order.
pub struct Row {
    pub seq: i64,
    pub id: [u8; 16],
    pub dup_tag: Vec<u8>,
    pub body: Vec<u8>,
    pub state: Vec<u8>,
}

/// One audit-trail event, its time, kind and records sealed in `detail`.
pub struct EventRow {
    pub seq: i64,
    pub id: [u8; 16],
    pub detail: Vec<u8>,
}

/// A format-1 record, as it was stored (only the upgrade reads these).
pub struct RowV1 {
    pub id: [u8; 16],
    pub created_at: i64,
    pub tier: i64,
    pub role: i64,
    pub reinforced: i64,
    pub dup_tag: Vec<u8>,
    pub body: Vec<u8>,
}

/// A format-1 event.
pub struct EventRowV1 {
    pub id: [u8; 16],
    pub at: i64,
    pub kind: i64,
    pub detail: Vec<u8>,
}

/// Bytes kept in reserve beside the database: on a full disk they are given
/// back so that `forget` (and the checkpoint that erases what it removed)
/// still works; larger than the biggest record a forget has to overwrite.
pub const RESERVE_BYTES: u64 = 4 << 20;
/// How often a missing reserve is tried again while space is short.
const RESERVE_RETRY: Duration = Duration::from_secs(60);

pub struct Db {
    conn: Connection,
    reserve: PathBuf,
    reserve_present: bool,
    reserve_tried: Option<Instant>,
    full: bool,
}

/// True when SQLite failed because the disk (or quota) is full.
pub fn is_disk_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

impl Db {
    /// Opens (creating if needed) the database in WAL mode with full fsync:
    /// a capture is acknowledged only after it is on disk.
    pub fn open(path: &Path) -> rusqlite::Result<Db> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Deleted content is overwritten, not left in free pages.
        conn.pragma_update(None, "secure_delete", "ON")?;
        // Sorts and temporary tables never touch a file.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        let has_meta: bool =
            conn.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'", [], |r| {
                r.get::<_, i64>(0).map(|n| n > 0)
            })?;
        let version: Option<i64> = if has_meta {
            conn.query_row("SELECT v FROM meta WHERE k = 'schema_version'", [], |r| r.get(0)).optional()?
        } else {
            None
        };
        match version {
            // A new store, or one that never finished its first open.
            None => {
                let tx = conn.unchecked_transaction()?;
                tx.execute_batch(SCHEMA)?;
                tx.execute("INSERT OR REPLACE INTO meta(k, v) VALUES('schema_version', ?1)", params![SCHEMA_VERSION])?;
                tx.commit()?;
            }
            // Upgraded by the storer once the keyholder is there.
            Some(1) | Some(SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
                    Some(format!(
                        "the store is in format {v}, which this version of iai-mcp does not know \
                         (it knows formats 1 and {SCHEMA_VERSION}); use a newer iai-mcp"
                    )),
                ))
            }
        }
        // A forget whose erasure a crash interrupted is finished first.
        let pending: Option<i64> =
            conn.query_row("SELECT v FROM meta WHERE k = ?1", params![ERASE_PENDING], |r| r.get(0)).optional()?;
        let reserve = path.with_file_name("space-reserve");
        let mut db = Db { conn, reserve, reserve_present: false, reserve_tried: None, full: false };
        if pending.is_some() {
            db.erase()?;
        }
        db.replenish_reserve();
        Ok(db)
    }

    /// The store's format: 1 until `daemon::upgrade` has run, then 2.
    pub fn version(&self) -> rusqlite::Result<i64> {
        self.conn.query_row("SELECT v FROM meta WHERE k = 'schema_version'", [], |r| r.get(0))
    }

    /// Whether the last write failed because the disk is full.
    pub fn disk_full(&self) -> bool {
        self.full
    }

    /// Writes the reserve file if it is missing (at most once a minute while
    /// that fails); a failure only means the disk is still short of space.
    fn replenish_reserve(&mut self) {
        if self.reserve_present || self.reserve_tried.is_some_and(|t| t.elapsed() < RESERVE_RETRY) {
            return;
        }
        self.reserve_tried = Some(Instant::now());
        let ok = match std::fs::metadata(&self.reserve) {
            Ok(m) if m.len() == RESERVE_BYTES => true,
            _ => write_zeros(&self.reserve, RESERVE_BYTES).is_ok(),
        };
        if !ok {
            let _ = std::fs::remove_file(&self.reserve);
        }
        self.reserve_present = ok;
    }

    /// Gives the reserve back to the filesystem; true if there was one.
    fn release_reserve(&mut self) -> bool {
        let released = self.reserve_present && std::fs::remove_file(&self.reserve).is_ok();
        self.reserve_present = false;
        self.reserve_tried = Some(Instant::now());
        released
    }

    /// [`Db::write`] for operations that must work on a full disk (they free
    /// space, like forget): on SQLITE_FULL the reserve is released and the
    /// transaction tried once more.
    pub fn write_freeing<T>(
        &mut self,
        counter: Option<&[u8]>,
        f: impl Fn(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        match self.write(counter, &f) {
            Err(e) if is_disk_full(&e) && self.release_reserve() => self.write(counter, f),
            other => other,
        }
    }

    pub fn counter(&self) -> rusqlite::Result<Option<Vec<u8>>> {
        self.conn.query_row("SELECT v FROM meta WHERE k = ?1", params![COUNTER_KEY], |r| r.get(0)).optional()
    }

    /// Records whose tag column says they hold this text. The column is not
    /// authenticated: callers check each candidate's sealed body.
    pub fn find_by_tag(&self, tag: &[u8; 32]) -> rusqlite::Result<Vec<([u8; 16], Vec<u8>)>> {
        let mut stmt = self.conn.prepare_cached("SELECT id, body FROM records WHERE dup_tag = ?1 ORDER BY seq")?;
        let rows = stmt.query_map(params![&tag[..]], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    /// The sealed newest event, if any event was ever written.
    pub fn event_head(&self) -> rusqlite::Result<Option<Vec<u8>>> {
        self.conn.query_row("SELECT v FROM meta WHERE k = ?1", params![EVENT_HEAD_KEY], |r| r.get(0)).optional()
    }

    /// Up to `limit` records after place `after` in capture order.
    pub fn records_after(&self, after: i64, limit: u32) -> rusqlite::Result<Vec<Row>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, id, dup_tag, body, state FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
        let rows = stmt.query_map(params![after, limit], row_from)?;
        rows.collect()
    }

    /// The next free place in the audit trail.
    pub fn next_event_seq(&self) -> rusqlite::Result<i64> {
        self.conn.query_row("SELECT coalesce(max(seq), 0) + 1 FROM events", [], |r| r.get(0))
    }

    /// The next free record number.
    pub fn next_record_seq(&self) -> rusqlite::Result<i64> {
        self.conn.query_row("SELECT coalesce(max(seq), 0) + 1 FROM records", [], |r| r.get(0))
    }

    /// Runs `f` in one transaction and stores the keyholder's newest counter
    /// with it; committed (fsynced) before this returns.
    pub fn write<T>(
        &mut self,
        counter: Option<&[u8]>,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let result = self.transaction(counter, f);
        match &result {
            Ok(_) => {
                self.full = false;
                self.replenish_reserve();
            }
            Err(e) => self.full = is_disk_full(e),
        }
        result
    }

    fn transaction<T>(
        &mut self,
        counter: Option<&[u8]>,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let tx = self.conn.transaction()?;
        let out = f(&tx)?;
        if let Some(c) = counter {
            tx.execute("INSERT OR REPLACE INTO meta(k, v) VALUES(?1, ?2)", params![COUNTER_KEY, c])?;
        }
        tx.commit()?;
        Ok(out)
    }

    pub fn get(&self, id: &[u8; 16]) -> rusqlite::Result<Option<Row>> {
        self.conn
            .query_row("SELECT seq, id, dup_tag, body, state FROM records WHERE id = ?1", params![&id[..]], row_from)
            .optional()
    }

    /// Deletes a record so that none of its bytes remain in the
    /// database files: `secure_delete` zeroes the freed cells, and a truncating
    /// checkpoint empties the WAL that still held the old pages.
    ///
    /// Works on a full disk (the reserve is spent if it must be). Returns
    /// whether a row was deleted, and whether the checkpoint that erases
    /// the old pages ran; if it could not, it runs again on a later write.
    pub fn delete(
        &mut self,
        id: &[u8; 16],
        event: &EventRow,
        head: &[u8],
        counter: &[u8],
    ) -> rusqlite::Result<(bool, bool)> {
        let n = self.write_freeing(Some(counter), |tx| {
            insert_event(tx, event, head)?;
            // Crash-safe erasure: if the process dies before the erase below,
            // the next start finds this and erases first.
            tx.execute("INSERT OR REPLACE INTO meta(k, v) VALUES(?1, 1)", params![ERASE_PENDING])?;
            // The index snapshot holds the record's words: it goes too, and
            // is written again without them.
            drop_index_snapshot(tx)?;
            tx.execute("DELETE FROM records WHERE id = ?1", params![&id[..]])
        })?;
        let erased = match self.erase() {
            Ok(()) => true,
            Err(e) if is_disk_full(&e) && self.release_reserve() => self.erase().is_ok(),
            Err(_) => false,
        };
        if erased {
            // The truncated WAL gave its space back: take the reserve again
            // now, so that the next forget on a still-full disk works too.
            self.reserve_tried = None;
            self.replenish_reserve();
        }
        Ok((n > 0, erased))
    }

    /// Rewrites the whole database file and empties the WAL, so that no byte
    /// of a deleted row survives anywhere in the files. `secure_delete` zeroes
    /// a deleted cell, but not the stale copies that earlier page splits and
    /// merges left in the unused space of other pages; only a rebuild clears
    /// those. Its cost grows with the store (see BENCHMARKS.md).
    pub fn erase(&mut self) -> rusqlite::Result<()> {
        self.conn.execute_batch("VACUUM")?;
        self.checkpoint()?;
        self.conn.execute("DELETE FROM meta WHERE k = ?1", params![ERASE_PENDING])?;
        self.checkpoint()
    }

    /// Copies the WAL into the database file and empties it. A checkpoint
    /// that cannot finish (busy, full disk) leaves the WAL for the next one.
    pub fn checkpoint(&self) -> rusqlite::Result<()> {
        let busy: i64 = self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy != 0 {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                Some("the checkpoint could not finish".into()),
            ));
        }
        Ok(())
    }

    /// One event's sealed detail by its place in the trail.
    pub fn event(&self, seq: i64) -> rusqlite::Result<Option<EventRow>> {
        self.conn
            .query_row("SELECT seq, id, detail FROM events WHERE seq = ?1", params![seq], |r| {
                Ok(EventRow { seq: r.get(0)?, id: r.get(1)?, detail: r.get(2)? })
            })
            .optional()
    }

    /// A sealed cursor value by its keyed id.
    pub fn cursor(&self, id: &[u8; 16]) -> rusqlite::Result<Option<Vec<u8>>> {
        self.conn.query_row("SELECT value FROM cursors WHERE id = ?1", params![&id[..]], |r| r.get(0)).optional()
    }

    /// Visits every record in capture order, `batch` rows at a time.
    pub fn for_each_batch<E>(&self, batch: usize, f: impl FnMut(Vec<Row>) -> Result<(), E>) -> Result<(), E>
    where
        E: From<rusqlite::Error>,
    {
        batches(&self.conn, "SELECT seq, id, dup_tag, body, state FROM records ORDER BY seq", batch, row_from, f)
    }

    /// Visits every event in trail order, `batch` rows at a time.
    pub fn for_each_event_batch<E>(&self, batch: usize, f: impl FnMut(Vec<EventRow>) -> Result<(), E>) -> Result<(), E>
    where
        E: From<rusqlite::Error>,
    {
        batches(&self.conn, "SELECT seq, id, detail FROM events ORDER BY seq", batch, event_from, f)
    }

    /// The events after place `seq`, in trail order.
    pub fn events_after(&self, seq: i64) -> rusqlite::Result<Vec<EventRow>> {
        let mut stmt = self.conn.prepare("SELECT seq, id, detail FROM events WHERE seq > ?1 ORDER BY seq")?;
        let rows = stmt.query_map(params![seq], event_from)?;
        rows.collect()
    }

    /// Visits every event's (seq, id, detail) in trail order without copying them.
    pub fn for_each_event_ref(&self, mut f: impl FnMut(i64, &[u8], &[u8])) -> rusqlite::Result<()> {
        let mut stmt = self.conn.prepare("SELECT seq, id, detail FROM events ORDER BY seq")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            f(r.get(0)?, blob_ref(r, 1), blob_ref(r, 2));
        }
        Ok(())
    }

    /// Visits every record's (seq, id, dup_tag, body, state) in capture
    /// order without copying them.
    pub fn for_each_record_ref(&self, mut f: impl FnMut(i64, &[u8], &[u8], &[u8], &[u8])) -> rusqlite::Result<()> {
        let mut stmt = self.conn.prepare("SELECT seq, id, dup_tag, body, state FROM records ORDER BY seq")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            f(r.get(0)?, blob_ref(r, 1), blob_ref(r, 2), blob_ref(r, 3), blob_ref(r, 4));
        }
        Ok(())
    }

    /// Records by their place in capture order (those still there).
    pub fn records_at(&self, seqs: &[i64]) -> rusqlite::Result<Vec<Row>> {
        let mut stmt = self.conn.prepare_cached("SELECT seq, id, dup_tag, body, state FROM records WHERE seq = ?1")?;
        let mut out = Vec::with_capacity(seqs.len());
        for &seq in seqs {
            if let Some(row) = stmt.query_row(params![seq], row_from).optional()? {
                out.push(row);
            }
        }
        Ok(out)
    }

    /// Replaces the format-1 tables by format-2 ones filled by `fill`, all in
    /// one transaction (a crash leaves format 1 untouched), then rebuilds the
    /// files so that no byte of the old clear columns remains. `fill` returns
    /// the keyholder's newest counter.
    pub fn upgrade<E>(&mut self, fill: impl FnOnce(&Transaction<'_>) -> Result<Option<Vec<u8>>, E>) -> Result<(), E>
    where
        E: From<rusqlite::Error>,
    {
        let tx = self.conn.transaction()?;
        tx.execute_batch(
            "ALTER TABLE records RENAME TO records_v1;
             ALTER TABLE events RENAME TO events_v1;
             DROP INDEX IF EXISTS events_at;",
        )?;
        tx.execute_batch(SCHEMA)?;
        let counter = fill(&tx)?;
        tx.execute_batch("DROP TABLE records_v1; DROP TABLE events_v1; DROP TABLE IF EXISTS edges;")?;
        tx.execute("INSERT OR REPLACE INTO meta(k, v) VALUES('schema_version', ?1)", params![SCHEMA_VERSION])?;
        if let Some(c) = counter {
            tx.execute("INSERT OR REPLACE INTO meta(k, v) VALUES(?1, ?2)", params![COUNTER_KEY, c])?;
        }
        tx.execute("INSERT OR REPLACE INTO meta(k, v) VALUES(?1, 1)", params![ERASE_PENDING])?;
        tx.commit()?;
        self.erase()?;
        Ok(())
    }
}

/// Writes a consistent copy of the database at `src` to the new file `out`
/// (`VACUUM INTO`: one read transaction, so a writer carries on meanwhile;
/// only live rows are copied, no free pages, no WAL). Values stay sealed.
pub fn snapshot(src: &Path, out: &Path) -> rusqlite::Result<()> {
    let conn = Connection::open_with_flags(src, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let out = out.to_str().ok_or_else(|| rusqlite::Error::InvalidPath(out.to_path_buf()))?;
    conn.execute("VACUUM INTO ?1", params![out])?;
    Ok(())
}

/// What a database file holds, checked without changing it: its format and
/// number of records, after SQLite's own integrity check.
pub fn inspect(path: &Path) -> Result<(i64, u64), String> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| e.to_string())?;
    let check: String =
        conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(|e| format!("not a database: {e}"))?;
    if check != "ok" {
        return Err(format!("the database is damaged: {check}"));
    }
    let version: i64 = conn
        .query_row("SELECT v FROM meta WHERE k = 'schema_version'", [], |r| r.get(0))
        .map_err(|_| "not an iai-mcp store (no format version)".to_string())?;
    if !(1..=SCHEMA_VERSION).contains(&version) {
        return Err(format!("store format {version} is not one this iai-mcp knows"));
    }
    let records: u64 = conn
        .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .map_err(|e| format!("no records table: {e}"))?;
    Ok((version, records))
}

/// Format-1 records in their old (id, that is time) order, during the upgrade.
pub fn for_each_v1_batch<E>(
    conn: &Connection,
    batch: usize,
    f: impl FnMut(Vec<RowV1>) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<rusqlite::Error>,
{
    let read = |r: &rusqlite::Row<'_>| {
        Ok(RowV1 {
            id: r.get(0)?,
            created_at: r.get(1)?,
            tier: r.get(2)?,
            role: r.get(3)?,
            reinforced: r.get(4)?,
            dup_tag: r.get(5)?,
            body: r.get(6)?,
        })
    };
    let sql = "SELECT id, created_at, tier, role, reinforced, dup_tag, body FROM records_v1 ORDER BY id";
    batches(conn, sql, batch, read, f)
}

/// Every format-1 record id, during the upgrade.
pub fn v1_ids(conn: &Connection) -> rusqlite::Result<Vec<[u8; 16]>> {
    let mut stmt = conn.prepare("SELECT id FROM records_v1")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    rows.collect()
}

/// Every format-1 event, oldest first, during the upgrade.
pub fn v1_events(conn: &Connection) -> rusqlite::Result<Vec<EventRowV1>> {
    let mut stmt = conn.prepare("SELECT id, at, kind, detail FROM events_v1 ORDER BY at, id")?;
    let rows =
        stmt.query_map([], |r| Ok(EventRowV1 { id: r.get(0)?, at: r.get(1)?, kind: r.get(2)?, detail: r.get(3)? }))?;
    rows.collect()
}

/// Format-1 contradiction edges as (new, old), oldest first, during the upgrade.
pub fn v1_contradictions(conn: &Connection) -> rusqlite::Result<Vec<([u8; 16], [u8; 16])>> {
    let mut stmt = conn.prepare("SELECT src, dst FROM edges WHERE kind = 1 ORDER BY rowid")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Runs `sql` and hands its rows to `f` in batches of `batch`.
fn batches<T, E>(
    conn: &Connection,
    sql: &str,
    batch: usize,
    read: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    mut f: impl FnMut(Vec<T>) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<rusqlite::Error>,
{
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query([])?;
    let mut buf = Vec::with_capacity(batch);
    while let Some(r) = rows.next()? {
        buf.push(read(r)?);
        if buf.len() == batch {
            f(std::mem::take(&mut buf))?;
        }
    }
    if !buf.is_empty() {
        f(buf)?;
    }
    Ok(())
}

/// Where a sealed value lives (key rotation visits each of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// `meta.event_head`.
    Head,
    /// `cursors.value` of this id.
    Cursor([u8; 16]),
    /// `events.detail` at this place in the trail (the id is the event's).
    Event { seq: i64, id: [u8; 16] },
    /// `records.body` of this row.
    Body { seq: i64, id: [u8; 16] },
    /// `records.state` of this row.
    State { seq: i64, id: [u8; 16] },
}

/// How far a scan for values under one key has come: the head and cursors
/// first, then events, then records, each in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Scan {
    #[default]
    Start,
    Events(i64),
    Records(i64),
    Done,
}

/// Sealed values and where they live.
pub type SealedValues = Vec<(Place, Vec<u8>)>;
/// A record row's sequence number, id, body and state.
type RecordBlobs = (i64, Vec<u8>, Vec<u8>, Vec<u8>);

/// The blobs' key-id bytes (after the version byte), as SQL.
const KEY_OF: &str = "substr({}, 2, 16) = ?1";

fn under(column: &str) -> String {
    KEY_OF.replace("{}", column)
}

fn id16(v: Vec<u8>) -> [u8; 16] {
    <[u8; 16]>::try_from(v.as_slice()).unwrap_or([0; 16])
}

impl Db {
    /// How many sealed values are under the data key `key` (the
    /// keyholder's own counter is not counted: every write replaces it).
    pub fn count_under(&self, key: &[u8; 16]) -> rusqlite::Result<u64> {
        let sql = format!(
            "SELECT (SELECT count(*) FROM records WHERE {body}) + (SELECT count(*) FROM records WHERE {state})
                  + (SELECT count(*) FROM events WHERE {detail}) + (SELECT count(*) FROM cursors WHERE {value})
                  + (SELECT count(*) FROM meta WHERE k = ?2 AND {v})",
            body = under("body"),
            state = under("state"),
            detail = under("detail"),
            value = under("value"),
            v = under("v"),
        );
        self.conn.query_row(&sql, params![&key[..], EVENT_HEAD_KEY], |r| r.get::<_, i64>(0)).map(|n| n as u64)
    }

    /// Whether the keyholder's stored counter is sealed under `key`.
    pub fn counter_under(&self, key: &[u8; 16]) -> rusqlite::Result<bool> {
        Ok(self.counter()?.is_some_and(|c| c.get(1..17) == Some(&key[..])))
    }

    /// Up to about `limit` values sealed under `key`, from `from` on, and
    /// where the next scan starts.
    pub fn sealed_under(&self, key: &[u8; 16], from: Scan, limit: u32) -> rusqlite::Result<(SealedValues, Scan)> {
        let k = &key[..];
        let mut out = Vec::new();
        let mut scan = from;
        while out.len() < limit as usize {
            let left = limit as usize - out.len();
            scan = match scan {
                Scan::Start => {
                    if let Some(head) = self.event_head()?.filter(|h| h.get(1..17) == Some(k)) {
                        out.push((Place::Head, head));
                    }
                    let mut stmt =
                        self.conn.prepare(&format!("SELECT id, value FROM cursors WHERE {}", under("value")))?;
                    for c in stmt.query_map(params![k], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)))? {
                        let (id, value) = c?;
                        out.push((Place::Cursor(id16(id)), value));
                    }
                    Scan::Events(0)
                }
                Scan::Events(after) => {
                    let mut stmt = self.conn.prepare_cached(&format!(
                        "SELECT seq, id, detail FROM events WHERE seq > ?2 AND {} ORDER BY seq LIMIT ?3",
                        under("detail")
                    ))?;
                    let rows: Vec<(i64, Vec<u8>, Vec<u8>)> = stmt
                        .query_map(params![k, after, left as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                        .collect::<rusqlite::Result<_>>()?;
                    let last = rows.last().map(|r| r.0);
                    for (seq, id, detail) in rows {
                        out.push((Place::Event { seq, id: id16(id) }, detail));
                    }
                    match last {
                        Some(seq) if out.len() >= limit as usize => Scan::Events(seq),
                        _ => Scan::Records(0),
                    }
                }
                Scan::Records(after) => {
                    let mut stmt = self.conn.prepare_cached(&format!(
                        "SELECT seq, id, body, state FROM records WHERE seq > ?2 AND ({} OR {}) ORDER BY seq LIMIT ?3",
                        under("body"),
                        under("state")
                    ))?;
                    let rows: Vec<RecordBlobs> = stmt
                        .query_map(params![k, after, left.div_ceil(2) as i64], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                        })?
                        .collect::<rusqlite::Result<_>>()?;
                    let full = rows.len() == left.div_ceil(2);
                    let last = rows.last().map(|r| r.0);
                    for (seq, id, body, state) in rows {
                        let id = id16(id);
                        if body.get(1..17) == Some(k) {
                            out.push((Place::Body { seq, id }, body));
                        }
                        if state.get(1..17) == Some(k) {
                            out.push((Place::State { seq, id }, state));
                        }
                    }
                    match last {
                        Some(seq) if full => Scan::Records(seq),
                        _ => Scan::Done,
                    }
                }
                Scan::Done => break,
            };
        }
        Ok((out, scan))
    }

    /// The sealed parts of the index snapshot, in order (none when there is
    /// no snapshot, or no table for one yet).
    pub fn index_snapshot(&self) -> rusqlite::Result<Vec<SnapshotPart>> {
        let exists: bool = self.conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'index_snapshot'",
            [],
            |r| r.get(0),
        )?;
        if !exists {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare("SELECT part, snap, blob FROM index_snapshot ORDER BY part")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect()
    }

    /// Replaces the index snapshot by `parts` (sealed) of snapshot `snap`, in one transaction.
    pub fn write_index_snapshot(&mut self, snap: &[u8], parts: &[Vec<u8>], counter: &[u8]) -> rusqlite::Result<()> {
        self.write(Some(counter), |tx| {
            // Dropped, not emptied: whatever shape an older one had.
            drop_index_snapshot(tx)?;
            tx.execute_batch(INDEX_SNAPSHOT_TABLE)?;
            let mut insert = tx.prepare("INSERT INTO index_snapshot(part, snap, blob) VALUES(?1, ?2, ?3)")?;
            for (i, p) in parts.iter().enumerate() {
                insert.execute(params![i as i64, snap, p])?;
            }
            Ok(())
        })
    }

    /// Removes the index snapshot (before a forget's erasure, or a rotation).
    pub fn drop_index_snapshot(&mut self) -> rusqlite::Result<()> {
        self.write(None, drop_index_snapshot)
    }

    /// Keeps the current counter blob (a rotation with nothing left to
    /// re-seal still replaces the old key's counter).
    pub fn set_counter(&mut self, counter: &[u8]) -> rusqlite::Result<()> {
        self.write(Some(counter), |_| Ok(()))
    }
}

/// One part of the index snapshot: its number, the snapshot's id, the sealed bytes.
pub type SnapshotPart = (i64, Vec<u8>, Vec<u8>);

/// The table of the sealed index snapshot, made on its first write (so that
/// opening a store never needs to write, even on a full disk).
const INDEX_SNAPSHOT_TABLE: &str =
    "CREATE TABLE index_snapshot(part INTEGER PRIMARY KEY, snap BLOB NOT NULL, blob BLOB NOT NULL)";

/// Removes the index snapshot inside a write.
pub fn drop_index_snapshot(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch("DROP TABLE IF EXISTS index_snapshot")
}

/// Puts a re-sealed value in its place.
pub fn replace_sealed(tx: &Transaction<'_>, place: &Place, blob: &[u8]) -> rusqlite::Result<()> {
    match place {
        Place::Head => set_event_head(tx, blob),
        Place::Cursor(id) => {
            tx.prepare_cached("UPDATE cursors SET value = ?2 WHERE id = ?1")?.execute(params![&id[..], blob])?;
            Ok(())
        }
        Place::Event { seq, .. } => {
            tx.prepare_cached("UPDATE events SET detail = ?2 WHERE seq = ?1")?.execute(params![seq, blob])?;
            Ok(())
        }
        Place::Body { seq, .. } => {
            tx.prepare_cached("UPDATE records SET body = ?2 WHERE seq = ?1")?.execute(params![seq, blob])?;
            Ok(())
        }
        Place::State { seq, .. } => {
            tx.prepare_cached("UPDATE records SET state = ?2 WHERE seq = ?1")?.execute(params![seq, blob])?;
            Ok(())
        }
    }
}

/// Inserts a record with the sealed `state` (`row.state` is not used).
pub fn insert_record(tx: &Transaction<'_>, row: &Row, state: &[u8]) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT INTO records(seq, id, dup_tag, body, state) VALUES(?1, ?2, ?3, ?4, ?5)")?
        .execute(params![row.seq, &row.id[..], row.dup_tag, row.body, state])?;
    Ok(())
}

/// Replaces a record's sealed state.
pub fn set_state(tx: &Transaction<'_>, id: &[u8; 16], state: &[u8]) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE records SET state = ?2 WHERE id = ?1")?.execute(params![&id[..], state])?;
    Ok(())
}

/// Appends an event to the trail and moves the sealed head to it.
pub fn insert_event(tx: &Transaction<'_>, e: &EventRow, head: &[u8]) -> rusqlite::Result<()> {
    insert_event_row(tx, e)?;
    set_event_head(tx, head)
}

/// Appends an event without moving the head (the upgrade moves it once).
pub fn insert_event_row(tx: &Transaction<'_>, e: &EventRow) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT INTO events(seq, id, detail) VALUES(?1, ?2, ?3)")?.execute(params![
        e.seq,
        &e.id[..],
        e.detail
    ])?;
    Ok(())
}

pub fn set_event_head(tx: &Transaction<'_>, head: &[u8]) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT OR REPLACE INTO meta(k, v) VALUES(?1, ?2)")?.execute(params![EVENT_HEAD_KEY, head])?;
    Ok(())
}

pub fn set_cursor(tx: &Transaction<'_>, id: &[u8; 16], sealed: &[u8]) -> rusqlite::Result<()> {
    tx.execute("INSERT OR REPLACE INTO cursors(id, value) VALUES(?1, ?2)", params![&id[..], sealed])?;
    Ok(())
}

/// Creates `path` (0600) holding `len` zero bytes, on disk (fsynced).
fn write_zeros(path: &Path, len: u64) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    let chunk = [0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

/// Reads a record row. The file may have been edited: a column of the wrong
/// type reads as empty, so the row fails its checks instead of the unlock.
fn event_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    let id = r.get::<_, Vec<u8>>(1).ok().and_then(|v| <[u8; 16]>::try_from(v.as_slice()).ok());
    let detail = if id.is_some() { r.get::<_, Vec<u8>>(2).unwrap_or_default() } else { Vec::new() };
    Ok(EventRow { seq: r.get(0)?, id: id.unwrap_or([0; 16]), detail })
}

/// A column's bytes in place (empty when it is not a blob).
fn blob_ref<'a>(r: &'a rusqlite::Row<'_>, i: usize) -> &'a [u8] {
    r.get_ref(i).ok().and_then(|v| v.as_blob().ok()).unwrap_or_default()
}

fn row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let bytes = |i: usize| r.get::<_, Vec<u8>>(i).unwrap_or_default();
    let (id, body) = match <[u8; 16]>::try_from(bytes(1).as_slice()) {
        Ok(id) => (id, bytes(3)),
        Err(_) => ([0; 16], Vec::new()),
    };
    Ok(Row { seq: r.get(0)?, id, dup_tag: bytes(2), body, state: bytes(4) })
}
