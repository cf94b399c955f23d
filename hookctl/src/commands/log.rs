//! `hookctl log`: the dispatcher's audit log read back for the operator, one row per
//! hook event, or the matching lines unchanged (`--json`), and new ones as they come
//! (`--follow`, across rotations).
//!
//! The log is written by others (and holds hooks' stderr), so nothing from it reaches
//! the terminal raw: control characters are shown escaped, fields are cut to a width.
//! A line that cannot be read (not an audit record, or longer than [`MAX_LINE`], of
//! which only its first and last [`KEPT_OF_LONG`] bytes are kept in memory) is never
//! skipped: it is a row marked UNREADABLE with its line number and byte offset, showing
//! what could still be read of it (with `--json`, a warning on stderr).

use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use hooks_core::backend::parse_span;
use hooks_core::{text, Driver};

use super::args::parse_driver;
use super::{Outcome, UsageError};
use crate::audit::line::{AuditLine, HookEntry};
use crate::output;

/// What `hookctl log --help` says after the options.
pub(crate) const HELP: &str = "\
Reads the log and its rotations (<log>.5 … <log>.1, oldest first; -v says which files on
stderr). A failed event's DETAIL starts with why: `refused:` (a plugin said no), `not run:`
(a plugin could not be run), `error:` (a plugin broke); an event that went through despite a
failure says `ignored:`; one whose XML a filter rewrote says so. When the rows come from
more than one caller (libvirtd, a shell) or hooks dir, CALLER and HOOKS DIR columns say
which. Control characters and bidi overrides from the log are shown escaped
(\\x1b, \\u{202e}); --json prints the lines as they are (on a terminal, with those as \\u
escapes). A line that cannot be read (not an audit record, or longer than 1 MiB) is a row
marked UNREADABLE, with its line number and what can still be read of it.

Examples:
  hookctl log --failed --object web1          # why did web1 not start?
  hookctl log --plugin 20-limits.sh --since 1d
  hookctl log --failed not-run --since '2024-05-01 08:00' --until '2024-05-01 18:00'
  hookctl log --plugins --object web1 --last 3  # each plugin's result and duration
  hookctl log --follow                        # watch events as libvirt fires them

Exit status: 0, also when nothing matches (stderr says so); 2 when a log cannot be read
or --file does not exist.";

#[derive(Debug, Args)]
pub(crate) struct LogArgs {
    /// The audit log to read (with its rotations PATH.1 … PATH.5). Default: the log each
    /// <DIR>/<driver>.plugins/hookctl.toml names (`log = …`), else
    /// /var/log/libvirt/hookctl.jsonl.
    #[arg(long, value_name = "PATH")]
    pub(crate) file: Option<PathBuf>,
    /// Only events for this guest or network (its exact name; `-` for the daemon).
    #[arg(long, value_name = "NAME")]
    pub(crate) object: Option<String>,
    /// Only this driver: daemon, qemu, lxc, libxl, bhyve or network.
    #[arg(long, value_name = "D", value_parser = parse_driver)]
    pub(crate) driver: Option<Driver>,
    /// Only this operation (prepare, start, started, stopped, release, migrate, ...), or
    /// OP/SUBOP (prepare/begin).
    #[arg(long, value_name = "OP")]
    pub(crate) op: Option<String>,
    /// Only events this plugin ran in: its path or its file name (20-x.sh). With --failed,
    /// only those in which it failed.
    #[arg(long, value_name = "NAME")]
    pub(crate) plugin: Option<String>,
    /// Only failed events (a plugin refused, could not run, timed out or crashed); with
    /// KIND, only failures of that kind. `ignored` and `all` include events that went
    /// through despite a failure (an optional plugin's, or one libvirt ignores).
    #[arg(long, value_name = "KIND", num_args = 0..=1, default_missing_value = "failed", hide_default_value = true)]
    pub(crate) failed: Option<FailedKind>,
    /// Only events since WHEN: a duration back from now (10m, 2h, 1d) or a time
    /// (2024-05-01T12:00:00Z, 2024-05-01T12:00:00+02:00, or local "2024-05-01 12:00").
    #[arg(long, value_name = "WHEN", value_parser = parse_since)]
    pub(crate) since: Option<std::time::SystemTime>,
    /// Only events up to WHEN (the same forms as --since: `--until 1h` ends an hour ago).
    #[arg(long, value_name = "WHEN", value_parser = parse_since, conflicts_with = "follow")]
    pub(crate) until: Option<std::time::SystemTime>,
    /// One row per plugin run (its result and its own duration) instead of one per event.
    #[arg(long)]
    pub(crate) plugins: bool,
    /// Say on stderr which files were read.
    #[arg(long, short = 'v')]
    pub(crate) verbose: bool,
    /// Only the last N matching events.
    #[arg(long, short = 'n', value_name = "N")]
    pub(crate) last: Option<usize>,
    /// Print the matching audit lines unchanged (JSON, one per line) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Keep reading: print new events as they are logged, across rotations (Ctrl-C ends).
    #[arg(long, short = 'f')]
    pub(crate) follow: bool,
}

/// A longer line is not parsed: the dispatcher's own lines are a few KiB per plugin,
/// every text in them being capped.
const MAX_LINE: usize = 1 << 20;
/// Of a longer line, how much of its start and of its end is kept, to read its time,
/// object and result (which serde_json writes after `hooks`, in key order).
const KEPT_OF_LONG: usize = 64 << 10;
/// How often `--follow` looks for new lines.
const POLL: Duration = Duration::from_millis(200);
/// Characters shown of an object name, a plugin's name, and a failure's detail.
const OBJECT_WIDTH: usize = 48;
const NAME_WIDTH: usize = 80;
const DETAIL_WIDTH: usize = 200;

pub(crate) fn exec(hooks_dir: &Path, explicit_dir: bool, args: LogArgs) -> Outcome {
    if let (Some(since), Some(until)) = (args.since, args.until) {
        if since > until {
            return Err(UsageError(
                "--since is later than --until: no event can match; swap them".into(),
            ));
        }
    }
    let logs = which_logs(hooks_dir, explicit_dir, args.file.as_deref())?;
    let ctx = Ctx {
        hooks_dir,
        json: args.json,
        plugins: args.plugins,
        object: args.object,
        driver: args.driver,
        op: args.op,
        plugin: args.plugin,
        failed: args.failed,
        since: args.since,
        until: args.until,
    };
    let mut seen = HashSet::new();
    let mut errors = Vec::new();
    let mut unreadable: Vec<(PathBuf, usize)> = Vec::new();
    let mut per_log = Vec::new();
    let mut tails = Vec::new();
    let mut total = 0usize;
    for log in &logs {
        let (files, live_file) = open_all(log, &mut seen, &mut errors)?;
        let mut events = VecDeque::new();
        let mut read = Vec::new();
        let mut following = false;
        for mut f in files {
            let live = f.path == log.path;
            let mut lines = Lines::default();
            let mut source = Source::new(&f.path);
            let mut bad = 0;
            let mut take = |piece: Piece<'_>| {
                let event = match ctx.event(piece, &mut source) {
                    Parsed::Blank => None,
                    Parsed::Unreadable(event) => {
                        bad += 1;
                        event
                    }
                    Parsed::Filtered => {
                        total += 1;
                        None
                    }
                    Parsed::Event(event) => {
                        total += 1;
                        Some(event)
                    }
                };
                if let Some(event) = event {
                    events.push_back(event);
                    // Memory stays bounded by `--last`; the latest by start time are
                    // kept (a row is written when its event ends, so not the last lines).
                    if let Some(n) = args.last.filter(|n| events.len() > n.saturating_mul(2).max(64)) {
                        events.make_contiguous().sort_by_key(|e| e.time);
                        events.drain(..events.len() - n);
                    }
                }
            };
            let result = read_available(&mut f.file, &mut lines, &mut take);
            if !(live && args.follow) {
                lines.finish(&mut take);
            }
            if bad > 0 {
                unreadable.push((f.path.clone(), bad));
            }
            match result {
                Ok(n) if live && args.follow => {
                    following = true;
                    tails.push(Tail {
                        path: f.path.clone(),
                        current: Some(Current {
                            file: f.file,
                            id: f.id,
                            pos: n,
                        }),
                        lines,
                        source,
                        complained: false,
                    });
                }
                Ok(_) => {}
                Err(e) => errors.push(cannot_read(&f.path, &e)),
            }
            read.push(f.path);
        }
        if args.follow && live_file == Live::Missing && !following {
            tails.push(Tail {
                path: log.path.clone(),
                current: None,
                lines: Lines::default(),
                source: Source::new(&log.path),
                complained: false,
            });
        }
        if args.verbose {
            say_what_was_read(log, &read, live_file);
        }
        per_log.push(events);
    }
    let mut events = merge(per_log);
    if let Some(n) = args.last {
        let cut = events.len().saturating_sub(n);
        events.drain(..cut);
    }
    let waiting = if args.follow { "; waiting for new ones" } else { "" };
    if events.is_empty() && errors.is_empty() && args.last != Some(0) {
        if total == 0 {
            eprintln!("hookctl: no events logged yet{waiting}");
        } else {
            eprintln!(
                "hookctl: no events match ({total} event{} read){waiting}",
                if total == 1 { "" } else { "s" }
            );
        }
    }
    let mut out = Out::new(args.json, args.plugins, &events);
    if let Err(e) = out.print(&events, args.follow) {
        return stdout_gone(e);
    }
    if !unreadable.is_empty() {
        let count: usize = unreadable.iter().map(|(_, n)| n).sum();
        let files: Vec<_> = unreadable
            .iter()
            .map(|(p, n)| format!("{}: {n}", shown(&p.to_string_lossy(), NAME_WIDTH)))
            .collect();
        let how = if args.json {
            "each said above"
        } else {
            "rows marked UNREADABLE"
        };
        eprintln!(
            "hookctl: warning: {count} unreadable line{} (not an audit record, or longer than {} MiB; {how} when they match): {}",
            if count == 1 { "" } else { "s" },
            MAX_LINE >> 20,
            files.join(", ")
        );
    }
    if !errors.is_empty() {
        return Err(UsageError(errors.join("; ")));
    }
    if args.follow {
        if let Err(e) = follow(&ctx, &mut tails, &mut out) {
            return stdout_gone(e);
        }
    }
    Ok(true)
}

/// A reader that went away (`| head`) ends us quietly.
fn stdout_gone(e: io::Error) -> Outcome {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Ok(true)
    } else {
        Err(UsageError(format!("cannot write to stdout: {e}")))
    }
}

/// `--since`: a duration back from now in the sidecars' grammar without its 7-day cap
/// (`10m`, `2h 30m`, `1.5d`: [`parse_span`]) or a time (RFC 3339, or the local
/// `2024-05-01 12:00[:00]` the table shows, or a date). A number needs its unit: `2024`
/// is not taken for seconds.
pub(crate) fn parse_since(s: &str) -> Result<SystemTime, String> {
    let t = s.trim();
    if !t.is_empty() && t.parse::<f64>().is_ok() {
        return Err(format!(
            "`{s}` needs a unit to be a duration (`{t}s`, `{t}m`, `{t}h`, `{t}d`), or a date to be a time"
        ));
    }
    let span = match parse_span(t) {
        Ok(ago) => {
            return SystemTime::now()
                .checked_sub(ago)
                .ok_or_else(|| format!("`{s}` is too long ago"))
        }
        Err(e) => e,
    };
    if let Some(time) = parse_time(s, true) {
        return Ok(time);
    }
    // Digits and units (`-1d`, `99999999999999999999d`), not a date or a clock time:
    // meant as a duration, so say what is wrong with it.
    let unsigned = t.strip_prefix('-').unwrap_or(t);
    if unsigned.starts_with(|c: char| c.is_ascii_digit()) && !unsigned.contains(['-', ':']) {
        return Err(span.to_string());
    }
    Err(format!(
        "`{s}` is neither a duration (10m, 2h, 1d) nor a time (2024-05-01T12:00:00Z, \
2024-05-01T12:00:00+02:00, or local \"2024-05-01 12:00\")"
    ))
}

/// `--failed KIND`: which failures an event must have to be shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum FailedKind {
    /// The event failed, whatever the plugin's failure (`--failed` alone).
    Failed,
    /// The event failed because a plugin said no (exited non-zero).
    Refused,
    /// The event failed because a plugin could not be run.
    NotRun,
    /// The event failed because a plugin broke (timed out, killed, crashed, bad output).
    Error,
    /// A plugin failed and the event went on regardless.
    Ignored,
    /// Failed events and ignored failures.
    All,
}

/// How a plugin failed, as told from its audit entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// It ran and said no: a non-zero exit status.
    Refused,
    /// It never ran as itself: refused by the trust rule, not loadable, not executable
    /// (exit 126/127 from its exec), no time left in the event's budget.
    NotRun,
    /// It ran and broke: timed out, killed by a signal, crashed, printed a bad document.
    Error,
}

impl Failure {
    /// From the `status` hookctl wrote (`output::status`): `exit status N`, `exit status
    /// 0, but …`, `could not run: …`, `timed out after …`, `fatal signal N`, `crashed: …`.
    fn of(status: &str) -> Failure {
        if status.starts_with("could not run") {
            return Failure::NotRun;
        }
        match status
            .strip_prefix("exit status ")
            .map(|rest| rest.split([' ', ',']).next())
        {
            // The shell's and the exec backend's "cannot execute" and "not found".
            Some(Some("126" | "127")) => Failure::NotRun,
            Some(Some("0")) | None => Failure::Error,
            Some(_) => Failure::Refused,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::NotRun => "not run",
            Failure::Error => "error",
        }
    }

    fn filtered_as(self) -> FailedKind {
        match self {
            Failure::Refused => FailedKind::Refused,
            Failure::NotRun => FailedKind::NotRun,
            Failure::Error => FailedKind::Error,
        }
    }
}

// ---------------------------------------------------------------------------------
// Which files

/// One audit log (its rotations beside it) and who writes it.
struct Log {
    path: PathBuf,
    /// `--file`, or the drivers whose dispatcher writes it.
    origin: Origin,
}

enum Origin {
    File,
    Drivers(Vec<&'static str>),
    Default,
}

/// `--file`; else the logs the dispatchers of `hooks_dir` write (each `<driver>.plugins/
/// hookctl.toml`'s `log =`, the default for a plugins dir without one), deduplicated;
/// else the default.
fn which_logs(hooks_dir: &Path, explicit_dir: bool, file: Option<&Path>) -> Result<Vec<Log>, UsageError> {
    if let Some(file) = file {
        return Ok(vec![Log {
            path: file.to_owned(),
            origin: Origin::File,
        }]);
    }
    if explicit_dir {
        super::require_dir(hooks_dir)?;
    }
    let mut logs: Vec<Log> = Vec::new();
    for driver in Driver::ALL {
        let Some(plugins) = super::plugins_dir(hooks_dir, driver) else {
            continue;
        };
        let path = match crate::config::settings(&plugins).log {
            Ok(log) => log,
            Err(e) => {
                eprintln!(
                    "hookctl: warning: {}: {} (its dispatcher writes no audit log until this is fixed; run `hookctl check`)",
                    shown(&e.path.to_string_lossy(), NAME_WIDTH),
                    shown(&e.message, DETAIL_WIDTH)
                );
                continue;
            }
        };
        match logs.iter_mut().find(|l| l.path == path) {
            Some(Log {
                origin: Origin::Drivers(d),
                ..
            }) => d.push(driver.as_str()),
            _ => logs.push(Log {
                path,
                origin: Origin::Drivers(vec![driver.as_str()]),
            }),
        }
    }
    if logs.is_empty() {
        logs.push(Log {
            path: PathBuf::from(crate::config::DEFAULT_LOG),
            origin: Origin::Default,
        });
    }
    Ok(logs)
}

struct Opened {
    path: PathBuf,
    file: File,
    id: (u64, u64),
}

/// What became of the log itself (not its rotations) in [`open_all`].
#[derive(Clone, Copy, PartialEq)]
enum Live {
    Opened,
    Missing,
    /// The same file as one read for another log (another spelling of its path).
    Duplicate,
    Unreadable,
}

/// Opens the log and its rotations, newest first (so that a rotation while we open
/// shows a file twice, skipped by its identity, rather than hiding one), and returns
/// them oldest first. A missing `--file` is an error; any other missing file is not.
fn open_all(
    log: &Log,
    seen: &mut HashSet<(u64, u64)>,
    errors: &mut Vec<String>,
) -> Result<(Vec<Opened>, Live), UsageError> {
    let paths = std::iter::once(log.path.clone())
        .chain((1..=crate::audit::KEEP_ROTATIONS).map(|n| crate::audit::rotated(&log.path, n)));
    let mut files = Vec::new();
    let mut live_file = Live::Missing;
    for path in paths {
        let live = path == log.path;
        let state = match open(&path) {
            Ok((file, id)) if seen.insert(id) => {
                files.push(Opened { path, file, id });
                Live::Opened
            }
            Ok(_) => Live::Duplicate,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if matches!(log.origin, Origin::File) && live {
                    return Err(UsageError(cannot_read(&path, &e)));
                }
                Live::Missing
            }
            Err(e) => {
                errors.push(cannot_read(&path, &e));
                Live::Unreadable
            }
        };
        if live {
            live_file = state;
        }
    }
    files.reverse();
    Ok((files, live_file))
}

/// Opens a log for reading without blocking on a FIFO or taking a terminal; only a
/// regular file is read.
fn open(path: &Path) -> io::Result<(File, (u64, u64))> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok((file, (meta.dev(), meta.ino())))
}

fn cannot_read(path: &Path, e: &io::Error) -> String {
    let hint = if e.kind() == io::ErrorKind::PermissionDenied {
        " (the audit log is readable by its owner and group only: try sudo)"
    } else {
        ""
    };
    format!(
        "cannot read `{}`: {e}{hint}",
        shown(&path.to_string_lossy(), NAME_WIDTH)
    )
}

fn say_what_was_read(log: &Log, read: &[PathBuf], live_file: Live) {
    let origin = match &log.origin {
        Origin::File => String::new(),
        Origin::Default => " (the default log)".to_owned(),
        Origin::Drivers(drivers) => {
            let default = if log.path == Path::new(crate::config::DEFAULT_LOG) {
                ", the default log"
            } else {
                ""
            };
            format!(" (written for {}{default})", drivers.join(", "))
        }
    };
    let path = shown(&log.path.to_string_lossy(), NAME_WIDTH);
    if !read.is_empty() {
        let names: Vec<_> = read.iter().map(|p| shown(&p.to_string_lossy(), NAME_WIDTH)).collect();
        eprintln!("hookctl: read {}{origin}", names.join(", "));
    } else if live_file == Live::Missing {
        eprintln!("hookctl: {path} does not exist yet{origin}");
    } else if live_file == Live::Duplicate {
        eprintln!("hookctl: {path} is a file read above{origin}");
    }
}

// ---------------------------------------------------------------------------------
// Lines

/// Where a line starts in its file: its number (from 1) and its byte offset.
#[derive(Clone, Copy)]
struct At {
    line: u64,
    byte: u64,
}

/// Splits what is read into lines, keeping at most [`MAX_LINE`] bytes of one; of a
/// longer one, its first and last [`KEPT_OF_LONG`] bytes.
#[derive(Default)]
struct Lines {
    /// The line so far; for a long one, its start.
    partial: Vec<u8>,
    long: Option<Long>,
    /// Lines ended so far, and the offset of the next.
    done: u64,
    offset: u64,
}

/// A line past [`MAX_LINE`]: its length so far, and its last bytes (at most twice
/// [`KEPT_OF_LONG`], trimmed as it grows).
struct Long {
    len: u64,
    tail: Vec<u8>,
}

impl Long {
    fn push(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        let bytes = &bytes[bytes.len().saturating_sub(KEPT_OF_LONG)..];
        if self.tail.len() + bytes.len() > 2 * KEPT_OF_LONG {
            let drop = self.tail.len().saturating_sub(KEPT_OF_LONG - bytes.len());
            self.tail.drain(..drop);
        }
        self.tail.extend_from_slice(bytes);
    }

    fn tail(&self) -> &[u8] {
        &self.tail[self.tail.len().saturating_sub(KEPT_OF_LONG)..]
    }
}

enum Piece<'a> {
    Line {
        text: &'a [u8],
        at: At,
    },
    /// Longer than [`MAX_LINE`] bytes: `len` bytes, of which `head` and `tail` were kept.
    TooLong {
        at: At,
        len: u64,
        head: &'a [u8],
        tail: &'a [u8],
    },
}

impl Lines {
    fn feed(&mut self, mut chunk: &[u8], each: &mut dyn FnMut(Piece<'_>)) {
        while let Some(nl) = memchr::memchr(b'\n', chunk) {
            self.end_line(&chunk[..nl], each);
            chunk = &chunk[nl + 1..];
        }
        self.extend(chunk);
    }

    fn extend(&mut self, part: &[u8]) {
        if let Some(long) = &mut self.long {
            long.push(part);
        } else if self.partial.len() + part.len() > MAX_LINE {
            let mut long = Long {
                len: 0,
                tail: Vec::new(),
            };
            long.push(&self.partial);
            long.push(part);
            self.partial.truncate(KEPT_OF_LONG);
            self.partial.shrink_to(KEPT_OF_LONG);
            self.long = Some(long);
        } else {
            self.partial.extend_from_slice(part);
        }
    }

    /// Ends the line so far with `last`, its rest up to the newline.
    fn end_line(&mut self, last: &[u8], each: &mut dyn FnMut(Piece<'_>)) {
        let at = At {
            line: self.done + 1,
            byte: self.offset,
        };
        if self.long.is_none() && self.partial.len() + last.len() > MAX_LINE {
            self.extend(last);
        } else if let Some(long) = &mut self.long {
            long.push(last);
        } else if self.partial.is_empty() {
            each(Piece::Line { text: last, at });
            self.next_line(last.len() as u64);
            return;
        } else {
            self.partial.extend_from_slice(last);
        }
        let len = match self.long.take() {
            Some(long) => {
                each(Piece::TooLong {
                    at,
                    len: long.len,
                    head: &self.partial,
                    tail: long.tail(),
                });
                long.len
            }
            None => {
                each(Piece::Line {
                    text: &self.partial,
                    at,
                });
                self.partial.len() as u64
            }
        };
        self.partial.clear();
        self.next_line(len);
    }

    fn next_line(&mut self, len: u64) {
        self.done += 1;
        self.offset += len + 1;
    }

    /// The end of a file that will not grow: a last line without its newline counts.
    /// What comes next is another file.
    fn finish(&mut self, each: &mut dyn FnMut(Piece<'_>)) {
        if self.long.is_some() || !self.partial.is_empty() {
            self.end_line(&[], each);
        }
        *self = Lines::default();
    }
}

/// Reads `file` to its end, feeding `lines`; the number of bytes read.
fn read_available(file: &mut File, lines: &mut Lines, each: &mut dyn FnMut(Piece<'_>)) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                total += n as u64;
                lines.feed(&buf[..n], each);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------
// Events

/// How `log` reads an audit line ([`AuditLine`], as the dispatcher writes it).
impl AuditLine {
    /// How `h` failed, and whether the event went on regardless (an optional plugin, or
    /// an event that succeeded all the same: a failure libvirt or the dispatcher ignores).
    fn failure(&self, h: &HookEntry) -> Option<(Failure, bool)> {
        (!h.success).then(|| (Failure::of(&h.status), h.optional || self.result == "ok"))
    }

    /// The plugin that failed the event and how, when it failed.
    fn failed_by(&self) -> Option<(&HookEntry, Failure)> {
        if self.result == "ok" {
            return None;
        }
        let h = (self.hooks.iter().find(|h| !h.success && !h.optional))
            .or_else(|| self.hooks.iter().find(|h| !h.success))?;
        Some((h, Failure::of(&h.status)))
    }

    /// Whether the event passes `--failed KIND` (for every plugin, or with `--plugin`
    /// for those `named`).
    fn failed_as(&self, kind: FailedKind, named: Option<&dyn Fn(&str) -> bool>) -> bool {
        let accepts = |failure: Failure, ignored: bool| match kind {
            FailedKind::Failed | FailedKind::All => true,
            FailedKind::Ignored => ignored,
            other => !ignored && other == failure.filtered_as(),
        };
        // A crash line: the dispatcher itself died in a native plugin.
        if let Some(crashed) = &self.crashed_plugin {
            if named.is_none_or(|named| named(crashed)) && accepts(Failure::Error, false) {
                return true;
            }
        }
        let Some(named) = named else {
            return match kind {
                FailedKind::Failed => self.result != "ok",
                FailedKind::All => self.result != "ok" || self.hooks.iter().any(|h| !h.success),
                FailedKind::Ignored => self.hooks.iter().any(|h| self.failure(h).is_some_and(|(_, i)| i)),
                other => self.failed_by().is_some_and(|(_, f)| f.filtered_as() == other),
            };
        };
        self.hooks
            .iter()
            .filter(|h| named(&h.name))
            .filter_map(|h| self.failure(h))
            .any(|(failure, ignored)| accepts(failure, ignored))
    }
}

enum Parsed {
    Blank,
    /// Not an audit record, or too long to parse: shown (`Some`) unless what could be
    /// read of it does not match.
    Unreadable(Option<Event>),
    Filtered,
    Event(Event),
}

struct Event {
    time: SystemTime,
    shown: Shown,
}

enum Shown {
    /// The line as it is in the log.
    Json(Vec<u8>),
    /// Table rows (one per event, or per plugin with `--plugins`), their cells made safe
    /// for a terminal, the last being DETAIL; and where the event came from.
    Rows { rows: Vec<Vec<String>>, from: CameFrom },
    /// With `--json`, a line that cannot be read: said on stderr, made safe.
    Notice(String),
}

/// The file being read, for what a line cannot say itself.
struct Source {
    path: PathBuf,
    /// The time of the last record read from it: an unreadable line after it was
    /// written no earlier.
    last_time: Option<SystemTime>,
}

impl Source {
    fn new(path: &Path) -> Self {
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
    time: Option<String>,
    driver: Option<String>,
    object: Option<String>,
    op: Option<String>,
    subop: Option<String>,
    result: Option<String>,
    failed_plugin: Option<String>,
}

impl Salvaged {
    fn from(parts: &[&[u8]]) -> Self {
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

/// The filters, and how to show what passes them.
struct Ctx<'a> {
    hooks_dir: &'a Path,
    json: bool,
    object: Option<String>,
    driver: Option<Driver>,
    op: Option<String>,
    plugin: Option<String>,
    failed: Option<FailedKind>,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
    /// `--plugins`: a row per plugin run.
    plugins: bool,
}

/// Who ran the dispatcher for an event and from which hooks dir (`?` when the line does
/// not say): shown when the rows do not all share them.
#[derive(Clone, Default, PartialEq, Eq)]
struct CameFrom {
    caller: String,
    hooks_dir: String,
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
    fn event(&self, piece: Piece<'_>, source: &mut Source) -> Parsed {
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

    fn named(&self, name: &str) -> bool {
        self.plugin
            .as_deref()
            .is_some_and(|p| !p.is_empty() && Path::new(name).ends_with(p))
    }

    fn in_time(&self, t: SystemTime) -> bool {
        self.since.is_none_or(|since| t >= since) && self.until.is_none_or(|until| t <= until)
    }

    fn matches(&self, r: &AuditLine, time: SystemTime) -> bool {
        if !self.in_time(time)
            || self.driver.is_some_and(|d| r.driver != d.as_str())
            || self.object.as_deref().is_some_and(|o| r.object != o)
        {
            return false;
        }
        if let Some(op) = &self.op {
            let matched = match op.split_once('/') {
                Some((op, subop)) => r.op == op && r.subop == subop,
                None => r.op == *op,
            };
            if !matched {
                return false;
            }
        }
        let named = |name: &str| self.named(name);
        let named: Option<&dyn Fn(&str) -> bool> = self.plugin.is_some().then_some(&named);
        match (self.failed, named) {
            (Some(kind), named) => r.failed_as(kind, named),
            (None, Some(named)) => {
                r.hooks.iter().any(|h| named(&h.name)) || r.crashed_plugin.as_deref().is_some_and(named)
            }
            (None, None) => true,
        }
    }

    /// The event's row: TIME DRIVER OBJECT OP RESULT DURATION DETAIL.
    fn row(&self, r: &AuditLine, time: SystemTime) -> Vec<String> {
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
    fn plugin_rows(&self, r: &AuditLine, time: SystemTime) -> Vec<Vec<String>> {
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

    /// `<plugin's status>: <first line of its stderr>`, and what kind of failure it was
    /// when the status alone does not say (`exit status 127` is one that did not run).
    fn why(&self, h: &HookEntry, failure: Failure) -> String {
        let mut text = shown(&h.status, DETAIL_WIDTH);
        if failure == Failure::NotRun && h.status.starts_with("exit status") {
            text.push_str(" (could not be executed)");
        }
        let first = output::first_line(&h.stderr);
        if !first.is_empty() {
            let _ = write!(text, ": {}", shown(first, DETAIL_WIDTH));
        }
        text
    }

    /// Why an event failed, starting with what kind of failure (`refused:`, `not run:`,
    /// `error:`): the plugin, how it ended, and the first line of its stderr; for an
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
    hooks_core::backend::format_duration(Duration::from_micros(us))
}

/// For a filter stage whose output became the document: `rewrote the XML (+2 -1 lines)`.
fn rewrote(h: &HookEntry) -> Option<String> {
    let d = h.document.as_ref().filter(|d| d.changed)?;
    Some(format!(
        "rewrote the XML (+{} -{} lines)",
        d.lines_added, d.lines_removed
    ))
}

/// Merges the logs' events by the time each event started. A file holds them in the
/// order they ended (a row is written then), so each is sorted first, stably: lines
/// without a time of their own keep their place after the line before them.
fn merge(mut logs: Vec<VecDeque<Event>>) -> Vec<Event> {
    for log in &mut logs {
        log.make_contiguous().sort_by_key(|e| e.time);
    }
    if logs.len() == 1 {
        return logs.pop().map(Vec::from).unwrap_or_default();
    }
    let mut out = Vec::with_capacity(logs.iter().map(VecDeque::len).sum());
    loop {
        let next = logs
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.front().map(|e| (e.time, i)))
            .min();
        let Some((_, i)) = next else { return out };
        out.extend(logs[i].pop_front());
    }
}

// ---------------------------------------------------------------------------------
// Output

struct Out {
    tty: bool,
    json: bool,
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
    fn new(json: bool, plugins: bool, events: &[Event]) -> Self {
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
    fn print(&mut self, events: &[Event], follow: bool) -> io::Result<()> {
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

    fn row(&self, text: &mut Vec<u8>, cells: &[String]) {
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
fn shown(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", text::escape(&s[..end])),
        None => text::escape(s).into_owned(),
    }
}

// ---------------------------------------------------------------------------------
// Time

/// `2024-05-01 12:00:03` in local time (`TZ`, else `/etc/localtime`, read by jiff), or
/// UTC with a `Z` past the last time jiff gives every offset a date for.
fn local_time(t: SystemTime) -> String {
    match jiff::Timestamp::from_second(unix_seconds(t)) {
        Ok(at) => {
            let local = jiff::tz::TimeZone::system().to_datetime(at);
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                local.year(),
                local.month(),
                local.day(),
                local.hour(),
                local.minute(),
                local.second()
            )
        }
        // The last hours of year 9999, which humantime still writes.
        Err(_) => humantime::format_rfc3339_seconds(t).to_string(),
    }
}

/// Whole seconds since the epoch, truncated toward it (as the table shows a time).
fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// `wall`, a time read as if it were UTC, as the local time it is: with the offset in
/// effect then; at a clock change, the later of a repeated hour, and a skipped one
/// moved past the gap (`2:30` is `3:30`), as hookctl has always read them.
fn from_local(wall: SystemTime) -> Option<SystemTime> {
    let civil = jiff::tz::TimeZone::UTC.to_datetime(jiff::Timestamp::try_from(wall).ok()?);
    let at = jiff::tz::TimeZone::system()
        .to_ambiguous_timestamp(civil)
        .later()
        .ok()?;
    SystemTime::try_from(at).ok()
}

/// RFC 3339 (`Z` or `±HH:MM`; `T` or a space; fractions of a second), a time to the
/// minute, or a date. Without an offset it is local time if `bare_is_local`, else refused.
fn parse_time(s: &str, bare_is_local: bool) -> Option<SystemTime> {
    let s = s.trim();
    let b = s.as_bytes();
    let (body, offset) = if b.last().is_some_and(|&c| c == b'Z' || c == b'z') {
        (&b[..b.len() - 1], Some(0))
    } else if b.len() > 16 && matches!(b[b.len() - 6], b'+' | b'-') && b[b.len() - 3] == b':' {
        let digits = |x: &[u8]| -> Option<i64> {
            x.iter()
                .try_fold(0i64, |n, &d| d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0')))
        };
        let hours = digits(&b[b.len() - 5..b.len() - 3])?;
        let minutes = digits(&b[b.len() - 2..])?;
        let sign = if b[b.len() - 6] == b'-' { -1 } else { 1 };
        (&b[..b.len() - 6], Some(sign * (hours * 3600 + minutes * 60)))
    } else {
        (b, None)
    };
    let mut body = std::str::from_utf8(body).ok()?.to_owned();
    match body.len() {
        10 => body.push_str(" 00:00:00"),
        16 => body.push_str(":00"),
        _ => {}
    }
    // humantime reads the time as UTC; the offset is applied below.
    let as_utc = humantime::parse_rfc3339_weak(&body).ok()?;
    let shift = |t: SystemTime, by: i64| -> Option<SystemTime> {
        if by >= 0 {
            t.checked_sub(Duration::from_secs(by.unsigned_abs()))
        } else {
            t.checked_add(Duration::from_secs(by.unsigned_abs()))
        }
    };
    match offset {
        Some(offset) => shift(as_utc, offset),
        None if bare_is_local => from_local(as_utc),
        None => None,
    }
}

// ---------------------------------------------------------------------------------
// --follow

/// A log followed by `--follow`: the file we read (the one at the path when we last
/// looked; `None` until it exists), and how far.
struct Tail {
    path: PathBuf,
    current: Option<Current>,
    lines: Lines,
    source: Source,
    complained: bool,
}

struct Current {
    file: File,
    id: (u64, u64),
    pos: u64,
}

fn follow(ctx: &Ctx<'_>, tails: &mut [Tail], out: &mut Out) -> io::Result<()> {
    loop {
        std::thread::sleep(POLL);
        let mut events = Vec::new();
        for tail in tails.iter_mut() {
            tail.poll(ctx, &mut events);
        }
        if tails.len() > 1 {
            // Stable: each log's events stay in their order.
            events.sort_by_key(|e| e.time);
        }
        out.print(&events, true)?;
    }
}

impl Tail {
    /// Reads what is new, and the file now at the path once the old one is read.
    fn poll(&mut self, ctx: &Ctx<'_>, events: &mut Vec<Event>) {
        let source = &mut self.source;
        let mut take = |piece: Piece<'_>| match ctx.event(piece, source) {
            Parsed::Event(event) | Parsed::Unreadable(Some(event)) => events.push(event),
            Parsed::Blank | Parsed::Filtered | Parsed::Unreadable(None) => {}
        };
        let take = &mut take;
        let at_path = fs::metadata(&self.path).ok().map(|m| (m.dev(), m.ino()));
        if let Some(current) = &mut self.current {
            let read = read_available(&mut current.file, &mut self.lines, take);
            match read {
                Ok(n) => current.pos += n,
                Err(e) => complain(&self.path, &mut self.complained, &e),
            }
            match at_path {
                // Rotated (renamed, a new file in its place): what was left of the old
                // one has just been read; go on with the new one.
                Some(id) if id != current.id => {
                    self.lines.finish(take);
                    self.current = None;
                }
                // Truncated in place (logrotate's copytruncate): start again.
                Some(_) => {
                    let len = current.file.metadata().map_or(current.pos, |m| m.len());
                    if len < current.pos {
                        self.lines = Lines::default();
                        current.pos = current.file.seek(SeekFrom::Start(0)).unwrap_or(0);
                    }
                }
                // Renamed and not yet replaced: keep reading the old one.
                None => {}
            }
        }
        if self.current.is_none() && at_path.is_some() {
            match open(&self.path) {
                Ok((mut file, id)) => {
                    let pos = match read_available(&mut file, &mut self.lines, take) {
                        Ok(n) => n,
                        Err(e) => {
                            complain(&self.path, &mut self.complained, &e);
                            0
                        }
                    };
                    self.current = Some(Current { file, id, pos });
                    self.complained = false;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => complain(&self.path, &mut self.complained, &e),
            }
        }
    }
}

/// Says once that a followed log cannot be read (we keep trying).
fn complain(path: &Path, complained: &mut bool, e: &io::Error) {
    if !*complained {
        eprintln!("hookctl: warning: {}; still trying", cannot_read(path, e));
        *complained = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--since` reads what a sidecar's `timeout` reads, without its 7-day cap: the
    /// log goes back further than any timeout.
    #[test]
    fn since_reads_the_duration_grammar_of_the_sidecars() {
        for (text, secs) in [
            ("1.5h", 5_400),
            ("2h 30m", 9_000),
            ("1h30m", 5_400),
            ("30d", 30 * 86_400),
            ("0s", 0),
        ] {
            let before = SystemTime::now();
            let since = parse_since(text).unwrap();
            let after = SystemTime::now();
            let ago = Duration::from_secs(secs);
            assert!(before - ago <= since && since <= after - ago, "{text}");
        }
    }

    /// A number without a unit is not taken for seconds (`--since 2024` is no year), and
    /// what cannot be a time back from now says why.
    #[test]
    fn since_refuses_bare_numbers_and_hostile_durations() {
        for (text, want) in [
            ("2024", "needs a unit"),
            ("90", "needs a unit"),
            ("1e9", "needs a unit"),
            ("99999999999999999999d", "too long"),
            ("18446744073709551615s 1s", "too long"),
            ("1e400d", "too long"),
            ("-1d", "not a positive"),
            ("NaNd", "neither a duration"),
            ("last tuesday", "neither a duration"),
        ] {
            let e = parse_since(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
            assert!(e.contains(&format!("`{text}`")), "{text}: {e}");
        }
    }
}
