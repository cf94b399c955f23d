//! Writing to stdout without dying on a closed pipe, and shared formatting.
//!
//! Text that plugins or guests control is capped wherever hookctl writes it (the audit
//! line, the journal, stderr for libvirt, the terminal) with these limits, and escaped
//! wherever it reaches a terminal ([`virt_hooks_core::text`]).

/// `println!` to stdout, except that a reader who stopped reading (`| head`, `| grep -q`)
/// ends the output quietly instead of a panic: it has what it wanted.
macro_rules! outln {
    () => {
        $crate::output::stdout(b"\n")
    };
    ($($arg:tt)*) => {
        $crate::output::stdout(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}

use std::borrow::Cow;
use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;
use virt_hooks_core::backend::format_duration;
use virt_hooks_core::report::StatusRecord;
use virt_hooks_core::text::{self, Limit};
use virt_hooks_core::HookRecord;

/// A name or a path: a plugin's, an object's, a state directory's (`PATH_MAX`).
pub(crate) const NAME: Limit = Limit::bytes(4096);
/// A status or a message: a crash's or a load error's, why the document was not
/// evaluated, a state directory's trouble.
pub(crate) const MESSAGE: Limit = Limit::bytes(2048);
/// One warning about a hook.
pub(crate) const WARNING: Limit = Limit::bytes(512);
/// How many warnings of one hook are kept.
pub(crate) const WARNINGS: usize = 8;
/// An excerpt of a hook's stderr or stdout: its first 500 characters.
pub(crate) const EXCERPT: Limit = Limit::bytes(2048).chars(500);
/// What the dispatcher passes on to libvirt of a failed plugin's stderr: its first
/// lines, which virsh shows on its error line.
pub(crate) const STDERR_LINES: Limit = Limit::bytes(2048).lines(10).escaped_lines();

/// A name or a path for a terminal: escaped, and cut at [`NAME`].
pub(crate) fn name(s: &str) -> Cow<'_, str> {
    NAME.escaped().apply(s)
}

/// A path for a terminal (see [`name`]).
pub(crate) fn path(p: &Path) -> String {
    name(&p.to_string_lossy()).into_owned()
}

/// A status or a message for a terminal: escaped, on one line, and cut at [`MESSAGE`].
pub(crate) fn message(s: &str) -> Cow<'_, str> {
    MESSAGE.escaped().apply(s)
}

/// A hook's first [`WARNINGS`] warnings, each within `limit` ([`WARNING`] in some
/// form), and how many more there were.
pub(crate) fn capped_warnings(rec: &HookRecord, limit: Limit) -> (Vec<Cow<'_, str>>, usize) {
    let kept = rec.warnings.iter().take(WARNINGS).map(|w| limit.apply(w)).collect();
    (kept, rec.warnings.len().saturating_sub(WARNINGS))
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
pub(crate) fn stdout(bytes: &[u8]) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        if e.kind() != io::ErrorKind::BrokenPipe {
            eprintln!("hookctl: cannot write to stdout: {e}");
        }
    }
}

/// Prints `value` as JSON; on a terminal, with what serde_json leaves raw in strings
/// (C1 controls, bidirectional overrides) written as `\u` escapes.
pub(crate) fn json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => {
            // Always: the same value for a program, and safe when a pipe (`| cat`,
            // `ssh host hookctl … --json`) ends at a terminal after all.
            let mut s = text::escape_json(&s).into_owned();
            s.push('\n');
            stdout(s.as_bytes());
        }
        Err(e) => eprintln!("hookctl: cannot encode JSON: {e}"),
    }
}

/// A path shown relative to the hooks dir when it is inside it.
pub(crate) fn short(path: &str, dir: &Path) -> String {
    Path::new(path)
        .strip_prefix(dir)
        .map_or_else(|_| path.to_owned(), |p| p.display().to_string())
}

/// What a failed plugin said, escaped, in at most 10 lines: the last line it logged at
/// error first (a plugin's log, a script's `<3>` line), then the rest of its stderr.
pub(crate) fn said(rec: &HookRecord) -> String {
    // The error it logged leads (not debug output before it); `<3>` prefixes are for
    // the log, not for virsh's error line.
    let text = virt_hooks_core::outcome::failure_text(&rec.log, &rec.stderr);
    STDERR_LINES.apply(&text).into_owned()
}

/// `exit status 1`, `fatal signal 9`, `timed out after 2s`, ... (whole: each sink caps it)
pub(crate) fn status(rec: &HookRecord) -> String {
    if let Some(why) = &rec.rejected_output {
        return format!("exit status 0, but {why}");
    }
    match &rec.status {
        StatusRecord::Exited { code } => format!("exit status {code}"),
        StatusRecord::Signaled { signal } => virt_hooks_core::outcome::describe_signal(*signal),
        StatusRecord::TimedOut { after_ms } => {
            format!(
                "timed out after {}",
                format_duration(std::time::Duration::from_millis(*after_ms))
            )
        }
        StatusRecord::Crashed { message } => format!("crashed: {message}"),
        StatusRecord::Failed { message } => format!("could not run: {message}"),
        _ => "unknown status".to_owned(),
    }
}

/// The first line of a hook's stderr, for one-line summaries.
pub(crate) fn first_line(text: &str) -> &str {
    text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim()
}

/// Prints a hook's warnings on stderr, escaped and capped.
pub(crate) fn warnings(rec: &HookRecord) {
    warning_lines(rec).iter().for_each(|line| eprintln!("{line}"));
}

/// A hook's warnings as the lines [`warnings`] prints, escaped and capped.
pub(crate) fn warning_lines(rec: &HookRecord) -> Vec<String> {
    let (kept, more) = capped_warnings(rec, WARNING.escaped());
    let mut lines: Vec<String> = (kept.into_iter())
        .map(|w| format!("hookctl: warning: {}: {w}", name(&rec.name)))
        .collect();
    if more > 0 {
        lines.push(format!(
            "hookctl: warning: {}: … ({more} more warnings)",
            name(&rec.name)
        ));
    }
    lines
}
