//! The SQLite store. Every value derived from a memory is a sealed blob; the
//! columns in the clear are ids, times, tier, role, counters and the keyed
//! duplicate tag (an HMAC, useless without the key).

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

pub const SCHEMA_VERSION: i64 = 1;
const COUNTER_KEY: &str = "seal_counter";

/// One stored record, still sealed.
pub struct Row {
    pub id: [u8; 16],
    pub created_at: i64,
    pub tier: i64,
    pub role: i64,
    pub reinforced: i64,
    pub body: Vec<u8>,
}

pub struct Db {
    conn: Connection,
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
             CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v BLOB NOT NULL);",
        )?;
        conn.execute(
            "INSERT OR IGNORE INTO meta(k, v) VALUES('schema_version', ?1)",
            params![SCHEMA_VERSION],
        )?;
        Ok(Db { conn })
    }

    pub fn counter(&self) -> rusqlite::Result<Option<Vec<u8>>> {
        self.conn
            .query_row(
                "SELECT v FROM meta WHERE k = ?1",
                params![COUNTER_KEY],
                |r| r.get(0),
            )
            .optional()
    }

    pub fn find_by_tag(&self, tag: &[u8; 32]) -> rusqlite::Result<Option<[u8; 16]>> {
        self.conn
            .query_row(
                "SELECT id FROM records WHERE dup_tag = ?1",
                params![&tag[..]],
                |r| r.get::<_, [u8; 16]>(0),
            )
            .optional()
    }

    /// Adds `by` to a record's reinforcement; returns the new value.
    pub fn reinforce(&self, id: &[u8; 16], by: i64) -> rusqlite::Result<i64> {
        self.conn.query_row(
            "UPDATE records SET reinforced = reinforced + ?2 WHERE id = ?1 RETURNING reinforced",
            params![&id[..], by],
            |r| r.get(0),
        )
    }

    /// Inserts a record and the keyholder's newest counter in one transaction.
    pub fn insert(
        &mut self,
        row: &Row,
        dup_tag: &[u8; 32],
        counter: &[u8],
    ) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO records(id, created_at, tier, role, reinforced, dup_tag, body) VALUES(?1, ?2, ?3, ?4, 0, ?5, ?6)",
            params![&row.id[..], row.created_at, row.tier, row.role, &dup_tag[..], row.body],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO meta(k, v) VALUES(?1, ?2)",
            params![COUNTER_KEY, counter],
        )?;
        tx.commit()
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

    /// Deletes a record so that none of its bytes remain in the database
    /// files: `secure_delete` zeroes the freed cells, and a truncating
    /// checkpoint empties the WAL that still held the old pages.
    pub fn delete(&self, id: &[u8; 16]) -> rusqlite::Result<bool> {
        let n = self
            .conn
            .execute("DELETE FROM records WHERE id = ?1", params![&id[..]])?;
        self.checkpoint()?;
        Ok(n > 0)
    }

    pub fn checkpoint(&self) -> rusqlite::Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
    }

    /// Visits every record in id (time) order, `batch` rows at a time.
    pub fn for_each_batch<E>(
        &self,
        batch: usize,
        mut f: impl FnMut(Vec<Row>) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<rusqlite::Error>,
    {
        let mut stmt = self.conn.prepare(
            "SELECT id, created_at, tier, role, reinforced, body FROM records ORDER BY id",
        )?;
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
