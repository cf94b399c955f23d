//! Loading hooks from a hooks directory: `<dir>/<driver>`, then `<dir>/<driver>.d/*` in
//! strcmp order, each entry handed to the first backend that claims it.
//!
//! Backends announce a [`HookLoader`] with [`register_loader!`](crate::register_loader) so the core finds them
//! without depending on them:
//!
//! ```
//! use std::{fs::Metadata, path::Path, sync::Arc};
//! use virt_hooks_core::{Hook, LoadError};
//! use virt_hooks_core::error::LoadErrorKind;
//! use virt_hooks_core::backend::{HookLoader, HookSettings, LoaderRegistration};
//!
//! struct LuaLoader;
//! impl HookLoader for LuaLoader {
//!     fn backend(&self) -> &'static str { "lua" }
//!     fn claims(&self, path: &Path, _meta: &Metadata) -> bool {
//!         path.extension().is_some_and(|e| e == "lua")
//!     }
//!     fn load(&self, path: &Path, _settings: &HookSettings) -> Result<Arc<dyn Hook>, LoadError> {
//!         Err(LoadError::new(path, "lua", LoadErrorKind::Backend))
//!     }
//! }
//! virt_hooks_core::register_loader!(&LuaLoader);
//! ```
//!
//! A backend crate is linked only if the program uses something from it: call its
//! `link()` (or name any item) from `main` so its loader is registered. A program that
//! forgets the exec backend does not silently skip scripts: an executable that libvirt
//! would run, and no linked backend does, fails the event and names `virt_hooks_exec::link()`.

use std::fmt;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::{
    Driver, Hook, HookOutcome, HookSettings, Invocation, LoadError, OnReconnectFailure, SettingsError, TrustPolicy,
    Untrusted,
};

/// A backend's way of turning a file into a [`Hook`].
pub trait HookLoader: Send + Sync + 'static {
    /// The backend's name (`exec`, `dylib`, `wasm`, ...).
    fn backend(&self) -> &'static str;

    /// Loaders are asked in ascending priority; a catch-all (exec) uses a high value.
    /// Defaults to 0.
    fn priority(&self) -> i32 {
        0
    }

    /// The time limit this backend gives a hook whose settings set none. Defaults to
    /// none (libvirt's behaviour).
    fn default_timeout(&self) -> Option<std::time::Duration> {
        None
    }

    /// Whether this backend runs the file (by name or metadata; do not read it here).
    fn claims(&self, path: &Path, meta: &Metadata) -> bool;

    /// Loads the file into a hook, applying the limits in `settings` that concern the
    /// backend (timeout, memory, output cap); matching and policy are applied by the
    /// core.
    ///
    /// # Errors
    /// A [`LoadError`] naming the file and what is wrong with it.
    fn load(&self, path: &Path, settings: &HookSettings) -> Result<Arc<dyn Hook>, LoadError>;

    /// Checks that the file would run, more strictly than `load` where the backend
    /// can tell (an exec hook with a missing interpreter loads, as libvirt would run
    /// it, but fails this check). Defaults to `load`.
    ///
    /// # Errors
    /// What is wrong with the file.
    fn check(&self, path: &Path, settings: &HookSettings) -> Result<(), LoadError> {
        self.load(path, settings).map(drop)
    }

    /// Checks the file as far as possible without running any of its code, for
    /// listings. Defaults to [`HookLoader::check`]; a backend whose `check` runs code
    /// (loading a native library runs its constructors) must override it.
    ///
    /// # Errors
    /// What is wrong with the file.
    fn inspect(&self, path: &Path, settings: &HookSettings) -> Result<(), LoadError> {
        self.check(path, settings)
    }

    /// For a hook run under the trust rule: checks what runs with it and is not the
    /// file itself (an exec hook's `#!` interpreter, a plugin's library search path).
    /// Called on every scan, so it should be cheap. Defaults to nothing to check.
    ///
    /// # Errors
    /// [`Untrusted`] naming the dependency that fails.
    fn check_dependencies(&self, path: &Path, trust: &TrustPolicy) -> Result<(), Untrusted> {
        let _ = (path, trust);
        Ok(())
    }
}

/// A [`HookLoader`] announced to the core ([`register_loader!`](crate::register_loader)).
pub struct LoaderRegistration {
    loader: &'static dyn HookLoader,
}

impl LoaderRegistration {
    /// Wraps a loader for [`register_loader!`](crate::register_loader).
    pub const fn new(loader: &'static dyn HookLoader) -> Self {
        LoaderRegistration { loader }
    }
}

impl fmt::Debug for LoaderRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LoaderRegistration")
            .field(&self.loader.backend())
            .finish()
    }
}

inventory::collect!(LoaderRegistration);

/// Every loader linked into this program, in the order they are asked.
pub fn registered_loaders() -> Vec<Arc<dyn HookLoader>> {
    let mut loaders: Vec<Arc<dyn HookLoader>> = inventory::iter::<LoaderRegistration>
        .into_iter()
        .map(|r| Arc::new(r.loader) as Arc<dyn HookLoader>)
        .collect();
    sort_loaders(&mut loaders);
    loaders
}

fn sort_loaders(loaders: &mut [Arc<dyn HookLoader>]) {
    loaders.sort_by(|a, b| (a.priority(), a.backend()).cmp(&(b.priority(), b.backend())));
}

/// A registered loader is a `&'static`: shared as it is.
impl<L: HookLoader + ?Sized> HookLoader for &'static L {
    fn backend(&self) -> &'static str {
        (**self).backend()
    }
    fn priority(&self) -> i32 {
        (**self).priority()
    }
    fn default_timeout(&self) -> Option<std::time::Duration> {
        (**self).default_timeout()
    }
    fn claims(&self, path: &Path, meta: &Metadata) -> bool {
        (**self).claims(path, meta)
    }
    fn load(&self, path: &Path, settings: &HookSettings) -> Result<Arc<dyn Hook>, LoadError> {
        (**self).load(path, settings)
    }
    fn check(&self, path: &Path, settings: &HookSettings) -> Result<(), LoadError> {
        (**self).check(path, settings)
    }
    fn inspect(&self, path: &Path, settings: &HookSettings) -> Result<(), LoadError> {
        (**self).inspect(path, settings)
    }
    fn check_dependencies(&self, path: &Path, trust: &TrustPolicy) -> Result<(), Untrusted> {
        (**self).check_dependencies(path, trust)
    }
}

/// Where an entry sits in the run order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryRole {
    /// `<dir>/<driver>`, run first.
    Main,
    /// An entry of `<dir>/<driver>.d/`.
    DropIn,
}

/// What happens to an entry of a hooks directory.
#[derive(Clone)]
pub enum Disposition {
    /// It runs, through this backend.
    Hook(Arc<dyn HookLoader>),
    /// It does not run, for this reason.
    Skipped(SkipReason),
    /// It would run (through this backend, if one claims it) but fails the trust rule or
    /// cannot be examined: it fails the event instead of running.
    Refused(Option<Arc<dyn HookLoader>>, Untrusted),
}

impl fmt::Debug for Disposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disposition::Hook(l) => f.debug_tuple("Hook").field(&l.backend()).finish(),
            Disposition::Skipped(why) => f.debug_tuple("Skipped").field(why).finish(),
            Disposition::Refused(l, why) => f
                .debug_tuple("Refused")
                .field(&l.as_ref().map(|l| l.backend()))
                .field(&why.reason())
                .finish(),
        }
    }
}

/// Why an entry of a hooks directory does not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SkipReason {
    /// A directory (libvirt skips them; per-guest trees of other dispatchers live there).
    Directory,
    /// A FIFO, socket or device.
    NotRegular,
    /// A `*.toml` sidecar or `hookctl.toml`.
    Settings,
    /// A file with no execute bit that no backend claims.
    NotExecutable,
    /// Executable, but no linked backend runs it.
    Unclaimed,
    /// A WebAssembly module (`*.wasm`) or native plugin (`*.so`) whose backend is not
    /// linked into this program: its name (`"wasm"`, `"dylib"`).
    Unlinked(&'static str),
    /// A symlink to nothing (libvirt skips it).
    DanglingSymlink,
    /// Gone between the listing and the look at it.
    Vanished,
    /// An editor backup or a package manager's leftover in a plugins dir.
    Leftover,
    /// A copy set aside with `.disabled` at the end of its name, in a plugins dir.
    Disabled,
    /// A `*.toml` that is the sidecar of no entry beside it (`10-x.toml` for
    /// `10-x.sh`, whose sidecar is `10-x.sh.toml`): settings that apply to nothing.
    StraySettings,
}

impl SkipReason {
    /// Whether the entry looks meant to run but never will (`hookctl check` fails on
    /// these in a plugins dir): a script without its execute bit, a file no backend
    /// takes, a link to nothing.
    pub fn is_likely_mistake(self) -> bool {
        matches!(
            self,
            SkipReason::NotExecutable | SkipReason::Unclaimed | SkipReason::Unlinked(_) | SkipReason::DanglingSymlink
        )
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::Directory => "directory",
            SkipReason::NotRegular => "not a regular file",
            SkipReason::Settings => "settings file, never a hook",
            SkipReason::NotExecutable => "not executable",
            SkipReason::Unclaimed => "no backend claims it",
            SkipReason::Unlinked("wasm") => "a WebAssembly module, but no linked backend runs them",
            SkipReason::Unlinked(_) => "a native plugin, but no linked backend loads them",
            SkipReason::DanglingSymlink => "dangling symlink",
            SkipReason::Vanished => "vanished",
            SkipReason::Leftover => "backup or package-manager leftover, never run",
            SkipReason::Disabled => "disabled (`.disabled`), never run",
            SkipReason::StraySettings => "settings file that matches no hook",
        })
    }
}

/// Whether a plugins-dir entry is an editor backup or a package manager's leftover
/// (`run-parts` and `sudoers.d` skip these too), which must never run.
pub(crate) fn is_leftover(name: &std::ffi::OsStr) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const SUFFIXES: [&[u8]; 17] = [
        b".dpkg-old",
        b".dpkg-new",
        b".dpkg-dist",
        b".dpkg-tmp",
        b".dpkg-bak",
        b".dpkg-remove",
        b".ucf-old",
        b".ucf-new",
        b".ucf-dist",
        b".rpmnew",
        b".rpmsave",
        b".rpmorig",
        b".swp",
        b".bak",
        b".orig",
        b".rej",
        b"~",
    ];
    let name = name.as_bytes();
    name.starts_with(b".")
        || (name.starts_with(b"#") && name.ends_with(b"#"))
        || SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Whether a plugins-dir entry was set aside as `<name>.disabled` (an operator's way of
/// switching a plugin off; it ran before, as any executable would).
fn is_disabled(name: &[u8]) -> bool {
    name.len() > b".disabled".len() && name.ends_with(b".disabled")
}

/// One entry of a hooks directory, in run order.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// The full path (what libvirt passes as argv\[0\]).
    pub path: PathBuf,
    /// Main script or drop-in.
    pub role: EntryRole,
    /// Whether and how it runs.
    pub disposition: Disposition,
    /// The file's identity when it was scanned (to reuse a loaded hook).
    pub(crate) stamp: Option<FileStamp>,
    /// Whether a sidecar `<path>.toml` was there when it was scanned.
    has_sidecar: bool,
    /// The rule its sidecar is read under.
    trust: Option<TrustPolicy>,
    /// The directory's default time limit for hooks that set none.
    default_timeout: Option<std::time::Duration>,
    /// What a failure at `reconnect` does when the sidecar says nothing; `None` in
    /// libvirt's own layout, where sidecars cannot change it (libvirt kills).
    reconnect_failure: Option<OnReconnectFailure>,
    /// The driver it was scanned for (its `[match]` is checked against its operations).
    driver: Driver,
    /// Where hooks asking for state keep it.
    state_root: Option<Arc<crate::StateRoot>>,
    /// For a stray sidecar: the entry it was probably meant for.
    stray_hint: Option<std::ffi::OsString>,
}

/// For a `*.toml` in a hooks dir whose name is no entry's plus `.toml`: `Some` with the
/// entry it was likely meant for (`10-x.sh` for `10-x.toml`), if one is there. `None`
/// for a real sidecar and for the dispatcher's own `hookctl.toml`.
fn stray_settings(
    path: &Path,
    names: &std::collections::HashSet<&std::ffi::OsStr>,
    flat: bool,
) -> Option<Option<std::ffi::OsString>> {
    use std::os::unix::ffi::OsStrExt;
    let name = path.file_name()?;
    let hook = name.as_bytes().strip_suffix(b".toml")?;
    if (flat && name == "hookctl.toml") || names.contains(std::ffi::OsStr::from_bytes(hook)) {
        return None;
    }
    // The settings of a plugin set aside (`10-x` moved to `10-x.disabled`): they apply
    // again when it is moved back, and renaming them would lose them then.
    let set_aside = [hook, b".disabled"].concat();
    if names.contains(std::ffi::OsStr::from_bytes(&set_aside)) {
        return None;
    }
    // A hook whose name less its extension is this one's: `10-x.sh` (or `10-x.wasm`).
    let mut meant: Vec<&std::ffi::OsStr> = names
        .iter()
        .copied()
        .filter(|n| {
            let n = n.as_bytes();
            !n.ends_with(b".toml")
                && n.len() > hook.len() + 1
                && n.starts_with(hook)
                && n[hook.len()] == b'.'
                && !n[hook.len() + 1..].contains(&b'.')
        })
        .collect();
    meant.sort_unstable();
    Some(meant.first().map(|n| n.to_os_string()))
}

/// A file's identity and version: a loaded hook is reused while it is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

impl FileStamp {
    fn of(m: &Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }
}

impl DirEntry {
    /// The loader that runs it, if it runs.
    pub fn loader(&self) -> Option<&dyn HookLoader> {
        match &self.disposition {
            Disposition::Hook(l) => Some(l.as_ref()),
            Disposition::Skipped(_) | Disposition::Refused(..) => None,
        }
    }

    /// Why it is refused, if it is.
    pub fn refusal(&self) -> Option<&Untrusted> {
        match &self.disposition {
            Disposition::Refused(_, why) => Some(why),
            _ => None,
        }
    }

    /// For a hook that runs without the trust rule (an executable in libvirt's own
    /// layout, run exactly as libvirt would): what the rule would say about it.
    /// `hookctl check` warns with this.
    pub fn trust_warning(&self) -> Option<Untrusted> {
        self.loader()?;
        TrustPolicy::current_user().check_file(&self.path).err()
    }
}

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
    /// [`crate::StateRoot`]). By default none, and such a hook fails with a message
    /// saying so; hookctl uses [`crate::SYSTEM_STATE_ROOT`].
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
                entries.push(DirEntry {
                    path: dir,
                    role: EntryRole::DropIn,
                    disposition: Disposition::Refused(None, why),
                    stamp: None,
                    has_sidecar: false,
                    trust: self.trust,
                    default_timeout: self.default_timeout,
                    reconnect_failure: self.reconnect_for_entries(),
                    driver,
                    state_root: self.state_root.clone(),
                    stray_hint: None,
                });
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
        if let Some(loader) = self.loaders.iter().find(|l| l.claims(path, meta)) {
            return Disposition::Hook(Arc::clone(loader));
        }
        // Whoever put one here meant it to run: a program that forgot a backend's
        // `link()` must not skip it as "not executable".
        match path.extension().and_then(|e| e.to_str()) {
            Some("wasm") => return skip(SkipReason::Unlinked("wasm")),
            Some("so") => return skip(SkipReason::Unlinked("dylib")),
            _ => {}
        }
        if meta.permissions().mode() & 0o111 == 0 {
            skip(SkipReason::NotExecutable)
        } else {
            skip(SkipReason::Unclaimed)
        }
    }
}

impl DirEntry {
    /// The sidecar's identity now, if it had one when scanned: a changed sidecar means
    /// new settings.
    pub(crate) fn sidecar_stamp(&self) -> Option<FileStamp> {
        if !self.has_sidecar {
            return None;
        }
        fs::symlink_metadata(HookSettings::sidecar(&self.path))
            .ok()
            .map(|m| FileStamp::of(&m))
    }

    /// The directory's default time limit for this entry.
    pub(crate) fn default_timeout(&self) -> Option<std::time::Duration> {
        self.default_timeout
    }

    /// What this entry's failure at `reconnect` does with these settings (its own): in a
    /// plugins dir the sidecar's `on_reconnect_failure`, else the directory's default
    /// ([`HooksDir::with_reconnect_failure`]); in libvirt's own layout always
    /// [`OnReconnectFailure::Kill`], since libvirt runs it and kills the guest.
    pub fn on_reconnect_failure(&self, settings: &HookSettings) -> OnReconnectFailure {
        match self.reconnect_failure {
            Some(default) => settings.on_reconnect_failure.unwrap_or(default),
            None => OnReconnectFailure::Kill,
        }
    }

    /// For a `*.toml` that is no hook's sidecar ([`SkipReason::StraySettings`]): what to
    /// tell the operator, with the name it likely should have (`10-x.sh.toml`).
    pub fn stray_settings_warning(&self) -> Option<String> {
        if !matches!(self.disposition, Disposition::Skipped(SkipReason::StraySettings)) {
            return None;
        }
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        Some(match &self.stray_hint {
            Some(hook) => format!(
                "`{name}` matches no hook and is ignored: a hook's settings are its whole file name plus `.toml`; rename it `{}.toml` for `{}`",
                hook.to_string_lossy(),
                hook.to_string_lossy()
            ),
            None => format!(
                "`{name}` matches no hook here and is ignored: a hook's settings are its whole file name plus `.toml` (`10-x.sh.toml` for `10-x.sh`)"
            ),
        })
    }

    /// Whether its sidecar's `on_reconnect_failure` is ignored here (libvirt's layout).
    pub fn ignores_reconnect_setting(&self, settings: &HookSettings) -> bool {
        self.reconnect_failure.is_none() && settings.on_reconnect_failure.is_some()
    }

    /// Where this entry's state goes, if its directory keeps state.
    pub(crate) fn state_root(&self) -> Option<&Arc<crate::StateRoot>> {
        self.state_root.as_ref()
    }

    /// Its settings from the sidecar `<path>.toml`, or the defaults.
    ///
    /// # Errors
    /// When the sidecar exists but is not valid.
    pub fn settings(&self) -> Result<HookSettings, SettingsError> {
        let mut settings = if !self.has_sidecar {
            HookSettings::default()
        } else {
            match &self.trust {
                Some(trust) => HookSettings::for_hook_trusted(&self.path, trust)?,
                None => HookSettings::for_hook(&self.path)?,
            }
        };
        settings.default_timeout = self.default_timeout;
        let checked = settings.matcher.check_for(self.driver).and_then(|()| {
            if settings.state && self.driver == Driver::Daemon {
                Err((
                    "state",
                    "state: daemon events have no object to keep state for".to_owned(),
                ))
            } else {
                Ok(())
            }
        });
        if let Err((key, message)) = checked {
            let path = HookSettings::sidecar(&self.path);
            let line = fs::read_to_string(&path).ok().and_then(|text| {
                text.lines()
                    .position(|l| l.trim_start().starts_with(key))
                    .map(|i| i + 1)
            });
            return Err(SettingsError {
                path,
                line,
                column: None,
                message,
            });
        }
        Ok(settings)
    }
}

/// A loaded hook whose settings ask for state: each call gets its state directory.
pub(crate) struct Configured {
    inner: Arc<dyn Hook>,
    /// Where its directories go (`None`: nowhere, and each call fails saying so).
    state: Option<Arc<crate::StateRoot>>,
}

impl Configured {
    /// Wraps `inner` when the settings ask for state; otherwise returns it. Matching,
    /// policy and what a failure at `reconnect` does are the registry entry's.
    pub(crate) fn wrap(
        inner: Arc<dyn Hook>,
        settings: &HookSettings,
        state_root: Option<&Arc<crate::StateRoot>>,
    ) -> Arc<dyn Hook> {
        if !settings.state {
            return inner;
        }
        Arc::new(Configured {
            inner,
            state: state_root.cloned(),
        })
    }

    /// The hook's state directory for this call's object, created when missing.
    fn state_dir(&self, root: Option<&crate::StateRoot>, inv: &Invocation) -> Result<Arc<Path>, crate::HookError> {
        let Some(root) = root else {
            return Err(crate::HookError::State(crate::StateError::NoRoot));
        };
        let name = self
            .inner
            .path()
            .and_then(Path::file_name)
            .unwrap_or(self.inner.name().as_ref());
        root.open(inv.driver(), inv.args().get(0), name)
            .map(Arc::from)
            .map_err(crate::HookError::State)
    }
}

#[async_trait::async_trait]
impl Hook for Configured {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn path(&self) -> Option<&Path> {
        self.inner.path()
    }
    fn stop_grace(&self) -> Option<std::time::Duration> {
        self.inner.stop_grace()
    }
    async fn call(&self, inv: &Invocation) -> HookOutcome {
        match self.state_dir(self.state.as_deref(), inv) {
            Ok(dir) => self.inner.call(&inv.clone().with_state_dir(Some(dir))).await,
            Err(e) => HookOutcome::failed(e),
        }
    }
}

/// A hook whose file failed to load: calling it fails with the load error, so the event
/// fails and names the file, while the other hooks still run.
pub(crate) struct BrokenHook {
    name: String,
    backend: &'static str,
    path: PathBuf,
    error: Arc<LoadError>,
}

impl BrokenHook {
    pub(crate) fn new(error: LoadError) -> Self {
        BrokenHook {
            name: error.path.display().to_string(),
            backend: error.backend,
            path: error.path.clone(),
            error: Arc::new(error),
        }
    }
}

#[async_trait::async_trait]
impl Hook for BrokenHook {
    fn name(&self) -> &str {
        &self.name
    }
    fn backend(&self) -> &'static str {
        self.backend
    }
    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }
    async fn call(&self, _inv: &crate::Invocation) -> crate::HookOutcome {
        crate::HookOutcome::failed(crate::HookError::Load(Arc::clone(&self.error)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LoadErrorKind;
    use std::os::unix::fs::symlink;

    struct ExecLike;
    impl HookLoader for ExecLike {
        fn backend(&self) -> &'static str {
            "test-exec"
        }
        fn priority(&self) -> i32 {
            100
        }
        fn claims(&self, _path: &Path, meta: &Metadata) -> bool {
            meta.permissions().mode() & 0o111 != 0
        }
        fn load(&self, path: &Path, _settings: &HookSettings) -> Result<Arc<dyn Hook>, LoadError> {
            Err(LoadError::new(path, "test-exec", LoadErrorKind::Backend))
        }
    }
    static EXEC_LIKE: ExecLike = ExecLike;

    fn write(path: &Path, mode: u32) {
        fs::write(path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn scan_orders_and_skips_like_libvirt() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("qemu.d");
        fs::create_dir(&d).unwrap();
        write(&tmp.path().join("qemu"), 0o755);
        for name in ["9-y", "10-x", "B", "a", ".hidden"] {
            write(&d.join(name), 0o755);
        }
        write(&d.join("noexec"), 0o644);
        write(&d.join("conf.toml"), 0o755);
        fs::create_dir(d.join("subdir")).unwrap();
        symlink(d.join("missing"), d.join("dangling")).unwrap();
        symlink(d.join("a"), d.join("link-to-a")).unwrap();

        let dir = HooksDir::with_loaders(tmp.path(), vec![Arc::new(&EXEC_LIKE)]);
        let entries = dir.scan(Driver::Qemu).unwrap();
        assert_eq!(
            labels(&entries, ""),
            [
                "qemu",
                ".hidden",
                "10-x",
                "9-y",
                "B",
                "a",
                "conf.toml (settings file that matches no hook)",
                "dangling (dangling symlink)",
                "link-to-a",
                "noexec (not executable)",
                "subdir (directory)",
            ]
        );
        assert_eq!(entries[0].role, EntryRole::Main);
        assert!(dir.is_present(Driver::Qemu));
        assert!(!dir.is_present(Driver::Lxc));
    }

    #[test]
    fn presence_needs_something_that_runs() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("lxc.d")).unwrap();
        write(&tmp.path().join("lxc.d/readme"), 0o644);
        let dir = HooksDir::with_loaders(tmp.path(), vec![Arc::new(&EXEC_LIKE)]);
        assert!(!dir.is_present(Driver::Lxc));
        write(&tmp.path().join("lxc.d/hook"), 0o700);
        assert!(dir.is_present(Driver::Lxc));
    }

    /// Each entry's file name, with why it is skipped (after `skip`) or refused.
    fn labels(entries: &[DirEntry], skip: &str) -> Vec<String> {
        entries
            .iter()
            .map(|e| {
                let n = e.path.file_name().unwrap().to_string_lossy().into_owned();
                match &e.disposition {
                    Disposition::Hook(_) => n,
                    Disposition::Skipped(why) => format!("{n} ({skip}{why})"),
                    Disposition::Refused(_, why) => format!("{n} (REFUSED: {})", why.reason()),
                }
            })
            .collect()
    }

    fn listing(entries: &[DirEntry]) -> Vec<String> {
        labels(entries, "skip: ")
    }

    #[test]
    fn plugins_dirs_refuse_what_others_could_change() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("qemu.plugins");
        fs::create_dir(&p).unwrap();
        write(&p.join("10-ok"), 0o755);
        write(&p.join("20-world"), 0o777);
        write(&p.join("30-group"), 0o775);
        write(&p.join("40-sidecar"), 0o755);
        fs::write(p.join("40-sidecar.toml"), "timeout = 1\n").unwrap();
        fs::set_permissions(p.join("40-sidecar.toml"), fs::Permissions::from_mode(0o666)).unwrap();
        let elsewhere = tmp.path().join("build");
        fs::create_dir(&elsewhere).unwrap();
        write(&elsewhere.join("tool"), 0o755);
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o777)).unwrap();
        symlink(elsewhere.join("tool"), p.join("50-link")).unwrap();
        let dir = HooksDir::plugins_with_loaders(&p, vec![Arc::new(&EXEC_LIKE)]);
        let entries = dir.scan(Driver::Qemu).unwrap();
        let real_build = fs::canonicalize(&elsewhere).unwrap();
        assert_eq!(
            listing(&entries),
            [
                "10-ok".to_owned(),
                "20-world (REFUSED: writable by others (mode 0777))".into(),
                "30-group (REFUSED: writable by group (mode 0775))".into(),
                "40-sidecar".into(),
                "40-sidecar.toml (skip: settings file, never a hook)".into(),
                format!(
                    "50-link (REFUSED: symlink into {}, writable by others (mode 0777))",
                    real_build.display()
                ),
            ]
        );
        // A sidecar others can write could switch a hook off: refused too.
        let err = entries[3].settings().unwrap_err();
        assert_eq!(err.message, "refused: writable by others (mode 0666)");
        assert!(dir.is_present(Driver::Qemu));

        // The same entries with the checks off (an embedder's explicit choice).
        let unchecked = HooksDir::plugins_with_loaders(&p, vec![Arc::new(&EXEC_LIKE)]).with_trust(None);
        assert!(unchecked
            .scan(Driver::Qemu)
            .unwrap()
            .iter()
            .all(|e| e.refusal().is_none()));
    }

    #[test]
    fn a_writable_plugins_dir_refuses_everything_in_it() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("qemu.plugins");
        fs::create_dir(&p).unwrap();
        write(&p.join("10-ok"), 0o755);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o777)).unwrap();
        let entries = HooksDir::plugins_with_loaders(&p, vec![Arc::new(&EXEC_LIKE)])
            .scan(Driver::Qemu)
            .unwrap();
        assert_eq!(entries.len(), 1);
        let why = entries[0].refusal().expect("the dir is refused");
        assert_eq!(why.culprit, p);
        assert!(why.reason().ends_with("writable by others (mode 0777)"), "{why}");
    }

    #[test]
    fn libvirt_layout_keeps_libvirts_behaviour_for_executables_but_not_plugins() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("qemu.d");
        fs::create_dir(&d).unwrap();
        write(&d.join("10-script"), 0o777);
        write(&d.join("20-native.so"), 0o777);
        let dir = HooksDir::with_loaders(tmp.path(), vec![Arc::new(&EXEC_LIKE)]);
        let entries = dir.scan(Driver::Qemu).unwrap();
        assert_eq!(
            listing(&entries),
            ["10-script", "20-native.so (REFUSED: writable by others (mode 0777))"]
        );
        assert!(entries[0].trust_warning().is_some(), "check warns about it");
    }

    #[test]
    fn leftovers_are_skipped_in_plugins_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        for name in [
            "10-a~",
            ".10-a.swp",
            "10-a.swp",
            "10-a.dpkg-old",
            "10-a.dpkg-new",
            "10-a.dpkg-dist",
            "10-a.dpkg-tmp",
            "10-a.rpmnew",
            "10-a.rpmsave",
            "10-a.rpmorig",
            ".hidden",
            "10-a",
        ] {
            write(&tmp.path().join(name), 0o755);
        }
        let entries = HooksDir::plugins_with_loaders(tmp.path(), vec![Arc::new(&EXEC_LIKE)])
            .scan(Driver::Qemu)
            .unwrap();
        let running: Vec<_> = entries.iter().filter(|e| e.loader().is_some()).collect();
        assert_eq!(running.len(), 1, "{:?}", listing(&entries));
        assert_eq!(running[0].path.file_name().unwrap(), "10-a");
        assert!(entries
            .iter()
            .filter(|e| e.loader().is_none())
            .all(|e| matches!(&e.disposition, Disposition::Skipped(SkipReason::Leftover))));
    }

    /// `mv 10-a 10-a.disabled` is how an operator switches a plugin off; it ran anyway.
    #[test]
    fn disabled_copies_are_skipped_in_plugins_dirs_only() {
        let tmp = tempfile::tempdir().unwrap();
        let plugins = tmp.path().join("qemu.plugins");
        let drop_ins = tmp.path().join("qemu.d");
        for dir in [&plugins, &drop_ins] {
            fs::create_dir(dir).unwrap();
            write(&dir.join("10-a.disabled"), 0o755);
            write(&dir.join("20-b"), 0o755);
            write(&dir.join(".disabled"), 0o755);
        }
        let entries = HooksDir::plugins_with_loaders(&plugins, vec![Arc::new(&EXEC_LIKE)])
            .scan(Driver::Qemu)
            .unwrap();
        assert_eq!(
            listing(&entries),
            [
                ".disabled (skip: backup or package-manager leftover, never run)",
                "10-a.disabled (skip: disabled (`.disabled`), never run)",
                "20-b"
            ]
        );
        // libvirt runs every executable of its own `<driver>.d/`: so does its layout here.
        let entries = HooksDir::with_loaders(tmp.path(), vec![Arc::new(&EXEC_LIKE)])
            .with_trust(None)
            .scan(Driver::Qemu)
            .unwrap();
        assert_eq!(listing(&entries), [".disabled", "10-a.disabled", "20-b"]);
    }

    /// `10-x.toml` beside `10-x.sh` configures nothing (the sidecar is `10-x.sh.toml`):
    /// it is told apart from a real sidecar, with the name it should have.
    #[test]
    fn the_sidecar_of_a_plugin_set_aside_is_not_stray() {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("qemu.plugins");
        fs::create_dir(&plugins).unwrap();
        for (name, mode) in [("20-stateful.disabled", 0o755), ("20-stateful.toml", 0o644)] {
            fs::write(plugins.join(name), "#!/bin/sh\n").unwrap();
            fs::set_permissions(plugins.join(name), fs::Permissions::from_mode(mode)).unwrap();
        }
        let entries = HooksDir::plugins(&plugins).scan(Driver::Qemu).unwrap();
        let sidecar = entries
            .iter()
            .find(|e| e.path.ends_with("20-stateful.toml"))
            .expect("listed");
        assert_eq!(
            sidecar.stray_settings_warning(),
            None,
            "renaming it would lose it when the plugin comes back"
        );
    }

    #[test]
    fn a_sidecar_named_after_the_stem_is_stray_and_names_the_hook() {
        let tmp = tempfile::tempdir().unwrap();
        write(&tmp.path().join("10-x.sh"), 0o755);
        write(&tmp.path().join("20-y"), 0o755);
        for toml in ["10-x.toml", "20-y.toml", "30-gone.toml", "hookctl.toml"] {
            fs::write(tmp.path().join(toml), "").unwrap();
        }
        let entries = HooksDir::plugins_with_loaders(tmp.path(), vec![Arc::new(&EXEC_LIKE)])
            .scan(Driver::Qemu)
            .unwrap();
        let by_name = |n: &str| entries.iter().find(|e| e.path.file_name().unwrap() == n).unwrap();
        let stray = by_name("10-x.toml").stray_settings_warning().unwrap();
        assert!(
            stray.contains("matches no hook") && stray.contains("rename it `10-x.sh.toml`"),
            "{stray}"
        );
        let gone = by_name("30-gone.toml").stray_settings_warning().unwrap();
        assert!(gone.contains("matches no hook") && !gone.contains("rename"), "{gone}");
        for real in ["20-y.toml", "hookctl.toml"] {
            assert!(by_name(real).stray_settings_warning().is_none(), "{real}");
            assert!(matches!(
                by_name(real).disposition,
                Disposition::Skipped(SkipReason::Settings)
            ));
        }
        assert!(by_name("10-x.sh").loader().is_some() && by_name("10-x.sh").settings().unwrap().source.is_none());
    }

    /// Only a plugins dir lets the dispatcher decide what a failure at `reconnect` does;
    /// libvirt's layout kills, whatever a sidecar says.
    #[test]
    fn on_reconnect_failure_applies_in_plugins_dirs_only() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("qemu.d");
        fs::create_dir(&d).unwrap();
        for dir in [tmp.path(), d.as_path()] {
            write(&dir.join("10-log"), 0o755);
            fs::write(dir.join("10-log.toml"), "on_reconnect_failure = \"log\"\n").unwrap();
            write(&dir.join("20-kill"), 0o755);
            fs::write(dir.join("20-kill.toml"), "on_reconnect_failure = \"kill\"\n").unwrap();
            write(&dir.join("30-plain"), 0o755);
        }
        let decided = |dir: HooksDir| -> Vec<(String, OnReconnectFailure, bool)> {
            let entries = dir.with_trust(None).scan(Driver::Qemu).unwrap();
            entries
                .iter()
                .filter(|e| e.loader().is_some())
                .map(|e| {
                    let settings = e.settings().unwrap();
                    let name = e.path.file_name().unwrap().to_string_lossy().into_owned();
                    (
                        name,
                        e.on_reconnect_failure(&settings),
                        e.ignores_reconnect_setting(&settings),
                    )
                })
                .collect()
        };
        let (kill, log) = (OnReconnectFailure::Kill, OnReconnectFailure::Log);
        let flat = || HooksDir::plugins_with_loaders(tmp.path(), vec![Arc::new(&EXEC_LIKE)]);
        assert_eq!(
            decided(flat().with_reconnect_failure(log)),
            [
                ("10-log".into(), log, false),
                ("20-kill".into(), kill, false),
                ("30-plain".into(), log, false)
            ]
        );
        // The library's default is libvirt's.
        assert_eq!(decided(flat())[2], ("30-plain".into(), kill, false));
        let libvirt = HooksDir::with_loaders(tmp.path(), vec![Arc::new(&EXEC_LIKE)]).with_reconnect_failure(log);
        assert_eq!(
            decided(libvirt),
            [
                ("10-log".into(), kill, true),
                ("20-kill".into(), kill, true),
                ("30-plain".into(), kill, false)
            ]
        );
    }

    #[test]
    fn unreadable_dirs_fail_closed() {
        if rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED unreadable_dirs_fail_closed: root reads any directory (mode 000 does not stop it)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("qemu.d");
        fs::create_dir(&d).unwrap();
        write(&d.join("deny"), 0o755);
        let dir = HooksDir::with_loaders(tmp.path(), vec![Arc::new(&EXEC_LIKE)]);
        fs::set_permissions(&d, fs::Permissions::from_mode(0o000)).unwrap();
        assert!(dir.scan(Driver::Qemu).is_err());
        assert!(
            dir.is_present(Driver::Qemu),
            "an unreadable .d must not read as 'no hooks'"
        );
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        // A hooks dir we cannot search: the main script cannot be stat'ed.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o600)).unwrap();
        let scanned = dir.scan(Driver::Qemu);
        let present = dir.is_present(Driver::Qemu);
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).unwrap();
        match scanned {
            Ok(entries) => assert!(entries.iter().any(|e| e.refusal().is_some()), "{:?}", listing(&entries)),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::PermissionDenied),
        }
        assert!(present);
    }

    #[test]
    fn a_refused_entry_cannot_be_turned_into_a_skipped_one() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("qemu.plugins");
        fs::create_dir(&p).unwrap();
        // Not executable, so it would be skipped; but others may write it.
        write(&p.join("60-deny"), 0o646);
        // A dangling link would be skipped by libvirt; in a plugins dir it is refused.
        symlink(tmp.path().join("gone/deny.sh"), p.join("70-deny")).unwrap();
        let dir = HooksDir::plugins_with_loaders(&p, vec![Arc::new(&EXEC_LIKE)]);
        let entries = dir.scan(Driver::Qemu).unwrap();
        assert!(entries.iter().all(|e| e.refusal().is_some()), "{:?}", listing(&entries));
        // A plugins dir that is a link to something gone fails too, rather than 'no plugins'.
        let linked = tmp.path().join("linked.plugins");
        symlink(tmp.path().join("moved-away"), &linked).unwrap();
        let dir = HooksDir::plugins_with_loaders(&linked, vec![Arc::new(&EXEC_LIKE)]);
        let entries = dir.scan(Driver::Qemu).unwrap();
        assert_eq!(entries.len(), 1);
        assert!(entries[0].refusal().is_some());
        assert!(dir.is_present(Driver::Qemu));
        // No plugins dir at all is simply no plugins.
        let none = HooksDir::plugins_with_loaders(tmp.path().join("none.plugins"), vec![Arc::new(&EXEC_LIKE)]);
        assert!(none.scan(Driver::Qemu).unwrap().is_empty());
    }

    #[test]
    fn the_saved_original_is_run_first_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("qemu.plugins");
        fs::create_dir(&p).unwrap();
        write(&p.join("10-x"), 0o755);
        let saved = tmp.path().join("qemu.pre-hookctl");
        write(&saved, 0o755);
        let dir = HooksDir::plugins_with_loaders(&p, vec![Arc::new(&EXEC_LIKE)]).with_main_script(&saved);
        assert_eq!(listing(&dir.scan(Driver::Qemu).unwrap()), ["qemu.pre-hookctl", "10-x"]);
        fs::set_permissions(&saved, fs::Permissions::from_mode(0o757)).unwrap();
        assert_eq!(
            listing(&dir.scan(Driver::Qemu).unwrap()),
            ["qemu.pre-hookctl (REFUSED: writable by others (mode 0757))", "10-x"]
        );
    }
}
