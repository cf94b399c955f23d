//! Finding an event's hooks: the sources, which drivers had hooks at the last (re)load,
//! and the hooks loaded from files (cached while a file and its sidecar are unchanged).

use super::*;

/// Which drivers had hooks at the last (re)load, per source, and the hooks loaded since.
pub(super) struct State {
    pub(super) present: Vec<u8>,
    pub(super) loaded: Mutex<HashMap<PathBuf, LoadedHook>>,
}

/// A hook loaded from a file (settings applied, layers around it), valid while the file,
/// its sidecar and the directory's default timeout are unchanged.
pub(super) struct LoadedHook {
    pub(super) stamp: FileStamp,
    pub(super) sidecar: Option<FileStamp>,
    pub(super) default_timeout: Option<Duration>,
    pub(super) entry: Arc<HookEntry>,
}

pub(super) const fn driver_bit(driver: Driver) -> u8 {
    1 << driver as u8
}

impl State {
    pub(super) fn new(sources: &[Source]) -> Self {
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

    pub(super) fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, LoadedHook>> {
        self.loaded.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The hook for a directory entry: from the cache while the file and its sidecar are
    /// unchanged (so a sidecar is parsed once per change), else loaded with no lock held.
    pub(super) fn load(&self, loader: &dyn HookLoader, entry: &DirEntry, layers: &LayerStack) -> Arc<HookEntry> {
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
pub(super) struct Resolved {
    pub(super) hooks: SmallVec<[Arc<HookEntry>; 8]>,
    pub(super) skipped: Vec<crate::SkippedEntry>,
}

pub(super) struct Inner {
    pub(super) sources: Vec<Source>,
    pub(super) has_dirs: bool,
    /// Whether calls run under `layer::Timeout`.
    pub(super) timed: bool,
    pub(super) timeout: Option<Duration>,
    pub(super) event_timeout: Option<Duration>,
    pub(super) max_output: Option<usize>,
    pub(super) layers: LayerStack,
    pub(super) state: ArcSwap<State>,
}

impl Inner {
    /// Every hook of `driver`'s events in run order, before `matches`: reads hooks
    /// directories and loads their entries, so it may block.
    pub(super) fn resolve(&self, driver: Driver) -> Resolved {
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
                                    // Linked, but left out of this dir's loaders.
                                    let kind = if crate::loader::registered_loaders()
                                        .iter()
                                        .any(|l| l.backend() == *backend)
                                    {
                                        LoadErrorKind::NoLoaderGiven { backend }
                                    } else {
                                        LoadErrorKind::NotLinked { backend }
                                    };
                                    LoadError::new(&entry.path, backend, kind)
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
    pub(super) fn reads_files(&self, driver: Driver) -> bool {
        self.has_dirs && {
            let state = self.state.load();
            self.sources
                .iter()
                .zip(&state.present)
                .any(|(s, present)| matches!(s, Source::Dir(_)) && present & driver_bit(driver) != 0)
        }
    }
}
