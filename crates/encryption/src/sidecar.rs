//! The `keys.json` key sidecar: its document codec, its loader rules and its file I/O.
//!
//! Every node keeps `<data-dir>/encryption/keys.json` (mode 0600). It holds only
//! *wrapped* DEKs, so it is safe to leak; it is written only from inside an apply,
//! through [`crate::durable::durable_replace`]. The format is byte-compatible with
//! elastickv's `WriteSidecar` / `ReadSidecar`.
//!
//! # Document
//!
//! ```text
//! {
//!   "version": 1,
//!   "raft_applied_index": <u64>,
//!   "storage_envelope_active": <bool>,
//!   "raft_envelope_cutover_index": <u64>,
//!   "active": {
//!     "storage": <u32>,
//!     "raft": <u32>
//!   },
//!   "keys": null | {
//!     "<decimal key id>": {
//!       "purpose": "storage" | "raft",
//!       "wrapped": <padded standard base64> | null,
//!       "created": <string>,
//!       "local_epoch": <u16>
//!     }, ...
//!   }
//! }
//! ```
//!
//! [`to_json`] writes exactly what Go's `json.MarshalIndent(sc, "", "  ")` writes:
//! a 2-space indent, `": "` after names, no trailing newline, fields in the order
//! above, `version` always `1`, key ids sorted bytewise (`"10"` before `"2"`), an
//! empty key map as `{}`. Strings are escaped as Go 1.19's `encoding/json` does:
//! `"` `\` as `\"` `\\`; `\n` `\r` `\t` by name; other bytes below 0x20 as `\u00XX`
//! (lowercase hex, so `\b` and `\f` are `\u0008` and `\u000c`); `<` `>` `&` as
//! `\u003c` `\u003e` `\u0026`; U+2028 and U+2029 as `\u2028` `\u2029`; every other
//! character, DEL and non-ASCII included, raw.
//!
//! # Loader rules, in order
//!
//! 1. **parse**: the JSON must have the typed shape: `version` an integer (i64, as
//!    Go's `int`), the two indexes u64, `active.*` u32, `local_epoch` u16, `wrapped`
//!    padded standard base64 or `null`, `keys` an object or `null`. Floats such as
//!    `1.0`, out-of-range numbers, strings where numbers belong and trailing garbage
//!    are refused. Unknown members are ignored; missing ones default to zero, false
//!    or null. Like Go's `StdEncoding`, non-zero unused bits in the last base64
//!    symbol are tolerated.
//! 2. **version**: `version` must be 1.
//! 3. Each key, in bytewise order of its id: **key_id_format** unless the id is a
//!    decimal u32 (ASCII digits only, leading zeros allowed); **reserved_key_id** if
//!    it is 0 (`"00"` too); **purpose** unless its purpose is exactly `storage` or
//!    `raft`.
//! 4. A non-zero `active.storage`, then `active.raft`, must name a key by its
//!    *canonical* decimal form (**active_key_missing**), with the same purpose
//!    (**active_purpose_mismatch**). `"007"` is a valid id that `7` does not find.
//!
//! The writer checks rules 3 and 4 with the same code before it writes anything.
//!
//! # Strictness: Go `encoding/json` leniencies are refused
//!
//! Go's decoder accepts some inputs that no JSON encoder writing this schema
//! produces. Neither elastickv's writer (`json.MarshalIndent` of a typed struct) nor
//! ours ever emits them, so refusing them rejects no real sidecar, while accepting
//! them would let a hand-edited or corrupted file mean something its author may not
//! have intended. Each one is refused at rule 1 with [`SidecarError::GoQuirk`]
//! (class `parse`), naming the [`GoQuirk`] and where it was found:
//!
//! | Go leniency | here |
//! |---|---|
//! | member names matched case-insensitively (`"Version"`, also `ſ`/`K` folding) | [`GoQuirk::FieldNameCase`] |
//! | a repeated member or key id, the last one winning | [`GoQuirk::DuplicateName`] |
//! | `null` leaving a scalar, `active`, a key entry or the document at zero | [`GoQuirk::Null`] (only `keys` and `wrapped` may be `null`: the writer emits those) |
//! | `wrapped` as a JSON array of byte numbers | [`GoQuirk::WrappedByteArray`] |
//! | `\r` / `\n` inside the base64 of `wrapped`, silently dropped | [`GoQuirk::Base64LineBreak`] |
//!
//! Go's other leniencies (invalid UTF-8 and lone surrogate escapes in strings,
//! replaced by U+FFFD) are refused by `serde_json` as ordinary parse errors. Because
//! these checks belong to rule 1, a document that Go rejects at a later rule may be
//! refused here as `parse` first when it also relies on a leniency.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use sealkv_fsmwire::Purpose;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::durable::{self, DurableError};

/// The directory under the data directory that holds the sidecar.
pub const SIDECAR_DIR: &str = "encryption";

/// The sidecar's file name.
pub const SIDECAR_FILE: &str = "keys.json";

/// The only document version, always written and required when loading.
pub const SIDECAR_VERSION: i64 = 1;

/// The sidecar's unix permission bits: owner read and write only.
pub const SIDECAR_MODE: u32 = 0o600;

/// Standard padded base64 as Go's `base64.StdEncoding` decodes it: padding is
/// required, unused bits in the last symbol are ignored.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

/// The path of the sidecar under a data directory: `<data_dir>/encryption/keys.json`.
pub fn sidecar_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SIDECAR_DIR).join(SIDECAR_FILE)
}

/// The decoded `keys.json` document.
///
/// Plain data: a value read by [`from_json`] has passed the loader rules, and
/// [`to_json`] checks them again before writing, so the fields are public.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    /// The document version; [`to_json`] always writes [`SIDECAR_VERSION`].
    pub version: i64,
    /// The Raft index of the last applied entry this sidecar reflects.
    pub raft_applied_index: u64,
    /// Whether user values are written in storage envelopes.
    pub storage_envelope_active: bool,
    /// The Raft index from which proposals are wrapped in raft envelopes (0: none).
    pub raft_envelope_cutover_index: u64,
    /// The active key id per purpose.
    pub active: ActiveKeys,
    /// The keys by their on-disk decimal id, kept as written so that a
    /// non-canonical id such as `"007"` round-trips; `None` is a JSON `null`.
    pub keys: Option<BTreeMap<String, SidecarKey>>,
}

impl Default for Sidecar {
    /// An empty version-1 sidecar: no keys, nothing active.
    fn default() -> Sidecar {
        Sidecar {
            version: SIDECAR_VERSION,
            raft_applied_index: 0,
            storage_envelope_active: false,
            raft_envelope_cutover_index: 0,
            active: ActiveKeys::default(),
            keys: None,
        }
    }
}

/// The active key id per purpose; 0 means "none".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActiveKeys {
    /// The active storage key id.
    pub storage: u32,
    /// The active raft key id.
    pub raft: u32,
}

impl ActiveKeys {
    /// The active key id of `purpose` (0 when none).
    pub fn get(&self, purpose: Purpose) -> u32 {
        match purpose {
            Purpose::Storage => self.storage,
            Purpose::Raft => self.raft,
        }
    }
}

/// One key of the sidecar. Holds the DEK only wrapped under the KEK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SidecarKey {
    /// `storage` or `raft` once validated; kept as a string so that the writer can
    /// refuse a bad value the way the loader does.
    pub purpose: String,
    /// The wrapped DEK; `None` is a JSON `null`, distinct from an empty blob.
    pub wrapped: Option<Vec<u8>>,
    /// The creation time as the writer recorded it (free-form text).
    pub created: String,
    /// This node's local epoch under this key.
    pub local_epoch: u16,
}

impl SidecarKey {
    /// The purpose as a [`Purpose`], or `None` when the string is neither
    /// `storage` nor `raft`.
    pub fn purpose_kind(&self) -> Option<Purpose> {
        match self.purpose.as_str() {
            "storage" => Some(Purpose::Storage),
            "raft" => Some(Purpose::Raft),
            _ => None,
        }
    }
}

/// A Go `encoding/json` leniency the loader refuses (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GoQuirk {
    /// A member name equal to a known one only under case folding.
    FieldNameCase,
    /// A member name or key id that appears twice in one object.
    DuplicateName,
    /// `null` where the writer never writes it.
    Null,
    /// `wrapped` written as an array of byte numbers.
    WrappedByteArray,
    /// A line break inside the base64 of `wrapped`.
    Base64LineBreak,
}

impl GoQuirk {
    /// A short description of the leniency.
    pub fn as_str(self) -> &'static str {
        match self {
            GoQuirk::FieldNameCase => "case-folded member name",
            GoQuirk::DuplicateName => "duplicate member name",
            GoQuirk::Null => "null value",
            GoQuirk::WrappedByteArray => "wrapped as a byte array",
            GoQuirk::Base64LineBreak => "line break in base64",
        }
    }
}

impl fmt::Display for GoQuirk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sidecar that cannot be loaded or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    /// The document is not JSON of the sidecar's shape (rule 1).
    #[error("parse sidecar")]
    Parse(#[source] serde_json::Error),
    /// The document relies on a Go `encoding/json` leniency (rule 1).
    #[error("parse sidecar: {quirk} at {at} is refused")]
    GoQuirk {
        /// The leniency.
        quirk: GoQuirk,
        /// Where it was found, as a path such as `keys["1"].wrapped`.
        at: String,
    },
    /// The version is not 1 (rule 2).
    #[error("unsupported sidecar version {version}, want 1")]
    Version {
        /// The version found.
        version: i64,
    },
    /// A key id is not a decimal u32 (rule 3).
    #[error("sidecar key id {key_id:?} is not a decimal u32")]
    KeyIdFormat {
        /// The key id as written.
        key_id: String,
    },
    /// A key id is 0, which means "none" (rule 3).
    #[error("sidecar key id {key_id:?} is reserved")]
    ReservedKeyId {
        /// The key id as written.
        key_id: String,
    },
    /// A key's purpose is neither `storage` nor `raft` (rule 3).
    #[error("sidecar key {key_id} has unsupported purpose {purpose:?}")]
    UnknownPurpose {
        /// The key id as written.
        key_id: String,
        /// The purpose found.
        purpose: String,
    },
    /// An active key id names no key (rule 4).
    #[error("active {purpose} key {key_id} is not in the keys map")]
    ActiveKeyMissing {
        /// Which active slot.
        purpose: Purpose,
        /// The key id it names.
        key_id: u32,
    },
    /// An active key id names a key of the other purpose (rule 4).
    #[error("active {purpose} key {key_id} has purpose {found:?}")]
    ActivePurposeMismatch {
        /// Which active slot.
        purpose: Purpose,
        /// The key id it names.
        key_id: u32,
        /// The purpose of that key.
        found: String,
    },
    /// The sidecar file exists but could not be read.
    #[error("read sidecar {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The sidecar could not be written durably.
    #[error("write sidecar")]
    Durable(#[from] DurableError),
}

impl SidecarError {
    /// The error class shared with elastickv's vectors (`parse`, `version`,
    /// `key_id_format`, `reserved_key_id`, `purpose`, `active_key_missing`,
    /// `active_purpose_mismatch`); `None` for I/O failures, which have no class.
    pub fn class(&self) -> Option<&'static str> {
        match self {
            SidecarError::Parse(_) | SidecarError::GoQuirk { .. } => Some("parse"),
            SidecarError::Version { .. } => Some("version"),
            SidecarError::KeyIdFormat { .. } => Some("key_id_format"),
            SidecarError::ReservedKeyId { .. } => Some("reserved_key_id"),
            SidecarError::UnknownPurpose { .. } => Some("purpose"),
            SidecarError::ActiveKeyMissing { .. } => Some("active_key_missing"),
            SidecarError::ActivePurposeMismatch { .. } => Some("active_purpose_mismatch"),
            SidecarError::Io { .. } | SidecarError::Durable(_) => None,
        }
    }
}

/// Result of a sidecar operation.
pub type Result<T, E = SidecarError> = std::result::Result<T, E>;

impl Sidecar {
    /// Reads and validates the sidecar at `path` (see [`sidecar_path`]).
    /// `Ok(None)` when the file does not exist; any other read failure is
    /// [`SidecarError::Io`].
    pub fn load(path: &Path) -> Result<Option<Sidecar>> {
        match std::fs::read(path) {
            Ok(bytes) => from_json(&bytes).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SidecarError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Validates and writes the sidecar to `path` crash-durably with mode 0600.
    /// Nothing is written when validation fails.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = to_json(self)?;
        durable::durable_replace(path, text.as_bytes(), SIDECAR_MODE)?;
        Ok(())
    }

    /// Checks loader rules 3 and 4 (the key ids, purposes and active keys). The
    /// version is not checked: the writer always writes 1.
    pub fn validate(&self) -> Result<()> {
        for (id, key) in self.keys.iter().flatten() {
            let parsed =
                parse_key_id(id).ok_or_else(|| SidecarError::KeyIdFormat { key_id: id.clone() })?;
            if parsed == 0 {
                return Err(SidecarError::ReservedKeyId { key_id: id.clone() });
            }
            if key.purpose_kind().is_none() {
                return Err(SidecarError::UnknownPurpose {
                    key_id: id.clone(),
                    purpose: key.purpose.clone(),
                });
            }
        }
        for purpose in [Purpose::Storage, Purpose::Raft] {
            let key_id = self.active.get(purpose);
            if key_id == 0 {
                continue;
            }
            let key = self
                .key(key_id)
                .ok_or(SidecarError::ActiveKeyMissing { purpose, key_id })?;
            if key.purpose != purpose.as_str() {
                return Err(SidecarError::ActivePurposeMismatch {
                    purpose,
                    key_id,
                    found: key.purpose.clone(),
                });
            }
        }
        Ok(())
    }

    /// The key whose id is written canonically as `key_id` (so `"007"` is not
    /// found by 7).
    pub fn key(&self, key_id: u32) -> Option<&SidecarKey> {
        self.keys.as_ref()?.get(&key_id.to_string())
    }

    /// The active key id of `purpose`, or `None` when none is active.
    pub fn active_key_id(&self, purpose: Purpose) -> Option<u32> {
        Some(self.active.get(purpose)).filter(|&id| id != 0)
    }

    /// The active key of `purpose` with its id, or `None` when none is active or it
    /// is missing (which a validated sidecar rules out).
    pub fn active_key(&self, purpose: Purpose) -> Option<(u32, &SidecarKey)> {
        let key_id = self.active_key_id(purpose)?;
        Some((key_id, self.key(key_id)?))
    }
}

/// Parses a key id as Go's `strconv.ParseUint(s, 10, 32)` does: ASCII digits only,
/// at least one, leading zeros allowed, at most `u32::MAX`.
fn parse_key_id(s: &str) -> Option<u32> {
    if s.is_empty() {
        return None;
    }
    s.bytes().try_fold(0u32, |acc, b| {
        let digit = char::from(b).to_digit(10)?;
        acc.checked_mul(10)?.checked_add(digit)
    })
}

/// Serializes `sidecar` byte-exactly as elastickv's writer does, after checking it
/// with [`Sidecar::validate`]. The version written is always 1.
pub fn to_json(sidecar: &Sidecar) -> Result<String> {
    sidecar.validate()?;
    let mut out = String::with_capacity(256 + 256 * sidecar.keys.as_ref().map_or(0, BTreeMap::len));
    out.push_str("{\n  \"version\": ");
    push_display(&mut out, SIDECAR_VERSION);
    out.push_str(",\n  \"raft_applied_index\": ");
    push_display(&mut out, sidecar.raft_applied_index);
    out.push_str(",\n  \"storage_envelope_active\": ");
    push_display(&mut out, sidecar.storage_envelope_active);
    out.push_str(",\n  \"raft_envelope_cutover_index\": ");
    push_display(&mut out, sidecar.raft_envelope_cutover_index);
    out.push_str(",\n  \"active\": {\n    \"storage\": ");
    push_display(&mut out, sidecar.active.storage);
    out.push_str(",\n    \"raft\": ");
    push_display(&mut out, sidecar.active.raft);
    out.push_str("\n  },\n  \"keys\": ");
    match &sidecar.keys {
        None => out.push_str("null"),
        Some(keys) if keys.is_empty() => out.push_str("{}"),
        Some(keys) => {
            out.push('{');
            for (i, (id, key)) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("\n    ");
                push_go_string(&mut out, id);
                out.push_str(": {\n      \"purpose\": ");
                push_go_string(&mut out, &key.purpose);
                out.push_str(",\n      \"wrapped\": ");
                match &key.wrapped {
                    None => out.push_str("null"),
                    // Base64 needs no escaping.
                    Some(wrapped) => {
                        out.push('"');
                        BASE64.encode_string(wrapped, &mut out);
                        out.push('"');
                    }
                }
                out.push_str(",\n      \"created\": ");
                push_go_string(&mut out, &key.created);
                out.push_str(",\n      \"local_epoch\": ");
                push_display(&mut out, key.local_epoch);
                out.push_str("\n    }");
            }
            out.push_str("\n  }");
        }
    }
    out.push_str("\n}");
    Ok(out)
}

/// Appends a value's `Display` form.
fn push_display(out: &mut String, value: impl fmt::Display) {
    // Writing to a String cannot fail.
    let _ = write!(out, "{value}");
}

/// Appends `s` as a JSON string escaped the way Go 1.19's `encoding/json` does with
/// HTML escaping on (the default of `json.Marshal`).
fn push_go_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' | '\0'..='\u{1f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Parses and validates a sidecar document: loader rules 1 to 4, in order.
pub fn from_json(bytes: &[u8]) -> Result<Sidecar> {
    let strict = Strict::default();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = DocumentSeed { strict: &strict }
        .deserialize(&mut de)
        .and_then(|sidecar| de.end().map(|()| sidecar));
    let sidecar = match parsed {
        Ok(sidecar) => sidecar,
        Err(e) => {
            return Err(match strict.found.into_inner() {
                Some((quirk, at)) => SidecarError::GoQuirk { quirk, at },
                None => SidecarError::Parse(e),
            });
        }
    };
    if sidecar.version != SIDECAR_VERSION {
        return Err(SidecarError::Version {
            version: sidecar.version,
        });
    }
    sidecar.validate()?;
    Ok(sidecar)
}

// ---- Rule 1: the typed, strict parse ---------------------------------------------
//
// serde_json does the JSON syntax; these visitors impose the shape. A Go leniency
// is recorded in `Strict` and aborts the parse with a generic serde error, which
// `from_json` then replaces by the typed `SidecarError::GoQuirk`.

/// The first Go leniency found during a parse.
#[derive(Default)]
struct Strict {
    found: RefCell<Option<(GoQuirk, String)>>,
}

impl Strict {
    /// Records `quirk` at `at` (keeping the first one) and returns the error that
    /// aborts the parse.
    fn refuse<E: de::Error>(&self, quirk: GoQuirk, at: String) -> E {
        let error = E::custom(format_args!("{quirk} at {at}"));
        self.found.borrow_mut().get_or_insert((quirk, at));
        error
    }
}

/// Folds a member name as Go's `encoding/json` does when it matches a struct field:
/// ASCII case, plus U+017F (ſ) to `s` and U+212A (Kelvin sign) to `k`.
fn go_fold(c: char) -> char {
    match c {
        '\u{17f}' => 's',
        '\u{212a}' => 'k',
        c => c.to_ascii_lowercase(),
    }
}

/// Tracks the members of one JSON object: refuses repeats and case-folded names.
struct Members<'a> {
    strict: &'a Strict,
    /// The object's path, for messages (`""` for the document).
    object: String,
    known: &'static [&'static str],
    seen: BTreeSet<String>,
}

impl<'a> Members<'a> {
    fn new(strict: &'a Strict, object: String, known: &'static [&'static str]) -> Members<'a> {
        Members {
            strict,
            object,
            known,
            seen: BTreeSet::new(),
        }
    }

    /// The path of member `name`.
    fn at(&self, name: &str) -> String {
        if self.object.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.object)
        }
    }

    /// Admits member `name`: `Ok(true)` when it is a known field, `Ok(false)` when it
    /// is unknown (and so ignored).
    fn admit<E: de::Error>(&mut self, name: String) -> std::result::Result<bool, E> {
        let known = self.known.contains(&name.as_str());
        if !known {
            let folds = self.known.iter().any(|k| {
                name.chars().count() == k.len() && name.chars().map(go_fold).eq(k.chars())
            });
            if folds {
                return Err(self.strict.refuse(GoQuirk::FieldNameCase, self.at(&name)));
            }
        }
        if self.seen.contains(&name) {
            return Err(self.strict.refuse(GoQuirk::DuplicateName, self.at(&name)));
        }
        self.seen.insert(name);
        Ok(known)
    }
}

/// Any JSON scalar, so that each field can tell `null` and wrong types apart.
enum Scalar {
    Null,
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

impl Scalar {
    fn kind(&self) -> String {
        match self {
            Scalar::Null => "null".to_owned(),
            Scalar::Unsigned(n) => format!("number {n}"),
            Scalar::Signed(n) => format!("number {n}"),
            Scalar::Float(n) => format!("number {n:?}"),
            Scalar::Bool(b) => format!("bool {b}"),
            Scalar::Str(s) => format!("string {s:?}"),
        }
    }
}

impl<'de> de::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Scalar, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, bool or string")
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Scalar, E> {
        Ok(Scalar::Unsigned(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Scalar, E> {
        Ok(Scalar::Signed(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Scalar, E> {
        Ok(Scalar::Float(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Scalar, E> {
        Ok(Scalar::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Scalar, E> {
        Ok(Scalar::Str(v))
    }
}

/// Reads the value of a known scalar member `at`, refusing `null`.
fn scalar<'de, A: MapAccess<'de>>(
    map: &mut A,
    strict: &Strict,
    at: String,
) -> std::result::Result<(Scalar, String), A::Error> {
    match map.next_value::<Scalar>()? {
        Scalar::Null => Err(strict.refuse(GoQuirk::Null, at)),
        value => Ok((value, at)),
    }
}

/// An unsigned integer no larger than `max`; floats such as `1.0` are refused.
fn unsigned<E: de::Error>((value, at): (Scalar, String), max: u64) -> std::result::Result<u64, E> {
    match value {
        Scalar::Unsigned(n) if n <= max => Ok(n),
        other => Err(E::custom(format_args!(
            "{at}: want an integer in 0..={max}, got {}",
            other.kind()
        ))),
    }
}

/// A signed 64-bit integer (Go's `int`).
fn signed<E: de::Error>((value, at): (Scalar, String)) -> std::result::Result<i64, E> {
    match value {
        Scalar::Unsigned(n) => i64::try_from(n)
            .map_err(|_| E::custom(format_args!("{at}: want a 64-bit integer, got number {n}"))),
        Scalar::Signed(n) => Ok(n),
        other => Err(E::custom(format_args!(
            "{at}: want an integer, got {}",
            other.kind()
        ))),
    }
}

fn boolean<E: de::Error>((value, at): (Scalar, String)) -> std::result::Result<bool, E> {
    match value {
        Scalar::Bool(b) => Ok(b),
        other => Err(E::custom(format_args!(
            "{at}: want a bool, got {}",
            other.kind()
        ))),
    }
}

fn string<E: de::Error>((value, at): (Scalar, String)) -> std::result::Result<String, E> {
    match value {
        Scalar::Str(s) => Ok(s),
        other => Err(E::custom(format_args!(
            "{at}: want a string, got {}",
            other.kind()
        ))),
    }
}

const DOCUMENT_FIELDS: &[&str] = &[
    "version",
    "raft_applied_index",
    "storage_envelope_active",
    "raft_envelope_cutover_index",
    "active",
    "keys",
];
const ACTIVE_FIELDS: &[&str] = &["storage", "raft"];
const KEY_FIELDS: &[&str] = &["purpose", "wrapped", "created", "local_epoch"];

/// The whole document.
struct DocumentSeed<'a> {
    strict: &'a Strict,
}

impl<'de> DeserializeSeed<'de> for DocumentSeed<'_> {
    type Value = Sidecar;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Sidecar, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DocumentSeed<'_> {
    type Value = Sidecar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sidecar object")
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<Sidecar, E> {
        Err(self.strict.refuse(GoQuirk::Null, "document".to_owned()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Sidecar, A::Error> {
        let strict = self.strict;
        let mut members = Members::new(strict, String::new(), DOCUMENT_FIELDS);
        // Missing members default to zero, as in Go; the version check then
        // refuses a missing version.
        let mut sidecar = Sidecar {
            version: 0,
            ..Sidecar::default()
        };
        while let Some(name) = map.next_key::<String>()? {
            let at = members.at(&name);
            if !members.admit(name.clone())? {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            match name.as_str() {
                "version" => sidecar.version = signed(scalar(&mut map, strict, at)?)?,
                "raft_applied_index" => {
                    sidecar.raft_applied_index = unsigned(scalar(&mut map, strict, at)?, u64::MAX)?;
                }
                "storage_envelope_active" => {
                    sidecar.storage_envelope_active = boolean(scalar(&mut map, strict, at)?)?;
                }
                "raft_envelope_cutover_index" => {
                    sidecar.raft_envelope_cutover_index =
                        unsigned(scalar(&mut map, strict, at)?, u64::MAX)?;
                }
                "active" => sidecar.active = map.next_value_seed(ActiveSeed { strict })?,
                _ => sidecar.keys = map.next_value_seed(KeysSeed { strict })?,
            }
        }
        Ok(sidecar)
    }
}

/// The `active` object.
struct ActiveSeed<'a> {
    strict: &'a Strict,
}

impl<'de> DeserializeSeed<'de> for ActiveSeed<'_> {
    type Value = ActiveKeys;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<ActiveKeys, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ActiveSeed<'_> {
    type Value = ActiveKeys;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an active-keys object")
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<ActiveKeys, E> {
        Err(self.strict.refuse(GoQuirk::Null, "active".to_owned()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<ActiveKeys, A::Error> {
        let strict = self.strict;
        let mut members = Members::new(strict, "active".to_owned(), ACTIVE_FIELDS);
        let mut active = ActiveKeys::default();
        while let Some(name) = map.next_key::<String>()? {
            let at = members.at(&name);
            if !members.admit(name.clone())? {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let id = unsigned(scalar(&mut map, strict, at)?, u64::from(u32::MAX))?;
            // `unsigned` capped the value at u32::MAX.
            let id = u32::try_from(id).unwrap_or(u32::MAX);
            if name == "storage" {
                active.storage = id;
            } else {
                active.raft = id;
            }
        }
        Ok(active)
    }
}

/// The `keys` object, or `null`.
struct KeysSeed<'a> {
    strict: &'a Strict,
}

impl<'de> DeserializeSeed<'de> for KeysSeed<'_> {
    type Value = Option<BTreeMap<String, SidecarKey>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeysSeed<'_> {
    type Value = Option<BTreeMap<String, SidecarKey>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a keys object or null")
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut keys = BTreeMap::new();
        while let Some(id) = map.next_key::<String>()? {
            let at = format!("keys[{id:?}]");
            if keys.contains_key(&id) {
                return Err(self.strict.refuse(GoQuirk::DuplicateName, at));
            }
            let key = map.next_value_seed(KeySeed {
                strict: self.strict,
                at,
            })?;
            keys.insert(id, key);
        }
        Ok(Some(keys))
    }
}

/// One entry of `keys`.
struct KeySeed<'a> {
    strict: &'a Strict,
    at: String,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = SidecarKey;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<SidecarKey, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = SidecarKey;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key object")
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<SidecarKey, E> {
        Err(self.strict.refuse(GoQuirk::Null, self.at))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<SidecarKey, A::Error> {
        let strict = self.strict;
        let mut members = Members::new(strict, self.at, KEY_FIELDS);
        let mut key = SidecarKey::default();
        while let Some(name) = map.next_key::<String>()? {
            let at = members.at(&name);
            if !members.admit(name.clone())? {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            match name.as_str() {
                "purpose" => key.purpose = string(scalar(&mut map, strict, at)?)?,
                "created" => key.created = string(scalar(&mut map, strict, at)?)?,
                "local_epoch" => {
                    let epoch = unsigned(scalar(&mut map, strict, at)?, u64::from(u16::MAX))?;
                    // `unsigned` capped the value at u16::MAX.
                    key.local_epoch = u16::try_from(epoch).unwrap_or(u16::MAX);
                }
                _ => key.wrapped = wrapped(map.next_value::<Wrapped>()?, strict, at)?,
            }
        }
        Ok(key)
    }
}

/// The raw value of `wrapped`.
enum Wrapped {
    Null,
    Str(String),
    ByteArray,
}

impl<'de> de::Deserialize<'de> for Wrapped {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Wrapped, D::Error> {
        d.deserialize_any(WrappedVisitor)
    }
}

struct WrappedVisitor;

impl<'de> Visitor<'de> for WrappedVisitor {
    type Value = Wrapped;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a base64 string or null")
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<Wrapped, E> {
        Ok(Wrapped::Null)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Wrapped, E> {
        Ok(Wrapped::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Wrapped, E> {
        Ok(Wrapped::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Wrapped, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Wrapped::ByteArray)
    }
}

/// Decodes `wrapped`: `null`, or strict padded standard base64.
fn wrapped<E: de::Error>(
    value: Wrapped,
    strict: &Strict,
    at: String,
) -> std::result::Result<Option<Vec<u8>>, E> {
    match value {
        Wrapped::Null => Ok(None),
        Wrapped::ByteArray => Err(strict.refuse(GoQuirk::WrappedByteArray, at)),
        Wrapped::Str(s) if s.contains(['\r', '\n']) => {
            Err(strict.refuse(GoQuirk::Base64LineBreak, at))
        }
        Wrapped::Str(s) => BASE64
            .decode(&s)
            .map(Some)
            .map_err(|e| E::custom(format_args!("{at}: invalid base64: {e}"))),
    }
}
