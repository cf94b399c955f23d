//! The `Hook` trait and what a hook is called with.

use std::borrow::Cow;
use std::ffi::{CStr, OsStr};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{Driver, HookEvent, HookOutcome, HookPolicy, OnReconnectFailure};

/// A predicate on events.
type EventFilter = Arc<dyn Fn(&dyn HookEvent) -> bool + Send + Sync>;

/// Which events a hook takes.
#[derive(Clone, Default)]
pub(crate) enum Matching {
    /// Every event of its driver.
    #[default]
    All,
    /// Those a predicate accepts.
    Fn(EventFilter),
    /// Those its sidecar's `[match]` takes.
    Sidecar(Arc<crate::settings::Matcher>),
}

impl Matching {
    fn matches(&self, event: &dyn HookEvent) -> bool {
        match self {
            Matching::All => true,
            Matching::Fn(f) => f(event),
            Matching::Sidecar(m) => m.matches(event),
        }
    }
}

/// A hook as the registry holds it: the hook, and how the registry treats it (which
/// events it takes, whether its failure fails the event, what its failure at
/// `reconnect` does). Anything that is a [`Hook`] converts into one with libvirt's
/// defaults: every event of its driver, required, a failed `reconnect` kills the guest.
///
/// ```
/// use virt_hooks_core::{Driver, HookEntry, HookOutcome, HookPolicy, RegistryBuilder, testing::MockHook};
/// use virt_hooks_core::events::QemuEvent;
/// let registry = RegistryBuilder::new()
///     .hook(Driver::Qemu, HookEntry::new(MockHook::always("flaky", || HookOutcome::exited(1)))
///         .with_policy(HookPolicy::Optional)
///         .matching(|ev| ev.op() == "prepare"))
///     .build();
/// let report = registry.fire_blocking(&QemuEvent::Prepare { name: "vm".into(), xml: String::new() }).unwrap();
/// assert!(!report.hooks[0].success && report.hooks[0].optional);
/// ```
#[derive(Clone)]
pub struct HookEntry {
    pub(crate) hook: Arc<dyn Hook>,
    pub(crate) policy: HookPolicy,
    pub(crate) matching: Matching,
    pub(crate) on_reconnect_failure: OnReconnectFailure,
}

impl fmt::Debug for HookEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookEntry")
            .field("hook", &self.hook.name())
            .field("backend", &self.hook.backend())
            .field("policy", &self.policy)
            .field("matches", &!matches!(self.matching, Matching::All))
            .field("on_reconnect_failure", &self.on_reconnect_failure)
            .finish()
    }
}

impl<H: Hook + 'static> From<H> for HookEntry {
    fn from(hook: H) -> Self {
        HookEntry::new(hook)
    }
}

impl HookEntry {
    /// `hook` with libvirt's defaults.
    pub fn new(hook: impl Hook + 'static) -> Self {
        Self::shared(Arc::new(hook))
    }

    /// A shared hook with libvirt's defaults.
    pub fn shared(hook: Arc<dyn Hook>) -> Self {
        HookEntry {
            hook,
            policy: HookPolicy::Required,
            matching: Matching::All,
            on_reconnect_failure: OnReconnectFailure::Kill,
        }
    }

    /// Whether its failure fails the event: [`HookPolicy::Optional`] records it only.
    pub fn with_policy(mut self, policy: HookPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Called only for the events `filter` accepts; the others do not list it.
    pub fn matching(mut self, filter: impl Fn(&dyn HookEvent) -> bool + Send + Sync + 'static) -> Self {
        self.matching = Matching::Fn(Arc::new(filter));
        self
    }

    /// What its failure at `reconnect` does ([`OnReconnectFailure::Log`]: the guest
    /// lives, and the failure is an error in the report).
    pub fn on_reconnect_failure(mut self, on_failure: OnReconnectFailure) -> Self {
        self.on_reconnect_failure = on_failure;
        self
    }

    /// The hook.
    pub fn hook(&self) -> &Arc<dyn Hook> {
        &self.hook
    }

    /// Its policy.
    pub fn policy(&self) -> HookPolicy {
        self.policy
    }

    /// What its failure at `reconnect` does.
    pub fn reconnect_failure(&self) -> OnReconnectFailure {
        self.on_reconnect_failure
    }

    /// Whether it takes `event`.
    pub fn matches(&self, event: &dyn HookEvent) -> bool {
        self.matching.matches(event)
    }

    /// The same treatment for another hook (a layer's wrapper around this one).
    pub(crate) fn with_hook(&self, hook: Arc<dyn Hook>) -> Self {
        HookEntry { hook, ..self.clone() }
    }
}

/// libvirt's four arguments `[object, op, subop, extra]` in one NUL-separated buffer:
/// built once per event, shared by every hook, and usable as C strings as they are.
///
/// A NUL cannot pass through exec or a C string, and libvirt's arguments never hold
/// one, so an argument is cut at its first NUL.
///
/// ```
/// use virt_hooks_core::EventArgs;
/// let args = EventArgs::new(["vm", "release", "end", "from snapshot"]);
/// assert_eq!(args.get(3), "from snapshot");
/// assert_eq!(args.c_str(1).to_bytes(), b"release");
/// assert_eq!(args.to_string(), "vm release end from snapshot");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventArgs {
    buf: Arc<[u8]>,
    starts: [u32; 4],
}

impl EventArgs {
    /// Packs four arguments.
    pub fn new<S: AsRef<OsStr>>(args: [S; 4]) -> Self {
        // Built on the stack for the usual short arguments: one allocation in all.
        let mut buf = smallvec::SmallVec::<[u8; 256]>::new();
        let mut starts = [0u32; 4];
        for (start, arg) in starts.iter_mut().zip(&args) {
            *start = buf.len() as u32;
            let bytes = arg.as_ref().as_bytes();
            buf.extend_from_slice(&bytes[..bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len())]);
            buf.push(0);
        }
        EventArgs {
            buf: Arc::from(buf.as_slice()),
            starts,
        }
    }

    fn with_nul(&self, i: usize) -> &[u8] {
        let start = self.starts[i] as usize;
        let end = self.starts.get(i + 1).map_or(self.buf.len(), |&s| s as usize);
        &self.buf[start..end]
    }

    /// Argument `i` (0 object, 1 op, 2 subop, 3 extra) exactly as passed.
    ///
    /// # Panics
    /// If `i > 3`.
    pub fn get(&self, i: usize) -> &OsStr {
        let b = self.with_nul(i);
        OsStr::from_bytes(&b[..b.len() - 1])
    }

    /// Argument `i` as a C string, for exec argv and the plugin ABI.
    ///
    /// # Panics
    /// If `i > 3`.
    pub fn c_str(&self, i: usize) -> &CStr {
        CStr::from_bytes_with_nul(self.with_nul(i)).expect("each argument ends with its only NUL")
    }

    /// Argument `i` as text, lossily.
    ///
    /// # Panics
    /// If `i > 3`.
    pub fn lossy(&self, i: usize) -> Cow<'_, str> {
        self.get(i).to_string_lossy()
    }

    /// The packed buffer and where each argument starts in it: argument `i` is the
    /// NUL-terminated string at `buf[starts[i]..]`. For FFI callers that hand out C
    /// string pointers without re-scanning.
    pub fn raw_parts(&self) -> (&[u8], [usize; 4]) {
        (&self.buf, self.starts.map(|s| s as usize))
    }

    /// The four arguments in order.
    pub fn iter(&self) -> impl Iterator<Item = &OsStr> {
        (0..4).map(|i| self.get(i))
    }
}

impl fmt::Display for EventArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.lossy(0),
            self.lossy(1),
            self.lossy(2),
            self.lossy(3)
        )
    }
}

impl fmt::Debug for EventArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// What one hook is called with: libvirt's four arguments, the document on stdin, and
/// the time limit the caller asks for.
///
/// Cheap to clone: arguments and input are shared.
#[derive(Debug, Clone)]
pub struct Invocation {
    driver: Driver,
    args: EventArgs,
    input: Option<Arc<[u8]>>,
    timeout: Option<Duration>,
    state_dir: Option<Arc<Path>>,
    cancel: Option<crate::Cancel>,
}

impl Invocation {
    /// An invocation with `args` = `[object, op, subop, extra]` and `input` on stdin
    /// (`None` means `/dev/null`).
    ///
    /// ```
    /// use virt_hooks_core::{Driver, EventArgs, Invocation};
    /// let args = EventArgs::new(["vm", "prepare", "begin", "-"]);
    /// let inv = Invocation::new(Driver::Qemu, args, Some(b"<domain/>\n".to_vec().into()));
    /// assert_eq!(inv.op(), "prepare");
    /// assert_eq!(inv.input(), Some(&b"<domain/>\n"[..]));
    /// ```
    pub fn new(driver: Driver, args: EventArgs, input: Option<Arc<[u8]>>) -> Self {
        Invocation {
            driver,
            args,
            input,
            timeout: None,
            state_dir: None,
            cancel: None,
        }
    }

    /// The invocation for an event, with the event's own input.
    pub fn from_event(event: &dyn HookEvent) -> Self {
        Self::new(
            event.driver(),
            EventArgs::new(event.os_args()),
            event.input().map(Arc::from),
        )
    }

    /// The same invocation with another input document (filter chaining).
    pub fn with_input(&self, input: Option<Arc<[u8]>>) -> Self {
        Invocation { input, ..self.clone() }
    }

    /// The same invocation with a time limit for the hook.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same invocation with the hook's state directory for this object (see
    /// [`StateRoot`](crate::state::StateRoot)); the registry sets it for hooks whose settings ask for state.
    pub fn with_state_dir(mut self, dir: Option<Arc<Path>>) -> Self {
        self.state_dir = dir;
        self
    }

    /// The hook's state directory for this object, when it asked for one: an exec hook
    /// finds it in `VIRT_HOOK_STATE`, a WASM hook as its preopened `/state`.
    pub fn state_dir(&self) -> Option<&Path> {
        self.state_dir.as_deref()
    }

    /// The driver.
    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// `[object, op, subop, extra]` exactly as passed (bytes need not be UTF-8).
    pub fn args(&self) -> &EventArgs {
        &self.args
    }

    /// The object (domain/network name, or `-`), lossily as UTF-8.
    pub fn object(&self) -> Cow<'_, str> {
        self.args.lossy(0)
    }

    /// The operation, lossily as UTF-8.
    pub fn op(&self) -> Cow<'_, str> {
        self.args.lossy(1)
    }

    /// The document for stdin; `None` means `/dev/null`.
    pub fn input(&self) -> Option<&[u8]> {
        self.input.as_deref()
    }

    /// The shared input buffer, for backends that hand it to another thread.
    pub fn input_shared(&self) -> Option<&Arc<[u8]>> {
        self.input.as_ref()
    }

    /// What cancels this call ([`crate::Registry::fire_until`]), if anything: a backend
    /// whose hook runs where no future is polled watches it ([`crate::Cancel::watch`])
    /// and stops the hook, then reports [`crate::HookError::Cancelled`].
    pub fn cancel(&self) -> Option<&crate::Cancel> {
        self.cancel.as_ref()
    }

    /// The same invocation, cancelled by `cancel`.
    pub fn with_cancel(mut self, cancel: Option<crate::Cancel>) -> Self {
        self.cancel = cancel;
        self
    }

    /// How long the caller lets the hook run; `None` means no limit (libvirt's
    /// behaviour). A backend with a timeout of its own uses the shorter one.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The limit a backend applies: the shorter of its own and the caller's.
    ///
    /// ```
    /// use std::time::Duration;
    /// use virt_hooks_core::{Driver, EventArgs, Invocation};
    /// let inv = Invocation::new(Driver::Daemon, EventArgs::new(["-", "start", "-", "start"]), None)
    ///     .with_timeout(Some(Duration::from_secs(5)));
    /// assert_eq!(inv.timeout_with(Some(Duration::from_secs(2))), Some(Duration::from_secs(2)));
    /// assert_eq!(inv.timeout_with(None), Some(Duration::from_secs(5)));
    /// ```
    ///
    /// It is at most [`MAX_TIMEOUT`](crate::backend::MAX_TIMEOUT), so a backend can add it to an `Instant`
    /// without overflow whatever it was given.
    pub fn timeout_with(&self, own: Option<Duration>) -> Option<Duration> {
        let limit = match (own, self.timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        limit.map(|t| t.min(crate::backend::MAX_TIMEOUT))
    }
}

/// Site-specific code called at a lifecycle point: the call, and what the hook is
/// (its name, backend, file). Which events it takes, whether its failure fails the
/// event and what a failure at `reconnect` does are the registry's, set on its
/// [`HookEntry`], so a [`layer`](crate::layer) wrapping the call cannot change them.
///
/// A hook sees an [`Invocation`] and returns a [`HookOutcome`]; exit status 0 is
/// success, anything else is a failure whose consequence depends on the event
/// ([`crate::FailurePolicy`]). For filter events (`migrate`, `restore`), non-empty
/// stdout replaces the document. A hook never panics on bad input: it reports
/// `Failed` or `Crashed` instead.
///
/// Implementing one (the registry holds hooks as `Arc<dyn Hook>`):
///
/// ```
/// use async_trait::async_trait;
/// use virt_hooks_core::{Hook, HookOutcome, Invocation};
///
/// struct RefuseTestGuests;
///
/// #[async_trait]
/// impl Hook for RefuseTestGuests {
///     fn name(&self) -> &str { "refuse-test-guests" }
///     async fn call(&self, inv: &Invocation) -> HookOutcome {
///         if inv.op() == "prepare" && inv.object().starts_with("test-") {
///             return HookOutcome::exited(1).with_stderr("test guests may not run here\n");
///         }
///         HookOutcome::success()
///     }
/// }
/// ```
#[async_trait]
pub trait Hook: Send + Sync {
    /// A name for reports and messages; for a file-backed hook, its full path.
    fn name(&self) -> &str;

    /// Which backend runs it (`exec`, `dylib`, `wasm`, `native`, `mock`, ...).
    fn backend(&self) -> &'static str {
        "native"
    }

    /// The file it came from, if any.
    fn path(&self) -> Option<&Path> {
        None
    }

    /// Whether the hook enforces [`Invocation::timeout`] itself, and how long past it it
    /// may take to stop and report (an exec hook terminates its process group, waits
    /// its kill grace, kills, reaps). `None`, the default: it does not, and the
    /// registry's timeout layer stops it exactly at the limit. With `Some(grace)` the
    /// layer waits that much longer before it drops the call, so the hook's own report
    /// (its output, what it killed) is kept.
    fn stop_grace(&self) -> Option<Duration> {
        None
    }

    /// Runs the hook once.
    async fn call(&self, inv: &Invocation) -> HookOutcome;
}

macro_rules! forward_hook {
    ($($ptr:ty),*) => {$(
        #[async_trait]
        impl<H: Hook + ?Sized> Hook for $ptr {
            fn name(&self) -> &str {
                (**self).name()
            }
            fn backend(&self) -> &'static str {
                (**self).backend()
            }
            fn path(&self) -> Option<&Path> {
                (**self).path()
            }
            fn stop_grace(&self) -> Option<Duration> {
                (**self).stop_grace()
            }
            async fn call(&self, inv: &Invocation) -> HookOutcome {
                (**self).call(inv).await
            }
        }
    )*};
}

forward_hook!(Arc<H>, Box<H>, &H);
