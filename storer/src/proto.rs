//! The client ⇄ storer protocol over `run/iai-mcp.sock`.
//!
//! Frame: `length u32 LE | JSON body`, the body at most [`MAX_FRAME`] bytes.
//! Request body: `{"v": 1, "type": "<request>", ...fields}`. Reply body:
//! `{"v": 1, "ok": true, "result": {...}}` or
//! `{"v": 1, "ok": false, "error": {"code": "...", "message": "..."}}`.
//!
//! A length over the maximum cannot be resynchronised: the storer answers
//! `frame_too_large` and closes the connection. Anything wrong *inside* a
//! well-delimited frame (invalid UTF-8, malformed JSON, unknown version or
//! request, bad arguments) is answered with an error and the connection stays
//! usable.

use std::io::{self, Read, Write};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub const PROTOCOL_VERSION: u32 = 1;
pub use crate::limits::{
    MAX_BATCH, MAX_CUE, MAX_CURSOR_KEY, MAX_CURSOR_VALUE, MAX_FRAME, MAX_PROJECT, MAX_PROVENANCE, MAX_SESSION, MAX_TAG,
    MAX_TAGS, MAX_TEXT,
};
pub const MAX_RECALL_LIMIT: u32 = 100;
pub const DEFAULT_RECALL_LIMIT: u32 = 10;
/// Deepest result reachable by paging (offset + limit).
pub const MAX_RECALL_DEPTH: u32 = 1000;
/// Most records one reinforce request may name.
pub const MAX_REINFORCE_IDS: usize = 32;
pub const MAX_EVENTS_LIMIT: u32 = 1000;
pub const DEFAULT_EVENTS_LIMIT: u32 = 50;

// The one definition of a tier: the wire, the MCP tool schemas (feature
// `schema`) and the command line (feature `cli`) all use it. The doc line
// below is what hosts and models read in the tool schemas.
/// What kind of memory: working, episodic (the default), semantic or procedural.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Working,
    #[default]
    Episodic,
    Semantic,
    Procedural,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Working, Tier::Episodic, Tier::Semantic, Tier::Procedural];
    pub fn code(self) -> u8 {
        self as u8
    }
    pub fn from_code(c: i64) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| i64::from(t.code()) == c)
    }
    pub fn name(self) -> &'static str {
        match self {
            Tier::Working => "working",
            Tier::Episodic => "episodic",
            Tier::Semantic => "semantic",
            Tier::Procedural => "procedural",
        }
    }
}

// One definition, as for Tier.
/// Who said it: user (the default), assistant or system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    User,
    Assistant,
    System,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::User, Role::Assistant, Role::System];
    pub fn code(self) -> u8 {
        self as u8
    }
    pub fn from_code(c: i64) -> Option<Role> {
        Role::ALL.into_iter().find(|r| i64::from(r.code()) == c)
    }
    pub fn name(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cue: Option<String>,
    #[serde(default)]
    pub tier: Tier,
    #[serde(default)]
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<String>,
    /// The project (working directory) the memory belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The memory's time in milliseconds since the Unix epoch, for imports
    /// that keep original dates. Defaults to now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<i64>,
}

/// One memory as `export` writes it and `import` reads it: everything the
/// store knows about it (export format 1, documented in README.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryRecord {
    pub id: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub tier: Tier,
    pub role: Role,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cue: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<String>,
    #[serde(default)]
    pub reinforced: u32,
    /// The id of the newer memory that contradicted this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
}

impl Hit {
    /// A recall result: the record, ranked.
    pub fn from_record(r: MemoryRecord, score: f64) -> Hit {
        Hit {
            id: r.id,
            score,
            created_at: r.created_at,
            tier: r.tier,
            role: r.role,
            text: r.text,
            cue: r.cue,
            tags: r.tags,
            session: r.session,
            reinforced: r.reinforced,
            superseded_by: r.superseded_by,
            project: r.project,
        }
    }
}

impl MemoryRecord {
    /// The capture this record would be, for the capture's checks.
    pub fn as_capture(&self) -> CaptureRequest {
        CaptureRequest {
            text: self.text.clone(),
            cue: self.cue.clone(),
            tier: self.tier,
            role: self.role,
            session: self.session.clone(),
            tags: self.tags.clone(),
            provenance: self.provenance.clone(),
            project: self.project.clone(),
            created_at: Some(self.created_at),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// Records after this place in capture order (`next` of the last page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ExportResult {
    pub records: Vec<MemoryRecord>,
    /// Where the next page starts; none after the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<i64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    pub items: Vec<MemoryRecord>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportStatus {
    /// Stored, with its id and dates.
    Inserted,
    /// The store already has this id, or this exact text (`same_as`).
    Duplicate,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImportItemResult {
    pub id: String,
    pub status: ImportStatus,
    /// For a duplicate text under another id: the record that holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_as: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ImportResult {
    pub results: Vec<ImportItemResult>,
}

/// One step of a key rotation (`iai-mcp rotate`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// Most values to re-seal in this step (at most [`MAX_ROTATE_STEP`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Most values re-sealed by one rotation step (one transaction).
pub const MAX_ROTATE_STEP: u32 = 1000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateResult {
    /// The data key the keyholder seals with (hex key id).
    pub key_id: String,
    /// The data key being replaced; none when no rotation is under way in
    /// the running pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_id: Option<String>,
    /// Values re-sealed by this step.
    pub resealed: u64,
    /// Values still sealed under the previous key.
    pub remaining: u64,
    /// Values under the previous key that do not authenticate (changed
    /// outside iai-mcp): they cannot be re-sealed, and the rotation cannot
    /// finish while they are there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damaged: Vec<String>,
    /// Every value is under the new key, the old values' bytes are erased
    /// from the files, and the keyholder has wiped the previous key.
    pub finished: bool,
}

/// Most records per export page (each is unsealed for it).
pub const MAX_EXPORT_PAGE: u32 = 500;

/// Latest time a capture may claim: a day ahead tolerates clock skew.
const FUTURE_SLACK_MS: i64 = 86_400_000;

/// Refuses a string over `max` bytes, naming its size and the limit.
pub fn check_len(what: &str, s: &str, max: usize) -> Result<(), ErrorBody> {
    if s.len() > max {
        return Err(ErrorBody::new(
            ErrorCode::InvalidArgument,
            format!("{what} is {} bytes; the maximum is {max} bytes", s.len()),
        ));
    }
    Ok(())
}

impl CaptureRequest {
    /// The storer's checks, shared with every client so that a request that
    /// would be refused is refused before it is sent, with the same words.
    pub fn validate(&self, now_ms: i64) -> Result<(), ErrorBody> {
        if self.text.trim().is_empty() {
            return Err(ErrorBody::new(ErrorCode::InvalidArgument, "text is empty"));
        }
        if self.text.len() > MAX_TEXT {
            return Err(ErrorBody::new(
                ErrorCode::TextTooLarge,
                format!("text is {} bytes; the maximum is {MAX_TEXT} bytes", self.text.len()),
            ));
        }
        if let Some(cue) = &self.cue {
            check_len("cue", cue, MAX_CUE)?;
        }
        if self.tags.len() > MAX_TAGS {
            return Err(ErrorBody::new(
                ErrorCode::InvalidArgument,
                format!("{} tags given; the maximum is {MAX_TAGS}", self.tags.len()),
            ));
        }
        for t in &self.tags {
            check_len("a tag", t, MAX_TAG)?;
        }
        if let Some(s) = &self.session {
            check_len("session", s, MAX_SESSION)?;
        }
        if let Some(p) = &self.provenance {
            check_len("provenance", p, MAX_PROVENANCE)?;
        }
        if let Some(p) = &self.project {
            check_len("project", p, MAX_PROJECT)?;
        }
        if let Some(t) = self.created_at {
            if t < 0 || t > now_ms.saturating_add(FUTURE_SLACK_MS) {
                return Err(ErrorBody::new(
                    ErrorCode::InvalidArgument,
                    "created_at must be between the Unix epoch and now (milliseconds)",
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecallRequest {
    pub cue: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Skip this many results (paging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
    /// Only memories created at or after this time (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// Only memories created before this time (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    /// Only memories of this project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// The newest memories, those of `project` first (what a session starts with).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecentRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Several captures in one transaction, optionally moving a named cursor in
/// the same transaction (a transcript position: it advances only together
/// with the captures it covers).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureBatchRequest {
    pub items: Vec<CaptureRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Cursor>,
}

/// A small named value kept sealed by the storer (e.g. a transcript position).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    pub key: String,
    pub value: String,
    /// Move the cursor only from this value (`""`: it must not exist yet);
    /// else the whole batch is refused with `conflict`. Two captures of the
    /// same transcript at once then never store a turn twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// A new fact that supersedes memory `id`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContradictRequest {
    pub id: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cue: Option<String>,
    #[serde(default)]
    pub tier: Tier,
    #[serde(default)]
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

// One definition, as for Tier.
/// The kind of an operation in the audit trail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Capture,
    Reinforce,
    Contradict,
    Forget,
    Unlock,
}

impl EventKind {
    pub const ALL: [EventKind; 5] =
        [EventKind::Capture, EventKind::Reinforce, EventKind::Contradict, EventKind::Forget, EventKind::Unlock];
    pub fn code(self) -> u8 {
        self as u8
    }
    pub fn from_code(c: i64) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| i64::from(k.code()) == c)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsRequest {
    /// Only events at or after this time (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<EventKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Every request the storer serves.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Capture(CaptureRequest),
    Recall(RecallRequest),
    Forget {
        id: String,
    },
    Contradict(ContradictRequest),
    /// The memories were used together: strengthen each and their association.
    Reinforce {
        ids: Vec<String>,
    },
    Events(EventsRequest),
    Recent(RecentRequest),
    CaptureBatch(CaptureBatchRequest),
    /// Every live memory with its metadata, in capture order, page by page.
    Export(ExportRequest),
    /// Memories from an export, ids and dates kept, duplicates recognised.
    Import(ImportRequest),
    /// Re-seals values still under the previous data key (`iai-mcp rotate`).
    Rotate(RotateRequest),
    GetCursor {
        key: String,
    },
    Stats,
    /// Stops the storer (and so the keyholder): what `iai-mcp lock` sends.
    Shutdown,
}

pub const REQUEST_TYPES: &[&str] = &[
    "capture",
    "recall",
    "forget",
    "contradict",
    "reinforce",
    "events",
    "recent",
    "capture_batch",
    "export",
    "import",
    "rotate",
    "get_cursor",
    "stats",
    "shutdown",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureStatus {
    Inserted,
    /// An exact duplicate of an existing memory: that memory was reinforced.
    Reinforced,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureResult {
    pub id: String,
    pub status: CaptureStatus,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub id: String,
    pub score: f64,
    pub created_at: i64,
    pub tier: Tier,
    pub role: Role,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cue: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub reinforced: u32,
    /// Set when a newer fact contradicted this one: the id of that fact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureBatchResult {
    pub results: Vec<CaptureResult>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorValue {
    pub value: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecallResult {
    pub hits: Vec<Hit>,
    /// More results exist beyond `offset + hits.len()`.
    #[serde(default)]
    pub more: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContradictResult {
    /// The new fact.
    pub id: String,
    pub status: CaptureStatus,
    /// The memory it supersedes (kept, and flagged from now on).
    pub supersedes: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReinforceResult {
    pub ids: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub at: i64,
    pub kind: EventKind,
    /// The memories the operation touched.
    pub records: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsResult {
    pub events: Vec<Event>,
    /// More events were left out to keep the reply inside a frame.
    #[serde(default)]
    pub more: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetResult {
    pub id: String,
    pub forgotten: bool,
    /// The checkpoint that overwrites the removed bytes in the database file
    /// ran. False only when the disk was too full for it; it runs again on a
    /// later write.
    #[serde(default = "yes")]
    pub erased: bool,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierCount {
    pub tier: Tier,
    pub records: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub version: String,
    pub records: u64,
    pub per_tier: Vec<TierCount>,
    pub events: u64,
    /// Records left out at unlock: their sealed values did not authenticate
    /// or did not match the audit trail (tampering or corruption).
    pub unreadable: u64,
    /// Changes found in the files that iai-mcp did not make (at unlock and since).
    #[serde(default)]
    pub integrity_problems: u64,
    /// The first of them, in plain words.
    #[serde(default)]
    pub integrity: Vec<String>,
    pub store_bytes: u64,
    pub storer_pid: u32,
    pub keyholder_pid: u32,
    pub seal_count: u64,
    pub seal_limit: u64,
    /// Protections that are not enforced (only when the user allowed a degraded sandbox).
    pub degraded: Vec<String>,
    /// The last write failed because the disk is full (cleared by the next write that succeeds).
    #[serde(default)]
    pub disk_full: bool,
    /// The storer's memory is locked in RAM (never swapped).
    #[serde(default)]
    pub memory_locked: bool,
    /// The id of the data key new values are sealed under (hex).
    #[serde(default)]
    pub key_id: String,
    /// During a key rotation: the key being replaced, and how many values
    /// are still sealed under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_id: Option<String>,
    #[serde(default)]
    pub old_key_values: u64,
    /// How the last unlock loaded the recall index, and its snapshot.
    #[serde(default)]
    pub index: IndexStats,
}

/// How the last unlock loaded the recall index (`iai-mcp status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexStats {
    /// Loaded from the sealed index snapshot (else rebuilt from every record).
    pub from_snapshot: bool,
    /// Records unsealed and checked one by one at unlock (the others matched
    /// the snapshot byte for byte).
    pub checked: u64,
    /// Time to load the store at unlock (after the key was unwrapped), ms.
    pub load_ms: u64,
    /// Why a snapshot in the file was not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_not_used: Option<String>,
    /// Size of the snapshot in the file (sealed bytes; 0: none).
    pub snapshot_bytes: u64,
    /// Why no snapshot is written in this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_off: Option<String>,
    /// Why the last attempt to write one failed (the next unlock takes longer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_error: Option<String>,
    /// The embedding model in use for semantic recall (none: BM25 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<crate::embed::ModelInfo>,
    /// Why the installed model is not in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_error: Option<String>,
    /// Live memories without a vector yet (made at the next unlock).
    #[serde(default)]
    pub missing_vectors: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub done: bool,
}

/// Machine-readable reason of a refused request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    FrameTooLarge,
    InvalidUtf8,
    MalformedJson,
    UnsupportedVersion,
    UnknownRequest,
    InvalidArgument,
    TextTooLarge,
    NotFound,
    PeerRefused,
    Busy,
    KeyholderUnavailable,
    SealLimit,
    /// A reply would not fit in a frame (a bug: replies are cut to fit).
    ReplyTooLarge,
    /// The disk holding the store is full: nothing was written.
    DiskFull,
    Storage,
    /// A cursor was not at the value the request expected: nothing was written.
    Conflict,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody { code, message: message.into() }
    }
}

/// Parses one frame body into a request, or the precise reason it is refused.
///
/// The top level is read once and each member stays a slice of `body`, so a
/// memory's text is copied only into the request built from it (no
/// intermediate JSON values: every copy is one more to leave in memory).
pub fn parse_request(body: &[u8]) -> Result<Request, ErrorBody> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ErrorBody::new(ErrorCode::InvalidUtf8, format!("request is not valid UTF-8 (at byte {})", e.valid_up_to()))
    })?;
    let mut members: BTreeMap<String, &RawValue> = serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ErrorBody::new(ErrorCode::MalformedJson, "request must be a JSON object"),
        _ => ErrorBody::new(ErrorCode::MalformedJson, format!("request is not valid JSON: {e}")),
    })?;
    match members.remove("v").and_then(|v| serde_json::from_str::<u64>(v.get()).ok()) {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(ErrorBody::new(
                ErrorCode::UnsupportedVersion,
                format!("protocol version {v} is not supported (this storer speaks {PROTOCOL_VERSION})"),
            ))
        }
        None => return Err(ErrorBody::new(ErrorCode::UnsupportedVersion, "request has no protocol version \"v\"")),
    }
    let kind = members
        .get("type")
        .and_then(|t| serde_json::from_str::<String>(t.get()).ok())
        .ok_or_else(|| ErrorBody::new(ErrorCode::UnknownRequest, "request has no \"type\""))?;
    if !REQUEST_TYPES.contains(&kind.as_str()) {
        return Err(ErrorBody::new(ErrorCode::UnknownRequest, format!("unknown request type {kind:?}")));
    }
    let map = serde::de::value::MapDeserializer::<_, serde_json::Error>::new(members.into_iter());
    Request::deserialize(map)
        .map_err(|e| ErrorBody::new(ErrorCode::InvalidArgument, format!("invalid {kind} request: {e}")))
}

/// A request on the wire: the protocol version beside the request's own members.
#[derive(Serialize)]
struct Envelope<'a> {
    v: u32,
    #[serde(flatten)]
    request: &'a Request,
}

pub fn encode_request(req: &Request) -> Vec<u8> {
    serde_json::to_vec(&Envelope { v: PROTOCOL_VERSION, request: req }).unwrap_or_default()
}

#[derive(Serialize)]
struct Reply<'a, T: Serialize + ?Sized> {
    v: u32,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a ErrorBody>,
}

pub fn encode_ok<T: Serialize + ?Sized>(result: &T) -> Vec<u8> {
    let reply = Reply { v: PROTOCOL_VERSION, ok: true, result: Some(result), error: None };
    serde_json::to_vec(&reply).unwrap_or_default()
}

pub fn encode_err(err: &ErrorBody) -> Vec<u8> {
    let reply = Reply::<()> { v: PROTOCOL_VERSION, ok: false, result: None, error: Some(err) };
    serde_json::to_vec(&reply).unwrap_or_default()
}

/// Decodes a reply body into its result (still JSON, a slice of `body`) or
/// the storer's error.
pub fn decode_reply(body: &[u8]) -> Result<Result<&RawValue, ErrorBody>, String> {
    #[derive(Deserialize)]
    struct Reply<'a> {
        v: u32,
        ok: bool,
        #[serde(default, borrow)]
        result: Option<&'a RawValue>,
        error: Option<ErrorBody>,
    }
    let r: Reply<'_> = serde_json::from_slice(body).map_err(|e| format!("malformed reply from the storer: {e}"))?;
    if r.v != PROTOCOL_VERSION {
        return Err(format!("the storer speaks protocol version {}, this client {PROTOCOL_VERSION}", r.v));
    }
    match (r.ok, r.error) {
        (true, _) => Ok(Ok(r.result.unwrap_or(RawValue::NULL))),
        (false, Some(e)) => Ok(Err(e)),
        (false, None) => Err("the storer reported an error without details".into()),
    }
}

pub use iai_policy::frame::Frame;

/// Reads one client frame (`iai_policy::frame`, at most [`MAX_FRAME`]).
pub fn read_frame(r: &mut impl Read) -> io::Result<Frame> {
    iai_policy::frame::read(r, MAX_FRAME)
}

pub fn write_frame(w: &mut impl Write, body: &[u8]) -> io::Result<()> {
    iai_policy::frame::write(w, body, MAX_FRAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &[u8]) -> ErrorCode {
        parse_request(body).expect_err("must be refused").code
    }

    #[test]
    fn each_kind_of_bad_request_gets_its_own_code() {
        assert_eq!(code(b"\xff\xfe"), ErrorCode::InvalidUtf8);
        assert_eq!(code(b"{not json"), ErrorCode::MalformedJson);
        assert_eq!(code(b"[1,2]"), ErrorCode::MalformedJson);
        assert_eq!(code(br#"{"type":"stats"}"#), ErrorCode::UnsupportedVersion);
        assert_eq!(code(br#"{"v":9,"type":"stats"}"#), ErrorCode::UnsupportedVersion);
        assert_eq!(code(br#"{"v":1,"type":"explode"}"#), ErrorCode::UnknownRequest);
        assert_eq!(code(br#"{"v":1,"type":"capture"}"#), ErrorCode::InvalidArgument);
        assert_eq!(code(br#"{"v":1,"type":"capture","text":"x","tier":"cosmic"}"#), ErrorCode::InvalidArgument);
        assert_eq!(code(br#"{"v":1,"type":"capture","text":"x","surprise":1}"#), ErrorCode::InvalidArgument);
    }

    #[test]
    fn requests_round_trip() {
        let req = Request::Capture(CaptureRequest { text: "hi".into(), tags: vec!["a".into()], ..Default::default() });
        match parse_request(&encode_request(&req)).expect("parses") {
            Request::Capture(c) => {
                assert_eq!(c.text, "hi");
                assert_eq!(c.tier, Tier::Episodic);
            }
            other => panic!("wrong request {other:?}"),
        }
        assert!(matches!(parse_request(&encode_request(&Request::Stats)), Ok(Request::Stats)));
    }
}
