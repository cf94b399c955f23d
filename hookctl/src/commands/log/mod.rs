//! `hookctl log`: the dispatcher's audit log read back for the operator, one row per
//! hook event, or the matching lines unchanged (`--json`), and new ones as they come
//! (`--follow`, across rotations).
//!
//! The log is written by others (and holds hooks' stderr), so nothing from it reaches
//! the terminal raw: control characters are shown escaped, fields are cut to a width.
//! A line that cannot be read (not an audit record, or longer than [`read::MAX_LINE`], of
//! which only its first and last [`read::KEPT_OF_LONG`] bytes are kept in memory) is never
//! skipped: it is a row marked UNREADABLE with its line number and byte offset, showing
//! what could still be read of it (with `--json`, a warning on stderr).

use std::collections::{HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};

use clap::Args;
use virt_hooks_core::Driver;

use super::args::parse_driver;
use super::{Outcome, UsageError};

mod filter;
mod follow;
mod output;
mod parse;
mod read;
mod time;

use filter::Ctx;
use follow::{follow, Current, Tail};
use output::{shown, Out, NAME_WIDTH};
use parse::{Event, Parsed, Source};
use read::{cannot_read, open_all, read_available, say_what_was_read, which_logs, Lines, Live, Piece, MAX_LINE};
pub(crate) use time::parse_since;

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
    /// <DIR>/<driver>.plugins/hookctl.toml names (`log = …`), else, for /etc/libvirt/hooks
    /// only, /var/log/libvirt/hookctl.jsonl (another hooks dir keeps none by default).
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

pub(crate) fn exec(hooks_dir: &Path, explicit_dir: bool, args: LogArgs) -> Outcome {
    if let (Some(since), Some(until)) = (args.since, args.until) {
        if since > until {
            return Err(UsageError(
                "--since is later than --until: no event can match; swap them".into(),
            ));
        }
    }
    let logs = which_logs(hooks_dir, explicit_dir, args.file.as_deref())?;
    if logs.is_empty() {
        return Ok(true);
    }
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
        // A log whose directory is missing is not "not written yet": its dispatcher
        // refuses the events it could not record, and this is all it will ever show.
        if live_file == Live::Missing
            && log
                .path
                .parent()
                .is_some_and(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            eprintln!(
                "hookctl: warning: {}: its directory does not exist, so the dispatcher that logs there records nothing and refuses what it can (run `hookctl check`)",
                crate::output::path(&log.path)
            );
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
