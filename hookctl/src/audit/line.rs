//! One line of the audit log: what the dispatcher writes for an event, and what
//! `hookctl log` reads back. One type for both, so a field cannot be written under one
//! name and read under another.
//!
//! Every text a plugin or a guest controls is capped when the line is made (`output`'s
//! limits, measured as JSON), so a line stays a few KiB per plugin. The fields are
//! declared in alphabetical order, the order the line has always been written in: a
//! reader of a line too long to parse finds `time`, `object` and `result` after `hooks`
//! (`commands/log`). A reader needs only `time`, `driver`, `object`, `op` and `result`
//! (and a hook's `name` and `success`); every other field has a default, so lines
//! written before it existed still read.

use std::path::Path;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use virt_hooks_core::outcome::LogLine;
use virt_hooks_core::text::Limit;
use virt_hooks_core::{HookEvent, HookRecord, RawEvent, Report};

use crate::output;

/// The format's version: readers may rely on the fields of this version.
pub(crate) const AUDIT_VERSION: u32 = 1;

/// One audit line: an event, who ran it, and each plugin's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AuditLine {
    /// Who ran the dispatcher: libvirtd, or someone trying a hook by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) caller: Option<Caller>,
    /// The dispatcher's `hookctl.toml` could not be used (its first mistake).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) config_error: Option<String>,
    /// Written by older hookctls, which ran native plugins in their own process, when
    /// one crashed the dispatcher: its path (such a line has no `hooks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) crashed_plugin: Option<String>,
    /// Whether a filter's output became the document libvirt uses.
    #[serde(default)]
    pub(crate) document_changed: bool,
    /// Why `[match] xpath` could not evaluate the document (every plugin that matches
    /// on it ran: it fails closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) document_not_evaluated: Option<String>,
    pub(crate) driver: String,
    /// The whole event, in microseconds.
    #[serde(default)]
    pub(crate) duration_us: Option<u64>,
    #[serde(default)]
    pub(crate) extra: String,
    /// The plugin that failed the event, or else the first that failed (`null`).
    #[serde(default)]
    pub(crate) failed_plugin: Option<String>,
    #[serde(default)]
    pub(crate) hooks: Vec<HookEntry>,
    /// Why the line did not reach the log (then it went to stderr instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) not_logged: Option<String>,
    pub(crate) object: String,
    pub(crate) op: String,
    /// The dispatcher's process id.
    #[serde(default)]
    pub(crate) pid: u32,
    /// The plugins dir the dispatcher ran (absolute), which tells one hooks dir's rows
    /// from another's. Lines written before it have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) plugins_dir: Option<String>,
    /// What libvirt does with a failure (`abort`, `ignore`, `kill-object`, `report`).
    #[serde(default)]
    pub(crate) policy: String,
    /// `ok` or `failed`: whether libvirt was told the event succeeded.
    pub(crate) result: String,
    /// Written by older hookctls with `crashed_plugin`: the signal that killed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) signal: Option<i64>,
    /// Entries that look meant to run but did not (a script without its execute bit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) skipped: Vec<SkippedLine>,
    /// Plugins whose failure at `reconnect` was logged instead of killing the guest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) spared_plugins: Vec<String>,
    /// After an object's last event: state directories that could not be removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) state_errors: Vec<String>,
    /// After an object's last event: state directories kept for the operator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) state_kept: Vec<String>,
    /// At an object's last event: its state under the default root, which
    /// `hookctl.toml` no longer names (the event did not reach it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) state_orphaned: Vec<String>,
    #[serde(default)]
    pub(crate) subop: String,
    /// When the event started: RFC 3339, UTC, to the microsecond.
    pub(crate) time: String,
    /// [`AUDIT_VERSION`] when written.
    #[serde(default)]
    pub(crate) v: u32,
}

/// An entry that did not run although it looks meant to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SkippedLine {
    pub(crate) path: String,
    pub(crate) why: String,
}

/// Who ran the dispatcher: its parent process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Caller {
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) pid: u32,
}

/// One plugin's run within an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HookEntry {
    #[serde(default)]
    pub(crate) backend: String,
    /// How its processes were contained (exec plugins): `cgroup` or `subreaper`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) containment: Option<String>,
    /// The CPU time its cgroup measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cpu_us: Option<u64>,
    /// For a filter stage that succeeded: what it did to the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) document: Option<DocumentSummary>,
    #[serde(default)]
    pub(crate) duration_us: Option<u64>,
    /// Why it failed, typed (`refused`, `timeout`, `crashed`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) failure: Option<String>,
    /// The peak memory its cgroup measured, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) memory_peak: Option<u64>,
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) optional: bool,
    /// Its failure at `reconnect` was logged instead of killing the guest.
    #[serde(default)]
    pub(crate) spared: bool,
    /// How it ended, as `output::status` words it (`exit status 1`, `timed out after 5s`).
    #[serde(default)]
    pub(crate) status: String,
    /// The start of its stderr.
    #[serde(default)]
    pub(crate) stderr: String,
    /// Whether `stderr` is not all it wrote (cut here, or by its output cap).
    #[serde(default)]
    pub(crate) stderr_truncated: bool,
    /// The start of its stdout: libvirt throws a hook's stdout away except for filters.
    #[serde(default)]
    pub(crate) stdout: String,
    pub(crate) success: bool,
    /// Its first warnings, then how many more there were.
    #[serde(default)]
    pub(crate) warnings: Vec<String>,
    /// The last lines it logged, each cut to an excerpt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) log: Vec<LogLine>,
    /// How many lines it logged before those.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) log_omitted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The most log lines of one plugin an audit line keeps (the last ones: they explain).
pub(crate) const LOG_LINES_KEPT: usize = 16;

/// What a filter stage did to the document, in lines (no diff in the log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DocumentSummary {
    #[serde(default)]
    pub(crate) changed: bool,
    #[serde(default)]
    pub(crate) lines_added: u64,
    #[serde(default)]
    pub(crate) lines_removed: u64,
}

/// `text` within `limit` as it will be in the line (a JSON string).
fn capped(text: &str, limit: Limit) -> String {
    limit.json().apply(text).into_owned()
}

impl AuditLine {
    /// The line for an event the dispatcher ran from `plugins`: `ok` is what libvirt was
    /// told, `start`/`started` when the event started (for its duration and its time),
    /// `config_error` why `hookctl.toml` could not be used.
    pub(crate) fn new(
        plugins: &Path,
        event: &RawEvent,
        report: &Report,
        ok: bool,
        (start, started): (Instant, SystemTime),
        config_error: Option<String>,
    ) -> AuditLine {
        let plugins_dir = std::path::absolute(plugins).unwrap_or_else(|_| plugins.to_owned());
        let failed = report
            .failed_hook()
            .or_else(|| report.hooks.iter().find(|r| !r.success));
        AuditLine {
            caller: Some(Caller::parent()),
            config_error: config_error.map(|why| capped(&why, output::MESSAGE)),
            crashed_plugin: None,
            document_changed: report.document_changed,
            document_not_evaluated: (report.unevaluated_document.as_deref()).map(|why| capped(why, output::MESSAGE)),
            driver: event.driver().as_str().to_owned(),
            duration_us: Some(start.elapsed().as_micros() as u64),
            extra: capped(event.extra(), output::NAME),
            failed_plugin: failed.map(|r| capped(&r.name, output::NAME)),
            hooks: report.hooks.iter().map(HookEntry::new).collect(),
            not_logged: None,
            object: capped(event.object(), output::NAME),
            op: capped(event.op(), output::NAME),
            pid: std::process::id(),
            plugins_dir: Some(capped(&plugins_dir.to_string_lossy(), output::NAME)),
            policy: report.policy.as_str().to_owned(),
            result: if ok { "ok" } else { "failed" }.to_owned(),
            signal: None,
            skipped: (report.skipped.iter())
                .map(|e| SkippedLine {
                    path: capped(&e.path.to_string_lossy(), output::NAME),
                    why: capped(&e.why, output::MESSAGE),
                })
                .collect(),
            spared_plugins: (report.hooks.iter().filter(|r| r.spared))
                .map(|r| capped(&r.name, output::NAME))
                .collect(),
            state_errors: (report.state_errors.iter())
                .map(|why| capped(why, output::MESSAGE))
                .collect(),
            state_kept: (report.state_kept.iter())
                .map(|p| capped(&p.to_string_lossy(), output::NAME))
                .collect(),
            state_orphaned: Vec::new(),
            subop: capped(event.subop(), output::NAME),
            time: humantime::format_rfc3339_micros(started).to_string(),
            v: AUDIT_VERSION,
        }
    }

    /// Records state of the object that this last event could not reach.
    pub(crate) fn state_orphaned(&mut self, paths: &[std::path::PathBuf]) {
        self.state_orphaned = (paths.iter())
            .map(|p| capped(&p.to_string_lossy(), output::NAME))
            .collect();
    }

    /// Records that the log did not take the line (`why`), and that the event failed
    /// when `failed`.
    pub(crate) fn not_logged(&mut self, why: &str, failed: bool) {
        if failed {
            self.result = "failed".to_owned();
        }
        self.not_logged = Some(capped(why, output::MESSAGE));
    }

    /// The line as written: characters that JSON leaves raw but a terminal acts on are
    /// `\u` escapes, so the log is safe to `cat`. Ends with a newline.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let text = serde_json::to_string(self).unwrap_or_default();
        let mut bytes = virt_hooks_core::text::escape_json(&text).into_owned().into_bytes();
        bytes.push(b'\n');
        bytes
    }
}

impl Caller {
    /// Our parent: libvirtd, or a shell, `hookctl run`, ...
    fn parent() -> Caller {
        let pid = std::os::unix::process::parent_id();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        Caller {
            name: comm.trim_end().to_owned(),
            pid,
        }
    }
}

impl HookEntry {
    /// A plugin's record, its texts cut to the excerpts the log keeps.
    fn new(r: &HookRecord) -> HookEntry {
        let excerpt = output::EXCERPT.json();
        let stderr = excerpt.apply(&r.stderr);
        // Measured as JSON, a text is only ever copied when it is cut.
        let stderr_cut = matches!(stderr, std::borrow::Cow::Owned(_));
        let (warnings, more) = output::capped_warnings(r, output::WARNING.json());
        let mut warnings: Vec<String> = warnings.into_iter().map(Into::into).collect();
        if more > 0 {
            warnings.push(format!("… ({more} more warnings)"));
        }
        let kept = r.log.len().saturating_sub(LOG_LINES_KEPT);
        let log = r.log[kept..]
            .iter()
            .map(|l| LogLine {
                level: l.level,
                message: capped(&l.message, output::MESSAGE),
            })
            .collect();
        HookEntry {
            log,
            log_omitted: kept as u64,
            backend: r.backend.clone().into_owned(),
            containment: r.containment.map(|c| c.as_str().to_owned()),
            cpu_us: r.cpu_us,
            document: r.document.as_ref().map(|d| DocumentSummary {
                changed: d.changed,
                lines_added: d.lines_added as u64,
                lines_removed: d.lines_removed as u64,
            }),
            duration_us: Some(r.duration_us),
            failure: r.failure.map(|f| f.as_str().to_owned()),
            memory_peak: r.memory_peak,
            name: capped(&r.name, output::NAME),
            optional: r.optional,
            spared: r.spared,
            status: capped(&output::status(r), output::MESSAGE),
            stderr_truncated: stderr_cut || r.stderr_truncated,
            stderr: stderr.into_owned(),
            stdout: excerpt.apply(&r.stdout).into_owned(),
            success: r.success,
            warnings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line in the oldest form `hookctl log` reads: the fields it needs and no more.
    #[test]
    fn a_line_without_the_later_fields_still_reads() {
        let old = r#"{"time":"2024-05-01T10:00:00Z","driver":"qemu","object":"web1","op":"prepare","result":"failed","hooks":[{"name":"/p/10-x.sh","success":false}]}"#;
        let line: AuditLine = serde_json::from_str(old).unwrap();
        assert_eq!((line.object.as_str(), line.subop.as_str()), ("web1", ""));
        assert_eq!((line.caller, line.plugins_dir, line.duration_us), (None, None, None));
        assert_eq!(line.hooks[0].status, "");
        assert_eq!(line.hooks[0].duration_us, None);
        // A crash line of an older hookctl: no `hooks` at all.
        let crash = r#"{"time":"2024-05-01T10:00:00Z","driver":"qemu","object":"web1","op":"start","result":"failed","crashed_plugin":"/p/x.so","signal":11}"#;
        let line: AuditLine = serde_json::from_str(crash).unwrap();
        assert_eq!(
            (line.crashed_plugin.as_deref(), line.signal),
            (Some("/p/x.so"), Some(11))
        );
        assert!(line.hooks.is_empty());
        // What is not an audit line is not read as one.
        for not_a_line in [
            "{}",
            r#"{"time":"t","driver":"qemu","object":"o","op":"p"}"#,
            r#"{"time":"t","driver":"qemu","object":"o","op":"p","result":"ok","hooks":[{"name":"x"}]}"#,
        ] {
            assert!(serde_json::from_str::<AuditLine>(not_a_line).is_err(), "{not_a_line}");
        }
    }

    /// What the dispatcher writes reads back as the same line, and writes the same bytes
    /// again: no field is written under a name the reader does not know.
    #[test]
    fn a_written_line_reads_back_whole() {
        let event = RawEvent::new(virt_hooks_core::Driver::Qemu, ["web\u{1b}1", "prepare", "begin", "-"]);
        let report: Report = serde_json::from_value(serde_json::json!({
            "driver": "qemu", "object": "web1", "op": "prepare", "subop": "begin", "extra": "-",
            "policy": "abort", "filters": false, "document_changed": true,
            "unevaluated_document": "not XML", "state_kept": ["/run/s/\u{1}"], "state_errors": ["busy"],
            "hooks": [{
                "name": "/p/10-x.sh", "backend": "exec", "success": false, "optional": true, "spared": true,
                "status": {"kind": "exited", "code": 3}, "duration_us": 12, "stdout": "o", "stderr": "e\u{202e}",
                "input": "original", "warnings": ["w"], "containment": "cgroup", "cpu_us": 5, "memory_peak": 4096,
                "document": {"changed": true, "lines_added": 2, "lines_removed": 1},
            }],
        }))
        .unwrap();
        let times = (Instant::now(), SystemTime::now());
        let mut line = AuditLine::new(Path::new("/p"), &event, &report, false, times, Some("bad".into()));
        line.not_logged("disk full", true);
        let bytes = line.to_bytes();
        let back: AuditLine = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, line);
        assert_eq!(back.to_bytes(), bytes);
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains(['\u{1b}', '\u{202e}', '\u{1}']), "{text}");
    }
}
