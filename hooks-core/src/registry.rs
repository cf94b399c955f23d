//! The registry: an ordered list of hooks fired with libvirt's semantics.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use smallvec::SmallVec;
use tracing::Instrument;

use crate::loader::{BrokenHook, Configured, DirEntry, Disposition, FileStamp, HooksDir, SkipReason};
use crate::report::InputSource;
use crate::{
    Driver, Hook, HookEvent, HookFailure, HookLoader, HookRecord, HookSettings, Invocation, LoadError, Report,
};

enum Source {
    Hook {
        driver: Option<Driver>,
        hook: Arc<dyn Hook>,
    },
    Dir(HooksDir),
}

/// Builds a [`Registry`]. Hooks run in the order they are added; a hooks directory adds
/// its entries (main script, then `<driver>.d/` in strcmp order) where it was added.
///
/// ```
/// use hooks_core::{Driver, RegistryBuilder, testing::MockHook};
/// let registry = RegistryBuilder::new()
///     .hook(Driver::Qemu, MockHook::succeeding("audit"))
///     .hooks_dir("/etc/libvirt/hooks")
///     .build();
/// # drop(registry);
/// ```
#[derive(Default)]
#[must_use]
pub struct RegistryBuilder {
    sources: Vec<Source>,
    timeout: Option<Duration>,
}

impl fmt::Debug for RegistryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryBuilder")
            .field("sources", &self.sources.len())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RegistryBuilder {
    /// An empty builder: no hooks, no timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a hook for one driver's events.
    pub fn hook(self, driver: Driver, hook: impl Hook + 'static) -> Self {
        self.shared_hook(Some(driver), Arc::new(hook))
    }

    /// Adds a shared hook for one driver's events, or for every driver with `None`.
    pub fn shared_hook(mut self, driver: Option<Driver>, hook: Arc<dyn Hook>) -> Self {
        self.sources.push(Source::Hook { driver, hook });
        self
    }

    /// Adds every hook compiled into the program with
    /// [`compiled_hook!`](crate::compiled_hook), in their documented order (ascending
    /// `order`, then name), at this position.
    pub fn compiled_hooks(mut self) -> Self {
        for reg in crate::compiled_hooks() {
            let hook = reg.make();
            if reg.drivers().is_empty() {
                self = self.shared_hook(None, hook);
            } else {
                for &driver in reg.drivers() {
                    self = self.shared_hook(Some(driver), Arc::clone(&hook));
                }
            }
        }
        self
    }

    /// Adds a libvirt hooks directory, with every backend linked into the program.
    pub fn hooks_dir(self, dir: impl Into<PathBuf>) -> Self {
        self.hooks_dir_with(HooksDir::new(dir))
    }

    /// Adds a hooks directory with chosen loaders.
    pub fn hooks_dir_with(mut self, dir: HooksDir) -> Self {
        self.sources.push(Source::Dir(dir));
        self
    }

    /// A time limit for each hook call; `None` (the default, as in libvirt) means none.
    /// A backend's own per-hook limit, if shorter, wins.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Builds the registry, reading each hooks directory's presence now (libvirt's
    /// presence cache: a driver with no hooks now is not called until [`Registry::reload`]).
    pub fn build(self) -> Registry {
        let state = State::new(&self.sources);
        Registry {
            sources: self.sources,
            timeout: self.timeout,
            state: ArcSwap::from_pointee(state),
        }
    }
}

/// Which drivers had hooks at the last (re)load, per source, and the hooks loaded since.
struct State {
    present: Vec<u8>,
    loaded: Mutex<HashMap<PathBuf, LoadedHook>>,
}

/// A hook loaded from a file, valid while the file and its settings are unchanged.
type LoadedHook = (FileStamp, HookSettings, Arc<dyn Hook>);

const fn driver_bit(driver: Driver) -> u8 {
    1 << driver as u8
}

impl State {
    fn new(sources: &[Source]) -> Self {
        let present = sources
            .iter()
            .map(|s| match s {
                Source::Hook { .. } => 0,
                // A flat plugins dir is the same for every driver: read it once.
                Source::Dir(dir) if dir.is_flat() && dir.is_present(Driver::Daemon) => u8::MAX,
                Source::Dir(dir) if dir.is_flat() => 0,
                Source::Dir(dir) => Driver::ALL
                    .into_iter()
                    .filter(|d| dir.is_present(*d))
                    .fold(0, |bits, d| bits | driver_bit(d)),
            })
            .collect();
        State {
            present,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    fn load(&self, loader: &'static dyn HookLoader, entry: &DirEntry) -> Arc<dyn Hook> {
        let path = entry.path.as_path();
        let settings = match entry.settings() {
            Ok(settings) => settings,
            Err(e) => {
                let err = LoadError::new(path, loader.backend(), "its settings file is invalid").with_source(e);
                return Arc::new(BrokenHook::new(err));
            }
        };
        let stamp = entry.stamp;
        let mut loaded = self.loaded.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let (Some(stamp), Some((old, old_settings, hook))) = (stamp, loaded.get(path)) {
            if *old == stamp && *old_settings == settings {
                return Arc::clone(hook);
            }
        }
        let hook: Arc<dyn Hook> = match loader.load(path, &settings) {
            Ok(hook) => Configured::wrap(hook, &settings),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %crate::error::chain(&err), "hook failed to load");
                Arc::new(BrokenHook::new(err))
            }
        };
        if let Some(stamp) = stamp {
            loaded.insert(path.to_owned(), (stamp, settings, Arc::clone(&hook)));
        }
        hook
    }
}

/// An immutable, ordered set of hooks, fired with libvirt's semantics:
///
/// - every matching hook runs, in order, even after one has failed;
/// - the event fails if any hook failed, and the error is the last failure's message;
/// - for filter events (`migrate`, `restore`) a hook reads the current document (the
///   last non-empty stdout of a successful hook) while every hook so far succeeded,
///   otherwise the original, and the result is the current document at the end;
/// - hooks directories are re-read on every call for drivers that had hooks at the last
///   (re)load, and not at all for the others.
///
/// `fire` takes `&self` and holds no lock while hooks run; [`Registry::reload`] swaps
/// the state atomically, so it neither waits for nor disturbs a running `fire`.
///
/// ```
/// use hooks_core::{Driver, QemuEvent, RegistryBuilder, testing::MockHook, HookOutcome};
/// let registry = RegistryBuilder::new()
///     .hook(Driver::Qemu, MockHook::succeeding("log"))
///     .hook(Driver::Qemu, MockHook::always("policy", || HookOutcome::exited(1).with_stderr("not today\n")))
///     .build();
/// let ev = QemuEvent::Prepare { name: "vm".into(), xml: "<domain/>\n".into() };
/// let failure = registry.fire_blocking(&ev).unwrap_err();
/// assert!(failure.is_fatal());
/// assert_eq!(failure.report().hooks.len(), 2);
/// assert!(failure.to_string().ends_with("unexpected exit status 1: not today"));
/// ```
pub struct Registry {
    sources: Vec<Source>,
    timeout: Option<Duration>,
    state: ArcSwap<State>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sources: Vec<String> = self
            .sources
            .iter()
            .map(|s| match s {
                Source::Hook { driver, hook } => {
                    format!(
                        "{} ({}, {})",
                        hook.name(),
                        hook.backend(),
                        driver.map_or("all", Driver::as_str)
                    )
                }
                Source::Dir(dir) => format!("{}/", dir.root().display()),
            })
            .collect();
        f.debug_struct("Registry")
            .field("sources", &sources)
            .field("timeout", &self.timeout)
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
        self.timeout
    }

    /// The hooks directories, in order.
    pub fn hooks_dirs(&self) -> impl Iterator<Item = &HooksDir> {
        self.sources.iter().filter_map(|s| match s {
            Source::Dir(d) => Some(d),
            Source::Hook { .. } => None,
        })
    }

    /// Re-reads which drivers have hooks and forgets loaded hooks (libvirt does this on
    /// SIGHUP). Fires already running finish with the state they started with.
    pub fn reload(&self) {
        self.state.store(Arc::new(State::new(&self.sources)));
    }

    /// The hooks an event would run, in order (loading directory entries as needed).
    pub fn hooks_for(&self, event: &dyn HookEvent) -> Vec<Arc<dyn Hook>> {
        self.collect_hooks(event).into_vec()
    }

    /// [`Registry::hooks_for`] without a heap allocation for the usual few hooks.
    fn collect_hooks(&self, event: &dyn HookEvent) -> SmallVec<[Arc<dyn Hook>; 8]> {
        let state = self.state.load();
        let driver = event.driver();
        let mut hooks = SmallVec::new();
        for (source, present) in self.sources.iter().zip(&state.present) {
            match source {
                Source::Hook { driver: d, hook } => {
                    if d.is_none_or(|d| d == driver) && (**hook).matches(event) {
                        hooks.push(Arc::clone(hook));
                    }
                }
                Source::Dir(dir) if present & driver_bit(driver) != 0 => match dir.scan(driver) {
                    Ok(entries) => {
                        for entry in entries {
                            let hook = match &entry.disposition {
                                Disposition::Hook(loader) => state.load(*loader, &entry),
                                Disposition::Refused(loader, why) => {
                                    let backend = loader.map_or("trust", |l| l.backend());
                                    let err =
                                        LoadError::new(&entry.path, backend, format!("refused: {}", why.reason()));
                                    Arc::new(BrokenHook::new(err))
                                }
                                // libvirt would run an executable here: a program that
                                // forgot to link the exec backend must not skip it.
                                Disposition::Skipped(SkipReason::Unclaimed) => {
                                    let err = LoadError::new(
                                        &entry.path,
                                        "none",
                                        "an executable, but no backend linked into this program runs executables (call `hooks_exec::link()` from main)",
                                    );
                                    Arc::new(BrokenHook::new(err))
                                }
                                Disposition::Skipped(_) => continue,
                            };
                            if (*hook).matches(event) {
                                hooks.push(hook);
                            }
                        }
                    }
                    Err(e) => {
                        let path = dir.drop_in_dir(driver);
                        let err = LoadError::new(&path, "dir", "cannot read directory").with_source(e);
                        hooks.push(Arc::new(BrokenHook::new(err)) as Arc<dyn Hook>);
                    }
                },
                Source::Dir(_) => {}
            }
        }
        hooks
    }

    /// Fires an event: runs every matching hook in order and returns the report, or a
    /// [`HookFailure`] (libvirt's message, the policy, the report) if any hook failed.
    ///
    /// # Errors
    /// [`HookFailure`] when at least one hook failed, whatever the event's policy: check
    /// [`HookFailure::is_fatal`] to decide what to do, as libvirt does.
    pub async fn fire(&self, event: &dyn HookEvent) -> Result<Report, HookFailure> {
        let hooks = self.collect_hooks(event);
        let base = Invocation::from_event(event).with_timeout(self.timeout);
        let filters = event.filters_input();
        let original = base.input_shared().cloned();
        let mut report = Report::new(event, base.args().clone(), filters);
        report.hooks.reserve_exact(hooks.len());
        let mut current: Option<Arc<[u8]>> = None;
        let mut all_ok = true;
        for hook in &hooks {
            // Through the trait object itself: `Arc<dyn Hook>`'s forwarding impl would
            // box a second future on every call.
            let hook: &dyn Hook = hook.as_ref();
            let chained = filters && all_ok && current.is_some();
            let input = match (chained, &original) {
                (true, _) => InputSource::Chained,
                (false, Some(_)) => InputSource::Original,
                (false, None) => InputSource::None,
            };
            let chained_inv;
            let inv = if chained {
                chained_inv = base.with_input(current.clone());
                &chained_inv
            } else {
                &base
            };
            let span = tracing::debug_span!("hook", name = hook.name(), backend = hook.backend(), op = event.op());
            // An instrumented future costs even with no subscriber; skip it then.
            let outcome = if span.is_disabled() {
                hook.call(inv).await
            } else {
                hook.call(inv).instrument(span).await
            };
            let new_document =
                (filters && outcome.status.is_success() && !outcome.stdout_truncated && !is_blank(&outcome.stdout))
                    .then(|| Arc::<[u8]>::from(outcome.stdout.as_slice()));
            let unusable = matches!(outcome.status, crate::HookStatus::Failed(crate::HookError::Load(_)));
            let mut record = HookRecord::new(hook, event, outcome, input, filters);
            if unusable && !record.success && event.on_failure() == crate::FailurePolicy::KillObject {
                // A file that cannot be loaded or configured is not a hook's decision:
                // at `reconnect` failing would kill a running guest for a typo.
                record.optional = true;
                record.warnings.push(
                    "could not be loaded or configured; at this event a failure would kill the running guest, so it is logged instead (run `hookctl check`)"
                        .into(),
                );
                tracing::error!(hook = %record.name, "hook could not be loaded; not failing a guest-killing event for it");
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
        if filters {
            report.document_changed = current.is_some();
            report.document = current.or(original).map(|d| d.to_vec());
        }
        if report.succeeded() {
            Ok(report)
        } else {
            Err(HookFailure::new(report))
        }
    }

    /// [`Registry::fire`] for callers that are not async. Backends that need a runtime
    /// (none of the bundled ones) must not be used this way outside one.
    ///
    /// # Errors
    /// As [`Registry::fire`].
    pub fn fire_blocking(&self, event: &dyn HookEvent) -> Result<Report, HookFailure> {
        block_on(self.fire(event))
    }
}

/// Runs a future to completion on this thread. Hooks called outside a runtime finish on
/// their first poll (exec and native hooks block right there), so that poll needs no
/// waker; anything that does wait falls back to a parking executor.
pub(crate) fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => pollster::block_on(fut),
    }
}

/// libvirt's `virStringIsEmpty`: empty or only whitespace.
fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{MockHook, RecordingHook};
    use crate::{FailurePolicy, HookOutcome, QemuEvent, StatusRecord};

    fn migrate() -> QemuEvent {
        QemuEvent::Migrate {
            name: "vm".into(),
            xml: "<original/>".into(),
        }
    }

    fn printing(name: &str, code: i32, out: &'static str) -> MockHook {
        MockHook::always(name, move || HookOutcome::exited(code).with_stdout(out))
    }

    fn inputs(rec: &RecordingHook) -> Vec<String> {
        rec.calls()
            .iter()
            .map(|c| String::from_utf8_lossy(c.input.as_deref().unwrap_or(b"<null>")).into_owned())
            .collect()
    }

    #[test]
    fn runs_all_after_failure_and_reports_the_last_failure() {
        let registry = RegistryBuilder::new()
            .hook(
                Driver::Qemu,
                MockHook::always("a", || HookOutcome::exited(3).with_stderr("first")),
            )
            .hook(Driver::Qemu, MockHook::succeeding("b"))
            .hook(
                Driver::Qemu,
                MockHook::always("c", || HookOutcome::exited(1).with_stderr("second\n")),
            )
            .build();
        let err = registry
            .fire_blocking(&QemuEvent::Start {
                name: "vm".into(),
                xml: String::new(),
            })
            .unwrap_err();
        assert_eq!(err.report().hooks.len(), 3);
        assert_eq!(err.failed_hook().name, "c");
        assert_eq!(err.failures().count(), 2);
        assert_eq!(err.policy(), FailurePolicy::Abort);
        assert!(err.to_string().starts_with("Hook script execution failed: internal error: mock hook (c vm start begin -) unexpected exit status 1: second"), "{err}");
    }

    #[test]
    fn filter_chain_follows_libvirt() {
        let rec = Arc::new(RecordingHook::new("rec"));
        let registry = RegistryBuilder::new()
            .hook(Driver::Qemu, printing("main", 0, "<one/>"))
            .shared_hook(Some(Driver::Qemu), rec.clone())
            .hook(Driver::Qemu, printing("empty", 0, "  \n"))
            .shared_hook(Some(Driver::Qemu), rec.clone())
            .hook(Driver::Qemu, printing("two", 0, "<two/>"))
            .shared_hook(Some(Driver::Qemu), rec.clone())
            .build();
        let report = registry.fire_blocking(&migrate()).unwrap();
        assert_eq!(inputs(&rec), ["<one/>", "<one/>", "<two/>"]);
        assert_eq!(report.document.as_deref(), Some(&b"<two/>"[..]));
        assert!(report.document_changed);
        assert_eq!(report.hooks[0].input, InputSource::Original);
        assert_eq!(report.hooks[1].input, InputSource::Chained);
    }

    #[test]
    fn after_a_failure_filters_get_the_original() {
        let rec = Arc::new(RecordingHook::new("rec"));
        let registry = RegistryBuilder::new()
            .hook(Driver::Qemu, printing("one", 0, "<one/>"))
            .hook(Driver::Qemu, printing("fails", 1, "<ignored/>"))
            .shared_hook(Some(Driver::Qemu), rec.clone())
            .build();
        let err = registry.fire_blocking(&migrate()).unwrap_err();
        assert_eq!(inputs(&rec), ["<original/>"]);
        assert_eq!(err.report().document.as_deref(), Some(&b"<one/>"[..]));
    }

    #[test]
    fn unchanged_document_is_the_original() {
        let registry = RegistryBuilder::new()
            .hook(Driver::Qemu, printing("quiet", 0, ""))
            .build();
        let report = registry.fire_blocking(&migrate()).unwrap();
        assert_eq!(report.document.as_deref(), Some(&b"<original/>"[..]));
        assert!(!report.document_changed);
    }

    #[test]
    fn truncated_filter_output_fails_the_hook() {
        let registry = RegistryBuilder::new()
            .hook(
                Driver::Qemu,
                MockHook::always("big", || {
                    let mut o = HookOutcome::success().with_stdout("<cut");
                    o.stdout_truncated = true;
                    o
                }),
            )
            .build();
        let err = registry.fire_blocking(&migrate()).unwrap_err();
        assert!(err.to_string().contains("output cap"), "{err}");
        assert_eq!(err.report().document.as_deref(), Some(&b"<original/>"[..]));
    }

    #[test]
    fn hooks_only_see_their_driver_and_matching_events() {
        let qemu = Arc::new(RecordingHook::new("qemu-only"));
        let all = Arc::new(RecordingHook::new("all"));
        let registry = RegistryBuilder::new()
            .shared_hook(Some(Driver::Qemu), qemu.clone())
            .shared_hook(None, all.clone())
            .build();
        registry.fire_blocking(&crate::DaemonEvent::Start).unwrap();
        assert_eq!(qemu.calls().len(), 0);
        assert_eq!(all.calls().len(), 1);
        assert_eq!(all.calls()[0].input, None);
    }

    #[test]
    fn timeout_reaches_the_invocation() {
        let rec = Arc::new(RecordingHook::new("rec"));
        let registry = RegistryBuilder::new()
            .shared_hook(None, rec.clone())
            .timeout(Some(Duration::from_millis(250)))
            .build();
        registry.fire_blocking(&crate::DaemonEvent::Reload).unwrap();
        assert_eq!(rec.calls()[0].timeout, Some(Duration::from_millis(250)));
    }

    #[test]
    fn report_round_trips_through_json() {
        let registry = RegistryBuilder::new()
            .hook(Driver::Qemu, printing("p", 0, "<new/>"))
            .hook(
                Driver::Qemu,
                MockHook::always("t", || {
                    HookOutcome::new(crate::HookStatus::TimedOut(Duration::from_secs(2)))
                }),
            )
            .build();
        let report = registry.fire_blocking(&migrate()).unwrap_err().into_report();
        let json = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        assert_eq!(back.hooks[1].status, StatusRecord::TimedOut { after_ms: 2000 });
        assert!(back.hooks[1]
            .message
            .as_deref()
            .unwrap()
            .contains("unexpected timeout after 2s"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reload_does_not_wait_for_a_running_fire() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Mutex::new(rx);
        let registry = Arc::new(
            RegistryBuilder::new()
                .hook(
                    Driver::Qemu,
                    MockHook::always("blocks", move || {
                        rx.lock().unwrap().recv().unwrap();
                        HookOutcome::success()
                    }),
                )
                .build(),
        );
        let r = Arc::clone(&registry);
        let running = tokio::task::spawn_blocking(move || {
            r.fire_blocking(&QemuEvent::Start {
                name: "vm".into(),
                xml: String::new(),
            })
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        registry.reload(); // would deadlock here if reload waited for the fire
        tx.send(()).unwrap();
        assert!(running.await.unwrap().is_ok());
    }
}

#[cfg(test)]
mod compiled_tests {
    use crate::testing::RecordingHook;
    use crate::{compiled_hook, DaemonEvent, RegistryBuilder};

    compiled_hook!(name: "z-late", drivers: [], order: 5, hook: RecordingHook::new("z-late"));
    compiled_hook!(name: "a-early", drivers: [Daemon], order: -5, hook: RecordingHook::new("a-early"));
    compiled_hook!(name: "b-same-order", drivers: [Daemon, Qemu], order: 5, hook: RecordingHook::new("b-same-order"));

    #[test]
    fn compiled_hooks_run_by_order_then_name() {
        let registry = RegistryBuilder::new().compiled_hooks().build();
        let report = registry.fire_blocking(&DaemonEvent::Start).unwrap();
        let names: Vec<_> = report.hooks.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a-early", "b-same-order", "z-late"]);
    }

    #[test]
    fn an_executable_that_no_linked_backend_runs_fails_the_event() {
        use std::os::unix::fs::PermissionsExt;
        // No backend is linked into hooks-core's tests: a deny script must not be skipped.
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("qemu.d")).unwrap();
        let deny = tmp.path().join("qemu.d/10-deny");
        std::fs::write(&deny, "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(&deny, std::fs::Permissions::from_mode(0o755)).unwrap();
        let registry = RegistryBuilder::new()
            .hooks_dir_with(crate::HooksDir::with_loaders(tmp.path(), vec![]))
            .build();
        let ev = crate::QemuEvent::Prepare {
            name: "vm".into(),
            xml: "<domain/>".into(),
        };
        let failure = registry.fire_blocking(&ev).unwrap_err();
        assert!(failure.is_fatal());
        assert!(failure.to_string().contains("hooks_exec::link()"), "{failure}");
    }
}
