//! Test doubles for driver test suites: swap real backends for these.
//!
//! ```
//! use std::sync::Arc;
//! use virt_hooks_core::{Driver, RegistryBuilder, testing::RecordingHook};
//! use virt_hooks_core::events::QemuEvent;
//! let rec = Arc::new(RecordingHook::new("rec"));
//! let registry = RegistryBuilder::new().shared_hook(Some(Driver::Qemu), rec.clone()).build();
//! registry.fire_blocking(&QemuEvent::Started { name: "vm".into(), xml: "<domain/>\n".into() }).unwrap();
//! assert_eq!(rec.calls()[0].args, ["vm", "started", "begin", "-"]);
//! ```

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use crate::{Driver, Hook, HookEntry, HookEvent, HookOutcome, HookPolicy, Invocation};

type OutcomeFn = Box<dyn Fn() -> HookOutcome + Send + Sync>;
type AsyncCallFn =
    Box<dyn Fn(Invocation) -> std::pin::Pin<Box<dyn std::future::Future<Output = HookOutcome> + Send>> + Send + Sync>;

/// A hook with scripted outcomes.
pub struct MockHook {
    name: String,
    script: Mutex<VecDeque<HookOutcome>>,
    fallback: OutcomeFn,
    calls: AtomicUsize,
    scripted: AtomicBool,
    call_fn: Option<AsyncCallFn>,
}

impl fmt::Debug for MockHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockHook")
            .field("name", &self.name)
            .field("calls", &self.call_count())
            .finish()
    }
}

impl MockHook {
    /// A hook that always succeeds and prints nothing.
    pub fn succeeding(name: impl Into<String>) -> Self {
        Self::always(name, HookOutcome::success)
    }

    /// A hook that returns what `outcome` builds, every time.
    pub fn always(name: impl Into<String>, outcome: impl Fn() -> HookOutcome + Send + Sync + 'static) -> Self {
        MockHook {
            name: name.into(),
            script: Mutex::new(VecDeque::new()),
            fallback: Box::new(outcome),
            calls: AtomicUsize::new(0),
            scripted: AtomicBool::new(false),
            call_fn: None,
        }
    }

    /// A hook that runs `call` with each [`Invocation`] and returns what its future
    /// yields: a mock filter that rewrites what it reads, a slow or hanging mock.
    ///
    /// ```
    /// use virt_hooks_core::{Driver, HookOutcome, RegistryBuilder, testing::MockHook};
    /// use virt_hooks_core::events::QemuEvent;
    /// let filter = MockHook::from_fn("rewrite", |inv| async move {
    ///     let xml = String::from_utf8_lossy(inv.input().unwrap_or_default()).replace("br-old", "br0");
    ///     HookOutcome::success().with_stdout(xml)
    /// });
    /// let registry = RegistryBuilder::new().hook(Driver::Qemu, filter).build();
    /// let ev = QemuEvent::Migrate { name: "vm".into(), xml: "<domain>br-old</domain>".into() };
    /// let report = registry.fire_blocking(&ev).unwrap();
    /// assert_eq!(report.document.as_deref(), Some(&b"<domain>br0</domain>"[..]));
    /// ```
    pub fn from_fn<F, Fut>(name: impl Into<String>, call: F) -> Self
    where
        F: Fn(Invocation) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = HookOutcome> + Send + 'static,
    {
        let mut hook = Self::succeeding(name);
        hook.call_fn = Some(Box::new(move |inv| Box::pin(call(inv))));
        hook
    }

    /// A hook that returns these outcomes in turn, then succeeds.
    pub fn scripted(name: impl Into<String>, outcomes: impl IntoIterator<Item = HookOutcome>) -> Self {
        let hook = Self::succeeding(name);
        let script: VecDeque<_> = outcomes.into_iter().collect();
        hook.scripted.store(!script.is_empty(), Ordering::Release);
        *hook.script.lock().unwrap_or_else(|p| p.into_inner()) = script;
        hook
    }

    /// Its registry entry, called only for events this predicate accepts
    /// ([`HookEntry::matching`]).
    pub fn matching(self, filter: impl Fn(&dyn HookEvent) -> bool + Send + Sync + 'static) -> HookEntry {
        HookEntry::new(self).matching(filter)
    }

    /// Its registry entry with this policy ([`HookEntry::with_policy`]):
    /// [`HookPolicy::Optional`] makes its failures not fail the event.
    pub fn with_policy(self, policy: HookPolicy) -> HookEntry {
        HookEntry::new(self).with_policy(policy)
    }

    /// How many times it was called.
    pub fn call_count(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Hook for MockHook {
    fn name(&self) -> &str {
        &self.name
    }
    fn backend(&self) -> &'static str {
        "mock"
    }
    async fn call(&self, inv: &Invocation) -> HookOutcome {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(call) = &self.call_fn {
            return call(inv.clone()).await;
        }
        // Most mocks are never scripted: skip the lock for them.
        let scripted = if self.scripted.load(Ordering::Acquire) {
            let mut script = self.script.lock().unwrap_or_else(|p| p.into_inner());
            let next = script.pop_front();
            self.scripted.store(!script.is_empty(), Ordering::Release);
            next
        } else {
            None
        };
        scripted.unwrap_or_else(|| (self.fallback)())
    }
}

/// One call seen by a [`RecordingHook`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCall {
    /// The driver.
    pub driver: Driver,
    /// `[object, op, subop, extra]`, lossily as UTF-8.
    pub args: [String; 4],
    /// The same, exactly as passed.
    pub os_args: [OsString; 4],
    /// stdin (`None`: `/dev/null`).
    pub input: Option<Vec<u8>>,
    /// The time limit it was given.
    pub timeout: Option<Duration>,
}

/// A hook that records every invocation and returns a configurable outcome (success by
/// default).
pub struct RecordingHook {
    name: String,
    calls: Mutex<Vec<RecordedCall>>,
    respond: OutcomeFn,
}

impl fmt::Debug for RecordingHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingHook")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl RecordingHook {
    /// A recording hook that always succeeds.
    pub fn new(name: impl Into<String>) -> Self {
        RecordingHook {
            name: name.into(),
            calls: Mutex::new(Vec::new()),
            respond: Box::new(HookOutcome::success),
        }
    }

    /// Returns what `outcome` builds instead of success.
    pub fn returning(mut self, outcome: impl Fn() -> HookOutcome + Send + Sync + 'static) -> Self {
        self.respond = Box::new(outcome);
        self
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `"object op subop extra"` per call: handy for asserting sequences.
    pub fn lines(&self) -> Vec<String> {
        self.calls().iter().map(|c| c.args.join(" ")).collect()
    }
}

#[async_trait]
impl Hook for RecordingHook {
    fn name(&self) -> &str {
        &self.name
    }
    fn backend(&self) -> &'static str {
        "recording"
    }
    async fn call(&self, inv: &Invocation) -> HookOutcome {
        let call = RecordedCall {
            driver: inv.driver(),
            args: [0, 1, 2, 3].map(|i| inv.args().lossy(i).into_owned()),
            os_args: [0, 1, 2, 3].map(|i| inv.args().get(i).to_owned()),
            input: inv.input().map(<[u8]>::to_vec),
            timeout: inv.timeout(),
        };
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(call);
        (self.respond)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{QemuEvent, RegistryBuilder};

    #[tokio::test]
    async fn a_closure_mock_sees_the_invocation_and_may_await() {
        let slow = MockHook::from_fn("slow-refusal", |inv| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            HookOutcome::exited(1).with_stderr(format!("no {}", inv.object()))
        });
        let registry = RegistryBuilder::new().hook(Driver::Qemu, slow).build();
        let ev = QemuEvent::Prepare {
            name: "web1".into(),
            xml: "<domain/>".into(),
        };
        let failure = registry.fire(&ev).await.unwrap_err();
        assert!(failure.to_string().ends_with("no web1"), "{failure}");
    }
}
