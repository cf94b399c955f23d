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
            HookStatus::Signaled(sig) => describe_signal(*sig),
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
    /// What the hook logged (a plugin's log channel, a script's `<N>`-prefixed stderr
    /// lines), at most [`MAX_LOG_LINES`] lines of at most [`MAX_LOG_LINE`] bytes.
    pub log: Vec<LogLine>,
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
            log: Vec::new(),
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

    /// Adds a log line (see [`HookOutcome::push_log`]).
    pub fn with_log(mut self, level: LogLevel, message: impl AsRef<str>) -> Self {
        self.push_log(level, message.as_ref());
        self
    }

    /// Adds a log line: a trailing newline is dropped, a line longer than
    /// [`MAX_LOG_LINE`] bytes is cut, and past [`MAX_LOG_LINES`] lines the rest are
    /// counted in a warning instead.
    pub fn push_log(&mut self, level: LogLevel, message: &str) {
        let message = message.strip_suffix('\n').unwrap_or(message);
        let message = message.strip_suffix('\r').unwrap_or(message);
        if self.log.len() < MAX_LOG_LINES {
            let mut end = message.len().min(MAX_LOG_LINE);
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            let mut text = message[..end].to_owned();
            if end < message.len() {
                text.push('…');
            }
            self.log.push(LogLine { level, message: text });
            return;
        }
        const DROPPED: &str = " more log line(s) dropped: at most ";
        match self.warnings.iter_mut().find(|w| w.contains(DROPPED)) {
            Some(w) => {
                let n: u64 = w.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
                *w = format!("{}{DROPPED}{MAX_LOG_LINES} are kept", n + 1);
            }
            None => self.warnings.push(format!("1{DROPPED}{MAX_LOG_LINES} are kept")),
        }
    }

    /// Takes a script's log lines from its stderr: lines that start with a syslog
    /// priority in angle brackets (`<3>disk full`), the sd-daemon convention journald
    /// also reads. `<7>` is debug, `<6>` and `<5>` info, `<4>` warn, `<0>` to `<3>`
    /// error. Its stderr stays as it was (it is what libvirt shows).
    pub fn take_stderr_log(&mut self) {
        let stderr = std::mem::take(&mut self.stderr);
        for line in stderr.split(|&b| b == b'\n') {
            if let Some((level, text)) = prefixed_level(line) {
                self.push_log(level, &String::from_utf8_lossy(text));
            }
        }
        self.stderr = stderr;
    }

    /// The line that explains a failure: the last one logged at `error` (through a log
    /// channel, or `<3>` on stderr), else the first non-blank line of stderr, as libvirt's
    /// message starts, without its `<N>`.
    pub fn explaining_line(&self) -> Option<String> {
        explaining_line(&self.log, &self.stderr)
    }
}

/// libvirt's `fatal signal 11`, with the signal's name: `fatal signal 11 (SIGSEGV)`.
pub fn describe_signal(signal: i32) -> String {
    match signal_name(signal) {
        Some(name) => format!("fatal signal {signal} ({name})"),
        None => format!("fatal signal {signal}"),
    }
}

/// A Linux signal's name (`SIGSEGV` for 11); `None` for a number without one.
pub fn signal_name(signal: i32) -> Option<&'static str> {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    let index = usize::try_from(signal).ok()?.checked_sub(1)?;
    NAMES.get(index).copied()
}

/// The line that explains a failure, from a hook's log and stderr: see
/// [`HookOutcome::explaining_line`]. The last line logged at error (through a log
/// channel, or `<3>` on stderr); else the first plain line of stderr (one without a
/// `<N>` prefix: lower levels are log lines, not the reason); else the last warning.
pub fn explaining_line(log: &[LogLine], stderr: &[u8]) -> Option<String> {
    logged_error(log, stderr).or_else(|| {
        let plain = stderr
            .split(|&b| b == b'\n')
            .filter(|l| prefixed_level(l).is_none())
            .map(|l| String::from_utf8_lossy(l).trim().to_owned())
            .find(|l| !l.is_empty());
        plain.or_else(|| {
            let warned = log.iter().rev().find(|l| l.level == LogLevel::Warn);
            warned.map(|l| l.message.clone())
        })
    })
}

/// The last line logged at error, through a log channel or as a `<3>` stderr line.
fn logged_error(log: &[LogLine], stderr: &[u8]) -> Option<String> {
    if let Some(line) = log.iter().rev().find(|l| l.level == LogLevel::Error) {
        return Some(line.message.clone());
    }
    stderr
        .split(|&b| b == b'\n')
        .rev()
        .filter_map(prefixed_level)
        .find(|(level, _)| *level == LogLevel::Error)
        .map(|(_, text)| String::from_utf8_lossy(text).trim().to_owned())
}

/// What a failure message shows of a hook's words: the line that explains the failure
/// first ([`explaining_line`]: what it logged at error, else its first plain stderr line;
/// debug output printed before it must not lead), then the rest of its stderr without
/// the `<N>` prefixes and without that line again.
pub fn failure_text(log: &[LogLine], stderr: &str) -> String {
    let unprefixed = without_log_prefixes(stderr);
    let unprefixed = unprefixed.trim_end();
    let Some(reason) = explaining_line(log, stderr.as_bytes()) else {
        return unprefixed.to_owned();
    };
    let first = unprefixed.split('\n').map(str::trim).find(|l| !l.is_empty());
    if first == Some(reason.as_str()) {
        // Already first: the text as it was, byte for byte.
        return unprefixed.to_owned();
    }
    // The reason's own line once (it leads now); a line repeated stays repeated.
    let mut moved = false;
    let rest: Vec<&str> = unprefixed
        .split('\n')
        .filter(|l| {
            let this = !moved && l.trim() == reason;
            moved |= this;
            !this && !l.trim().is_empty()
        })
        .collect();
    if rest.is_empty() {
        reason
    } else {
        format!("{reason}\n{}", rest.join("\n"))
    }
}

/// `stderr` without the `<N>` log prefixes at the start of its lines: what a message for
/// people shows (the levels are in the hook's log).
pub fn without_log_prefixes(stderr: &str) -> std::borrow::Cow<'_, str> {
    if !stderr.split('\n').any(|l| prefixed_level(l.as_bytes()).is_some()) {
        return std::borrow::Cow::Borrowed(stderr);
    }
    let mut out = String::with_capacity(stderr.len());
    for line in stderr.split_inclusive('\n') {
        out.push_str(if prefixed_level(line.as_bytes()).is_some() {
            &line[3..]
        } else {
            line
        });
    }
    std::borrow::Cow::Owned(out)
}

fn prefixed_level(line: &[u8]) -> Option<(LogLevel, &[u8])> {
    match line {
        [b'<', digit @ b'0'..=b'7', b'>', rest @ ..] => {
            let level = match digit {
                b'7' => LogLevel::Debug,
                b'5' | b'6' => LogLevel::Info,
                b'4' => LogLevel::Warn,
                _ => LogLevel::Error,
            };
            Some((level, rest.strip_suffix(b"\r").unwrap_or(rest)))
        }
        _ => None,
    }
}

/// The most log lines an outcome keeps.
pub const MAX_LOG_LINES: usize = 256;
/// The longest log line kept, in bytes; longer ones are cut.
pub const MAX_LOG_LINE: usize = 4 << 10;

/// How much a log line matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Detail for whoever debugs the plugin.
    Debug,
    /// What the plugin did ("moved 2 interfaces").
    Info,
    /// Something the operator should look at.
    Warn,
    /// What went wrong: the last one explains a failure.
    Error,
}

impl LogLevel {
    /// The ABI's and WIT's number for the level (`VIRT_HOOK_DEBUG` = 0 ... `VIRT_HOOK_ERROR`
    /// = 3); anything above 3 is an error, anything below 0 debug.
    pub fn from_abi(level: i32) -> Self {
        match level {
            i32::MIN..=0 => LogLevel::Debug,
            1 => LogLevel::Info,
            2 => LogLevel::Warn,
            _ => LogLevel::Error,
        }
    }

    /// Its name: `debug`, `info`, `warn`, `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line a hook logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Its level.
    pub level: LogLevel,
    /// The text, without a trailing newline.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_log_lines_is_capped_and_counted_once() {
        let mut out = HookOutcome::success();
        for i in 0..MAX_LOG_LINES + 1000 {
            out.push_log(LogLevel::Info, &format!("line {i}\n"));
        }
        assert_eq!(out.log.len(), MAX_LOG_LINES);
        assert_eq!(out.log[0].message, "line 0");
        assert_eq!(
            out.warnings,
            [format!(
                "1000 more log line(s) dropped: at most {MAX_LOG_LINES} are kept"
            )]
        );
    }

    #[test]
    fn a_huge_line_is_cut_on_a_character_boundary() {
        let mut out = HookOutcome::success();
        out.push_log(LogLevel::Error, &"é".repeat(MAX_LOG_LINE));
        let line = &out.log[0].message;
        assert!(
            line.len() <= MAX_LOG_LINE + '…'.len_utf8() && line.ends_with('…'),
            "{}",
            line.len()
        );
    }

    #[test]
    fn prefixed_stderr_lines_become_log_lines_and_stderr_stays() {
        let stderr = b"plain\n<7>debugging\r\n<6>moved 2 interfaces\n<4>slow disk\n<3>no room\n<9>not a level\n<x>no\n<0>\xffbad utf8\n";
        let mut out = HookOutcome::exited(1).with_stderr(&stderr[..]);
        out.take_stderr_log();
        let got: Vec<(LogLevel, &str)> = out.log.iter().map(|l| (l.level, l.message.as_str())).collect();
        assert_eq!(
            got,
            [
                (LogLevel::Debug, "debugging"),
                (LogLevel::Info, "moved 2 interfaces"),
                (LogLevel::Warn, "slow disk"),
                (LogLevel::Error, "no room"),
                (LogLevel::Error, "\u{fffd}bad utf8"),
            ]
        );
        assert_eq!(out.stderr, stderr, "stderr is what libvirt shows: left as it was");
    }

    #[test]
    fn the_explaining_line_is_the_last_error_logged_not_debug_output_before_it() {
        let noisy = "debug: looked at 3 interfaces\nthread 'main' panicked at src/lib.rs:9:5:\nno bridge br0\n";
        let out = HookOutcome::exited(101).with_stderr(noisy);
        // Without a line logged at error, libvirt's own first line.
        assert_eq!(out.explaining_line().as_deref(), Some("debug: looked at 3 interfaces"));
        let logged = out
            .with_log(LogLevel::Error, "refused: 12 vCPUs, at most 8")
            .with_log(LogLevel::Info, "done");
        assert_eq!(
            logged.explaining_line().as_deref(),
            Some("refused: 12 vCPUs, at most 8")
        );
        assert_eq!(HookOutcome::exited(1).explaining_line(), None);
        let prefixed = HookOutcome::exited(1).with_stderr("<7>looked\n<3>disk full\n<3>no room left\n<6>bye\n\n");
        assert_eq!(prefixed.explaining_line().as_deref(), Some("no room left"));
        // Lines at lower levels are log lines: the plain line is the reason.
        let mixed = HookOutcome::exited(1).with_stderr("<7>debug first\n<6>info\nplain reason\n");
        assert_eq!(mixed.explaining_line().as_deref(), Some("plain reason"));
        let only_info = HookOutcome::exited(1).with_stderr("<6>alloc 0 -> 0x11110\n");
        assert_eq!(only_info.explaining_line(), None);
        let warned = HookOutcome::exited(1).with_stderr("<6>x\n<4>disk slow\n");
        let mut warned = warned;
        warned.take_stderr_log();
        assert_eq!(warned.explaining_line().as_deref(), Some("disk slow"));
    }

    #[test]
    fn a_failure_message_leads_with_the_error_logged_then_the_rest_of_stderr() {
        let log = [LogLine {
            level: LogLevel::Error,
            message: "guest asks for 12 vCPUs".into(),
        }];
        assert_eq!(
            failure_text(&log, "debug: input_len=477\nguest asks for 12 vCPUs\n"),
            "guest asks for 12 vCPUs\ndebug: input_len=477"
        );
        assert_eq!(
            failure_text(&[], "<7>debug first\n<3>script reason\n"),
            "script reason\ndebug first"
        );
        assert_eq!(failure_text(&[], "plain\nlines\n"), "plain\nlines");
        // No error line: the first plain line leads, log lines below it follow.
        assert_eq!(
            failure_text(&[], "<7>debug: argv\n<6>reading\nplain reason\n"),
            "plain reason\ndebug: argv\nreading"
        );
        assert_eq!(failure_text(&log, ""), "guest asks for 12 vCPUs");
        // Only the reason's own line moves: a line printed over and over stays so.
        assert_eq!(failure_text(&[], "again\nagain\nagain\n"), "again\nagain\nagain");
    }

    #[test]
    fn signals_are_named_as_the_kernel_numbers_them() {
        assert_eq!(HookStatus::Signaled(11).describe(), "fatal signal 11 (SIGSEGV)");
        assert_eq!(describe_signal(6), "fatal signal 6 (SIGABRT)");
        assert_eq!(signal_name(9), Some("SIGKILL"));
        assert_eq!(signal_name(31), Some("SIGSYS"));
        for unnamed in [0, -1, 32, 64, i32::MIN, i32::MAX] {
            assert_eq!(describe_signal(unnamed), format!("fatal signal {unnamed}"));
        }
    }

    #[test]
    fn log_prefixes_leave_the_text_for_people() {
        assert_eq!(
            without_log_prefixes("<3>disk full\nplain\n<6>ok"),
            "disk full\nplain\nok"
        );
        assert!(matches!(
            without_log_prefixes("no prefixes <3>\n"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(without_log_prefixes("<9>not a level\n<3>"), "<9>not a level\n");
    }

    #[test]
    fn abi_levels_outside_the_enum_are_clamped() {
        assert_eq!(LogLevel::from_abi(-7), LogLevel::Debug);
        assert_eq!(LogLevel::from_abi(2), LogLevel::Warn);
        assert_eq!(LogLevel::from_abi(i32::MAX), LogLevel::Error);
    }
}
