//! Reports: one record per hook called for an event. Serializable with serde_json.

use std::borrow::Cow;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::document::{DocumentChange, MAX_DIFF};

use crate::{Driver, EventArgs, FailurePolicy, Hook, HookError, HookEvent, HookOutcome, HookStatus};

/// How a hook ended, as plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum StatusRecord {
    /// Exited with a status.
    Exited {
        /// The exit status.
        code: i32,
    },
    /// Killed by a signal.
    Signaled {
        /// The signal number.
        signal: i32,
    },
    /// Stopped by its timeout.
    TimedOut {
        /// The timeout in milliseconds.
        after_ms: u64,
    },
    /// Crashed (panic, trap).
    Crashed {
        /// What happened.
        message: String,
    },
    /// Could not be run.
    Failed {
        /// Why.
        message: String,
    },
}

impl From<&HookStatus> for StatusRecord {
    fn from(status: &HookStatus) -> Self {
        match status {
            HookStatus::Exited(code) => StatusRecord::Exited { code: *code },
            HookStatus::Signaled(signal) => StatusRecord::Signaled { signal: *signal },
            HookStatus::TimedOut(after) => StatusRecord::TimedOut {
                after_ms: after.as_millis() as u64,
            },
            HookStatus::Crashed(message) => StatusRecord::Crashed {
                message: message.clone(),
            },
            HookStatus::Failed(err) => StatusRecord::Failed {
                message: crate::error::chain(err),
            },
        }
    }
}

/// Why a hook failed, for a caller to decide on (`HookRecord::failure`), and in the
/// report's and audit line's JSON (kebab-case).
///
/// ```
/// use virt_hooks_core::{Driver, Failure, HookOutcome, RawEvent, RegistryBuilder};
/// use virt_hooks_core::testing::MockHook;
/// let deny = MockHook::always("deny", || HookOutcome::exited(1));
/// let registry = RegistryBuilder::new().hook(Driver::Qemu, deny).build();
/// let ev = RawEvent::new(Driver::Qemu, ["vm", "prepare", "begin", "-"]);
/// let failure = registry.fire_blocking(&ev).unwrap_err();
/// assert_eq!(failure.failed_hook().failure, Some(Failure::Refused));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Failure {
    /// It ran and said no: a non-zero exit status.
    Refused,
    /// It exited 0, but its output as a filter stage was refused (not well-formed, cut
    /// at the output cap, another root element).
    BadOutput,
    /// Stopped by its own time limit (its settings', its backend's or the registry's).
    Timeout,
    /// Stopped by the event's time budget ([`crate::RegistryBuilder::event_timeout`]),
    /// or not started because it had run out.
    Budget,
    /// Crashed: killed by a signal, a panic (native or custom hook), a trap (WASM).
    Crashed,
    /// Its call was cancelled (the caller dropped it); what it started was stopped.
    Cancelled,
    /// Its file could not be loaded or configured: refused by the trust rule, invalid
    /// settings, not a module or plugin, no backend linked for it.
    Load,
    /// It could not be started: spawning failed, its state directory was not ready, the
    /// backend failed, or talking to it did.
    NotRun,
    /// Its file was removed or renamed after the event began: not run.
    Gone,
}

impl Failure {
    /// Of an outcome: `None` for success.
    pub(crate) fn of(status: &HookStatus, rejected_output: bool) -> Option<Failure> {
        Some(match status {
            HookStatus::Exited(0) if rejected_output => Failure::BadOutput,
            HookStatus::Exited(0) => return None,
            HookStatus::Exited(_) => Failure::Refused,
            HookStatus::Signaled(_) | HookStatus::Crashed(_) => Failure::Crashed,
            HookStatus::TimedOut(_) => Failure::Timeout,
            HookStatus::Failed(err) => match err {
                HookError::Load(_) => Failure::Load,
                HookError::NotStarted { .. } => Failure::Budget,
                HookError::Cancelled => Failure::Cancelled,
                HookError::Gone { .. } => Failure::Gone,
                _ => Failure::NotRun,
            },
        })
    }

    /// The kebab-case name used in JSON (`refused`, `timeout`, `budget`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::BadOutput => "bad-output",
            Failure::Timeout => "timeout",
            Failure::Budget => "budget",
            Failure::Crashed => "crashed",
            Failure::Cancelled => "cancelled",
            Failure::Load => "load",
            Failure::NotRun => "not-run",
            Failure::Gone => "gone",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which document a hook read on stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputSource {
    /// `/dev/null`.
    None,
    /// The event's own document.
    Original,
    /// The output of an earlier hook (filter chaining).
    Chained,
}

/// What one hook did for one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HookRecord {
    /// The hook's name (a file-backed hook's full path).
    pub name: String,
    /// The backend that ran it.
    pub backend: Cow<'static, str>,
    /// Whether it succeeded.
    pub success: bool,
    /// How it ended.
    pub status: StatusRecord,
    /// Why it failed, typed; `None` when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// libvirt's message for a failure, naming the hook, its status and its stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Wall time in microseconds.
    pub duration_us: u64,
    /// Its stdout, lossily as UTF-8.
    pub stdout: String,
    /// Its stderr, lossily as UTF-8.
    pub stderr: String,
    /// Whether stdout was cut at the cap.
    #[serde(default)]
    pub stdout_truncated: bool,
    /// Whether stderr was cut at the cap.
    #[serde(default)]
    pub stderr_truncated: bool,
    /// What it read on stdin.
    pub input: InputSource,
    /// Whether its stdout became the current document (filter events).
    #[serde(default)]
    pub replaced_document: bool,
    /// Why its output was refused although it exited 0: a filter stage's document that
    /// is cut at the output cap, not well-formed, has another root element, or renames
    /// the guest or changes its UUID (which libvirt would refuse later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_output: Option<String>,
    /// For a stage of a filter event that succeeded: what it did to the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<crate::DocumentChange>,
    /// Whether it is optional: its failure is recorded but does not fail the event.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    /// Whether its failure would have killed the running object (at `reconnect`) and
    /// was logged instead, as an error (then `optional` is set too): its settings or
    /// directory chose [`crate::OnReconnectFailure::Log`], or it could not be loaded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spared: bool,
    /// Anything unusual (background process kept the pipes open, output capped, a
    /// document printed where libvirt ignores a hook's output, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// What it logged: through its plugin's log channel, and the lines of its stderr
    /// that start with a syslog priority (`<3>no room`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<crate::outcome::LogLine>,
    /// How its processes were contained (exec hooks): `cgroup` or `subreaper`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containment: Option<crate::Containment>,
    /// CPU time (user and system) of its processes in microseconds, where measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_us: Option<u64>,
    /// Peak memory of its processes together in bytes, where measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_peak: Option<u64>,
}

const CUT_DOCUMENT: &str = "its stdout exceeded the output cap, so the filtered document is incomplete";

impl HookRecord {
    pub(crate) fn new(
        hook: &dyn Hook,
        event: &dyn HookEvent,
        outcome: HookOutcome,
        input: InputSource,
        filters: bool,
        mut rejected_output: Option<String>,
        optional: bool,
    ) -> Self {
        let mut outcome = outcome;
        if !outcome.stderr.is_empty() {
            outcome.take_stderr_log();
        }
        let mut warnings = outcome.warnings;
        let cap_note = |stream: &str| format!("{stream} was cut at the output cap");
        if outcome.stdout_truncated {
            warnings.push(cap_note("stdout"));
            if filters && outcome.status.is_success() {
                // A cut document must never be passed on as the new XML.
                rejected_output.get_or_insert_with(|| CUT_DOCUMENT.to_owned());
            }
        }
        let success = outcome.status.is_success() && rejected_output.is_none();
        if outcome.stderr_truncated {
            warnings.push(cap_note("stderr"));
        }
        let stderr = into_text(outcome.stderr);
        let message = (!success).then(|| {
            let status = if let Some(why) = &rejected_output {
                format!("output: {why}")
            } else {
                outcome.status.describe()
            };
            let detail = match crate::outcome::failure_text(&outcome.log, &stderr).as_str() {
                "" => crate::outcome::explaining_line(&outcome.log, b"")
                    .map(|line| format!(": {line}"))
                    .unwrap_or_default(),
                detail => format!(": {detail}"),
            };
            match &outcome.command {
                // libvirt's own words for a child process.
                Some(cmd) => {
                    format!("Hook script execution failed: internal error: Child process ({cmd}) unexpected {status}{detail}")
                }
                None => format!(
                    "Hook `{}` ({}) failed at `{} {} {} {}`: {}{detail}",
                    hook.name(),
                    hook.backend(),
                    event.object(),
                    event.op(),
                    event.subop(),
                    event.extra(),
                    if outcome.status.is_success() {
                        status
                    } else {
                        outcome.status.describe_in_process().unwrap_or(status)
                    },
                ),
            }
        });
        HookRecord {
            name: hook.name().to_owned(),
            backend: Cow::Borrowed(hook.backend()),
            success,
            status: StatusRecord::from(&outcome.status),
            failure: Failure::of(&outcome.status, rejected_output.is_some()),
            message,
            duration_us: outcome.duration.as_micros() as u64,
            stdout: into_text(outcome.stdout),
            stderr,
            stdout_truncated: outcome.stdout_truncated,
            stderr_truncated: outcome.stderr_truncated,
            input,
            replaced_document: false,
            rejected_output,
            document: None,
            optional,
            spared: false,
            warnings,
            log: outcome.log,
            containment: outcome.containment,
            cpu_us: outcome
                .cpu_time
                .map(|t| u64::try_from(t.as_micros()).unwrap_or(u64::MAX)),
            memory_peak: outcome.memory_peak,
        }
    }
}

/// Output as text without copying it when it is UTF-8 already (the usual case).
fn into_text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The result of firing one event: what the event was and one record per hook called,
/// in run order. Serializes with the four arguments as `object`, `op`, `subop`, `extra`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "ReportRepr<'static>")]
#[non_exhaustive]
pub struct Report {
    /// The driver.
    pub driver: Driver,
    args: EventArgs,
    /// What a failure does.
    pub policy: FailurePolicy,
    /// Whether hook output may replace the document.
    pub filters: bool,
    /// One record per hook called.
    pub hooks: Vec<HookRecord>,
    /// For filter events, the resulting document (the original when no hook changed
    /// it); `None` when the event failed. [`Report::document_text`] reads it as text.
    pub document: Option<Vec<u8>>,
    /// Whether a hook replaced the document.
    pub document_changed: bool,
    /// Why the event's document was not evaluated for `[match] xpath`, when a hook
    /// asked: every hook that matches on it was then called (failing closed).
    pub unevaluated_document: Option<String>,
    /// After an object's last event: the state directories kept because their hook
    /// failed it (see [`StateRoot`](crate::state::StateRoot)).
    pub state_kept: Vec<std::path::PathBuf>,
    /// After an object's last event: state directories that could not be removed.
    pub state_errors: Vec<String>,
    /// Entries of the hooks directories that look meant to run but did not (a script
    /// without its execute bit, a link to nothing): each path and why.
    pub skipped: Vec<SkippedEntry>,
    /// Whether the event was cancelled ([`crate::Registry::fire_until`]) before all its
    /// hooks ran: the last record is the hook that was stopped, if one was running.
    pub cancelled: bool,
}

/// An entry of a hooks directory that looks meant to run but was skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedEntry {
    /// The file.
    pub path: std::path::PathBuf,
    /// Why it did not run (`not executable`, `dangling symlink`).
    pub why: String,
}

/// The serialized form.
#[derive(Serialize, Deserialize)]
struct ReportRepr<'a> {
    driver: Driver,
    object: Cow<'a, str>,
    op: Cow<'a, str>,
    subop: Cow<'a, str>,
    extra: Cow<'a, str>,
    policy: FailurePolicy,
    filters: bool,
    hooks: Cow<'a, [HookRecord]>,
    #[serde(default, with = "lossy_bytes", skip_serializing_if = "Option::is_none")]
    document: Option<Cow<'a, [u8]>>,
    #[serde(default)]
    document_changed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unevaluated_document: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    state_kept: Cow<'a, [std::path::PathBuf]>,
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    state_errors: Cow<'a, [String]>,
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    skipped: Cow<'a, [SkippedEntry]>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    cancelled: bool,
}

impl From<ReportRepr<'_>> for Report {
    fn from(r: ReportRepr<'_>) -> Self {
        Report {
            driver: r.driver,
            args: EventArgs::new([&*r.object, &*r.op, &*r.subop, &*r.extra]),
            policy: r.policy,
            filters: r.filters,
            hooks: r.hooks.into_owned(),
            document: r.document.map(Cow::into_owned),
            document_changed: r.document_changed,
            unevaluated_document: r.unevaluated_document.map(Cow::into_owned),
            state_kept: r.state_kept.into_owned(),
            state_errors: r.state_errors.into_owned(),
            skipped: r.skipped.into_owned(),
            cancelled: r.cancelled,
        }
    }
}

impl Serialize for Report {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ReportRepr {
            driver: self.driver,
            object: self.object(),
            op: self.op(),
            subop: self.subop(),
            extra: self.extra(),
            policy: self.policy,
            filters: self.filters,
            hooks: Cow::Borrowed(&self.hooks),
            document: self.document.as_deref().map(Cow::Borrowed),
            document_changed: self.document_changed,
            unevaluated_document: self.unevaluated_document.as_deref().map(Cow::Borrowed),
            state_kept: Cow::Borrowed(&self.state_kept),
            state_errors: Cow::Borrowed(&self.state_errors),
            skipped: Cow::Borrowed(&self.skipped),
            cancelled: self.cancelled,
        }
        .serialize(s)
    }
}

impl Report {
    pub(crate) fn new(event: &dyn HookEvent, args: EventArgs, filters: bool) -> Self {
        Report {
            driver: event.driver(),
            args,
            policy: event.on_failure(),
            filters,
            hooks: Vec::new(),
            document: None,
            document_changed: false,
            unevaluated_document: None,
            state_kept: Vec::new(),
            state_errors: Vec::new(),
            skipped: Vec::new(),
            cancelled: false,
        }
    }

    /// The four arguments as passed.
    pub fn args(&self) -> &EventArgs {
        &self.args
    }

    /// The object, lossily as UTF-8.
    pub fn object(&self) -> Cow<'_, str> {
        self.args.lossy(0)
    }

    /// The operation.
    pub fn op(&self) -> Cow<'_, str> {
        self.args.lossy(1)
    }

    /// The sub-operation.
    pub fn subop(&self) -> Cow<'_, str> {
        self.args.lossy(2)
    }

    /// The extra argument.
    pub fn extra(&self) -> Cow<'_, str> {
        self.args.lossy(3)
    }

    /// The resulting document of a filter event (`migrate`, `restore`) as text: the
    /// original when no hook changed it. `None` for other events and when the event
    /// failed, so a refused migrate's rewritten XML cannot be picked up by mistake.
    pub fn document_text(&self) -> Option<Cow<'_, str>> {
        if !self.filters || !self.succeeded() {
            return None;
        }
        self.document.as_deref().map(String::from_utf8_lossy)
    }

    /// Whether every required hook succeeded (optional hooks' failures do not count).
    pub fn succeeded(&self) -> bool {
        self.hooks.iter().all(|r| r.success || r.optional)
    }

    /// The failure libvirt reports: the last one of a required hook.
    pub fn failed_hook(&self) -> Option<&HookRecord> {
        self.hooks.iter().rev().find(|r| !r.success && !r.optional)
    }

    /// Total wall time of the hooks.
    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.hooks.iter().map(|r| r.duration_us).sum())
    }

    /// The event's four arguments joined as libvirt passes them.
    pub fn args_line(&self) -> String {
        self.args.to_string()
    }
}

/// `1.5s`, `250ms`, `42µs`: short human durations for messages.
pub fn format_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us >= 1_000_000 {
        let s = d.as_secs_f64();
        if s.fract() == 0.0 {
            format!("{s:.0}s")
        } else {
            format!("{}s", format!("{s:.3}").trim_end_matches('0'))
        }
    } else if us >= 1000 && us.is_multiple_of(1000) {
        format!("{}ms", us / 1000)
    } else if us >= 1000 {
        let text = format!("{:.1}ms", us as f64 / 1000.0);
        text.replace(".0ms", "ms")
    } else {
        format!("{us}µs")
    }
}

mod lossy_bytes {
    use std::borrow::Cow;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Option<Cow<'_, [u8]>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&*String::from_utf8_lossy(b)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'static, [u8]>>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(|s| Cow::Owned(s.into_bytes())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_micros(2500)), "2.5ms");
        assert_eq!(format_duration(Duration::from_millis(400)), "400ms");
        assert_eq!(format_duration(Duration::from_micros(42)), "42µs");
    }
}
