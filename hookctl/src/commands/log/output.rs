//! What reaches the terminal: the table (cells escaped and cut to a width) or the
//! audit lines as they are (`--json`).

use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::time::{Duration, SystemTime};

use virt_hooks_core::outcome::LogLevel;
use virt_hooks_core::text;

use super::filter::{Ctx, Failure};
use super::parse::{CameFrom, Event, Shown};
use super::time::local_time;
use crate::audit::line::{AuditLine, HookEntry};
use crate::output;

/// Characters shown of an object name, a plugin's name, and a failure's detail.
pub(super) const OBJECT_WIDTH: usize = 48;
pub(super) const NAME_WIDTH: usize = 80;
pub(super) const DETAIL_WIDTH: usize = 200;

impl Ctx<'_> {
    /// The event's row: TIME DRIVER OBJECT OP RESULT DURATION DETAIL.
    pub(super) fn row(&self, r: &AuditLine, time: SystemTime) -> Vec<String> {
        let duration = r.duration_us.map_or_else(|| "-".to_owned(), micros);
        vec![
            local_time(time),
            shown(&r.driver, 16),
            shown(&r.object, OBJECT_WIDTH),
            shown(&op_of(r), 40),
            shown(&r.result, 16),
            duration,
            self.detail(r),
        ]
    }

    /// `--plugins`: a row per plugin run, TIME DRIVER OBJECT OP PLUGIN RESULT DURATION
    /// DETAIL, RESULT being the plugin's (ok, refused, not run, error, ignored); with
    /// `--plugin`, that plugin's only. An event that ran none has one row saying so.
    pub(super) fn plugin_rows(&self, r: &AuditLine, time: SystemTime) -> Vec<Vec<String>> {
        let event = |plugin: String, result: String, duration: String, detail: String| {
            vec![
                local_time(time),
                shown(&r.driver, 16),
                shown(&r.object, OBJECT_WIDTH),
                shown(&op_of(r), 40),
                plugin,
                result,
                duration,
                detail,
            ]
        };
        let name = |n: &str| shown(&output::short(n, self.hooks_dir), NAME_WIDTH);
        if let Some(plugin) = &r.crashed_plugin {
            let signal = r.signal.map_or_else(String::new, |s| format!(" with signal {s}"));
            let detail = format!("crashed the dispatcher{signal}");
            return vec![event(name(plugin), "error".into(), "-".into(), detail)];
        }
        let mut rows: Vec<_> = (r.hooks.iter())
            .filter(|h| self.plugin.is_none() || self.named(&h.name))
            .map(|h| {
                let duration = h.duration_us.map_or_else(|| "-".to_owned(), micros);
                let (result, detail) = match r.failure(h) {
                    None => ("ok".to_owned(), rewrote(h).unwrap_or_default()),
                    Some((failure, ignored)) => {
                        let result = if ignored { "ignored" } else { failure.as_str() };
                        (result.to_owned(), self.why(h, failure))
                    }
                };
                event(name(&h.name), result, duration, detail)
            })
            .collect();
        if rows.is_empty() && self.plugin.is_none() {
            let duration = r.duration_us.map_or_else(|| "-".to_owned(), micros);
            let detail = self.detail(r);
            rows.push(event("(none ran)".into(), shown(&r.result, 16), duration, detail));
        }
        rows
    }

    /// `<plugin's status>: <the line that explains it>`, and what kind of failure it was
    /// when the status alone does not say (`exit status 127` is one that did not run).
    fn why(&self, h: &HookEntry, failure: Failure) -> String {
        let mut text = shown(&h.status, DETAIL_WIDTH);
        if failure == Failure::NotRun && h.status.starts_with("exit status") {
            text.push_str(" (could not be executed)");
        }
        if let Some(line) = virt_hooks_core::outcome::explaining_line(&h.log, h.stderr.as_bytes()) {
            let _ = write!(text, ": {}", shown(&line, DETAIL_WIDTH));
        }
        text
    }

    /// Why an event failed, starting with what kind of failure (`refused:`, `not run:`,
    /// `error:`): the plugin, how it ended, and the line that explains it; for an
    /// event that went through, a failure that was ignored (`ignored:`); and whether a
    /// filter rewrote the XML.
    fn detail(&self, r: &AuditLine) -> String {
        let name = |n: &str| shown(&output::short(n, self.hooks_dir), NAME_WIDTH);
        if let Some(plugin) = &r.crashed_plugin {
            let signal = r.signal.map_or_else(String::new, |s| format!(" with signal {s}"));
            return format!("error: {}: crashed the dispatcher{signal}", name(plugin));
        }
        // With --plugin, its own failure; else the one that failed the event; else the
        // first that failed.
        let pick = (r.hooks.iter())
            .filter(|h| !h.success)
            .find(|h| self.named(&h.name))
            .map(|h| (h, Failure::of(&h.status)))
            .or_else(|| r.failed_by())
            .or_else(|| r.hooks.iter().find(|h| !h.success).map(|h| (h, Failure::of(&h.status))));
        let ignored_config = r.config_error.as_deref().map(|why| {
            format!(
                "hookctl.toml has a mistake: {}",
                shown(output::first_line(why), DETAIL_WIDTH)
            )
        });
        let mut text = String::new();
        if let Some((h, failure)) = pick {
            let ignored = r.failure(h).is_some_and(|(_, ignored)| ignored);
            let kind = if ignored { "ignored" } else { failure.as_str() };
            let _ = write!(text, "{kind}: {}: {}", name(&h.name), self.why(h, failure));
        }
        if pick.is_none() && r.result == "ok" {
            // What went well, in the plugins' own words: the last line logged above debug.
            let said = (r.hooks.iter().rev())
                .find_map(|h| (h.log.iter().rev()).find(|l| l.level > LogLevel::Debug).map(|l| (h, l)));
            if let Some((h, line)) = said {
                let _ = write!(text, "{}: {}", name(&h.name), shown(&line.message, DETAIL_WIDTH));
            }
        }
        if r.document_changed && r.result == "ok" {
            let by: Vec<_> = (r.hooks.iter())
                .filter_map(|h| rewrote(h).map(|what| format!("{} {what}", name(&h.name))))
                .collect();
            let sep = if text.is_empty() { "" } else { "; " };
            match by.is_empty() {
                true => {
                    let _ = write!(text, "{sep}XML rewritten");
                }
                false => {
                    let _ = write!(text, "{sep}XML rewritten: {}", by.join(", "));
                }
            }
        }
        // What an `ok` row would otherwise hide: state kept for the operator, entries
        // that look meant to run but did not, state this last event could not reach.
        let mut more: Vec<String> = Vec::new();
        if !r.state_kept.is_empty() {
            let kept: Vec<_> = r.state_kept.iter().map(|p| name(p)).collect();
            more.push(format!("state kept: {}", kept.join(", ")));
        }
        if !r.skipped.is_empty() {
            let skipped: Vec<_> = (r.skipped.iter())
                .map(|e| format!("{} ({})", name(&e.path), e.why))
                .collect();
            more.push(format!("did not run: {}", skipped.join(", ")));
        }
        if !r.state_orphaned.is_empty() {
            let left: Vec<_> = r.state_orphaned.iter().map(|p| name(p)).collect();
            more.push(format!("state not reached (orphaned): {}", left.join(", ")));
        }
        for note in more {
            let sep = if text.is_empty() { "" } else { "; " };
            let _ = write!(text, "{sep}{note}");
        }
        match (ignored_config, text.is_empty()) {
            (Some(note), true) => note,
            (Some(note), false) => format!("{text} ({note})"),
            (None, _) => text,
        }
    }
}

/// `prepare/begin`, or the op alone when there is no subop.
fn op_of(r: &AuditLine) -> String {
    if r.subop.is_empty() {
        r.op.clone()
    } else {
        format!("{}/{}", r.op, r.subop)
    }
}

fn micros(us: u64) -> String {
    virt_hooks_core::backend::format_duration(Duration::from_micros(us))
}

/// For a filter stage whose output became the document: `rewrote the XML (+2 -1 lines)`.
pub(super) fn rewrote(h: &HookEntry) -> Option<String> {
    let d = h.document.as_ref().filter(|d| d.changed)?;
    Some(format!(
        "rewrote the XML (+{} -{} lines)",
        d.lines_added, d.lines_removed
    ))
}

pub(super) struct Out {
    tty: bool,
    pub(super) json: bool,
    header: Vec<&'static str>,
    /// The widths of every column but the last (DETAIL), CALLER and HOOKS DIR included.
    widths: Vec<usize>,
    /// Whether CALLER and HOOKS DIR are shown: the rows printed first differ in them.
    caller_column: bool,
    dir_column: bool,
    /// What the rows printed first share, when they do: a row printed later (`--follow`)
    /// that differs says where it came from in its DETAIL.
    common: Option<CameFrom>,
    header_done: bool,
}

const HEADER: [&str; 7] = ["TIME", "DRIVER", "OBJECT", "OP", "RESULT", "DURATION", "DETAIL"];
const PLUGINS_HEADER: [&str; 8] = [
    "TIME", "DRIVER", "OBJECT", "OP", "PLUGIN", "RESULT", "DURATION", "DETAIL",
];

impl Out {
    pub(super) fn new(json: bool, plugins: bool, events: &[Event]) -> Self {
        // Room for what usually comes, so that rows printed later line up too.
        let (mut header, mut widths) = if plugins {
            (PLUGINS_HEADER.to_vec(), vec![19, 7, 12, 15, 20, 7, 8])
        } else {
            (HEADER.to_vec(), vec![19, 7, 12, 15, 7, 8])
        };
        let froms: Vec<&CameFrom> = (events.iter())
            .filter_map(|e| match &e.shown {
                Shown::Rows { from, .. } if *from != CameFrom::default() => Some(from),
                _ => None,
            })
            .collect();
        let differ = |field: fn(&CameFrom) -> &String| froms.windows(2).any(|w| field(w[0]) != field(w[1]));
        let caller_column = differ(|f| &f.caller);
        let dir_column = differ(|f| &f.hooks_dir);
        let at = header.len() - 1;
        if dir_column {
            header.insert(at, "HOOKS DIR");
            widths.push(20);
        }
        if caller_column {
            header.insert(at, "CALLER");
            widths.insert(at, 8);
        }
        let mut out = Out {
            tty: io::stdout().is_terminal(),
            json,
            header,
            widths,
            caller_column,
            dir_column,
            common: (!caller_column && !dir_column)
                .then(|| froms.first().map(|f| (*f).clone()))
                .flatten(),
            header_done: false,
        };
        for event in events {
            if let Shown::Rows { rows, from } = &event.shown {
                for row in rows {
                    let row = out.with_origin(row, from);
                    for (w, cell) in out.widths.iter_mut().zip(&row) {
                        *w = (*w).max(cell.chars().count());
                    }
                }
            }
        }
        out
    }

    /// `row` with the CALLER and HOOKS DIR cells this table shows, or a note in DETAIL for
    /// a row from elsewhere than the rest.
    fn with_origin(&self, row: &[String], from: &CameFrom) -> Vec<String> {
        let mut row = row.to_vec();
        let Some(detail) = row.pop() else { return row };
        if self.caller_column {
            row.push(from.caller.clone());
        }
        if self.dir_column {
            row.push(from.hooks_dir.clone());
        }
        match &self.common {
            Some(common) if common != from && *from != CameFrom::default() => {
                let sep = if detail.is_empty() { "" } else { " " };
                row.push(format!("{detail}{sep}(from {}, {})", from.caller, from.hooks_dir));
            }
            _ => row.push(detail),
        }
        row
    }

    /// Prints the events (the table's header first, also when `follow` waits for rows).
    pub(super) fn print(&mut self, events: &[Event], follow: bool) -> io::Result<()> {
        let mut bytes = Vec::new();
        if !self.json && !self.header_done && (follow || !events.is_empty()) {
            let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
            self.row(&mut bytes, &header);
            self.header_done = true;
        }
        for event in events {
            match &event.shown {
                Shown::Rows { rows, from } => {
                    if self.common.is_none() && !self.caller_column && !self.dir_column {
                        // The first row of a table that started empty (`--follow`).
                        self.common = Some(from.clone());
                    }
                    for row in rows {
                        let row = self.with_origin(row, from);
                        self.row(&mut bytes, &row);
                    }
                }
                Shown::Json(line) if self.tty => {
                    // Lossily: bytes that are not UTF-8 would not be escaped.
                    let line = String::from_utf8_lossy(line);
                    bytes.extend_from_slice(text::escape_json(&line).as_bytes());
                    bytes.push(b'\n');
                }
                Shown::Json(line) => {
                    bytes.extend_from_slice(line);
                    bytes.push(b'\n');
                }
                Shown::Notice(notice) => eprintln!("{notice}"),
            }
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let mut stdout = io::stdout().lock();
        stdout.write_all(&bytes)?;
        stdout.flush()
    }

    pub(super) fn row(&self, text: &mut Vec<u8>, cells: &[String]) {
        let mut line = String::new();
        let Some((detail, padded)) = cells.split_last() else {
            return;
        };
        for (cell, width) in padded.iter().zip(&self.widths) {
            let pad = width.saturating_sub(cell.chars().count());
            let _ = write!(line, "{cell}{:pad$}  ", "");
        }
        line.push_str(detail);
        text.extend_from_slice(line.trim_end().as_bytes());
        text.push(b'\n');
    }
}

/// `s` made safe for a terminal ([`text::escape`]: control characters, among them ANSI
/// escapes and carriage returns, and the bidirectional controls that reorder what
/// follows) and cut to `max` of its characters: a table's cell, `…` marking the cut.
pub(super) fn shown(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", text::escape(&s[..end])),
        None => text::escape(s).into_owned(),
    }
}
