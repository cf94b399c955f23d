//! The registry: an ordered list of hooks fired with libvirt's semantics.
//!
//! `builder.rs` builds it, `resolve.rs` finds and loads the hooks of an event (and
//! caches them), this file fires them, and `finish.rs` finishes the state of an
//! object's last event (and of a refused event that opened one).

mod builder;
mod finish;
mod resolve;
#[cfg(test)]
mod tests;

use self::builder::LayerStack;
pub use self::builder::RegistryBuilder;
use self::resolve::{Inner, Resolved, State};

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use smallvec::SmallVec;
use tracing::Instrument;

use crate::document::{self, DocumentChange};
use crate::hook::Matching;
use crate::layer::{self, Layer};
use crate::loader::{BrokenHook, Configured, DirEntry, Disposition, FileStamp, HooksDir, SkipReason};
use crate::report::InputSource;
use crate::xpath::DocumentScope;
use crate::{
    Driver, EventArgs, FailurePolicy, Hook, HookEntry, HookError, HookEvent, HookFailure, HookLoader, HookOutcome,
    HookRecord, HookStatus, Invocation, LoadError, LoadErrorKind, OnReconnectFailure, Report,
};

enum Source {
    Hook {
        driver: Option<Driver>,
        entry: Arc<HookEntry>,
    },
    Dir(HooksDir),
}

/// The registry's default cap on each of a hook's stdout and stderr (the exec backend's
/// own default).
pub const DEFAULT_MAX_OUTPUT: usize = 16 << 20;

/// An immutable, ordered set of hooks, fired with libvirt's semantics:
///
/// - every matching hook runs, in order, even after one has failed;
/// - the event fails if any required hook failed, and the error is the last failure's
///   message; whether that stops the operation is the event's [`FailurePolicy`];
/// - for filter events (`migrate`, `restore`) a hook reads the current document (the
///   last non-empty stdout of a successful hook) while every hook so far succeeded,
///   otherwise the original, and the result is the current document at the end;
/// - hooks directories are re-read on every call for drivers that had hooks at the last
///   (re)load, and not at all for the others.
///
/// `fire` takes `&self` and holds no lock while hooks run; [`Registry::reload`] swaps
/// the state atomically, so it neither waits for nor disturbs a running `fire`. Cloning
/// a registry is cheap and shares everything, loaded hooks included.
///
/// ```
/// use virt_hooks_core::{Driver, RegistryBuilder, testing::MockHook, HookOutcome};
/// use virt_hooks_core::events::QemuEvent;
/// let registry = RegistryBuilder::new()
///     .hook(Driver::Qemu, MockHook::succeeding("log"))
///     .hook(Driver::Qemu, MockHook::always("policy", || HookOutcome::exited(1).with_stderr("not today\n")))
///     .build();
/// let ev = QemuEvent::Prepare { name: "vm".into(), xml: "<domain/>\n".into() };
/// let failure = registry.fire_blocking(&ev).unwrap_err();
/// assert!(failure.is_fatal());
/// assert_eq!(failure.report().hooks.len(), 2);
/// assert!(failure.to_string().ends_with("returned status 1: not today"));
///
/// // At `stopped` libvirt ignores the failure: `Ok`, with the failure in the report.
/// let ev = QemuEvent::Stopped { name: "vm".into(), xml: "<domain/>\n".into() };
/// let report = registry.fire_blocking(&ev).unwrap();
/// assert!(!report.succeeded());
/// ```
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sources: Vec<String> = self
            .inner
            .sources
            .iter()
            .map(|s| match s {
                Source::Hook { driver, entry } => {
                    format!(
                        "{} ({}, {})",
                        entry.hook.name(),
                        entry.hook.backend(),
                        driver.map_or("all", Driver::as_str)
                    )
                }
                Source::Dir(dir) => format!("{}/", dir.root().display()),
            })
            .collect();
        f.debug_struct("Registry")
            .field("sources", &sources)
            .field("timeout", &self.inner.timeout)
            .field("event_timeout", &self.inner.event_timeout)
            .field("max_output", &self.inner.max_output)
            .field("layers", &self.inner.layers.0.len())
            .finish()
    }
}

impl Registry {
    /// A builder.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::new()
    }

    /// The per-hook time limit.
    pub fn timeout(&self) -> Option<Duration> {
        self.inner.timeout
    }

    /// The per-event time budget.
    pub fn event_timeout(&self) -> Option<Duration> {
        self.inner.event_timeout
    }

    /// The hooks directories, in order.
    pub fn hooks_dirs(&self) -> impl Iterator<Item = &HooksDir> {
        self.inner.sources.iter().filter_map(|s| match s {
            Source::Dir(d) => Some(d),
            Source::Hook { .. } => None,
        })
    }

    /// Re-reads which drivers have hooks and forgets loaded hooks (libvirt does this on
    /// SIGHUP). Fires already running finish with the state they started with.
    pub fn reload(&self) {
        self.inner.state.store(Arc::new(State::new(&self.inner.sources)));
    }

    /// The hooks an event would run, in order (loading directory entries as needed; this
    /// reads files on the calling thread).
    pub fn hooks_for(&self, event: &dyn HookEvent) -> Vec<Arc<dyn Hook>> {
        let mut hooks = self.inner.resolve(event.driver()).hooks;
        // One parse of the input for every hook that matches on it (`[match] xpath`).
        let scope = DocumentScope::new(event);
        hooks.retain(|e| e.matches(&scope));
        hooks.iter().map(|e| Arc::clone(&e.hook)).collect()
    }

    /// The matching hooks; directory reads and loads move off an async runtime's worker
    /// thread when there is one.
    /// The hooks for `event`, and why its document was not evaluated for `xpath` (then
    /// every hook that matches on it is among them).
    async fn collect_hooks(&self, event: &dyn HookEvent) -> (Resolved, Option<String>) {
        let driver = event.driver();
        let mut resolved = match blocking_pool() {
            Some(rt) if self.inner.reads_files(driver) => {
                let inner = Arc::clone(&self.inner);
                match rt.spawn_blocking(move || inner.resolve(driver)).await {
                    Ok(resolved) => resolved,
                    // The blocking pool is shutting down: read here rather than fail.
                    Err(_) => self.inner.resolve(driver),
                }
            }
            _ => self.inner.resolve(driver),
        };
        // One parse of the input for every hook that matches on it (`[match] xpath`).
        let scope = DocumentScope::new(event);
        resolved.hooks.retain(|e| e.matches(&scope));
        (resolved, scope.unevaluated())
    }

    /// Fires an event: runs every matching hook in order, with libvirt's rules.
    ///
    /// # Errors
    /// [`HookFailure`] exactly when the operation must not go on: a required hook failed
    /// at an event whose [`FailurePolicy`] aborts the operation, kills the object or
    /// reports the error to the caller (`network updated`). A failure libvirt ignores
    /// (`stopped`, `release`, daemon events, ...) is `Ok`, and the report shows it:
    /// [`Report::succeeded`] is false and the failed hook's record has its message.
    ///
    /// # Cancellation
    /// Dropping the future stops the hook that is running: an exec hook's process group
    /// and every descendant are killed and reaped, a WASM call is interrupted, a native
    /// call that cannot be interrupted finishes on its own thread and its result is
    /// dropped. The hooks after it are not run.
    pub async fn fire(&self, event: &dyn HookEvent) -> Result<Report, HookFailure> {
        Self::settle(self.run(event, None).await)
    }

    /// [`Registry::fire`], until `cancel` is cancelled. Then the running hook is stopped
    /// and **awaited**: an exec hook's processes are killed and reaped before this
    /// returns, a WASM call is interrupted, a hook that stops itself gets its
    /// [`Hook::stop_grace`] (others are dropped at once). The hooks after it are not run,
    /// and an object's last event removes no state directory (its state stays live, for
    /// the driver to give the object its last event again). The report records the
    /// hooks that ran, the stopped one as [`Failure::Cancelled`](crate::Failure), and
    /// [`Report::cancelled`]; the result follows the event's policy, as for `fire`.
    ///
    /// ```
    /// use virt_hooks_core::{Cancel, Driver, HookOutcome, RegistryBuilder, testing::MockHook};
    /// use virt_hooks_core::events::QemuEvent;
    /// let cancel = Cancel::new();
    /// let stopper = cancel.clone();
    /// let registry = RegistryBuilder::new()
    ///     .hook(Driver::Qemu, MockHook::from_fn("cancels", move |_| {
    ///         stopper.cancel();
    ///         std::future::ready(HookOutcome::success())
    ///     }))
    ///     .hook(Driver::Qemu, MockHook::succeeding("never-runs"))
    ///     .build();
    /// let ev = QemuEvent::Stopped { name: "vm".into(), xml: String::new() };
    /// let report = virt_hooks_core::block_on(registry.fire_until(&ev, &cancel)).unwrap();
    /// assert!(report.cancelled);
    /// assert_eq!(report.hooks.len(), 1);
    /// ```
    ///
    /// At an event whose failure stops the operation (`prepare`), a cancelled event is an
    /// `Err` like a refusal: tell them apart with [`HookFailure::is_cancelled`].
    ///
    /// # Errors
    /// As [`Registry::fire`].
    pub async fn fire_until(&self, event: &dyn HookEvent, cancel: &crate::Cancel) -> Result<Report, HookFailure> {
        Self::settle(self.run(event, Some(cancel)).await)
    }

    /// [`Registry::fire_until`] for callers that are not async, as
    /// [`Registry::fire_blocking`]; `cancel` may be cancelled from another thread.
    ///
    /// # Errors
    /// As [`Registry::fire`].
    pub fn fire_blocking_until(&self, event: &dyn HookEvent, cancel: &crate::Cancel) -> Result<Report, HookFailure> {
        block_on(self.fire_until(event, cancel))
    }

    fn settle(report: Report) -> Result<Report, HookFailure> {
        if report.succeeded() || !report.policy.fails_operation() {
            Ok(report)
        } else {
            Err(HookFailure::new(report))
        }
    }

    async fn run(&self, event: &dyn HookEvent, cancel: Option<&crate::Cancel>) -> Report {
        let inner = &*self.inner;
        // The budget covers finding and loading the hooks too.
        let budget = inner.event_timeout.map(|b| (Instant::now(), b));
        let (Resolved { hooks, skipped }, unevaluated) = self.collect_hooks(event).await;
        // What state the object had, should the event fail with no last event to follow.
        let state_before = crate::state_orphaned_by_failure(event).then(|| self.state_dirs(event));
        let base = Invocation::from_event(event)
            .with_timeout(inner.timeout)
            .with_cancel(cancel.cloned());
        let filters = event.filters_input();
        let original = base.input_shared().cloned();
        let mut report = Report::new(event, base.args().clone(), filters);
        report.unevaluated_document = unevaluated;
        report.skipped = skipped;
        report.hooks.reserve_exact(hooks.len());
        let mut current: Option<Arc<[u8]>> = None;
        let mut all_ok = true;
        for entry in &hooks {
            if cancel.is_some_and(crate::Cancel::is_cancelled) {
                report.cancelled = true;
                break;
            }
            // Through the trait object itself: `Arc<dyn Hook>`'s forwarding impl would
            // box a second future on every call.
            let hook: &dyn Hook = entry.hook.as_ref();
            let chained = filters && all_ok && current.is_some();
            let input = match (chained, &original) {
                (true, _) => InputSource::Chained,
                (false, Some(_)) => InputSource::Original,
                (false, None) => InputSource::None,
            };
            let left = budget.map(|(started, budget)| budget.saturating_sub(started.elapsed()));
            let outcome = if left == Some(Duration::ZERO) {
                let budget = inner.event_timeout.unwrap_or_default();
                HookOutcome::failed(HookError::NotStarted { budget })
            } else {
                let owned;
                let inv = if chained || left.is_some() {
                    let inv = if chained {
                        base.with_input(current.clone())
                    } else {
                        base.clone()
                    };
                    let timeout = match left {
                        Some(left) => Some(inv.timeout().map_or(left, |t| t.min(left))),
                        None => inv.timeout(),
                    };
                    owned = inv.with_timeout(timeout);
                    &owned
                } else {
                    &base
                };
                let span = tracing::debug_span!("hook", name = hook.name(), backend = hook.backend(), op = event.op());
                // An instrumented future costs even with no subscriber; skip it then.
                // The registry's own limits run inline: no wrapper, no extra allocation,
                // and the large timed future is only built when a timeout is set.
                // Without a cancel, no wrapper at all: the plain path costs what it did.
                let mut outcome = match (cancel, span.is_disabled(), inner.timed) {
                    (None, true, false) => layer::caught(hook, inv).await,
                    (None, true, true) => layer::timed(hook, inv).await,
                    (None, false, timed) => layer::maybe_timed(hook, inv, timed).instrument(span).await,
                    (Some(cancel), disabled, timed) => {
                        let call = async {
                            match disabled {
                                true => layer::maybe_timed(hook, inv, timed).await,
                                false => layer::maybe_timed(hook, inv, timed).instrument(span).await,
                            }
                        };
                        layer::cancellable(std::pin::pin!(call), hook, cancel).await
                    }
                };
                if let Some(cap) = inner.max_output {
                    layer::apply_cap(&mut outcome, cap);
                }
                outcome
            };
            // A filter stage's output is checked before it can become the document.
            let mut new_document = None;
            let mut rejected = None;
            let mut change = None;
            if filters && outcome.status.is_success() && !outcome.stdout_truncated {
                let stage_input = if chained {
                    current.as_deref()
                } else {
                    original.as_deref()
                };
                if is_blank(&outcome.stdout) {
                    change = Some(DocumentChange::unchanged());
                } else {
                    match document::check_output(stage_input, &outcome.stdout) {
                        Ok(()) => {
                            change = Some(DocumentChange::between(
                                stage_input.unwrap_or_default(),
                                &outcome.stdout,
                            ));
                            new_document = Some(Arc::<[u8]>::from(outcome.stdout.as_slice()));
                        }
                        Err(why) => rejected = Some(why),
                    }
                }
            }
            // Stopped at the budget's time, which was shorter than its own limit.
            let budget_cut = matches!(outcome.status, HookStatus::TimedOut(after)
                if left.is_some_and(|left| after + Duration::from_millis(1) >= left));
            let unusable = matches!(outcome.status, HookStatus::Failed(HookError::Load(_)));
            let gone = matches!(outcome.status, HookStatus::Failed(HookError::Gone { .. }));
            let optional = entry.policy == crate::HookPolicy::Optional;
            let ignored_document = match filters {
                true => None,
                false => document::ignored_document(event.op(), &outcome.stdout, outcome.stdout_truncated),
            };
            let mut record = HookRecord::new(hook, event, outcome, input, filters, rejected, optional);
            record.document = change;
            record.warnings.extend(ignored_document);
            if budget_cut {
                record.failure = Some(crate::Failure::Budget);
                record.warnings.push(format!(
                    "stopped by the event's time budget ({}), before its own time limit",
                    crate::report::format_duration(inner.event_timeout.unwrap_or_default())
                ));
            }
            let kills = !record.success && !record.optional && event.on_failure() == FailurePolicy::KillObject;
            if gone {
                // Set aside during the event: it takes effect now rather than failing it.
                record.optional = true;
                record
                    .warnings
                    .push("set aside, renamed or removed after the event began: not run, as at the next event".into());
            } else if kills && unusable {
                // A file that cannot be loaded or configured is not a hook's decision:
                // at `reconnect` failing would kill a running guest for a typo.
                record.optional = true;
                record.spared = true;
                record.warnings.push(
                    "could not be loaded or configured; at this event a failure would kill the running guest, so it is logged instead (run `hookctl check`)"
                        .into(),
                );
                tracing::error!(hook = %record.name, "hook could not be loaded; not failing a guest-killing event for it");
            } else if kills && entry.on_reconnect_failure == OnReconnectFailure::Log {
                // The plugins dir's dispatcher decides: the failure is an error to log,
                // not a reason to kill a guest that runs (a `case` whose default is
                // `exit 1` fails every op it does not know).
                record.optional = true;
                record.spared = true;
                record.warnings.push(
                    "failed at reconnect: logged as an error instead of killing the running guest (on_reconnect_failure = \"log\"; with on_reconnect_failure = \"kill\" in its sidecar the guest is killed, as libvirt does)"
                        .into(),
                );
                tracing::error!(hook = %record.name, "hook failed at reconnect; the running guest is spared");
            }
            if !record.success {
                tracing::info!(hook = %record.name, message = record.message.as_deref().unwrap_or(""), optional = record.optional, "hook failed");
                // An optional hook's failure neither fails the event nor resets the chain.
                all_ok &= record.optional;
            } else if let Some(doc) = new_document {
                record.replaced_document = true;
                current = Some(doc);
            }
            report.hooks.push(record);
        }
        if filters && report.succeeded() {
            report.document_changed = current.is_some();
            report.document = current.or(original).map(|d| d.to_vec());
        }
        report.cancelled |= report
            .hooks
            .iter()
            .any(|r| r.failure == Some(crate::Failure::Cancelled));
        // A cancelled event did not finish: its object keeps its state as it was.
        if crate::state_ends_object(event) && !report.cancelled {
            self.finish_state(event, &mut report);
        }
        if let (Some(before), false, false) = (state_before, report.succeeded(), report.cancelled) {
            self.abandon_state(event, &before, &mut report);
        }
        report
    }

    /// [`Registry::fire`] for callers that are not async: the hooks run on this thread
    /// (an exec hook's wait blocks it; nothing is handed to a thread pool). Needs no
    /// runtime. Inside a multi-thread runtime it may be called from an async task (the
    /// worker's other tasks move to another thread, as [`block_on`] says); inside a
    /// `current_thread` runtime only from `spawn_blocking`: called from one of its
    /// tasks it blocks that runtime, and a custom hook awaiting the runtime (its timers)
    /// waits until its own timeout (without one, for ever). tokio offers no way to tell
    /// such a task from a `spawn_blocking` thread, so this cannot be refused. A custom
    /// hook that needs a tokio runtime (`tokio::time`) must be fired inside one.
    ///
    /// # Errors
    /// As [`Registry::fire`].
    pub fn fire_blocking(&self, event: &dyn HookEvent) -> Result<Report, HookFailure> {
        block_on(self.fire(event))
    }
}

/// Runs a future to completion on this thread: what [`Registry::fire_blocking`] uses,
/// for the [`Lifecycle`](crate::Lifecycle) sequences of a driver that is not async.
///
/// Hooks called outside a runtime mostly finish on their first poll (exec and native
/// hooks block right there), so that poll needs no waker; anything that does wait falls
/// back to a parking executor.
///
/// Inside a multi-thread tokio runtime it hands the worker's other tasks to another
/// thread first (`tokio::task::block_in_place`), so a hook that awaits the runtime (its
/// timers, its I/O) still finishes. Never call it from an async task of a
/// `current_thread` runtime or a `LocalSet`: it would stall every task of that thread,
/// and a hook waiting on that runtime's timers would wait until its own timeout
/// (tokio panics with "can call blocking only when running on the multi-threaded
/// runtime" in a `LocalSet`). Use `spawn_blocking` there, or `fire` itself.
///
/// ```
/// use virt_hooks_core::{block_on, Driver, Guest, Lifecycle, RegistryBuilder};
/// let registry = RegistryBuilder::new().build();
/// let guest = Guest::new(Driver::Qemu, "vm", "<domain/>\n");
/// let started = block_on(Lifecycle::new(&registry).start(&guest));
/// assert!(started.is_ok());
/// ```
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    let in_multi_thread_runtime = tokio::runtime::Handle::try_current()
        .is_ok_and(|runtime| runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if in_multi_thread_runtime {
        // Off a worker thread (spawn_blocking, `Runtime::enter`) this just calls the closure.
        tokio::task::block_in_place(|| block_on_this_thread(fut))
    } else {
        block_on_this_thread(fut)
    }
}

fn block_on_this_thread<F: std::future::Future>(fut: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            BLOCKING_CALLER.set(self.0);
        }
    }
    let _restore = Restore(BLOCKING_CALLER.replace(true));
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => pollster::block_on(fut),
    }
}

thread_local! {
    static BLOCKING_CALLER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the hook being called runs under [`block_on`] (so under
/// [`Registry::fire_blocking`]): the calling thread may block, and a backend should run
/// the call right here. Handing it to tokio's blocking pool from there would hold one
/// pool thread while waiting for another, which deadlocks a full pool.
pub fn caller_may_block() -> bool {
    BLOCKING_CALLER.get()
}

/// The tokio runtime a backend should hand blocking work to (`spawn_blocking`): the
/// caller's, unless there is none or the caller may block ([`caller_may_block`]), in
/// which case the work runs right where the hook is called.
pub fn blocking_pool() -> Option<tokio::runtime::Handle> {
    if caller_may_block() {
        return None;
    }
    tokio::runtime::Handle::try_current().ok()
}

/// libvirt's `virStringIsEmpty`: empty or only whitespace.
fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}
