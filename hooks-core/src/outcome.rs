//! What one hook call produced.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::HookError;

/// How a hook that runs as processes (exec) was contained: what a timeout or a
/// dropped call kills, exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Containment {
    /// A cgroup v2 of its own, killed as a whole (`cgroup.kill`); its CPU time (and,
    /// with the memory controller, its peak memory) is measured.
    Cgroup,
    /// A helper process that is the child subreaper of this hook alone: everything the
    /// hook starts stays its descendant, and is killed from there.
    Subreaper,
}

impl Containment {
    /// Its name in reports and logs: `cgroup` or `subreaper`.
    pub fn as_str(self) -> &'static str {
        match self {
            Containment::Cgroup => "cgroup",
            Containment::Subreaper => "subreaper",
        }
    }
}

impl std::fmt::Display for Containment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a hook call ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum HookStatus {
    /// The hook exited (or returned) with this status; 0 is success.
    Exited(i32),
    /// The hook was killed by this signal.
    Signaled(i32),
    /// The hook ran past its timeout and was stopped (for an exec hook, its process
    /// group and every descendant that left it were killed). Carries the timeout.
    TimedOut(Duration),
    /// The hook crashed: a panic in a native plugin, a trap in a WASM module.
    Crashed(String),
    /// The hook could not be run at all (load error, spawn failure, I/O error).
    Failed(HookError),
}

impl HookStatus {
    /// Whether the call succeeded (exit status 0).
    pub fn is_success(&self) -> bool {
        matches!(self, HookStatus::Exited(0))
    }

    /// Whether the hook was stopped by its timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, HookStatus::TimedOut(_))
    }

    /// libvirt's wording after "unexpected": `exit status 1`, `fatal signal 9`, ...
    pub fn describe(&self) -> String {
        match self {
            HookStatus::Exited(code) => format!("exit status {code}"),
            HookStatus::Signaled(sig) => format!("fatal signal {sig}"),
            HookStatus::TimedOut(after) => format!("timeout after {}", crate::report::format_duration(*after)),
            HookStatus::Crashed(why) => format!("crash: {why}"),
            HookStatus::Failed(err) => format!("error: {}", crate::error::chain(err)),
        }
    }
}

impl HookStatus {
    /// The wording for a hook that is not a child process (its "exit status" is a
    /// returned code); `None` where [`HookStatus::describe`] fits as it is.
    pub(crate) fn describe_in_process(&self) -> Option<String> {
        match self {
            HookStatus::Exited(code) => Some(format!("returned status {code}")),
            HookStatus::TimedOut(after) => Some(format!("timed out after {}", crate::report::format_duration(*after))),
            _ => None,
        }
    }
}

/// Everything a hook call produced: its status, both output streams, how long it took,
/// and anything unusual that happened on the way (warnings).
///
/// ```
/// use virt_hooks_core::{HookOutcome, HookStatus};
/// let out = HookOutcome::exited(1).with_stderr("no <owner> element\n");
/// assert!(!out.status.is_success());
/// assert_eq!(out.stderr, b"no <owner> element\n");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct HookOutcome {
    /// How the call ended.
    pub status: HookStatus,
    /// Everything the hook wrote to stdout (up to the cap).
    pub stdout: Vec<u8>,
    /// Everything the hook wrote to stderr (up to the cap).
    pub stderr: Vec<u8>,
    /// Wall time of the call.
    pub duration: Duration,
    /// Whether stdout went past the cap and was cut.
    pub stdout_truncated: bool,
    /// Whether stderr went past the cap and was cut.
    pub stderr_truncated: bool,
    /// Things the caller should know (a background process held the pipes, ...).
    pub warnings: Vec<String>,
    /// How the hook was run, for messages: libvirt shows the environment and argv of a
    /// child process (`LC_ALL=C PATH=... /etc/libvirt/hooks/qemu vm prepare begin -`).
    pub command: Option<String>,
    /// How its processes were contained (hooks that run as processes only).
    pub containment: Option<Containment>,
    /// CPU time (user and system) its processes used, where it was measured (a cgroup).
    pub cpu_time: Option<Duration>,
    /// The peak memory of its processes together, in bytes, where it was measured (a
    /// cgroup with the memory controller).
    pub memory_peak: Option<u64>,
}

impl HookOutcome {
    /// An outcome with this status and nothing else.
    pub fn new(status: HookStatus) -> Self {
        HookOutcome {
            status,
            stdout: Vec::new(),
            stderr: Vec::new(),
            duration: Duration::ZERO,
            stdout_truncated: false,
            stderr_truncated: false,
            warnings: Vec::new(),
            command: None,
            containment: None,
            cpu_time: None,
            memory_peak: None,
        }
    }

    /// An outcome of a hook that exited with `code`.
    pub fn exited(code: i32) -> Self {
        Self::new(HookStatus::Exited(code))
    }

    /// A successful outcome (exit status 0).
    pub fn success() -> Self {
        Self::exited(0)
    }

    /// An outcome of a hook that could not run.
    pub fn failed(err: HookError) -> Self {
        Self::new(HookStatus::Failed(err))
    }

    /// Sets stdout.
    pub fn with_stdout(mut self, out: impl Into<Vec<u8>>) -> Self {
        self.stdout = out.into();
        self
    }

    /// Sets stderr.
    pub fn with_stderr(mut self, err: impl Into<Vec<u8>>) -> Self {
        self.stderr = err.into();
        self
    }

    /// Sets the duration.
    pub fn with_duration(mut self, duration: Duration) -> Self {
        self.duration = duration;
        self
    }

    /// Adds a warning.
    pub fn with_warning(mut self, warning: impl Into<String>) -> Self {
        self.warnings.push(warning.into());
        self
    }
}
