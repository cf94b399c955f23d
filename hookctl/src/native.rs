//! Native plugins (`*.so`), each run in a process of its own by `hookctl-native`.
//!
//! hookctl is linked statically (its start-up is what every libvirt event costs), and a
//! static program cannot load shared objects, so the `dylib` backend here is a launcher:
//! the plugin runs like an exec hook through the small dynamically linked host beside
//! hookctl. A native plugin thereby gets what exec hooks have: a timeout that kills it,
//! and a crash that fails only it, never the dispatcher and the other plugins.

use std::ffi::OsStr;
use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use hooks_core::backend::{HookLoader, HookSettings, TrustPolicy, Untrusted};
use hooks_core::{Driver, EventArgs, Hook, HookError, HookOutcome, HookStatus, Invocation, LoadError, LoadErrorKind};
use hooks_exec::{ExecHook, ExecOptions};

use crate::native_wire::{LoadKind, Report, REPORT_STATUS};

const BACKEND: &str = "dylib";
const HOST_NAME: &str = "hookctl-native";
/// How long `check` gives a plugin's constructors before it calls the plugin hung.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the host is: beside this program (`cargo install`, a build tree), else in
/// `../libexec/hookctl/` (the Debian package's `/usr/libexec/hookctl/`).
pub(crate) fn host() -> Option<&'static Path> {
    static HOST: OnceLock<Option<PathBuf>> = OnceLock::new();
    HOST.get_or_init(|| {
        let exe = std::env::current_exe().ok()?;
        let bin = exe.parent()?;
        let beside = bin.join(HOST_NAME);
        let libexec = bin.parent().map(|usr| usr.join("libexec/hookctl").join(HOST_NAME));
        std::iter::once(beside).chain(libexec).find(|p| p.is_file())
    })
    .as_deref()
}

fn host_missing(plugin: &Path) -> LoadError {
    let exe = std::env::current_exe().unwrap_or_default();
    let why = format!(
        "{HOST_NAME}, which runs native plugins, is neither beside {} nor in ../libexec/hookctl/",
        exe.display()
    );
    LoadError::new(plugin, BACKEND, LoadErrorKind::BackendUnavailable).with_source(std::io::Error::other(why))
}

/// The loader for `*.so` files, in place of `hooks_dylib`'s in-process one.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NativeHostLoader;

impl HookLoader for NativeHostLoader {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn priority(&self) -> i32 {
        10
    }

    fn claims(&self, path: &Path, _meta: &Metadata) -> bool {
        path.extension().is_some_and(|e| e == "so")
    }

    fn load(&self, path: &Path, settings: &HookSettings) -> Result<Arc<dyn Hook>, LoadError> {
        let host = host().ok_or_else(|| host_missing(path))?;
        let mut options = ExecOptions {
            timeout: settings.effective_timeout(None),
            ..ExecOptions::default()
        };
        if let Some(cap) = settings.max_output {
            options.max_output = usize::try_from(cap).unwrap_or(usize::MAX);
        }
        Ok(Arc::new(NativeHook {
            plugin: path.to_owned(),
            name: path.display().to_string(),
            host,
            options,
        }))
    }

    /// Loads it in the host, which runs its constructors, with a time limit.
    fn check(&self, path: &Path, _settings: &HookSettings) -> Result<(), LoadError> {
        examine(path, "check")
    }

    /// Reads its ELF header in the host; nothing of the plugin runs.
    fn inspect(&self, path: &Path, _settings: &HookSettings) -> Result<(), LoadError> {
        examine(path, "inspect")
    }

    /// The host runs as root with the plugin: it must pass the trust rule too.
    fn check_dependencies(&self, path: &Path, trust: &TrustPolicy) -> Result<(), Untrusted> {
        match host() {
            Some(host) => trust
                .check_file(host)
                .map_err(|why| Untrusted::dependency(path, "native plugin host", why)),
            None => Ok(()),
        }
    }
}

fn examine(plugin: &Path, how: &str) -> Result<(), LoadError> {
    let host = host().ok_or_else(|| host_missing(plugin))?;
    let options = ExecOptions {
        timeout: Some(CHECK_TIMEOUT),
        ..ExecOptions::default()
    };
    let leading = [OsStr::new(how), plugin.as_os_str(), OsStr::new("--")];
    let run = ExecHook::with_options(host, options).with_leading_args(leading);
    let inv = Invocation::new(Driver::Daemon, EventArgs::new(["-"; 4]), None);
    let mut outcome = run.run_blocking(&inv);
    match outcome.status {
        HookStatus::Exited(0) => Ok(()),
        HookStatus::Exited(REPORT_STATUS) => match Report::take_from(&mut outcome.stderr) {
            Some(Report::LoadError { kind, source }) => Err(load_error(plugin, kind, source)),
            Some(other) => Err(host_failed(plugin, &format!("{other:?}"))),
            None => Err(host_failed(plugin, &String::from_utf8_lossy(&outcome.stderr))),
        },
        ref status => {
            let stderr = String::from_utf8_lossy(&outcome.stderr);
            Err(host_failed(
                plugin,
                &format!("{}: {}", status.describe(), stderr.trim_end()),
            ))
        }
    }
}

fn host_failed(plugin: &Path, what: &str) -> LoadError {
    LoadError::new(plugin, BACKEND, LoadErrorKind::Backend)
        .with_source(std::io::Error::other(format!("{HOST_NAME} failed: {what}")))
}

fn load_error(plugin: &Path, kind: LoadKind, source: Option<String>) -> LoadError {
    let (kind, detail) = match kind {
        LoadKind::Unreadable => (LoadErrorKind::Unreadable, source),
        LoadKind::NotSharedObject => (LoadErrorKind::NotSharedObject, source),
        LoadKind::AbiMismatch { expected, found } => (LoadErrorKind::AbiMismatch { expected, found }, source),
        LoadKind::MissingSymbol { symbol } if symbol == "virt_hook_plugin_v1" => (
            LoadErrorKind::MissingSymbol {
                symbol: "virt_hook_plugin_v1",
            },
            source,
        ),
        // Kinds whose fields are static text in the library: the words travel instead.
        LoadKind::MissingSymbol { symbol } => (LoadErrorKind::Backend, Some(format!("no `{symbol}` symbol"))),
        LoadKind::InvalidDescriptor { what } => (
            LoadErrorKind::Backend,
            Some(format!("its descriptor is invalid: {what}")),
        ),
        LoadKind::Other { message } => (LoadErrorKind::Backend, Some(message)),
    };
    let err = LoadError::new(plugin, BACKEND, kind);
    match detail {
        Some(text) => err.with_source(std::io::Error::other(text)),
        None => err,
    }
}

/// A native plugin, run by the host for each call.
#[derive(Debug)]
struct NativeHook {
    plugin: PathBuf,
    name: String,
    host: &'static Path,
    options: ExecOptions,
}

#[async_trait]
impl Hook for NativeHook {
    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.plugin)
    }

    /// As for exec hooks: the host is stopped at the timeout by its supervisor.
    fn stop_grace(&self) -> Option<Duration> {
        Some(self.options.kill_grace.saturating_add(Duration::from_millis(500)))
    }

    async fn call(&self, inv: &Invocation) -> HookOutcome {
        let max_output = self.options.max_output.to_string();
        let mut leading = vec![OsStr::new("call")];
        if inv.input_shared().is_none() {
            leading.push(OsStr::new("--no-input"));
        }
        leading.extend([
            OsStr::new("--max-output"),
            OsStr::new(&max_output),
            self.plugin.as_os_str(),
            OsStr::new(inv.driver().as_str()),
        ]);
        let run = ExecHook::with_options(self.host, self.options).with_leading_args(leading);
        let mut outcome = run.call(inv).await;
        // Messages name the plugin, not the host's command line.
        outcome.command = None;
        if matches!(outcome.status, HookStatus::Exited(REPORT_STATUS)) {
            if let Some(report) = Report::take_from(&mut outcome.stderr) {
                outcome.status = self.status(report);
            }
        }
        outcome
    }
}

impl NativeHook {
    fn status(&self, report: Report) -> HookStatus {
        match report {
            Report::Exited { code } => HookStatus::Exited(code),
            Report::Crashed { message } => HookStatus::Crashed(message),
            Report::LoadError { kind, source } => {
                HookStatus::Failed(HookError::Load(Arc::new(load_error(&self.plugin, kind, source))))
            }
            Report::Failed { message } => HookStatus::Failed(HookError::Backend {
                backend: BACKEND,
                source: format!("{HOST_NAME}: {message}").into(),
            }),
        }
    }
}
