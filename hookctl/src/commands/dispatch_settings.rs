//! How the dispatcher applies `hookctl.toml` read key by key ([`Settings`]): every sound
//! key is used and each mistake reported, and a `log` or `state` that cannot be used is
//! never swapped for the default path (the file meant another place).
//!
//! - `log` unusable (a wrong key, or a log that cannot be opened): no audit line is
//!   written to any other file. At an event libvirt lets a hook refuse without harm (its
//!   policy aborts the operation or reports it: `prepare`, `start`, `migrate`,
//!   `restore`, a network's `start`...), nothing runs and the event fails with the
//!   reason, so no change to the host goes unrecorded. At every other event (`stopped`,
//!   `release`, `reconnect`, the daemon's) the plugins run, since their cleanup must
//!   reach the host and a failed `reconnect` kills the guest; the row goes to stderr
//!   (and the journal), and where libvirt ignores a failure the dispatcher exits 1 so
//!   that libvirt's log keeps it (`commands/dispatch.rs`).
//! - `state` unusable: each plugin with `state = true` fails, saying why, instead of
//!   running without its record; the others run; nothing is removed at an object's
//!   last event (where the state is cannot be known).

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use virt_hooks_core::state::StateError;
use virt_hooks_core::{
    Driver, FailurePolicy, Hook, HookEntry, HookError, HookEvent, HookOutcome, HookPolicy, Invocation, Registry,
    RegistryBuilder,
};

use crate::config::{ConfigError, DispatchConfig, Settings};
use crate::output;

/// Says on stderr what the dispatcher does about each mistake (libvirt logs a hook's
/// stderr, and virsh shows it when the event fails).
pub(crate) fn report(settings: &Settings) {
    for mistake in &settings.mistakes {
        let spoils = |err: Option<&ConfigError>| err == Some(mistake);
        let (log, state) = (
            spoils(settings.log.as_ref().err()),
            spoils(settings.state.as_ref().err()),
        );
        let text = mistake.to_string();
        let text = output::message(&text);
        if log && state && mistake.line.is_none() {
            eprintln!(
                "hookctl: cannot use {text}: none of its settings apply (the default timeout and journal do, but no default `log` or `state` path; run `hookctl check`)"
            );
        } else if log || state {
            let keys = match (log, state) {
                (true, true) => "`log` and `state` cannot be used",
                (true, false) => "`log` cannot be used",
                _ => "`state` cannot be used",
            };
            eprintln!("hookctl: {text}: {keys} (the other settings apply; run `hookctl check`)");
        } else {
            eprintln!("hookctl: ignoring {text} (the other settings apply; run `hookctl check`)");
        }
    }
}

/// Whether an event's failure makes libvirt refuse an operation that has not happened
/// yet, and nothing more (never `reconnect`, whose failure kills a running guest).
fn refusable(policy: FailurePolicy) -> bool {
    policy.fails_operation() && policy != FailurePolicy::KillObject
}

/// Why no audit line is written, for messages.
fn log_unusable(why: &ConfigError) -> String {
    format!(
        "`log` cannot be used ({why}): until it is fixed, no audit line is written anywhere else (stderr carries it)"
    )
}

/// Why a plugin with `state = true` does not run, for its record.
fn state_unusable(why: &ConfigError) -> String {
    format!(
        "`state` in hookctl.toml cannot be used ({why}), and hookctl keeps state nowhere else: fix it (`hookctl check`); the plugin was not run"
    )
}

/// The registry for one event of the plugins dir `plugins`, as `settings` allow.
pub(crate) fn registry(plugins: &Path, driver: Driver, settings: &Settings, event: &dyn HookEvent) -> Registry {
    let policy = event.on_failure();
    if let (Err(why), true) = (&settings.log, refusable(policy)) {
        let why = format!(
            "{}; so the event is refused, with no plugin run ({})",
            log_unusable(why),
            policy.consequence()
        );
        let gate = SettingsGate::new(&settings.path, why);
        return RegistryBuilder::new().hook(driver, gate).build();
    }
    let config = DispatchConfig {
        state: settings.state.clone().unwrap_or_default(),
        ..settings.in_effect()
    };
    let mut dir = super::dispatch::dispatcher_dir(plugins, driver, &config);
    let mut builder = RegistryBuilder::new();
    if let Err(why) = &settings.state {
        dir = dir.with_state_root(None);
        let stateful: HashSet<PathBuf> = (dir.scan(driver).unwrap_or_default().into_iter())
            .filter(|e| e.settings().is_ok_and(|s| s.state))
            .map(|e| e.path)
            .collect();
        if !stateful.is_empty() {
            builder = builder.layer(refuse_stateful(stateful, &settings.path, state_unusable(why)));
        }
    }
    if let Err(why) = &settings.log {
        // Optional: the failure is recorded (stderr, journal) and never fails the event.
        let gate = SettingsGate::new(&settings.path, log_unusable(why));
        builder = builder.hook(driver, HookEntry::new(gate).with_policy(HookPolicy::Optional));
    }
    builder.hooks_dir_with(dir).build()
}

/// A layer that fails the plugins in `stateful` with `why`, without running them.
fn refuse_stateful(stateful: HashSet<PathBuf>, file: &Path, why: String) -> impl virt_hooks_core::layer::Layer {
    let (stateful, file, why) = (Arc::new(stateful), Arc::new(file.to_owned()), Arc::new(why));
    virt_hooks_core::layer::from_fn(move |hook: Arc<dyn Hook>, inv: Invocation| {
        let refused = hook.path().is_some_and(|p| stateful.contains(p));
        let (file, why) = (Arc::clone(&file), Arc::clone(&why));
        async move {
            if refused {
                HookOutcome::failed(HookError::State(StateError::Refused {
                    path: file.to_path_buf(),
                    why: why.to_string(),
                }))
            } else {
                hook.call(&inv).await
            }
        }
    })
}

/// A hook standing for `hookctl.toml` that fails with why it cannot be used: the
/// failure then reaches libvirt, stderr, the journal and the report like a plugin's.
struct SettingsGate {
    name: String,
    path: PathBuf,
    why: String,
}

impl SettingsGate {
    fn new(path: &Path, why: String) -> Self {
        SettingsGate {
            name: path.display().to_string(),
            path: path.to_owned(),
            why,
        }
    }
}

/// Why the settings gate fails (its record's status).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unusable(String);

// `Hook` is an `async_trait`; written out by hand so that this module (compiled into
// the fuzz targets too) needs no more dependencies.
impl Hook for SettingsGate {
    fn name(&self) -> &str {
        &self.name
    }
    fn backend(&self) -> &'static str {
        "hookctl"
    }
    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }
    fn call<'a, 'b, 'c>(&'a self, _inv: &'b Invocation) -> Pin<Box<dyn Future<Output = HookOutcome> + Send + 'c>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        let failed = HookOutcome::failed(HookError::Backend {
            backend: "hookctl",
            source: Box::new(Unusable(self.why.clone())),
        });
        Box::pin(std::future::ready(failed))
    }
}
