//! The backend interface: loaders, and how they announce themselves.

use super::*;

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

pub(super) fn sort_loaders(loaders: &mut [Arc<dyn HookLoader>]) {
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
