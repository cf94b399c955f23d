//! The `HookEvent` trait, libvirt's table of events and failure policies, and `RawEvent`.

use std::ffi::{OsStr, OsString};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Driver;

/// What libvirt does when a hook for an event fails (exits non-zero, is killed, ...).
///
/// ```
/// use virt_hooks_core::{Driver, FailurePolicy};
/// use virt_hooks_core::backend::libvirt_event_spec;
/// let spec = libvirt_event_spec(Driver::Qemu, "prepare").unwrap();
/// assert_eq!(spec.policy, FailurePolicy::Abort);
/// assert!(spec.policy.is_fatal());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum FailurePolicy {
    /// The operation is aborted (a guest does not start, a restore fails).
    Abort,
    /// The failure is logged and the operation goes on.
    Ignore,
    /// The object is killed (a guest found running at daemon start).
    KillObject,
    /// The error is returned to the caller but nothing is rolled back (`network updated`).
    Report,
}

impl FailurePolicy {
    /// Whether a failure stops the operation (abort, or kill the object).
    pub const fn is_fatal(self) -> bool {
        matches!(self, FailurePolicy::Abort | FailurePolicy::KillObject)
    }

    /// Whether a failure fails the operation for its caller: it stops (abort, kill), or
    /// libvirt returns the error to the API caller without rolling back (`report`).
    /// [`Registry::fire`](crate::Registry::fire) returns `Err` exactly then.
    pub const fn fails_operation(self) -> bool {
        !matches!(self, FailurePolicy::Ignore)
    }

    /// What libvirt does with the failure, as a phrase for messages.
    pub const fn consequence(self) -> &'static str {
        match self {
            FailurePolicy::Abort => "libvirt would abort the operation",
            FailurePolicy::Ignore => "libvirt would ignore the failure",
            FailurePolicy::KillObject => "libvirt would kill the domain",
            FailurePolicy::Report => "libvirt would report an error without rolling back",
        }
    }

    /// The kebab-case name used in reports (`abort`, `ignore`, `kill-object`, `report`).
    pub const fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Abort => "abort",
            FailurePolicy::Ignore => "ignore",
            FailurePolicy::KillObject => "kill-object",
            FailurePolicy::Report => "report",
        }
    }
}

impl fmt::Display for FailurePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a hook gets on standard input for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputKind {
    /// `/dev/null` (daemon events).
    DevNull,
    /// A document through a pipe: domain XML, or network `<hookData>`.
    Document,
}

/// One row of libvirt's event table: how an event is called and what a failure does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSpec {
    /// The subop libvirt passes (`begin`, `end` or `-`).
    pub subop: &'static str,
    /// What a failure does.
    pub policy: FailurePolicy,
    /// Whether hook stdout may replace the input document (`migrate`, `restore`).
    pub filters: bool,
    /// What the hooks read on stdin.
    pub input: InputKind,
}

const fn spec(subop: &'static str, policy: FailurePolicy, filters: bool, input: InputKind) -> EventSpec {
    EventSpec {
        subop,
        policy,
        filters,
        input,
    }
}

/// Looks an event up in libvirt's table (see the semantics reference).
///
/// Returns `None` for an operation the driver never calls a hook for.
///
/// ```
/// use virt_hooks_core::{Driver, FailurePolicy};
/// use virt_hooks_core::backend::libvirt_event_spec;
/// let migrate = libvirt_event_spec(Driver::Qemu, "migrate").unwrap();
/// assert!(migrate.filters);
/// assert!(libvirt_event_spec(Driver::Lxc, "migrate").is_none());
/// assert_eq!(libvirt_event_spec(Driver::Network, "updated").unwrap().policy, FailurePolicy::Report);
/// ```
pub fn libvirt_event_spec(driver: Driver, op: &str) -> Option<EventSpec> {
    use FailurePolicy::*;
    use InputKind::*;
    let domain = |op: &str| -> Option<EventSpec> {
        Some(match op {
            "prepare" | "start" | "started" => spec("begin", Abort, false, Document),
            "stopped" | "release" => spec("end", Ignore, false, Document),
            "migrate" if matches!(driver, Driver::Qemu | Driver::Libxl) => spec("begin", Abort, true, Document),
            "restore" if driver == Driver::Qemu => spec("begin", Abort, true, Document),
            "reconnect" if matches!(driver, Driver::Qemu | Driver::Lxc | Driver::Libxl) => {
                spec("begin", KillObject, false, Document)
            }
            _ => return None,
        })
    };
    match driver {
        Driver::Daemon => match op {
            "start" | "shutdown" => Some(spec("-", Ignore, false, DevNull)),
            "reload" => Some(spec("begin", Ignore, false, DevNull)),
            _ => None,
        },
        Driver::Qemu | Driver::Lxc | Driver::Libxl | Driver::Bhyve => domain(op),
        Driver::Network => match op {
            "start" | "started" | "port-created" => Some(spec("begin", Abort, false, Document)),
            "stopped" => Some(spec("end", Ignore, false, Document)),
            "port-deleted" => Some(spec("begin", Ignore, false, Document)),
            "updated" => Some(spec("begin", Report, false, Document)),
            _ => None,
        },
    }
}

/// Every operation libvirt calls the driver's hook for, in the order of its table.
///
/// ```
/// use virt_hooks_core::Driver;
/// use virt_hooks_core::backend::libvirt_ops;
/// assert!(libvirt_ops(Driver::Qemu).contains(&"restore"));
/// assert!(!libvirt_ops(Driver::Lxc).contains(&"restore"));
/// ```
pub fn libvirt_ops(driver: Driver) -> &'static [&'static str] {
    match driver {
        Driver::Daemon => &["start", "shutdown", "reload"],
        Driver::Qemu => &[
            "prepare",
            "start",
            "started",
            "stopped",
            "release",
            "migrate",
            "restore",
            "reconnect",
        ],
        Driver::Lxc => &["prepare", "start", "started", "stopped", "release", "reconnect"],
        Driver::Libxl => &[
            "prepare",
            "start",
            "started",
            "stopped",
            "release",
            "migrate",
            "reconnect",
        ],
        Driver::Bhyve => &["prepare", "start", "started", "stopped", "release"],
        Driver::Network => &["start", "started", "stopped", "port-created", "port-deleted", "updated"],
    }
}

/// A lifecycle point at which hooks are called.
///
/// The four string accessors are libvirt's four arguments (`-` when absent); `input` is
/// what the hooks read on stdin (`None` means `/dev/null`). Policies default to libvirt's
/// table ([`libvirt_event_spec`]), so an implementation usually provides only the data.
///
/// ```
/// use virt_hooks_core::{Driver, FailurePolicy, HookEvent};
/// use virt_hooks_core::events::QemuEvent;
/// let ev = QemuEvent::Prepare { name: "web1".into(), xml: "<domain/>\n".into() };
/// assert_eq!((ev.driver(), ev.object(), ev.op(), ev.subop(), ev.extra()),
///            (Driver::Qemu, "web1", "prepare", "begin", "-"));
/// assert_eq!(ev.on_failure(), FailurePolicy::Abort);
/// ```
pub trait HookEvent: Send + Sync + fmt::Debug {
    /// The driver whose hooks run.
    fn driver(&self) -> Driver;
    /// The object: a domain or network name, `-` for the daemon.
    fn object(&self) -> &str;
    /// The operation (`prepare`, `start`, `release`, ...).
    fn op(&self) -> &str;
    /// The sub-operation: `begin`, `end` or `-`.
    fn subop(&self) -> &str;
    /// The extra argument (`-`, a release reason, `SIGHUP`, ...).
    fn extra(&self) -> &str;
    /// The document on the hooks' stdin; `None` means `/dev/null`.
    fn input(&self) -> Option<&[u8]>;

    /// What libvirt does when a hook fails. Defaults to libvirt's table, or abort for an
    /// operation the table does not know.
    fn on_failure(&self) -> FailurePolicy {
        libvirt_event_spec(self.driver(), self.op()).map_or(FailurePolicy::Abort, |s| s.policy)
    }

    /// Whether hook stdout may replace the input document (`migrate`, `restore`).
    fn filters_input(&self) -> bool {
        libvirt_event_spec(self.driver(), self.op()).is_some_and(|s| s.filters)
    }

    /// The four arguments as the OS passes them. Override only to carry bytes that are
    /// not UTF-8 (as [`RawEvent`] does for a command line).
    fn os_args(&self) -> [&OsStr; 4] {
        [
            OsStr::new(self.object()),
            OsStr::new(self.op()),
            OsStr::new(self.subop()),
            OsStr::new(self.extra()),
        ]
    }

    /// The input parsed as XML, shared by the `[match] xpath` of every hook while the
    /// registry picks the hooks for this event, so that it is parsed at most once (and
    /// not at all when no hook matches on it). The registry wraps the event to provide
    /// it; leave the default, `None`, with which each matcher parses
    /// [`input`](HookEvent::input) itself.
    fn input_document(&self) -> Option<&crate::backend::EventDocument<'_>> {
        None
    }
}

/// An event given as libvirt's four arguments, as a hook script receives them.
///
/// Used by `hookctl run` and the dispatcher. The policy comes from libvirt's table; an
/// operation the table does not know is treated as fatal (`abort`) and does not filter.
///
/// ```
/// use virt_hooks_core::{Driver, FailurePolicy, HookEvent, RawEvent};
/// let ev = RawEvent::new(Driver::Qemu, ["vm1", "migrate", "begin", "-"]);
/// assert!(ev.filters_input());
/// assert!(ev.is_known());
/// assert_eq!(ev.input(), Some(&b""[..]), "domain hooks get an empty pipe by default");
/// let daemon = RawEvent::new(Driver::Daemon, ["-", "start", "-", "start"]);
/// assert_eq!(daemon.input(), None, "daemon hooks get /dev/null");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    driver: Driver,
    args: [OsString; 4],
    display: [String; 4],
    input: Option<Vec<u8>>,
    spec: Option<EventSpec>,
}

impl RawEvent {
    /// An event from UTF-8 arguments `[object, op, subop, extra]`, with the default input
    /// for its driver (empty document, or `/dev/null` for the daemon).
    pub fn new<S: AsRef<str>>(driver: Driver, args: [S; 4]) -> Self {
        Self::from_os_args(driver, args.map(|a| OsString::from(a.as_ref())))
    }

    /// An event from arguments as the OS passed them; bytes that are not UTF-8 are passed
    /// on to hooks unchanged (the `&str` accessors show them lossily).
    pub fn from_os_args(driver: Driver, args: [OsString; 4]) -> Self {
        let display = args.each_ref().map(|a| a.to_string_lossy().into_owned());
        let spec = libvirt_event_spec(driver, &display[1]);
        let input = match spec.map_or(driver != Driver::Daemon, |s| s.input == InputKind::Document) {
            true => Some(Vec::new()),
            false => None,
        };
        RawEvent {
            driver,
            args,
            display,
            input,
            spec,
        }
    }

    /// Replaces the document on stdin (`None` means `/dev/null`).
    pub fn with_input(mut self, input: Option<Vec<u8>>) -> Self {
        self.input = input;
        self
    }

    /// Whether libvirt's table has this driver/op pair.
    pub fn is_known(&self) -> bool {
        self.spec.is_some()
    }

    /// The table row for this event, if libvirt has one.
    pub fn spec(&self) -> Option<EventSpec> {
        self.spec
    }
}

impl HookEvent for RawEvent {
    fn driver(&self) -> Driver {
        self.driver
    }
    fn object(&self) -> &str {
        &self.display[0]
    }
    fn op(&self) -> &str {
        &self.display[1]
    }
    fn subop(&self) -> &str {
        &self.display[2]
    }
    fn extra(&self) -> &str {
        &self.display[3]
    }
    fn input(&self) -> Option<&[u8]> {
        self.input.as_deref()
    }
    fn on_failure(&self) -> FailurePolicy {
        self.spec.map_or(FailurePolicy::Abort, |s| s.policy)
    }
    fn filters_input(&self) -> bool {
        self.spec.is_some_and(|s| s.filters)
    }
    fn os_args(&self) -> [&OsStr; 4] {
        self.args.each_ref().map(OsString::as_os_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FailurePolicy::*;

    #[track_caller]
    fn row(driver: Driver, op: &str, subop: &str, policy: FailurePolicy, filters: bool) {
        let s = libvirt_event_spec(driver, op).unwrap_or_else(|| panic!("{driver} {op} missing"));
        assert_eq!(
            (s.subop, s.policy, s.filters),
            (subop, policy, filters),
            "{driver} {op}"
        );
    }

    #[test]
    fn table_matches_the_semantics_reference() {
        row(Driver::Daemon, "start", "-", Ignore, false);
        row(Driver::Daemon, "shutdown", "-", Ignore, false);
        row(Driver::Daemon, "reload", "begin", Ignore, false);
        for d in [Driver::Qemu, Driver::Lxc, Driver::Libxl, Driver::Bhyve] {
            row(d, "prepare", "begin", Abort, false);
            row(d, "start", "begin", Abort, false);
            row(d, "started", "begin", Abort, false);
            row(d, "stopped", "end", Ignore, false);
            row(d, "release", "end", Ignore, false);
        }
        row(Driver::Qemu, "migrate", "begin", Abort, true);
        row(Driver::Libxl, "migrate", "begin", Abort, true);
        row(Driver::Qemu, "restore", "begin", Abort, true);
        for d in [Driver::Qemu, Driver::Lxc, Driver::Libxl] {
            row(d, "reconnect", "begin", KillObject, false);
        }
        row(Driver::Network, "start", "begin", Abort, false);
        row(Driver::Network, "started", "begin", Abort, false);
        row(Driver::Network, "stopped", "end", Ignore, false);
        row(Driver::Network, "port-created", "begin", Abort, false);
        row(Driver::Network, "port-deleted", "begin", Ignore, false);
        row(Driver::Network, "updated", "begin", Report, false);
    }

    #[test]
    fn table_omits_what_libvirt_never_calls() {
        assert!(libvirt_event_spec(Driver::Lxc, "migrate").is_none());
        assert!(libvirt_event_spec(Driver::Lxc, "restore").is_none());
        assert!(libvirt_event_spec(Driver::Bhyve, "reconnect").is_none());
        assert!(libvirt_event_spec(Driver::Qemu, "attach").is_none());
        assert!(libvirt_event_spec(Driver::Daemon, "prepare").is_none());
    }

    #[test]
    fn raw_event_keeps_non_utf8_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let object = OsString::from(std::ffi::OsStr::from_bytes(b"vm\xff"));
        let ev = RawEvent::from_os_args(
            Driver::Qemu,
            [object.clone(), "prepare".into(), "begin".into(), "-".into()],
        );
        assert_eq!(ev.os_args()[0], object.as_os_str());
        assert_eq!(ev.object(), "vm\u{fffd}");
        assert_eq!(ev.on_failure(), Abort);
    }

    #[test]
    fn unknown_op_is_fatal_and_not_a_filter() {
        let ev = RawEvent::new(Driver::Qemu, ["vm", "attach", "begin", "-"]);
        assert!(!ev.is_known());
        assert_eq!(ev.on_failure(), Abort);
        assert!(!ev.filters_input());
    }
}
