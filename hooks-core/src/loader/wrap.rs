//! What the registry wraps a loaded hook in: its state directory, or its load error.

use super::*;

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
