//! Native plugins (`*.so`), each run in a process of its own by `hookctl-native`.
//!
//! hookctl is linked statically (its start-up is what every libvirt event costs), and a
//! static program cannot load shared objects, so the `dylib` backend here is a launcher:
//! the plugin runs like an exec hook through a small dynamically linked host. A native
//! plugin thereby gets what exec hooks have: a timeout that kills it, and a crash that
//! fails only it, never the dispatcher and the other plugins. How the two talk, and why
//! a plugin cannot forge the outcome: [`hookctl::native_wire`].

use std::ffi::OsStr;
use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use virt_hooks_core::backend::{HookLoader, HookSettings, PluginConfig, TrustPolicy, Untrusted};
use virt_hooks_core::error::LoadErrorKind;
use virt_hooks_core::{Driver, EventArgs, Hook, HookError, HookOutcome, HookStatus, Invocation, LoadError};
use virt_hooks_exec::{ExecHook, ExecOptions};

use hookctl::native_wire::{bounded, header, End, LoadKind, Report, REPORT_ROOM, REPORT_STATUS, UNUSABLE_STATUS};

const BACKEND: &str = "dylib";

/// `simulate --strict`: every native plugin's input goes behind a guard page
/// (`hookctl-native call --guard-input`; see `DylibHook::with_guarded_input`).
pub(crate) static GUARD_INPUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
const HOST_NAME: &str = "hookctl-native";
/// How long `check` gives a plugin's constructors before it calls the plugin hung.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// What a host that ended without its report means.
const UNREPORTED: &str = "the plugin ended the process of hookctl-native itself";

/// Where the host is, first found of: `../libexec/hookctl/` from this program (the
/// Debian package's `/usr/libexec/hookctl/`, which wins over a stale hand-installed
/// copy in `/usr/bin`), beside it (`cargo install`, a build tree), and
/// `/usr/libexec/hookctl/` (hookctl copied to `/etc/libvirt/hooks/<driver>`).
pub(crate) fn host() -> Option<&'static Path> {
    static HOST: OnceLock<Option<PathBuf>> = OnceLock::new();
    HOST.get_or_init(|| {
        let exe = std::env::current_exe().ok()?;
        let bin = exe.parent()?;
        let libexec = bin.parent().map(|usr| usr.join("libexec/hookctl").join(HOST_NAME));
        let system = Path::new("/usr/libexec/hookctl").join(HOST_NAME);
        libexec
            .into_iter()
            .chain([bin.join(HOST_NAME), system])
            .find(|p| p.is_file())
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

/// The loader for `*.so` files, in place of `virt_hooks_dylib`'s in-process one.
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
            config: Arc::new(settings.config.clone()),
        }))
    }

    /// Loads it in the host, which runs its constructors and a version 2 plugin's
    /// `init` with its `[config]`, with a time limit.
    fn check(&self, path: &Path, settings: &HookSettings) -> Result<(), LoadError> {
        examine(path, "check", &settings.config)
    }

    /// Reads its ELF header in the host; nothing of the plugin runs.
    fn inspect(&self, path: &Path, settings: &HookSettings) -> Result<(), LoadError> {
        examine(path, "inspect", &settings.config)
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

/// A fresh token for one run of the host: text a plugin prints cannot contain it.
fn token() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No kernel randomness: still unknown to text written before this run.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes = (nanos ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How a run of the host ended, from its exit and its report.
enum HostEnd {
    /// It reported how the plugin's call ended.
    Reported(Report),
    /// It could not run, or refused to serve (missing, not executable, another build).
    Unusable(String),
    /// It ended without reporting: the plugin ended the process itself, or a signal or
    /// the timeout did. The outcome's status says which.
    Unreported,
}

fn host_end(outcome: &mut HookOutcome, token: &str) -> HostEnd {
    match outcome.status {
        HookStatus::Exited(REPORT_STATUS) => match Report::take_from(&mut outcome.stderr, token) {
            Some(report) => HostEnd::Reported(report),
            None => HostEnd::Unreported,
        },
        // Its own refusal, or exec's 126/127 (not executable, not found, no loader).
        HookStatus::Exited(UNUSABLE_STATUS | 127) => {
            // A plugin can exit 126 itself, after megabytes of stderr.
            HostEnd::Unusable(bounded(String::from_utf8_lossy(&outcome.stderr).trim_end().to_owned()))
        }
        HookStatus::Failed(HookError::Spawn { ref source, .. }) => HostEnd::Unusable(source.to_string()),
        _ => HostEnd::Unreported,
    }
}

fn host_unusable(plugin: &Path, host: &Path, why: &str) -> LoadError {
    let why = format!("{HOST_NAME} ({}) cannot run it: {why}", host.display());
    LoadError::new(plugin, BACKEND, LoadErrorKind::BackendUnavailable).with_source(std::io::Error::other(why))
}

fn host_failed(plugin: &Path, what: &str) -> LoadError {
    LoadError::new(plugin, BACKEND, LoadErrorKind::Backend)
        .with_source(std::io::Error::other(format!("{HOST_NAME} failed: {what}")))
}

fn examine(plugin: &Path, how: &str, config: &PluginConfig) -> Result<(), LoadError> {
    let host = host().ok_or_else(|| host_missing(plugin))?;
    let options = ExecOptions {
        timeout: Some(CHECK_TIMEOUT),
        ..ExecOptions::default()
    };
    let leading = [OsStr::new(how), plugin.as_os_str(), OsStr::new("--")];
    let run = ExecHook::with_options(host, options).with_leading_args(leading);
    let token = token();
    let input: Arc<[u8]> = header(&token, config).into_bytes().into();
    let inv = Invocation::new(Driver::Daemon, EventArgs::new(["-"; 4]), Some(input));
    let mut outcome = run.run_blocking(&inv);
    match host_end(&mut outcome, &token) {
        HostEnd::Reported(Report {
            end: End::Exited { code: 0 },
            ..
        }) => Ok(()),
        HostEnd::Reported(Report {
            end: End::LoadError { kind, source },
            ..
        }) => Err(load_error(plugin, kind, source)),
        HostEnd::Reported(report) => Err(host_failed(plugin, &format!("{:?}", report.end))),
        HostEnd::Unusable(why) => Err(host_unusable(plugin, host, &why)),
        HostEnd::Unreported => {
            // The reason first (a panic's `<3>` line), on one line.
            let text = virt_hooks_core::outcome::failure_text(&[], &String::from_utf8_lossy(&outcome.stderr));
            let stderr = bounded(text.replace('\n', "; "));
            let why = format!("{UNREPORTED} while it loaded ({}): {stderr}", outcome.status.describe());
            Err(host_failed(plugin, &why))
        }
    }
}

fn load_error(plugin: &Path, kind: LoadKind, source: Option<String>) -> LoadError {
    let (kind, detail) = match kind {
        LoadKind::Unreadable => (LoadErrorKind::Unreadable, source),
        LoadKind::NotSharedObject => (LoadErrorKind::NotSharedObject, source),
        LoadKind::AbiMismatch { expected, found } => (LoadErrorKind::AbiMismatch { expected, found }, source),
        LoadKind::MissingSymbol { symbol } if symbol == virt_hooks_dylib::ENTRY_SYMBOLS => (
            LoadErrorKind::MissingSymbol {
                symbol: virt_hooks_dylib::ENTRY_SYMBOLS,
            },
            source,
        ),
        // Kinds whose fields are static text in the library: the words travel instead.
        LoadKind::MissingSymbol { symbol } => (LoadErrorKind::Backend, Some(format!("no `{symbol}` symbol"))),
        LoadKind::InvalidDescriptor { what } => (
            LoadErrorKind::Backend,
            Some(format!("its descriptor is invalid: {what}")),
        ),
        LoadKind::InitFailed { code, message } => (LoadErrorKind::InitFailed { code, message }, None),
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
    config: Arc<PluginConfig>,
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
        let document = inv.input_shared();
        let mut leading = vec![OsStr::new("call")];
        if document.is_none() {
            leading.push(OsStr::new("--no-input"));
        } else if GUARD_INPUT.load(std::sync::atomic::Ordering::Relaxed) {
            leading.push(OsStr::new("--guard-input"));
        }
        leading.extend([
            OsStr::new("--max-output"),
            OsStr::new(&max_output),
            self.plugin.as_os_str(),
            OsStr::new(inv.driver().as_str()),
        ]);
        // The host cuts the plugin's streams at its cap; the report needs room beyond.
        let options = ExecOptions {
            max_output: self.options.max_output.saturating_add(REPORT_ROOM),
            ..self.options
        };
        let run = ExecHook::with_options(self.host, options).with_leading_args(leading);
        let token = token();
        let mut input = header(&token, &self.config).into_bytes();
        input.extend_from_slice(document.map_or(&[][..], |d| &d[..]));
        let mut outcome = run.call(&inv.with_input(Some(input.into()))).await;
        // Messages name the plugin, not the host's command line.
        outcome.command = None;
        match host_end(&mut outcome, &token) {
            HostEnd::Reported(report) => {
                outcome.stdout_truncated |= report.stdout_truncated;
                outcome.stderr_truncated |= report.stderr_truncated;
                for line in &report.log {
                    outcome.push_log(line.level, &line.message);
                }
                outcome.warnings.extend(report.warnings);
                outcome.status = self.status(report.end);
            }
            HostEnd::Unusable(why) => {
                // Not the plugin's decision (the registry treats it as a load failure).
                let err = host_unusable(&self.plugin, self.host, &why);
                outcome.status = HookStatus::Failed(HookError::Load(Arc::new(err)));
            }
            HostEnd::Unreported => {
                if let HookStatus::Exited(code) = outcome.status {
                    // exit() inside the plugin: its result, and any document, never came.
                    let why = format!("{UNREPORTED} (exit status {code}) instead of returning");
                    outcome.status = HookStatus::Crashed(why);
                    outcome.stdout.clear();
                }
            }
        }
        outcome
    }
}

impl NativeHook {
    fn status(&self, end: End) -> HookStatus {
        match end {
            End::Exited { code } => HookStatus::Exited(code),
            End::Crashed { message } => HookStatus::Crashed(message),
            End::LoadError { kind, source } => {
                HookStatus::Failed(HookError::Load(Arc::new(load_error(&self.plugin, kind, source))))
            }
            End::Failed { message } => HookStatus::Failed(HookError::Backend {
                backend: BACKEND,
                source: format!("{HOST_NAME}: {message}").into(),
            }),
        }
    }
}
