//! The `Hook` trait and what a hook is called with.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{Driver, HookEvent, HookOutcome};

/// What one hook is called with: libvirt's four arguments, the document on stdin, and
/// the time limit the caller asks for.
///
/// Cheap to clone: arguments and input are shared.
#[derive(Debug, Clone)]
pub struct Invocation {
    driver: Driver,
    args: Arc<[OsString; 4]>,
    input: Option<Arc<[u8]>>,
    timeout: Option<Duration>,
}

impl Invocation {
    /// An invocation with `args` = `[object, op, subop, extra]` and `input` on stdin
    /// (`None` means `/dev/null`).
    ///
    /// ```
    /// use hooks_core::{Driver, Invocation};
    /// let inv = Invocation::new(Driver::Qemu, ["vm", "prepare", "begin", "-"].map(Into::into), Some(b"<domain/>\n".to_vec().into()));
    /// assert_eq!(inv.op(), "prepare");
    /// assert_eq!(inv.input(), Some(&b"<domain/>\n"[..]));
    /// ```
    pub fn new(driver: Driver, args: [OsString; 4], input: Option<Arc<[u8]>>) -> Self {
        Invocation {
            driver,
            args: Arc::new(args),
            input,
            timeout: None,
        }
    }

    /// The invocation for an event, with the event's own input.
    pub fn from_event(event: &dyn HookEvent) -> Self {
        Self::new(
            event.driver(),
            event.os_args().map(OsStr::to_owned),
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

    /// The driver.
    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// `[object, op, subop, extra]` exactly as passed (bytes need not be UTF-8).
    pub fn args(&self) -> &[OsString; 4] {
        &self.args
    }

    /// The object (domain/network name, or `-`), lossily as UTF-8.
    pub fn object(&self) -> std::borrow::Cow<'_, str> {
        self.args[0].to_string_lossy()
    }

    /// The operation, lossily as UTF-8.
    pub fn op(&self) -> std::borrow::Cow<'_, str> {
        self.args[1].to_string_lossy()
    }

    /// The document for stdin; `None` means `/dev/null`.
    pub fn input(&self) -> Option<&[u8]> {
        self.input.as_deref()
    }

    /// The shared input buffer, for backends that hand it to another thread.
    pub fn input_shared(&self) -> Option<&Arc<[u8]>> {
        self.input.as_ref()
    }

    /// How long the caller lets the hook run; `None` means no limit (libvirt's
    /// behaviour). A backend with a timeout of its own uses the shorter one.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

/// Site-specific code called at a lifecycle point.
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
/// use hooks_core::{Hook, HookOutcome, Invocation};
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

    /// Whether the hook wants this event; a hook that does not match is not called and
    /// does not appear in the report. Defaults to every event of its driver.
    fn matches(&self, _event: &dyn HookEvent) -> bool {
        true
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
            fn matches(&self, event: &dyn HookEvent) -> bool {
                (**self).matches(event)
            }
            async fn call(&self, inv: &Invocation) -> HookOutcome {
                (**self).call(inv).await
            }
        }
    )*};
}

forward_hook!(Arc<H>, Box<H>, &H);
