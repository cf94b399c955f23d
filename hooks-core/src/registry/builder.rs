//! [`RegistryBuilder`], and the stack of layers it wraps hooks in.

use super::*;

/// Builds a [`Registry`]. Hooks run in the order they are added; a hooks directory adds
/// its entries (main script, then `<driver>.d/` in strcmp order) where it was added.
///
/// ```
/// use std::time::Duration;
/// use virt_hooks_core::{Driver, RegistryBuilder, testing::MockHook};
/// let registry = RegistryBuilder::new()
///     .hook(Driver::Qemu, MockHook::succeeding("audit"))
///     .hooks_dir("/etc/myvmm/hooks")
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
    /// [`MAX_TIMEOUT`](crate::backend::MAX_TIMEOUT).
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
                timeout: self.timeout.map(|t| t.min(crate::backend::MAX_TIMEOUT)),
                event_timeout: self.event_timeout.map(|t| t.min(crate::backend::MAX_TIMEOUT)),
                max_output: self.max_output,
                layers: stack,
                state: ArcSwap::from_pointee(state),
            }),
        }
    }
}

/// Layers, outermost first.
pub(super) struct LayerStack(pub(super) Vec<Arc<dyn Layer>>);

impl LayerStack {
    pub(super) fn wrap(&self, hook: Arc<dyn Hook>) -> Arc<dyn Hook> {
        self.0.iter().rev().fold(hook, |hook, layer| layer.layer(hook))
    }
}
