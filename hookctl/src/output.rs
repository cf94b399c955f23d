//! Writing to stdout without dying on a closed pipe, and shared formatting.

use std::io::{self, Write};
use std::path::Path;

use hooks_core::backend::format_duration;
use hooks_core::{HookRecord, StatusRecord};
use serde::Serialize;

/// Writes to stdout; a reader that went away (`| head`) is not an error.
pub(crate) fn stdout(bytes: &[u8]) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        if e.kind() != io::ErrorKind::BrokenPipe {
            eprintln!("hookctl: cannot write to stdout: {e}");
        }
    }
}

pub(crate) fn json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(mut s) => {
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

/// `exit status 1`, `fatal signal 9`, `timed out after 2s`, ...
pub(crate) fn status(rec: &HookRecord) -> String {
    if let Some(why) = &rec.rejected_output {
        return format!("exit status 0, but {why}");
    }
    match &rec.status {
        StatusRecord::Exited { code } => format!("exit status {code}"),
        StatusRecord::Signaled { signal } => format!("fatal signal {signal}"),
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

pub(crate) fn warnings(rec: &HookRecord) {
    for w in &rec.warnings {
        eprintln!("hookctl: warning: {}: {w}", rec.name);
    }
}
