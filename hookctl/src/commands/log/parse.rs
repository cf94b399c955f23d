//! A line of the log as an event to show: an audit record that passes the filters, or
//! a line that cannot be read, with what can still be read of it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use virt_hooks_core::text;

use super::filter::Ctx;
use super::output::{shown, DETAIL_WIDTH, NAME_WIDTH, OBJECT_WIDTH};
use super::read::{At, Piece, MAX_LINE};
use super::time::{local_time, parse_time};
use super::FailedKind;
use crate::audit::line::AuditLine;
use crate::output;

pub(super) enum Parsed {
    Blank,
    /// Not an audit record, or too long to parse: shown (`Some`) unless what could be
    /// read of it does not match.
    Unreadable(Option<Event>),
    Filtered,
    Event(Event),
}

pub(super) struct Event {
    pub(super) time: SystemTime,
    pub(super) shown: Shown,
}

pub(super) enum Shown {
    /// The line as it is in the log.
    Json(Vec<u8>),
    /// Table rows (one per event, or per plugin with `--plugins`), their cells made safe
    /// for a terminal, the last being DETAIL; and where the event came from.
    Rows { rows: Vec<Vec<String>>, from: CameFrom },
    /// With `--json`, a line that cannot be read: said on stderr, made safe.
    Notice(String),
}

/// The file being read, for what a line cannot say itself.
pub(super) struct Source {
    pub(super) path: PathBuf,
    /// The time of the last record read from it: an unreadable line after it was
    /// written no earlier.
    last_time: Option<SystemTime>,
}

impl Source {
    pub(super) fn new(path: &Path) -> Self {
        Source {
            path: path.to_owned(),
            last_time: None,
        }
    }
}

/// The top-level fields of an audit line that can be found in what is kept of one that
/// cannot be parsed. These keys occur nowhere else in a line (see `audit/line.rs`)
/// and a string's own quotes are escaped, so `"key":"` only ever starts the field.
struct Salvaged {
    pub(super) time: Option<String>,
    pub(super) driver: Option<String>,
    pub(super) object: Option<String>,
    pub(super) op: Option<String>,
    pub(super) subop: Option<String>,
    pub(super) result: Option<String>,
    failed_plugin: Option<String>,
}

impl Salvaged {
    pub(super) fn from(parts: &[&[u8]]) -> Self {
        let find = |key: &str| parts.iter().find_map(|part| string_field(part, key));
        Salvaged {
            time: find("time"),
            driver: find("driver"),
            object: find("object"),
            op: find("op"),
            subop: find("subop"),
            result: find("result"),
            failed_plugin: find("failed_plugin"),
        }
    }

    /// `2026-03-01T10:00:01Z qemu web1 start begin failed <plugin>`, as far as it is known.
    fn summary(&self) -> String {
        let fields = [
            &self.time,
            &self.driver,
            &self.object,
            &self.op,
            &self.subop,
            &self.result,
            &self.failed_plugin,
        ];
        let known: Vec<&str> = fields.iter().filter_map(|f| f.as_deref()).collect();
        shown(&known.join(" "), DETAIL_WIDTH)
    }
}

/// The value of the string field `key` in `bytes`, if it is whole there.
fn string_field(bytes: &[u8], key: &str) -> Option<String> {
    let pattern = format!("\"{key}\":\"");
    let mut from = 0;
    while let Some(found) = memchr::memmem::find(&bytes[from..], pattern.as_bytes()) {
        let start = from + found;
        from = start + 1;
        // A key follows `{` or `,` (a part kept of a long line may start anywhere).
        if !matches!(
            bytes[..start].iter().rev().find(|b| !b.is_ascii_whitespace()),
            Some(b'{' | b',')
        ) {
            continue;
        }
        let value = start + pattern.len() - 1;
        let mut end = value + 1;
        loop {
            match bytes.get(end)? {
                b'\\' => end += 2,
                b'"' => break,
                _ => end += 1,
            }
        }
        let text = String::from_utf8_lossy(&bytes[value..=end]);
        return serde_json::from_str(&text).ok();
    }
    None
}

/// Who ran the dispatcher for an event and from which hooks dir (`?` when the line does
/// not say): shown when the rows do not all share them.
#[derive(Clone, Default, PartialEq, Eq)]
pub(super) struct CameFrom {
    pub(super) caller: String,
    pub(super) hooks_dir: String,
}

/// The hooks dir of a plugins dir `<hooks>/<driver>.plugins`; another plugins dir (run by
/// `hookctl dispatch --plugins DIR`) as it is.
fn hooks_dir_of(plugins_dir: &str, driver: &str) -> String {
    let dir = Path::new(plugins_dir);
    let named_for_driver = dir
        .file_name()
        .is_some_and(|n| n.to_str() == Some(&format!("{driver}.plugins")));
    match dir.parent() {
        Some(hooks) if named_for_driver => hooks.to_string_lossy().into_owned(),
        _ => plugins_dir.to_owned(),
    }
}

impl Ctx<'_> {
    pub(super) fn event(&self, piece: Piece<'_>, source: &mut Source) -> Parsed {
        let (line, at) = match piece {
            Piece::Line { text, at } => (text, at),
            Piece::TooLong { at, len, head, tail } => {
                let why = format!("longer than {} MiB ({})", MAX_LINE >> 20, text::size(len));
                return self.unreadable(source, at, &why, &[head, tail], None);
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            return Parsed::Blank;
        }
        let parsed = match serde_json::from_slice::<AuditLine>(line) {
            // The crash handler writes a plugin's path as it is, bytes that are not
            // UTF-8 included: read such a line lossily rather than lose it.
            Err(_) if std::str::from_utf8(line).is_err() => {
                serde_json::from_str::<AuditLine>(&String::from_utf8_lossy(line))
            }
            parsed => parsed,
        };
        let record = match parsed {
            Ok(record) => record,
            Err(e) => {
                let why = format!("not an audit record ({e})");
                return self.unreadable(source, at, &why, &[line], Some(line));
            }
        };
        let Some(time) = parse_time(&record.time, false) else {
            let why = format!("not an audit record (its time `{}` is not RFC 3339)", record.time);
            return self.unreadable(source, at, &why, &[line], Some(line));
        };
        source.last_time = Some(time);
        if !self.matches(&record, time) {
            return Parsed::Filtered;
        }
        let shown = if self.json {
            Shown::Json(line.to_vec())
        } else {
            let from = CameFrom {
                caller: record
                    .caller
                    .as_ref()
                    .map_or_else(|| "?".to_owned(), |c| shown(&c.name, 16)),
                hooks_dir: record.plugins_dir.as_deref().map_or_else(
                    || "?".to_owned(),
                    |dir| shown(&hooks_dir_of(dir, &record.driver), NAME_WIDTH),
                ),
            };
            let rows = if self.plugins {
                self.plugin_rows(&record, time)
            } else {
                vec![self.row(&record, time)]
            };
            Shown::Rows { rows, from }
        };
        Parsed::Event(Event { time, shown })
    }

    /// A line that cannot be read, `why`, with what can be read of `parts` of it (and
    /// the start of the line itself, `excerpt`, when it is short enough to have one).
    fn unreadable(&self, source: &mut Source, at: At, why: &str, parts: &[&[u8]], excerpt: Option<&[u8]>) -> Parsed {
        let found = Salvaged::from(parts);
        let time = found.time.as_deref().and_then(|t| parse_time(t, false));
        let known = |value: &Option<String>, wanted: &str| value.as_deref().is_none_or(|v| v == wanted);
        let op_matches = match self.op.as_deref().map(|op| op.split_once('/').unwrap_or((op, ""))) {
            None => true,
            Some((op, "")) => known(&found.op, op),
            Some((op, subop)) => known(&found.op, op) && known(&found.subop, subop),
        };
        let matches = time.or(source.last_time).is_none_or(|t| self.in_time(t))
            && self.driver.is_none_or(|d| known(&found.driver, d.as_str()))
            && self.object.as_deref().is_none_or(|o| known(&found.object, o))
            && op_matches
            && !(self
                .failed
                .is_some_and(|k| !matches!(k, FailedKind::Ignored | FailedKind::All))
                && self.plugin.is_none()
                && found.result.as_deref() == Some("ok"));
        if !matches {
            return Parsed::Unreadable(None);
        }
        let file = shown(&source.path.to_string_lossy(), NAME_WIDTH);
        let mut detail = format!(
            "line {} (byte {}) of {file}: {}",
            at.line,
            at.byte,
            shown(why, DETAIL_WIDTH)
        );
        if let Some(plugin) = &found.failed_plugin {
            let _ = write!(
                detail,
                "; failed plugin: {}",
                shown(&output::short(plugin, self.hooks_dir), NAME_WIDTH)
            );
        }
        if let Some(line) = excerpt {
            let _ = write!(detail, ": {}", shown(&String::from_utf8_lossy(line), 80));
        }
        let shown_as = if self.json {
            let summary = found.summary();
            let read = if summary.is_empty() {
                String::new()
            } else {
                format!(" (what could be read: {summary})")
            };
            Shown::Notice(format!(
                "hookctl: warning: {file}: line {} (byte {}) is unreadable: {}{read}",
                at.line,
                at.byte,
                shown(why, DETAIL_WIDTH)
            ))
        } else {
            let cell =
                |value: &Option<String>, width| value.as_deref().map_or_else(|| "?".to_owned(), |v| shown(v, width));
            let op = match (&found.op, &found.subop) {
                (Some(op), Some(subop)) if !subop.is_empty() => format!("{op}/{subop}"),
                (op, _) => op.clone().unwrap_or_else(|| "?".to_owned()),
            };
            let mut row = vec![
                time.map_or_else(|| "?".to_owned(), local_time),
                cell(&found.driver, 16),
                cell(&found.object, OBJECT_WIDTH),
                shown(&op, 40),
                cell(&found.result, 16),
                "-".to_owned(),
                format!("UNREADABLE {detail}"),
            ];
            if self.plugins {
                let plugin = found.failed_plugin.as_deref().map_or_else(
                    || "?".to_owned(),
                    |p| shown(&output::short(p, self.hooks_dir), NAME_WIDTH),
                );
                row.insert(4, plugin);
            }
            Shown::Rows {
                rows: vec![row],
                from: CameFrom::default(),
            }
        };
        // What follows sorts after it, as in the file.
        source.last_time = time.or(source.last_time);
        let time = source.last_time.unwrap_or(UNIX_EPOCH);
        Parsed::Unreadable(Some(Event { time, shown: shown_as }))
    }
}
