//! The registry: an ordered list of hooks fired with libvirt's semantics.

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

/// Builds a [`Registry`]. Hooks run in the order they are added; a hooks directory adds
/// its entries (main script, then `<driver>.d/` in strcmp order) where it was added.
///
/// ```
/// use std::time::Duration;
/// use virt_hooks_core::{Driver, RegistryBuilder, testing::MockHook};
/// let registry = RegistryBuilder::new()
///     .hook(Driver::Qemu, MockHook::succeeding("audit"))
///     .hooks_dir("/etc/libvirt/hooks")
///     .timeout(Some(Duration::from_secs(30)))
///     .event_timeout(Some(Duration::from_secs(60)))
///     .build();
/// # drop(registry);
/// ```
#[must_use]
pub struct RegistryBuilder {
    sources: Vec<Source>,
    timeout: Option<Duration>,
    event_timeout: Option<Duration>,
    max_output: Option<usize>,
    layers: Vec<Arc<dyn Layer>>,
}

impl Default for RegistryBuilder {
    fn default() -> Self {
        RegistryBuilder {
            sources: Vec::new(),
            timeout: None,
            event_timeout: None,
            max_output: Some(DEFAULT_MAX_OUTPUT),
            layers: Vec::new(),
        }
    }
}

impl fmt::Debug for RegistryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryBuilder")
            .field("sources", &self.sources.len())
            .field("timeout", &self.timeout)
            .field("event_timeout", &self.event_timeout)
            .field("max_output", &self.max_output)
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl RegistryBuilder {
    /// An empty builder: no hooks, no timeouts, output capped at [`DEFAULT_MAX_OUTPUT`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a hook for one driver's events: a [`Hook`] (libvirt's defaults), or a
    /// [`HookEntry`] saying which events it takes and whether its failure counts.
    pub fn hook(self, driver: Driver, hook: impl Into<HookEntry>) -> Self {
        self.entry(Some(driver), hook.into())
    }

    /// Adds a shared hook for one driver's events, or for every driver with `None`,
    /// with libvirt's defaults.
    pub fn shared_hook(self, driver: Option<Driver>, hook: Arc<dyn Hook>) -> Self {
        self.entry(driver, HookEntry::shared(hook))
    }

    /// Adds a hook entry for one driver's events, or for every driver with `None`.
    pub fn entry(mut self, driver: Option<Driver>, entry: HookEntry) -> Self {
        self.sources.push(Source::Hook {
            driver,
            entry: Arc::new(entry),
        });
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

    /// Adds a hooks dir in libvirt's shape (`DIR/<driver>`, `DIR/<driver>.d/*`; never
    /// hookctl's `<driver>.plugins/`), with every backend linked into the program.
    pub fn hooks_dir(self, dir: impl Into<PathBuf>) -> Self {
        self.hooks_dir_with(HooksDir::new(dir))
    }

    /// Adds a hooks directory with chosen loaders.
    pub fn hooks_dir_with(mut self, dir: HooksDir) -> Self {
        self.sources.push(Source::Dir(dir));
        self
    }

    /// A time limit for each hook call; `None` (the default, as in libvirt) means none.
    ///
    /// A guarantee for every hook, custom ones included ([`layer::Timeout`]): a custom
    /// hook is stopped at it, and a backend that enforces it itself (exec kills the
    /// process group) gets its [`Hook::stop_grace`] to report before the call is dropped.
    /// Either way the hook is recorded as timed out. A backend's own shorter limit (a
    /// sidecar's `timeout`) wins. Larger values are capped at
    /// [`MAX_TIMEOUT`](crate::MAX_TIMEOUT).
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// A time budget for a whole event: each hook gets at most what is left of it, and
    /// hooks not started when it runs out are recorded as not started and fail the event
    /// (an optional one's does not). `None`, the default, means no budget.
    pub fn event_timeout(mut self, budget: Option<Duration>) -> Self {
        self.event_timeout = budget;
        self
    }

    /// The most a hook's outcome may carry on each of stdout and stderr; the rest is cut
    /// and flagged ([`layer::OutputCap`]). `None` lifts the registry's cap. Backends
    /// keep their own caps (16 MiB by default; a sidecar's `max_output` sets one hook's),
    /// so a larger value here does not raise them. Defaults to [`DEFAULT_MAX_OUTPUT`].
    pub fn max_output(mut self, cap: Option<usize>) -> Self {
        self.max_output = cap;
        self
    }

    /// Wraps every hook in `layer` (metrics, tracing, retries, ...). The first layer added
    /// is the outermost; the registry's own limits sit outside them all.
    pub fn layer(mut self, layer: impl Layer) -> Self {
        self.layers.push(Arc::new(layer));
        self
    }

    /// Builds the registry, reading each hooks directory's presence now (libvirt's
    /// presence cache: a driver with no hooks now is not called until [`Registry::reload`]).
    pub fn build(self) -> Registry {
        // The registry's own limits (`layer::Timeout`, `layer::OutputCap`) are applied in
        // `fire` around each call, outside these.
        let stack = LayerStack(self.layers);
        let sources: Vec<Source> = self
            .sources
            .into_iter()
            .map(|source| match source {
                Source::Hook { driver, entry } => Source::Hook {
                    driver,
                    entry: Arc::new(entry.with_hook(stack.wrap(Arc::clone(&entry.hook)))),
                },
                dir => dir,
            })
            .collect();
        let state = State::new(&sources);
        Registry {
            inner: Arc::new(Inner {
                has_dirs: sources.iter().any(|s| matches!(s, Source::Dir(_))),
                timed: self.timeout.is_some() || self.event_timeout.is_some(),
                sources,
                timeout: self.timeout.map(|t| t.min(crate::MAX_TIMEOUT)),
                event_timeout: self.event_timeout.map(|t| t.min(crate::MAX_TIMEOUT)),
                max_output: self.max_output,
                layers: stack,
                state: ArcSwap::from_pointee(state),
            }),
        }
    }
}

/// Layers, outermost first.
struct LayerStack(Vec<Arc<dyn Layer>>);

impl LayerStack {
    fn wrap(&self, hook: Arc<dyn Hook>) -> Arc<dyn Hook> {
        self.0.iter().rev().fold(hook, |hook, layer| layer.layer(hook))
    }
}

/// Which drivers had hooks at the last (re)load, per source, and the hooks loaded since.
struct State {
    present: Vec<u8>,
    loaded: Mutex<HashMap<PathBuf, LoadedHook>>,
}

/// A hook loaded from a file (settings applied, layers around it), valid while the file,
/// its sidecar and the directory's default timeout are unchanged.
struct LoadedHook {
    stamp: FileStamp,
    sidecar: Option<FileStamp>,
    default_timeout: Option<Duration>,
    entry: Arc<HookEntry>,
}

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

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, LoadedHook>> {
        self.loaded.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The hook for a directory entry: from the cache while the file and its sidecar are
    /// unchanged (so a sidecar is parsed once per change), else loaded with no lock held.
    fn load(&self, loader: &dyn HookLoader, entry: &DirEntry, layers: &LayerStack) -> Arc<HookEntry> {
        let path = entry.path.as_path();
        let sidecar = entry.sidecar_stamp();
        let default_timeout = entry.default_timeout();
        if let Some(stamp) = entry.stamp {
            if let Some(cached) = self.cache().get(path) {
                if cached.stamp == stamp && cached.sidecar == sidecar && cached.default_timeout == default_timeout {
                    return Arc::clone(&cached.entry);
                }
            }
        }
        let loaded = match entry.settings() {
            Err(e) => {
                let err = LoadError::new(path, loader.backend(), LoadErrorKind::InvalidSettings).with_source(e);
                HookEntry::shared(layers.wrap(Arc::new(BrokenHook::new(err))))
            }
            Ok(settings) => {
                let hook = match loader.load(path, &settings) {
                    Ok(hook) => hook,
                    Err(err) => {
                        tracing::warn!(path = %path.display(), error = %crate::error::chain(&err), "hook failed to load");
                        // Still optional and still matched as its sidecar says.
                        Arc::new(BrokenHook::new(err))
                    }
                };
                let hook = layers.wrap(Configured::wrap(hook, &settings, entry.state_root()));
                let mut configured = HookEntry::shared(hook)
                    .with_policy(settings.policy)
                    .on_reconnect_failure(entry.on_reconnect_failure(&settings));
                if !settings.matcher.is_empty() {
                    configured.matching = Matching::Sidecar(Arc::new(settings.matcher));
                }
                configured
            }
        };
        let loaded = Arc::new(loaded);
        if let Some(stamp) = entry.stamp {
            let cached = LoadedHook {
                stamp,
                sidecar,
                default_timeout,
                entry: Arc::clone(&loaded),
            };
            self.cache().insert(path.to_owned(), cached);
        }
        loaded
    }
}

/// A driver's hooks in run order, and the entries skipped that look meant to run.
struct Resolved {
    hooks: SmallVec<[Arc<HookEntry>; 8]>,
    skipped: Vec<crate::SkippedEntry>,
}

struct Inner {
    sources: Vec<Source>,
    has_dirs: bool,
    /// Whether calls run under `layer::Timeout`.
    timed: bool,
    timeout: Option<Duration>,
    event_timeout: Option<Duration>,
    max_output: Option<usize>,
    layers: LayerStack,
    state: ArcSwap<State>,
}

impl Inner {
    /// Every hook of `driver`'s events in run order, before `matches`: reads hooks
    /// directories and loads their entries, so it may block.
    fn resolve(&self, driver: Driver) -> Resolved {
        let state = self.state.load();
        let mut hooks = SmallVec::new();
        let mut skipped = Vec::new();
        for (source, present) in self.sources.iter().zip(&state.present) {
            match source {
                Source::Hook { driver: d, entry } => {
                    if d.is_none_or(|d| d == driver) {
                        hooks.push(Arc::clone(entry));
                    }
                }
                Source::Dir(dir) if present & driver_bit(driver) != 0 => match dir.scan(driver) {
                    Ok(entries) => {
                        for entry in entries {
                            let broken = match &entry.disposition {
                                Disposition::Hook(loader) => {
                                    hooks.push(state.load(loader.as_ref(), &entry, &self.layers));
                                    continue;
                                }
                                Disposition::Refused(loader, why) => {
                                    let backend = loader.as_ref().map_or("trust", |l| l.backend());
                                    LoadError::new(
                                        &entry.path,
                                        backend,
                                        LoadErrorKind::Untrusted(Box::new(why.clone())),
                                    )
                                }
                                // libvirt would run an executable here: a program that
                                // forgot to link the exec backend must not skip it.
                                Disposition::Skipped(SkipReason::Unclaimed) => {
                                    LoadError::new(&entry.path, "none", LoadErrorKind::NoBackend)
                                }
                                Disposition::Skipped(SkipReason::Unlinked(backend)) => {
                                    LoadError::new(&entry.path, backend, LoadErrorKind::NotLinked { backend })
                                }
                                Disposition::Skipped(why) if why.is_likely_mistake() => {
                                    skipped.push(crate::SkippedEntry {
                                        path: entry.path.clone(),
                                        why: why.to_string(),
                                    });
                                    continue;
                                }
                                Disposition::Skipped(_) => continue,
                            };
                            let broken = self.layers.wrap(Arc::new(BrokenHook::new(broken)));
                            hooks.push(Arc::new(HookEntry::shared(broken)));
                        }
                    }
                    Err(e) => {
                        let path = dir.drop_in_dir(driver);
                        let err = LoadError::new(&path, "dir", LoadErrorKind::UnreadableDir).with_source(e);
                        let broken = self.layers.wrap(Arc::new(BrokenHook::new(err)));
                        hooks.push(Arc::new(HookEntry::shared(broken)));
                    }
                },
                Source::Dir(_) => {}
            }
        }
        Resolved { hooks, skipped }
    }

    /// Whether resolving `driver`'s hooks touches the file system.
    fn reads_files(&self, driver: Driver) -> bool {
        self.has_dirs && {
            let state = self.state.load();
            self.sources
                .iter()
                .zip(&state.present)
                .any(|(s, present)| matches!(s, Source::Dir(_)) && present & driver_bit(driver) != 0)
        }
    }
}

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
                let call = async {
                    match (span.is_disabled(), inner.timed) {
                        (true, false) => layer::caught(hook, inv).await,
                        (true, true) => layer::timed(hook, inv).await,
                        (false, timed) => layer::maybe_timed(hook, inv, timed).instrument(span).await,
                    }
                };
                let mut outcome = match cancel {
                    Some(cancel) => layer::cancellable(std::pin::pin!(call), hook, cancel).await,
                    None => call.await,
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
            let mut record = HookRecord::new(hook, event, outcome, input, filters, rejected, optional);
            record.document = change;
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

    /// The state roots of this registry's hooks dirs (each once), with the hooks that
    /// have a directory there for the event's object.
    fn state_dirs(&self, event: &dyn HookEvent) -> Vec<(&crate::StateRoot, Vec<std::ffi::OsString>)> {
        let object = EventArgs::new(event.os_args());
        let mut roots: Vec<(&crate::StateRoot, Vec<std::ffi::OsString>)> = Vec::new();
        for source in &self.inner.sources {
            let Source::Dir(dir) = source else { continue };
            let Some(root) = dir.state_root() else { continue };
            if !roots.iter().any(|(r, _)| r.path() == root.path()) {
                roots.push((root, root.hooks_of(event.driver(), object.get(0))));
            }
        }
        roots
    }

    /// After a failed `restore`/`migrate begin`, which libvirt follows with no
    /// `release`: the state directories made during it are abandoned
    /// ([`crate::StateRoot::abandon`]) rather than left live for a release that never
    /// comes.
    fn abandon_state(
        &self,
        event: &dyn HookEvent,
        before: &[(&crate::StateRoot, Vec<std::ffi::OsString>)],
        report: &mut Report,
    ) {
        let object = EventArgs::new(event.os_args());
        let why = format!(
            "{op} {subop} failed, and libvirt sends no last event after a refused {op}: nothing undid what the plugin recorded",
            op = event.op(),
            subop = event.subop()
        );
        for (root, had) in before {
            match root.abandon(event.driver(), object.get(0), had, &why) {
                Ok(kept) => report.state_kept.extend(kept),
                Err(e) => {
                    tracing::error!(error = %e, "state directory made by a failed event not handled");
                    report.state_errors.push(e.to_string());
                }
            }
        }
    }

    /// After an object's last event: its state directories go, except those of hooks
    /// that failed the event or are no longer in their directory (set aside, renamed,
    /// removed: nothing undid what they recorded), kept for the operator and listed in
    /// the report.
    fn finish_state(&self, event: &dyn HookEvent, report: &mut Report) {
        let object = EventArgs::new(event.os_args());
        // One line: the status and the first line the hook printed.
        let note = |r: &HookRecord| {
            let status = match &r.status {
                crate::StatusRecord::Exited { code } => format!("exit status {code}"),
                crate::StatusRecord::Signaled { signal } => format!("killed by signal {signal}"),
                crate::StatusRecord::TimedOut { after_ms } => format!("timed out after {after_ms} ms"),
                crate::StatusRecord::Crashed { message } => format!("crashed: {message}"),
                crate::StatusRecord::Failed { message } => format!("could not run: {message}"),
            };
            let said: String = r
                .stderr
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect();
            let sep = if said.is_empty() { "" } else { ": " };
            let line = format!("{} {} failed: {status}{sep}{said}", event.op(), event.subop());
            line.lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(400)
                .collect::<String>()
        };
        let mut kept = Vec::new();
        let mut errors = Vec::new();
        let mut finished: SmallVec<[&std::path::Path; 2]> = SmallVec::new();
        for source in &self.inner.sources {
            let Source::Dir(dir) = source else { continue };
            let Some(root) = dir.state_root() else { continue };
            // Two dirs sharing a root are one set of objects; no directory, no work (the
            // scan below is a second read of the hooks dir).
            if finished.contains(&root.path()) || !root.holds(event.driver(), object.get(0)) {
                continue;
            }
            finished.push(root.path());
            // A directory is its hook's, in this dir: a hook of the same file name
            // elsewhere that failed is not a reason to keep it.
            let scanned = dir.scan(event.driver()).ok();
            let paths: Option<Vec<String>> = scanned
                .as_ref()
                .map(|entries| entries.iter().map(|e| e.path.display().to_string()).collect());
            // Hooks that would run here now: a directory of none of them belongs to a
            // plugin set aside, renamed or removed while its object ran.
            let present: Option<Vec<std::ffi::OsString>> = scanned.as_ref().map(|entries| {
                entries
                    .iter()
                    .filter(|e| !matches!(e.disposition, crate::loader::Disposition::Skipped(_)))
                    .filter_map(|e| e.path.file_name().map(ToOwned::to_owned))
                    .collect()
            });
            // Hooks here whose settings no longer ask for state: one that had a record
            // ran without it, and undid nothing of it.
            let stateless: Vec<std::ffi::OsString> = (scanned.iter().flatten())
                .filter(|e| e.settings().is_ok_and(|s| !s.state))
                .filter_map(|e| e.path.file_name().map(ToOwned::to_owned))
                .collect();
            let failed = |name: &std::ffi::OsStr| {
                let own = |r: &&HookRecord| match &paths {
                    Some(paths) => paths
                        .iter()
                        .any(|p| r.name == *p && std::path::Path::new(p).file_name() == Some(name)),
                    None => std::path::Path::new(&r.name).file_name() == Some(name),
                };
                if let Some(why) = report.hooks.iter().filter(|r| !r.success).find(own).map(note) {
                    return Some(why);
                }
                // Nothing can undo what it did but the plugin itself: keep its record.
                let gone = present.as_ref().is_some_and(|p| !p.iter().any(|n| n == name));
                // There, but skipped (no execute bit, a dangling link): it could not run.
                let skipped = (scanned.iter().flatten())
                    .find(|e| e.path.file_name() == Some(name))
                    .and_then(|e| match e.disposition {
                        crate::loader::Disposition::Skipped(why) => Some(why),
                        _ => None,
                    });
                if let (true, Some(why)) = (gone, skipped) {
                    return Some(format!(
                        "{} {}: its plugin is there but could not run ({why}), so nothing undid what it recorded",
                        event.op(),
                        event.subop()
                    ));
                }
                if gone {
                    return Some(format!(
                        "{} {}: its plugin is no longer in {} (set aside, renamed or removed while the object \
                         ran), so nothing undid what it recorded",
                        event.op(),
                        event.subop(),
                        crate::text::escape(&dir.root().display().to_string())
                    ));
                }
                // A plugin that did not run at this last event (its `[match]` did not take
                // it: another op, or no document to evaluate) undid nothing: a record it
                // wrote is kept; an empty directory goes.
                let ran = report.hooks.iter().any(|r| own(&r));
                let recorded = root
                    .dir(event.driver(), object.get(0), name)
                    .ok()
                    .and_then(|d| std::fs::read_dir(d).ok())
                    .is_some_and(|mut entries| entries.next().is_some());
                if !recorded {
                    return None;
                }
                if !ran {
                    return Some(format!(
                        "{} {}: its plugin did not run at it (its [match] did not take the event), so nothing \
                         undid what it recorded",
                        event.op(),
                        event.subop()
                    ));
                }
                stateless.iter().any(|n| n == name).then(|| {
                    format!(
                        "{} {}: its plugin's settings no longer say `state = true`, so it ran without this \
                         record and undid nothing of it",
                        event.op(),
                        event.subop()
                    )
                })
            };
            match root.finish(event.driver(), object.get(0), &failed) {
                Ok(dirs) => kept.extend(dirs),
                Err(e) => {
                    tracing::error!(error = %e, "state directory not removed after the object's last event");
                    errors.push(e.to_string());
                }
            }
        }
        for dir in &kept {
            tracing::warn!(dir = %dir.display(), "state directory kept: its hook failed the object's last event, or is gone");
        }
        report.state_kept = kept;
        report.state_errors = errors;
    }

    /// [`Registry::fire`] for callers that are not async: the hooks run on this thread
    /// (an exec hook's wait blocks it; nothing is handed to a thread pool). Needs no
    /// runtime; inside one, call it from a blocking thread (`spawn_blocking`), never
    /// from an async task. A custom hook that needs a tokio runtime (`tokio::time`)
    /// must be fired with [`Registry::fire`] inside one.
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
/// ```
/// use virt_hooks_core::{block_on, Driver, Guest, Lifecycle, RegistryBuilder};
/// let registry = RegistryBuilder::new().build();
/// let guest = Guest::new(Driver::Qemu, "vm", "<domain/>\n");
/// let started = block_on(Lifecycle::new(&registry).start(&guest));
/// assert!(started.is_ok());
/// ```
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
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
        assert_eq!(
            err.to_string(),
            "Hook `c` (mock) failed at `vm start begin -`: returned status 1: second"
        );
    }

    #[test]
    fn filter_chain_follows_libvirt() {
        let rec = Arc::new(RecordingHook::new("rec"));
        let registry = RegistryBuilder::new()
            .hook(Driver::Qemu, printing("main", 0, "<original id='1'/>"))
            .shared_hook(Some(Driver::Qemu), rec.clone())
            .hook(Driver::Qemu, printing("empty", 0, "  \n"))
            .shared_hook(Some(Driver::Qemu), rec.clone())
            .hook(Driver::Qemu, printing("two", 0, "<original id='2'/>"))
            .shared_hook(Some(Driver::Qemu), rec.clone())
            .build();
        let report = registry.fire_blocking(&migrate()).unwrap();
        assert_eq!(
            inputs(&rec),
            ["<original id='1'/>", "<original id='1'/>", "<original id='2'/>"]
        );
        assert_eq!(report.document.as_deref(), Some(&b"<original id='2'/>"[..]));
        assert!(report.document_changed);
        assert_eq!(report.hooks[0].input, InputSource::Original);
        assert_eq!(report.hooks[1].input, InputSource::Chained);
    }

    #[test]
    fn after_a_failure_filters_get_the_original() {
        let rec = Arc::new(RecordingHook::new("rec"));
        let registry = RegistryBuilder::new()
            .hook(Driver::Qemu, printing("one", 0, "<original id='1'/>"))
            .hook(Driver::Qemu, printing("fails", 1, "<ignored/>"))
            .shared_hook(Some(Driver::Qemu), rec.clone())
            .build();
        let err = registry.fire_blocking(&migrate()).unwrap_err();
        assert_eq!(inputs(&rec), ["<original/>"]);
        // A failed filter event has no resulting document to pick up by mistake.
        assert_eq!(err.report().document, None);
        assert_eq!(err.report().document_text(), None);
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
        assert_eq!(err.report().document, None);
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
        assert!(back.hooks[1].message.as_deref().unwrap().contains("timed out after 2s"));
    }

    fn hangs(name: &str) -> MockHook {
        MockHook::from_fn(name, |_| std::future::pending())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_hanging_custom_hook_times_out_on_a_current_thread_runtime() {
        let registry = RegistryBuilder::new()
            .hook(Driver::Qemu, hangs("hangs"))
            .hook(Driver::Qemu, MockHook::succeeding("after"))
            .timeout(Some(Duration::from_millis(50)))
            .build();
        let err = registry
            .fire(&QemuEvent::Prepare {
                name: "vm".into(),
                xml: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.failed_hook().name, "hangs");
        assert_eq!(err.failed_hook().status, StatusRecord::TimedOut { after_ms: 50 });
        assert_eq!(
            err.failed_hook().failure,
            Some(crate::Failure::Timeout),
            "its own limit"
        );
        assert!(err.report().hooks[1].success, "the hooks after it still run");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hooks_past_the_event_budget_are_not_started_and_fail_the_event() {
        let late = Arc::new(RecordingHook::new("late"));
        let registry = RegistryBuilder::new()
            .hook(Driver::Qemu, hangs("slow"))
            .shared_hook(Some(Driver::Qemu), late.clone())
            .hook(
                Driver::Qemu,
                MockHook::succeeding("optional-late").with_policy(crate::HookPolicy::Optional),
            )
            .event_timeout(Some(Duration::from_millis(60)))
            .build();
        let err = registry
            .fire(&QemuEvent::Start {
                name: "vm".into(),
                xml: String::new(),
            })
            .await
            .unwrap_err();
        let hooks = &err.report().hooks;
        // Its limit was what was left of the budget.
        assert!(
            matches!(hooks[0].status, StatusRecord::TimedOut { after_ms: 1..=60 }),
            "{:?}",
            hooks[0].status
        );
        // Cut by the budget, not by a limit of its own: told apart, typed.
        assert_eq!(hooks[0].failure, Some(crate::Failure::Budget));
        assert!(hooks[0]
            .warnings
            .iter()
            .any(|w| w.contains("the event's time budget (60ms)")));
        assert_eq!(hooks[1].failure, Some(crate::Failure::Budget), "not started");
        assert!(late.calls().is_empty(), "not started");
        assert!(
            hooks[1]
                .message
                .as_deref()
                .unwrap()
                .contains("not started: the event's time budget of 60ms ran out"),
            "{:?}",
            hooks[1].message
        );
        assert_eq!(err.failed_hook().name, "late", "the last required failure is reported");
        assert!(
            hooks[2].optional && !hooks[2].success,
            "an optional hook is recorded too"
        );
    }

    #[test]
    fn the_budget_also_holds_without_a_runtime() {
        let registry = RegistryBuilder::new()
            .hook(Driver::Daemon, hangs("slow"))
            .event_timeout(Some(Duration::from_millis(30)))
            .build();
        let report = registry.fire_blocking(&crate::DaemonEvent::Start).unwrap();
        assert!(!report.succeeded(), "daemon failures are ignored but recorded");
        assert!(matches!(
            report.hooks[0].status,
            StatusRecord::TimedOut { after_ms: 1..=30 }
        ));
        assert_eq!(report.hooks[0].failure, Some(crate::Failure::Budget));
    }

    /// A layer's wrapper forwards the call and the name only, as a hand-written one
    /// would: the hook stays optional and keeps its matching (a wrapper that forgot to
    /// forward `policy` made an optional hook required).
    #[test]
    fn a_layer_cannot_change_which_events_a_hook_takes_or_whether_its_failure_counts() {
        struct Bare(Arc<dyn Hook>);
        #[async_trait::async_trait]
        impl Hook for Bare {
            fn name(&self) -> &str {
                self.0.name()
            }
            async fn call(&self, inv: &Invocation) -> HookOutcome {
                self.0.call(inv).await
            }
        }
        struct BareLayer;
        impl crate::layer::Layer for BareLayer {
            fn layer(&self, hook: Arc<dyn Hook>) -> Arc<dyn Hook> {
                Arc::new(Bare(hook))
            }
        }
        let flaky = MockHook::always("flaky", || HookOutcome::exited(1));
        let registry = RegistryBuilder::new()
            .hook(Driver::Qemu, flaky.with_policy(crate::HookPolicy::Optional))
            .hook(
                Driver::Qemu,
                MockHook::always("stop-only", || HookOutcome::exited(1)).matching(|e| e.op() == "stopped"),
            )
            .layer(BareLayer)
            .build();
        let report = registry
            .fire_blocking(&QemuEvent::Prepare {
                name: "vm".into(),
                xml: String::new(),
            })
            .unwrap();
        assert_eq!(report.hooks.len(), 1, "stop-only does not take prepare");
        assert!(report.hooks[0].optional && !report.hooks[0].success);
    }

    /// Each way to fail is a variant a caller can match, and in the report's JSON.
    #[test]
    fn failures_are_typed_end_to_end() {
        let registry = RegistryBuilder::new()
            .hook(Driver::Daemon, MockHook::succeeding("ok"))
            .hook(Driver::Daemon, MockHook::always("refuses", || HookOutcome::exited(3)))
            .hook(
                Driver::Daemon,
                MockHook::always("signaled", || HookOutcome::new(HookStatus::Signaled(9))),
            )
            .hook(
                Driver::Daemon,
                MockHook::always("cancelled", || HookOutcome::failed(HookError::Cancelled)),
            )
            .hook(
                Driver::Daemon,
                MockHook::always("unloadable", || {
                    HookOutcome::failed(HookError::from(crate::LoadError::new(
                        "/x.wasm",
                        "wasm",
                        crate::LoadErrorKind::InvalidModule,
                    )))
                }),
            )
            .hook(
                Driver::Daemon,
                MockHook::from_fn("panics", |_| async { panic!("boom") }),
            )
            .build();
        let report = registry.fire_blocking(&crate::DaemonEvent::Start).unwrap();
        let failures: Vec<_> = report.hooks.iter().map(|r| r.failure).collect();
        use crate::Failure::*;
        assert_eq!(
            failures,
            [
                None,
                Some(Refused),
                Some(Crashed),
                Some(Cancelled),
                Some(Load),
                Some(Crashed)
            ]
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["hooks"][1]["failure"], "refused");
        assert!(json["hooks"][0].get("failure").is_none());
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back.hooks[3].failure, Some(Cancelled));
    }

    #[test]
    fn layers_wrap_every_hook_first_added_outermost_inside_the_limits() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let tag = |name: &'static str| {
            let order = Arc::clone(&order);
            crate::layer::from_fn(move |hook, inv| {
                order.lock().unwrap().push(format!("{name}:{}", hook.name()));
                async move { hook.call(&inv).await }
            })
        };
        let loud = MockHook::always("loud", || HookOutcome::success().with_stderr(vec![b'x'; 64]));
        let registry = RegistryBuilder::new()
            .hook(Driver::Qemu, loud)
            .layer(tag("outer"))
            .layer(tag("inner"))
            .max_output(Some(8))
            .build();
        let report = registry
            .fire_blocking(&QemuEvent::Start {
                name: "vm".into(),
                xml: String::new(),
            })
            .unwrap();
        assert_eq!(*order.lock().unwrap(), ["outer:loud", "inner:loud"]);
        assert_eq!(report.hooks[0].stderr.len(), 8, "the cap applies outside the layers");
        assert!(report.hooks[0].stderr_truncated);
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
        assert!(failure.to_string().contains("virt_hooks_exec::link()"), "{failure}");
    }

    /// A program that linked only the exec backend allowed a start with a 0644 `.wasm`
    /// or `.so` in `qemu.d/` ("not executable", 0 hooks ran).
    #[test]
    fn a_module_or_native_plugin_whose_backend_is_not_linked_fails_the_event() {
        use std::os::unix::fs::PermissionsExt;
        for (file, link) in [
            ("10-deny.wasm", "virt_hooks_wasm::link()"),
            ("10-deny.so", "virt_hooks_dylib::link()"),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            std::fs::create_dir(tmp.path().join("qemu.d")).unwrap();
            let path = tmp.path().join("qemu.d").join(file);
            std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let dir = crate::HooksDir::with_loaders(tmp.path(), vec![]);
            assert!(dir.is_present(crate::Driver::Qemu), "{file}: not present");
            let registry = RegistryBuilder::new().hooks_dir_with(dir).build();
            let ev = crate::QemuEvent::Prepare {
                name: "vm".into(),
                xml: "<domain/>".into(),
            };
            let failure = registry.fire_blocking(&ev).unwrap_err();
            let text = crate::error::chain(&failure);
            assert!(text.contains(file) && text.contains(link), "{file}: {text}");
        }
    }
}

#[cfg(test)]
mod loading_tests {
    use std::fs::{self, Metadata};
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc, Mutex};
    use std::time::Duration;

    use crate::testing::MockHook;
    use crate::{
        Driver, Hook, HookLoader, HookSettings, HooksDir, LoadError, LoadErrorKind, QemuEvent, RawEvent,
        RegistryBuilder,
    };

    /// Claims executables; fails on `broken*`, blocks on `slow*` until the gate opens.
    #[derive(Default)]
    struct TestLoader {
        loads: AtomicUsize,
        gate: Option<(mpsc::SyncSender<()>, Mutex<mpsc::Receiver<()>>)>,
    }

    impl HookLoader for TestLoader {
        fn backend(&self) -> &'static str {
            "test"
        }
        fn claims(&self, _path: &Path, meta: &Metadata) -> bool {
            meta.permissions().mode() & 0o111 != 0
        }
        fn load(&self, path: &Path, _settings: &HookSettings) -> Result<Arc<dyn Hook>, LoadError> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("broken") {
                return Err(LoadError::new(path, "test", LoadErrorKind::InvalidModule));
            }
            if let (true, Some((entered, gate))) = (name.starts_with("slow"), &self.gate) {
                entered.send(()).unwrap();
                gate.lock().unwrap().recv().unwrap();
            }
            Ok(Arc::new(MockHook::succeeding(name)))
        }
    }

    fn executable(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn prepare(driver: Driver) -> RawEvent {
        RawEvent::new(driver, ["vm", "prepare", "begin", "-"]).with_input(Some(b"<domain/>".to_vec()))
    }

    #[test]
    fn a_hook_that_fails_to_load_keeps_its_sidecar_settings() {
        let tmp = tempfile::tempdir().unwrap();
        executable(&tmp.path().join("qemu.d/broken-optional"));
        fs::write(
            tmp.path().join("qemu.d/broken-optional.toml"),
            "policy = \"optional\"\n",
        )
        .unwrap();
        executable(&tmp.path().join("qemu.d/broken-at-release"));
        fs::write(
            tmp.path().join("qemu.d/broken-at-release.toml"),
            "[match]\nops = [\"release\"]\n",
        )
        .unwrap();
        let loader = Arc::new(TestLoader::default());
        let dir = HooksDir::with_loaders(tmp.path(), vec![loader]).with_trust(None);
        let registry = RegistryBuilder::new().hooks_dir_with(dir).build();
        let report = registry
            .fire_blocking(&prepare(Driver::Qemu))
            .expect("an optional broken hook does not fail the event");
        assert_eq!(report.hooks.len(), 1, "the one matching only `release` is not called");
        assert!(report.hooks[0].optional && !report.hooks[0].success);
        assert!(report.hooks[0]
            .message
            .as_deref()
            .unwrap()
            .contains("invalid WebAssembly"));
    }

    #[test]
    fn an_unchanged_sidecar_keeps_the_loaded_hook_and_a_changed_one_reloads_it() {
        let tmp = tempfile::tempdir().unwrap();
        executable(&tmp.path().join("qemu.d/10-hook"));
        let sidecar = tmp.path().join("qemu.d/10-hook.toml");
        fs::write(&sidecar, "timeout = 5\n").unwrap();
        let loader = Arc::new(TestLoader::default());
        let dir = HooksDir::with_loaders(tmp.path(), vec![loader.clone()]).with_trust(None);
        let registry = RegistryBuilder::new().hooks_dir_with(dir).build();
        for _ in 0..3 {
            registry.fire_blocking(&prepare(Driver::Qemu)).unwrap();
        }
        assert_eq!(loader.loads.load(Ordering::SeqCst), 1);
        fs::write(&sidecar, "timeout = 10\npolicy = \"optional\"\n").unwrap();
        registry.fire_blocking(&prepare(Driver::Qemu)).unwrap();
        assert_eq!(
            loader.loads.load(Ordering::SeqCst),
            2,
            "a changed sidecar reloads the hook"
        );
    }

    #[test]
    fn a_slow_load_does_not_hold_up_other_events() {
        let tmp = tempfile::tempdir().unwrap();
        executable(&tmp.path().join("qemu.d/slow"));
        executable(&tmp.path().join("lxc.d/fast"));
        let (entered_tx, entered) = mpsc::sync_channel(1);
        let (open_gate, gate) = mpsc::channel();
        let loader = Arc::new(TestLoader {
            gate: Some((entered_tx, Mutex::new(gate))),
            ..TestLoader::default()
        });
        let dir = HooksDir::with_loaders(tmp.path(), vec![loader]).with_trust(None);
        let registry = RegistryBuilder::new().hooks_dir_with(dir).build();
        let r = registry.clone();
        let slow = std::thread::spawn(move || r.fire_blocking(&prepare(Driver::Qemu)).is_ok());
        entered.recv_timeout(Duration::from_secs(10)).unwrap();
        // While qemu's hook is loading, an lxc event loads and runs its own.
        let (done_tx, done) = mpsc::channel();
        let r = registry.clone();
        std::thread::spawn(move || done_tx.send(r.fire_blocking(&prepare(Driver::Lxc)).is_ok()));
        let fast = done.recv_timeout(Duration::from_secs(10));
        open_gate.send(()).unwrap();
        assert_eq!(fast, Ok(true), "the lxc event waited for qemu's load");
        assert!(slow.join().unwrap());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_hooks_dir_works_on_a_current_thread_runtime() {
        let tmp = tempfile::tempdir().unwrap();
        executable(&tmp.path().join("qemu.d/10-hook"));
        let dir = HooksDir::with_loaders(tmp.path(), vec![Arc::new(TestLoader::default())]).with_trust(None);
        let registry = RegistryBuilder::new().hooks_dir_with(dir).build();
        let report = registry
            .fire(&QemuEvent::Prepare {
                name: "vm".into(),
                xml: "<domain/>".into(),
            })
            .await
            .unwrap();
        assert_eq!(report.hooks.len(), 1);
    }
}
