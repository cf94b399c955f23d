//! Loading hooks from a hooks directory: `<dir>/<driver>`, then `<dir>/<driver>.d/*` in
//! strcmp order, each entry handed to the first backend that claims it.
//!
//! Backends announce a [`HookLoader`] with `inventory::submit!` so the core finds them
//! without depending on them:
//!
//! ```
//! use std::{fs::Metadata, path::Path, sync::Arc};
//! use hooks_core::{Hook, HookLoader, HookSettings, LoadError, LoaderRegistration};
//!
//! struct LuaLoader;
//! impl HookLoader for LuaLoader {
//!     fn backend(&self) -> &'static str { "lua" }
//!     fn claims(&self, path: &Path, _meta: &Metadata) -> bool {
//!         path.extension().is_some_and(|e| e == "lua")
//!     }
//!     fn load(&self, path: &Path, _settings: &HookSettings) -> Result<Arc<dyn Hook>, LoadError> {
//!         Err(LoadError::new(path, "lua", "not implemented in this example"))
//!     }
//! }
//! hooks_core::inventory::submit! { LoaderRegistration::new(&LuaLoader) }
//! ```
//!
//! A backend crate is linked only if the program uses something from it: call its
//! `link()` (or name any item) from `main` so its loader is registered.

use std::fmt;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::{Driver, Hook, HookEvent, HookOutcome, HookPolicy, HookSettings, Invocation, LoadError, SettingsError};

/// A backend's way of turning a file into a [`Hook`].
pub trait HookLoader: Send + Sync + 'static {
    /// The backend's name (`exec`, `dylib`, `wasm`, ...).
    fn backend(&self) -> &'static str;

    /// Loaders are asked in ascending priority; a catch-all (exec) uses a high value.
    /// Defaults to 0.
    fn priority(&self) -> i32 {
        0
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
}

/// A [`HookLoader`] announced to the core with `inventory::submit!`.
pub struct LoaderRegistration {
    loader: &'static dyn HookLoader,
}

impl LoaderRegistration {
    /// Wraps a loader for `inventory::submit!`.
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
pub fn registered_loaders() -> Vec<&'static dyn HookLoader> {
    let mut loaders: Vec<_> = inventory::iter::<LoaderRegistration>
        .into_iter()
        .map(|r| r.loader)
        .collect();
    loaders.sort_by_key(|l| (l.priority(), l.backend()));
    loaders
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
    Hook(&'static dyn HookLoader),
    /// It does not run, for this reason.
    Skipped(String),
}

impl fmt::Debug for Disposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disposition::Hook(l) => f.debug_tuple("Hook").field(&l.backend()).finish(),
            Disposition::Skipped(why) => f.debug_tuple("Skipped").field(why).finish(),
        }
    }
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
    pub fn loader(&self) -> Option<&'static dyn HookLoader> {
        match self.disposition {
            Disposition::Hook(l) => Some(l),
            Disposition::Skipped(_) => None,
        }
    }
}

/// A libvirt hooks directory (`/etc/libvirt/hooks`).
#[derive(Clone)]
pub struct HooksDir {
    root: PathBuf,
    loaders: Vec<&'static dyn HookLoader>,
    flat: bool,
}

impl fmt::Debug for HooksDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HooksDir")
            .field("root", &self.root)
            .field("loaders", &self.loaders.iter().map(|l| l.backend()).collect::<Vec<_>>())
            .finish()
    }
}

impl HooksDir {
    /// The directory, with every loader linked into the program.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with_loaders(root, registered_loaders())
    }

    /// The directory with exactly these loaders, asked in this order.
    pub fn with_loaders(root: impl Into<PathBuf>, loaders: Vec<&'static dyn HookLoader>) -> Self {
        HooksDir {
            root: root.into(),
            loaders,
            flat: false,
        }
    }

    /// A flat plugins directory (the dispatcher's `<driver>.plugins/`): its entries run
    /// for every driver, with the rules of a `<driver>.d` that has no main script.
    pub fn plugins(root: impl Into<PathBuf>) -> Self {
        Self::plugins_with_loaders(root, registered_loaders())
    }

    /// A flat plugins directory with chosen loaders.
    pub fn plugins_with_loaders(root: impl Into<PathBuf>, loaders: Vec<&'static dyn HookLoader>) -> Self {
        HooksDir {
            root: root.into(),
            loaders,
            flat: true,
        }
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
        let main = self.main_path(driver);
        if !self.flat && fs::symlink_metadata(&main).is_ok() {
            let (disposition, stamp) = self.classify(&main);
            let has_sidecar = fs::symlink_metadata(HookSettings::sidecar(&main)).is_ok();
            entries.push(DirEntry {
                path: main,
                role: EntryRole::Main,
                disposition,
                stamp,
                has_sidecar,
            });
        }
        let dir = self.drop_in_dir(driver);
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
        entries.extend(paths.into_iter().zip(with_sidecar).map(|(path, has_sidecar)| {
            let (disposition, stamp) = self.classify(&path);
            DirEntry {
                path,
                role: EntryRole::DropIn,
                disposition,
                stamp,
                has_sidecar,
            }
        }));
        Ok(entries)
    }

    /// libvirt's presence test: the main script or a drop-in would run.
    pub fn is_present(&self, driver: Driver) -> bool {
        self.scan(driver)
            .is_ok_and(|entries| entries.iter().any(|e| e.loader().is_some()))
    }

    fn classify(&self, path: &Path) -> (Disposition, Option<FileStamp>) {
        match fs::metadata(path) {
            Ok(meta) => (self.classify_file(path, &meta), Some(FileStamp::of(&meta))),
            Err(_) if fs::symlink_metadata(path).is_ok() => (Disposition::Skipped("dangling symlink".into()), None),
            Err(e) => (Disposition::Skipped(format!("cannot stat: {e}")), None),
        }
    }

    fn classify_file(&self, path: &Path, meta: &Metadata) -> Disposition {
        let skip = |why: &str| Disposition::Skipped(why.to_owned());
        if meta.is_dir() {
            return skip("directory");
        }
        if !meta.is_file() {
            return skip("not a regular file");
        }
        if path.extension().is_some_and(|e| e == "toml") {
            return skip("settings file, never a hook");
        }
        if let Some(loader) = self.loaders.iter().find(|l| l.claims(path, meta)) {
            return Disposition::Hook(*loader);
        }
        if meta.permissions().mode() & 0o111 == 0 {
            skip("not executable")
        } else {
            skip("no backend claims it")
        }
    }
}

impl DirEntry {
    /// Its settings from the sidecar `<path>.toml`, or the defaults.
    ///
    /// # Errors
    /// When the sidecar exists but is not valid.
    pub fn settings(&self) -> Result<HookSettings, SettingsError> {
        if !self.has_sidecar {
            return Ok(HookSettings::default());
        }
        HookSettings::for_hook(&self.path)
    }
}

/// A loaded hook with the matching and policy from its settings.
pub(crate) struct Configured {
    inner: Arc<dyn Hook>,
    settings: HookSettings,
}

impl Configured {
    /// Wraps `inner` when the settings ask for matching or a policy; otherwise returns it.
    pub(crate) fn wrap(inner: Arc<dyn Hook>, settings: &HookSettings) -> Arc<dyn Hook> {
        if settings.policy == HookPolicy::Required && settings.matcher.is_empty() {
            return inner;
        }
        Arc::new(Configured {
            inner,
            settings: settings.clone(),
        })
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
    fn matches(&self, event: &dyn HookEvent) -> bool {
        self.settings.matcher.matches(event) && self.inner.matches(event)
    }
    fn policy(&self) -> HookPolicy {
        self.settings.policy
    }
    async fn call(&self, inv: &Invocation) -> HookOutcome {
        self.inner.call(inv).await
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
            Err(LoadError::new(path, "test-exec", "unused"))
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

        let dir = HooksDir::with_loaders(tmp.path(), vec![&EXEC_LIKE]);
        let entries = dir.scan(Driver::Qemu).unwrap();
        let names: Vec<_> = entries
            .iter()
            .map(|e| {
                let n = e.path.file_name().unwrap().to_string_lossy().into_owned();
                match &e.disposition {
                    Disposition::Hook(_) => n,
                    Disposition::Skipped(why) => format!("{n} ({why})"),
                }
            })
            .collect();
        assert_eq!(
            names,
            [
                "qemu",
                ".hidden",
                "10-x",
                "9-y",
                "B",
                "a",
                "conf.toml (settings file, never a hook)",
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
        let dir = HooksDir::with_loaders(tmp.path(), vec![&EXEC_LIKE]);
        assert!(!dir.is_present(Driver::Lxc));
        write(&tmp.path().join("lxc.d/hook"), 0o700);
        assert!(dir.is_present(Driver::Lxc));
    }
}
