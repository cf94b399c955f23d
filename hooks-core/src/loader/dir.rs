//! [`HooksDir`]: listing a hooks directory in run order and classifying each entry.

use super::*;
use super::{
    backend::sort_loaders,
    entry::{is_disabled, stray_settings},
};

/// A hooks directory: in libvirt's shape, `<dir>/<driver>` then `<dir>/<driver>.d/*`
/// ([`HooksDir::new`], what [`RegistryBuilder::hooks_dir`](crate::RegistryBuilder::hooks_dir)
/// reads), or one flat plugins directory as hookctl's dispatcher runs
/// `<driver>.plugins/` ([`HooksDir::plugins`]).
///
/// A driver that embeds the libraries keeps its hooks in a directory of its own in
/// libvirt's shape, `*.wasm` and `*.so` in `<driver>.d/` beside its scripts. On a libvirt
/// host, libvirt runs `/etc/libvirt/hooks/<driver>.d/` itself (executables only), and
/// plugins for hookctl's dispatcher go in `<driver>.plugins/`, which libvirt's shape
/// never reads:
///
/// ```
/// use virt_hooks_core::{Driver, HooksDir};
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// # for file in ["qemu", "qemu.d/10-log", "qemu.d/20-filter.wasm", "qemu.plugins/30-policy.so"] {
/// #     std::fs::create_dir_all(dir.join(file).parent().unwrap())?;
/// #     std::fs::write(dir.join(file), "")?;
/// # }
/// let run_order = |hooks: HooksDir| -> Vec<String> {
///     let entries = hooks.scan(Driver::Qemu).unwrap();
///     entries.iter().map(|e| e.path.strip_prefix(dir).unwrap().display().to_string()).collect()
/// };
/// // A driver's own hooks dir: the main script, then `qemu.d/` in byte-wise order.
/// assert_eq!(run_order(HooksDir::new(dir)), ["qemu", "qemu.d/10-log", "qemu.d/20-filter.wasm"]);
/// // The dispatcher's flat plugins dir is another directory, read only when asked for.
/// assert_eq!(run_order(HooksDir::plugins(dir.join("qemu.plugins"))), ["qemu.plugins/30-policy.so"]);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct HooksDir {
    root: PathBuf,
    loaders: Vec<Arc<dyn HookLoader>>,
    flat: bool,
    trust: Option<TrustPolicy>,
    flat_main: Option<PathBuf>,
    skip_main: bool,
    default_timeout: Option<std::time::Duration>,
    state_root: Option<Arc<crate::StateRoot>>,
    reconnect_failure: OnReconnectFailure,
}

impl fmt::Debug for HooksDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HooksDir")
            .field("root", &self.root)
            .field("loaders", &self.loaders.iter().map(|l| l.backend()).collect::<Vec<_>>())
            .field("flat", &self.flat)
            .field("trust", &self.trust)
            .finish()
    }
}

impl HooksDir {
    /// The directory, with every loader linked into the program.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with_loaders(root, registered_loaders())
    }

    /// The directory with exactly these loaders, asked in this order.
    pub fn with_loaders(root: impl Into<PathBuf>, loaders: Vec<Arc<dyn HookLoader>>) -> Self {
        HooksDir {
            root: root.into(),
            loaders,
            flat: false,
            trust: Some(TrustPolicy::current_user()),
            flat_main: None,
            skip_main: false,
            default_timeout: None,
            state_root: None,
            reconnect_failure: OnReconnectFailure::Kill,
        }
    }

    /// A flat plugins directory (the dispatcher's `<driver>.plugins/`): its entries run
    /// for every driver, with the rules of a `<driver>.d` that has no main script.
    pub fn plugins(root: impl Into<PathBuf>) -> Self {
        Self::plugins_with_loaders(root, registered_loaders())
    }

    /// A flat plugins directory with chosen loaders.
    pub fn plugins_with_loaders(root: impl Into<PathBuf>, loaders: Vec<Arc<dyn HookLoader>>) -> Self {
        HooksDir {
            flat: true,
            ..Self::with_loaders(root, loaders)
        }
    }

    /// Uses `loader` for its backend, in place of the one of the same
    /// [`HookLoader::backend`] name (a WASM loader with other limits, ...), or in addition.
    pub fn with_loader(mut self, loader: impl HookLoader) -> Self {
        self.loaders.retain(|l| l.backend() != loader.backend());
        self.loaders.push(Arc::new(loader));
        sort_loaders(&mut self.loaders);
        self
    }

    /// The trust rule applied to what it loads (see [`TrustPolicy`]): to every entry of
    /// a plugins directory, to `*.so`/`*.wasm` anywhere, to sidecars and to the
    /// directories above them. By default [`TrustPolicy::current_user`]; `None` turns
    /// the checks off (for tests of other things; never for code that runs as root).
    pub fn with_trust(mut self, trust: Option<TrustPolicy>) -> Self {
        self.trust = trust;
        self
    }

    /// A time limit for every hook whose settings set none (a backend whose own default
    /// is shorter keeps it). By default none, as in libvirt; hookctl's dispatcher uses
    /// 30 s so that a hung plugin cannot hang libvirtd (which holds the guest's lock meanwhile).
    pub fn with_default_timeout(mut self, timeout: Option<std::time::Duration>) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// What a hook's failure at `reconnect` does when its sidecar sets no
    /// `on_reconnect_failure`, in a flat plugins directory, whose dispatcher decides what
    /// libvirt sees. By default [`OnReconnectFailure::Kill`], libvirt's behaviour;
    /// hookctl's dispatcher uses [`OnReconnectFailure::Log`]. libvirt's own layout
    /// (`<driver>`, `<driver>.d/`) always kills, whatever this or a sidecar says: libvirt
    /// runs it and applies its own rule.
    pub fn with_reconnect_failure(mut self, default: OnReconnectFailure) -> Self {
        self.reconnect_failure = default;
        self
    }

    /// Where hooks whose settings say `state = true` keep a directory per object (see
    /// [`StateRoot`](crate::state::StateRoot)). By default none, and such a hook fails with a message
    /// saying so; hookctl uses [`SYSTEM_STATE_ROOT`](crate::state::SYSTEM_STATE_ROOT).
    pub fn with_state_root(mut self, root: Option<crate::StateRoot>) -> Self {
        self.state_root = root.map(Arc::new);
        self
    }

    /// The state root, if any.
    pub fn state_root(&self) -> Option<&crate::StateRoot> {
        self.state_root.as_deref()
    }

    /// The trust rule in force.
    pub fn trust(&self) -> Option<TrustPolicy> {
        self.trust
    }

    /// A script run first, before a plugins directory's entries, with libvirt's rules for
    /// a main script (hookctl keeps the hook it replaced this way, where `$(dirname
    /// "$0")` still names the hooks directory).
    pub fn with_main_script(mut self, path: impl Into<PathBuf>) -> Self {
        self.flat_main = Some(path.into());
        self
    }

    /// Leaves out the main script `<dir>/<driver>` (only the `<driver>.d` entries run):
    /// for a caller that runs what the main script would run itself (hookctl's
    /// `simulate`, when the main script is hookctl's dispatcher).
    pub fn without_main_script(mut self) -> Self {
        self.skip_main = true;
        self.flat_main = None;
        self
    }

    /// The default for entries: the directory's in a plugins dir, none in libvirt's layout.
    fn reconnect_for_entries(&self) -> Option<OnReconnectFailure> {
        self.flat.then_some(self.reconnect_failure)
    }

    /// Whether this is a flat plugins directory.
    pub fn is_flat(&self) -> bool {
        self.flat
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<dir>/<driver>`.
    pub fn main_path(&self, driver: Driver) -> PathBuf {
        self.root.join(driver.as_str())
    }

    /// `<dir>/<driver>.d` (the directory itself for a flat plugins dir).
    pub fn drop_in_dir(&self, driver: Driver) -> PathBuf {
        if self.flat {
            return self.root.clone();
        }
        self.root.join(format!("{}.d", driver.as_str()))
    }

    /// Every entry for a driver in run order (main first, then the drop-ins sorted by
    /// byte-wise comparison), including skipped ones with their reason.
    ///
    /// # Errors
    /// When `<driver>.d` exists but cannot be read (libvirt fails the event then).
    pub fn scan(&self, driver: Driver) -> io::Result<Vec<DirEntry>> {
        let mut entries = Vec::new();
        let main = if self.flat {
            self.flat_main.clone()
        } else {
            Some(self.main_path(driver)).filter(|_| !self.skip_main)
        };
        if let Some(main) = main {
            match fs::symlink_metadata(&main) {
                Ok(_) => {
                    let has_sidecar = fs::symlink_metadata(HookSettings::sidecar(&main)).is_ok();
                    entries.push(self.entry(driver, main, EntryRole::Main, has_sidecar));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // EACCES on the hooks dir: libvirt fails the event; so do we.
                Err(e) => entries.push(self.refused(driver, main, EntryRole::Main, e)),
            }
        }
        let dir = self.drop_in_dir(driver);
        if let (true, Some(trust)) = (self.flat, self.trust) {
            // No plugins dir is no plugins; anything else there (a dangling link, a
            // file, a link into a user's dir) must pass, or the event fails.
            let exists = match fs::symlink_metadata(&dir) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(entries),
                Err(e) => Err(Untrusted::io(&dir, &dir, e)),
            };
            if let Err(why) = exists.and_then(|()| trust.check_dir(&dir)) {
                entries.push(self.refused_entry(driver, dir, EntryRole::DropIn, why));
                return Ok(entries);
            }
        }
        let read = match fs::read_dir(&dir) {
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(entries),
            Err(e) if e.raw_os_error() == Some(20) => return Ok(entries), // ENOTDIR
            Err(e) => return Err(e),
        };
        let mut paths = read.map(|e| e.map(|e| e.path())).collect::<io::Result<Vec<_>>>()?;
        paths.sort_unstable();
        // The listing says which sidecars exist: no failed open per hook per event.
        let names: std::collections::HashSet<&std::ffi::OsStr> = paths.iter().filter_map(|p| p.file_name()).collect();
        let with_sidecar: Vec<bool> = paths
            .iter()
            .map(|p| {
                let mut name = p.file_name().unwrap_or_default().to_owned();
                name.push(".toml");
                names.contains(name.as_os_str())
            })
            .collect();
        let first = entries.len();
        entries.extend(
            paths
                .iter()
                .zip(with_sidecar)
                .map(|(path, has_sidecar)| self.entry(driver, path.clone(), EntryRole::DropIn, has_sidecar)),
        );
        for entry in &mut entries[first..] {
            if let Disposition::Skipped(SkipReason::Settings) = entry.disposition {
                if let Some(hint) = stray_settings(&entry.path, &names, self.flat) {
                    entry.disposition = Disposition::Skipped(SkipReason::StraySettings);
                    entry.stray_hint = hint;
                }
            }
        }
        Ok(entries)
    }

    /// libvirt's presence test: the main script or a drop-in would run. An unreadable
    /// directory, a refused entry, or an executable that no linked backend runs counts
    /// as present, so that the event fails rather than silently running nothing; in a
    /// plugins dir, so does an entry that looks meant to run (a script without its
    /// execute bit), so that each event names it.
    pub fn is_present(&self, driver: Driver) -> bool {
        self.scan(driver).map_or(true, |entries| {
            entries.iter().any(|e| {
                e.loader().is_some()
                    || e.refusal().is_some()
                    // Meant to run; the registry fails the event for it.
                    || matches!(
                        e.disposition,
                        Disposition::Skipped(SkipReason::Unclaimed | SkipReason::Unlinked(_))
                    )
                    // In a plugins dir, one that looks meant to run is named at each
                    // event (libvirt's layout keeps libvirt's presence test).
                    || (self.flat && matches!(e.disposition, Disposition::Skipped(why) if why.is_likely_mistake()))
            })
        })
    }

    fn entry(&self, driver: Driver, path: PathBuf, role: EntryRole, has_sidecar: bool) -> DirEntry {
        let (disposition, stamp) = self.classify(driver, &path, role);
        DirEntry {
            path,
            role,
            disposition,
            stamp,
            has_sidecar,
            trust: self.trust,
            default_timeout: self.default_timeout,
            reconnect_failure: self.reconnect_for_entries(),
            driver,
            state_root: self.state_root.clone(),
            stray_hint: None,
        }
    }

    fn refused(&self, driver: Driver, path: PathBuf, role: EntryRole, e: io::Error) -> DirEntry {
        let why = Untrusted::io(&path, &path, e);
        self.refused_entry(driver, path, role, why)
    }

    /// An entry that fails the event with `why`.
    fn refused_entry(&self, driver: Driver, path: PathBuf, role: EntryRole, why: Untrusted) -> DirEntry {
        DirEntry {
            path,
            role,
            disposition: Disposition::Refused(None, why),
            stamp: None,
            has_sidecar: false,
            trust: self.trust,
            default_timeout: self.default_timeout,
            reconnect_failure: self.reconnect_for_entries(),
            driver,
            state_root: self.state_root.clone(),
            stray_hint: None,
        }
    }

    fn classify(&self, driver: Driver, path: &Path, role: EntryRole) -> (Disposition, Option<FileStamp>) {
        let plugin_entry = self.flat && role == EntryRole::DropIn;
        if plugin_entry {
            use std::os::unix::ffi::OsStrExt;
            match path.file_name() {
                Some(name) if is_disabled(name.as_bytes()) => {
                    return (Disposition::Skipped(SkipReason::Disabled), None)
                }
                Some(name) if is_leftover(name) => return (Disposition::Skipped(SkipReason::Leftover), None),
                _ => {}
            }
        }
        let own = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            // Gone since the listing: as if it had not been there.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return (Disposition::Skipped(SkipReason::Vanished), None),
            Err(e) => return (self.refused(driver, path.to_owned(), role, e).disposition, None),
        };
        // What hookctl runs on its own account (everything in a plugins dir, the hook
        // it saved at install, native and WASM code anywhere) must pass the trust rule,
        // and before anything else: otherwise whoever may change a refused entry could
        // turn it into a skipped one (chmod -x, a dangling link) and the event through.
        // libvirt's own layout keeps libvirt's behaviour for its executables.
        let native = path.extension().is_some_and(|e| e == "so" || e == "wasm");
        let settings_file = path.extension().is_some_and(|e| e == "toml");
        let trust = self.trust.filter(|_| (self.flat || native) && !settings_file);
        if let Some(trust) = trust {
            let verdict = if plugin_entry && !own.file_type().is_symlink() {
                // The plugins dir and those above it were checked once for the scan.
                match trust.file_problem(&own) {
                    Err(crate::trust::Problem::NotRegular) if own.is_dir() => Ok(()),
                    other => other.map_err(|problem| Untrusted::file(path, path, false, problem)),
                }
            } else {
                trust.check_file(path)
            };
            if let Err(why) = verdict {
                let loader = fs::metadata(path)
                    .ok()
                    .and_then(|m| self.loaders.iter().find(|l| l.claims(path, &m)).cloned());
                return (Disposition::Refused(loader, why), None);
            }
        }
        let meta = if own.file_type().is_symlink() {
            match fs::metadata(path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return (Disposition::Skipped(SkipReason::DanglingSymlink), None)
                }
                Err(e) => return (self.refused(driver, path.to_owned(), role, e).disposition, None),
            }
        } else {
            own
        };
        let stamp = Some(FileStamp::of(&meta));
        let disposition = self.classify_file(path, &meta);
        if let (Some(trust), Disposition::Hook(loader)) = (trust, &disposition) {
            // What runs with it (a script's interpreter) must be as safe as the hook.
            if let Err(why) = loader.check_dependencies(path, &trust) {
                return (Disposition::Refused(Some(Arc::clone(loader)), why), stamp);
            }
        }
        (disposition, stamp)
    }

    fn classify_file(&self, path: &Path, meta: &Metadata) -> Disposition {
        let skip = Disposition::Skipped;
        if meta.is_dir() {
            return skip(SkipReason::Directory);
        }
        if !meta.is_file() {
            return skip(SkipReason::NotRegular);
        }
        if path.extension().is_some_and(|e| e == "toml") {
            return skip(SkipReason::Settings);
        }
        let module_backend = match path.extension().and_then(|e| e.to_str()) {
            Some("wasm") => Some("wasm"),
            Some("so") => Some("dylib"),
            _ => None,
        };
        if let Some(loader) = self.loaders.iter().find(|l| l.claims(path, meta)) {
            // A module or plugin with an execute bit (what `cc -shared` makes) is the
            // exec backend's only by that bit: exec'ing it fails with a signal that
            // names no missing backend.
            if module_backend.is_none() || loader.backend() != "exec" {
                return Disposition::Hook(Arc::clone(loader));
            }
        }
        // Whoever put one here meant it to run: a program that forgot a backend's
        // `link()` must not skip it as "not executable".
        if let Some(backend) = module_backend {
            return skip(SkipReason::Unlinked(backend));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            skip(SkipReason::NotExecutable)
        } else {
            skip(SkipReason::Unclaimed)
        }
    }
}
