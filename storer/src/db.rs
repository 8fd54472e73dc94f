//! The SQLite store. Every value derived from a memory is a sealed blob; the
//! columns in the clear are ids, times, tier, role, counters, edges between
//! record ids, event kinds, and the keyed duplicate tag (an HMAC, useless
//! without the key).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, Transaction};

pub const SCHEMA_VERSION: i64 = 1;
const COUNTER_KEY: &str = "seal_counter";
/// Set with every delete, cleared once the files are rebuilt.
const ERASE_PENDING: &str = "erase_pending";

/// Edge kinds in the `edges` table.
pub const EDGE_CONTRADICTS: i64 = 1;
pub const EDGE_REINFORCED: i64 = 2;

/// One stored record, still sealed.
pub struct Row {
    pub id: [u8; 16],
    pub created_at: i64,
    pub tier: i64,
    pub role: i64,
    pub reinforced: i64,
    pub body: Vec<u8>,
}

/// One audit-trail event, its detail sealed.
pub struct EventRow {
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
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS records(
                 id BLOB NOT NULL UNIQUE,
                 created_at INTEGER NOT NULL,
                 tier INTEGER NOT NULL,
                 role INTEGER NOT NULL,
                 pinned INTEGER NOT NULL DEFAULT 0,
                 reinforced INTEGER NOT NULL DEFAULT 0,
                 dup_tag BLOB NOT NULL UNIQUE,
                 body BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS edges(
                 src BLOB NOT NULL, dst BLOB NOT NULL, kind INTEGER NOT NULL, weight INTEGER NOT NULL,
                 PRIMARY KEY(src, dst, kind));
             CREATE INDEX IF NOT EXISTS edges_dst ON edges(dst);
             CREATE TABLE IF NOT EXISTS events(
                 id BLOB PRIMARY KEY, at INTEGER NOT NULL, kind INTEGER NOT NULL, detail BLOB NOT NULL);
             CREATE INDEX IF NOT EXISTS events_at ON events(at);
             CREATE TABLE IF NOT EXISTS cursors(id BLOB PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v BLOB NOT NULL);",
        )?;
        conn.execute("INSERT OR IGNORE INTO meta(k, v) VALUES('schema_version', ?1)", params![SCHEMA_VERSION])?;
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

    pub fn find_by_tag(&self, tag: &[u8; 32]) -> rusqlite::Result<Option<[u8; 16]>> {
        self.conn
            .query_row("SELECT id FROM records WHERE dup_tag = ?1", params![&tag[..]], |r| r.get::<_, [u8; 16]>(0))
            .optional()
    }

    pub fn exists(&self, id: &[u8; 16]) -> rusqlite::Result<bool> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM records WHERE id = ?1", params![&id[..]], |_| Ok(()))
            .optional()?
            .is_some())
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
            .query_row(
                "SELECT id, created_at, tier, role, reinforced, body FROM records WHERE id = ?1",
                params![&id[..]],
                row_from,
            )
            .optional()
    }

    /// Deletes a record and its edges so that none of its bytes remain in the
    /// database files: `secure_delete` zeroes the freed cells, and a truncating
    /// checkpoint empties the WAL that still held the old pages.
    ///
    /// Works on a full disk (the reserve is spent if it must be). Returns
    /// whether a row was deleted, and whether the checkpoint that erases
    /// the old pages ran; if it could not, it runs again on a later write.
    pub fn delete(&mut self, id: &[u8; 16], event: &EventRow, counter: &[u8]) -> rusqlite::Result<(bool, bool)> {
        let n = self.write_freeing(Some(counter), |tx| {
            tx.execute("DELETE FROM edges WHERE src = ?1 OR dst = ?1", params![&id[..]])?;
            insert_event(tx, event)?;
            // Crash-safe erasure: if the process dies before the erase below,
            // the next start finds this and erases first.
            tx.execute("INSERT OR REPLACE INTO meta(k, v) VALUES(?1, 1)", params![ERASE_PENDING])?;
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

    /// (new, old) pairs: `new` contradicts, and so supersedes, `old`.
    pub fn contradictions(&self) -> rusqlite::Result<Vec<([u8; 16], [u8; 16])>> {
        let mut stmt = self.conn.prepare("SELECT src, dst FROM edges WHERE kind = ?1 ORDER BY rowid")?;
        let rows = stmt.query_map(params![EDGE_CONTRADICTS], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    /// Newest first.
    pub fn events(&self, since: i64, kind: Option<i64>, limit: u32) -> rusqlite::Result<Vec<EventRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, at, kind, detail FROM events WHERE at >= ?1 AND (?2 IS NULL OR kind = ?2)
             ORDER BY at DESC, id DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![since, kind, limit], |r| {
            Ok(EventRow { id: r.get(0)?, at: r.get(1)?, kind: r.get(2)?, detail: r.get(3)? })
        })?;
        rows.collect()
    }

    /// A sealed cursor value by its keyed id.
    pub fn cursor(&self, id: &[u8; 16]) -> rusqlite::Result<Option<Vec<u8>>> {
        self.conn.query_row("SELECT value FROM cursors WHERE id = ?1", params![&id[..]], |r| r.get(0)).optional()
    }

    pub fn event_count(&self) -> rusqlite::Result<u64> {
        self.conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))
    }

    /// Visits every record in id (time) order, `batch` rows at a time.
    pub fn for_each_batch<E>(&self, batch: usize, mut f: impl FnMut(Vec<Row>) -> Result<(), E>) -> Result<(), E>
    where
        E: From<rusqlite::Error>,
    {
        let mut stmt =
            self.conn.prepare("SELECT id, created_at, tier, role, reinforced, body FROM records ORDER BY id")?;
        let mut rows = stmt.query([])?;
        let mut buf = Vec::with_capacity(batch);
        while let Some(r) = rows.next()? {
            buf.push(row_from(r)?);
            if buf.len() == batch {
                f(std::mem::take(&mut buf))?;
            }
        }
        if !buf.is_empty() {
            f(buf)?;
        }
        Ok(())
    }
}

pub fn insert_record(tx: &Transaction<'_>, row: &Row, dup_tag: &[u8; 32]) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO records(id, created_at, tier, role, reinforced, dup_tag, body) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![&row.id[..], row.created_at, row.tier, row.role, row.reinforced, &dup_tag[..], row.body],
    )?;
    Ok(())
}

pub fn insert_event(tx: &Transaction<'_>, e: &EventRow) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO events(id, at, kind, detail) VALUES(?1, ?2, ?3, ?4)",
        params![&e.id[..], e.at, e.kind, e.detail],
    )?;
    Ok(())
}

pub fn set_cursor(tx: &Transaction<'_>, id: &[u8; 16], sealed: &[u8]) -> rusqlite::Result<()> {
    tx.execute("INSERT OR REPLACE INTO cursors(id, value) VALUES(?1, ?2)", params![&id[..], sealed])?;
    Ok(())
}

/// Adds `by` to a record's reinforcement; returns the new value.
pub fn reinforce(tx: &Transaction<'_>, id: &[u8; 16], by: i64) -> rusqlite::Result<i64> {
    tx.query_row(
        "UPDATE records SET reinforced = reinforced + ?2 WHERE id = ?1 RETURNING reinforced",
        params![&id[..], by],
        |r| r.get(0),
    )
}

/// Adds `by` to the weight of an edge, creating it.
pub fn add_edge(tx: &Transaction<'_>, src: &[u8; 16], dst: &[u8; 16], kind: i64, by: i64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO edges(src, dst, kind, weight) VALUES(?1, ?2, ?3, ?4)
         ON CONFLICT(src, dst, kind) DO UPDATE SET weight = weight + ?4",
        params![&src[..], &dst[..], kind, by],
    )?;
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

fn row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        id: r.get(0)?,
        created_at: r.get(1)?,
        tier: r.get(2)?,
        role: r.get(3)?,
        reinforced: r.get(4)?,
        body: r.get(5)?,
    })
}
