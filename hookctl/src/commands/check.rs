//! `hookctl check`: load every hook and say which files are broken and why.

use std::path::Path;

use clap::Args;
use virt_hooks_core::error::chain as error_chain;
use virt_hooks_core::{Driver, HooksDir};

use super::args::parse_driver;
use super::{require_dir, Outcome};
use crate::output::{message, path as shown};

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Only this driver.
    #[arg(value_parser = parse_driver)]
    pub(crate) driver: Option<Driver>,
}

/// How long `check` lets one module compile: it warms the cache ahead of events, so
/// the per-event limit (the hook's timeout) does not apply.
#[cfg(feature = "wasm")]
const AHEAD_OF_TIME: std::time::Duration = std::time::Duration::from_secs(600);

pub(crate) fn exec(dir: &Path, args: CheckArgs) -> Outcome {
    require_dir(dir)?;
    #[cfg(feature = "wasm")]
    if let Ok(sandbox) = virt_hooks_wasm::Sandbox::global() {
        sandbox.set_compile_budget(virt_hooks_wasm::CompileBudget::Fixed(AHEAD_OF_TIME));
    }
    let drivers = args.driver.map_or(Driver::ALL.to_vec(), |d| vec![d]);
    let (mut sound, mut broken, mut warned) = (0, 0, 0);
    // The hooks dir itself, and each dispatcher plugins dir beside it with its settings.
    let sources = drivers.into_iter().flat_map(|d| {
        let plugins = super::plugins_dir(dir, d).map(|p| {
            let settings = crate::config::settings(&p);
            let in_effect = settings.in_effect();
            (d, super::dispatch::dispatcher_dir(&p, d, &in_effect), Some(settings))
        });
        std::iter::once((d, super::with_backends(HooksDir::new(dir)), None)).chain(plugins)
    });
    for (driver, hooks, config) in sources {
        if let Some(settings) = config {
            if let Err(e) = settings.config() {
                broken += 1;
                outln!("broken: {}", message(&e.to_string()));
            }
            // Where `state = true` plugins keep theirs: a root every call would refuse
            // fails each of them. An unusable `state` is the mistake above, no other root.
            if let Ok(state) = &settings.state {
                let root = virt_hooks_core::state::StateRoot::new(state);
                if let Err(e) = root.check() {
                    broken += 1;
                    outln!(
                        "broken: state root: {} (every plugin with `state = true` would fail)",
                        message(&e.to_string())
                    );
                }
                // `state` moved while objects held state under the default root.
                for e in super::state::orphaned(dir, driver, &root) {
                    broken += 1;
                    outln!(
                        "broken: state left under a root `state` moved away from, {}: {driver} {}: {}: {}",
                        shown(&e.path),
                        message(&e.object.to_string_lossy()),
                        message(&e.hook.to_string_lossy()),
                        super::state::ORPHANED_HINT
                    );
                }
            }
            if let Ok(Some(log)) = &settings.log {
                match crate::audit::check(log) {
                    Ok(()) => {}
                    // The dispatcher refuses what it cannot record: a missing directory
                    // refuses every start (it was a warning, and `check` said "sound").
                    Err(crate::audit::AuditError::Untrusted(why)) if why.is_not_found() => {
                        broken += 1;
                        outln!(
                            "broken: audit log {}: {} (every event libvirt can refuse would be refused; create the directory, or set `log` in {})",
                            shown(log),
                            message(&why.reason()),
                            shown(&settings.path)
                        );
                    }
                    Err(e) => {
                        broken += 1;
                        outln!("broken: audit log {}: {}", shown(log), message(&e.to_string()));
                    }
                }
            }
        }
        let entries = match hooks.scan(driver) {
            Ok(entries) => entries,
            Err(e) => {
                broken += 1;
                outln!(
                    "broken: {}: cannot read directory: {e}",
                    shown(&hooks.drop_in_dir(driver))
                );
                continue;
            }
        };
        for entry in entries {
            if let Some(why) = entry.refusal() {
                broken += 1;
                outln!("broken: {}: refused: {}", shown(&entry.path), message(&why.reason()));
                continue;
            }
            if let Some(why) = entry.stray_settings_warning() {
                warned += 1;
                outln!("warning: {}: {}", shown(&entry.path), message(&why));
                continue;
            }
            if let (true, virt_hooks_core::backend::Disposition::Skipped(why)) = (hooks.is_flat(), &entry.disposition) {
                if why.is_likely_mistake() {
                    broken += 1;
                    outln!("broken: {}: {why}: it will never run", shown(&entry.path));
                }
                continue;
            }
            if let Some(why) = super::misplaced_plugin(&hooks, &entry, driver) {
                broken += 1;
                outln!("broken: {}: {}", shown(&entry.path), message(&why));
                continue;
            }
            let Some(loader) = entry.loader() else { continue };
            // libvirt runs its own layout's executables whoever can change them; say so.
            if !hooks.is_flat() && loader.backend() == "exec" {
                if let Some(why) = entry.trust_warning() {
                    warned += 1;
                    outln!(
                        "warning: {}: {} (libvirt runs it as root anyway; hookctl would refuse it as a plugin)",
                        shown(&entry.path),
                        message(&why.reason())
                    );
                }
            }
            let settings = match entry.settings() {
                Ok(settings) => settings,
                Err(e) => {
                    broken += 1;
                    outln!(
                        "broken: {}: invalid settings: {}",
                        shown(&entry.path),
                        message(&e.to_string())
                    );
                    continue;
                }
            };
            for why in state_warnings(&hooks, driver, loader.backend(), &settings) {
                warned += 1;
                outln!("warning: {}: {}", shown(&entry.path), message(&why));
            }
            if entry.ignores_reconnect_setting(&settings) {
                warned += 1;
                outln!(
                    "warning: {}: on_reconnect_failure has no effect here: libvirt runs {}.d/ itself and kills the guest when a hook fails at reconnect; move it to {}.plugins/",
                    shown(&entry.path),
                    driver.as_str(),
                    driver.as_str()
                );
            }
            match loader.check(&entry.path, &settings) {
                Ok(()) => {
                    sound += 1;
                    outln!(
                        "ok      {:<8} {:<6} {}{}",
                        driver.as_str(),
                        loader.backend(),
                        shown(&entry.path),
                        at_reconnect(&hooks, &entry, driver, &settings)
                    );
                }
                Err(e) => {
                    broken += 1;
                    // A plugin's own words (a WASM module's names) are in it: escaped and capped.
                    outln!("broken: {}", message(&error_chain(&e)));
                }
            }
        }
    }
    if broken > 0 {
        outln!("hookctl: {broken} broken hook file(s), {sound} sound");
    } else if warned > 0 {
        outln!("all {sound} hook file(s) are sound; {warned} warning(s)");
    } else {
        outln!("all {sound} hook file(s) are sound");
    }
    Ok(broken == 0)
}

/// For a plugin of a driver with `reconnect`, in a plugins dir (where the dispatcher
/// decides): what its failure there does to the running guest.
fn at_reconnect(
    hooks: &HooksDir,
    entry: &virt_hooks_core::backend::DirEntry,
    driver: Driver,
    settings: &virt_hooks_core::backend::HookSettings,
) -> &'static str {
    if !hooks.is_flat() || !virt_hooks_core::backend::libvirt_ops(driver).contains(&"reconnect") {
        return "";
    }
    match entry.on_reconnect_failure(settings) {
        virt_hooks_core::OnReconnectFailure::Log => "  (at reconnect a failure is logged; the guest lives)",
        virt_hooks_core::OnReconnectFailure::Kill => "  (at reconnect a failure KILLS the guest)",
    }
}

/// What makes `state` settings do less than they seem to.
fn state_warnings(
    hooks: &HooksDir,
    driver: Driver,
    backend: &str,
    settings: &virt_hooks_core::backend::HookSettings,
) -> Vec<String> {
    let mut warnings = Vec::new();
    if settings.state && !hooks.is_flat() {
        warnings.push(format!(
            "state = true in libvirt's {}.d/: libvirt runs that dir itself and gives no state directory (VIRT_HOOK_STATE); move it to {}.plugins/",
            driver.as_str(),
            driver.as_str()
        ));
    }
    if settings.state_max.is_some() && backend != "wasm" {
        warnings.push(format!(
            "state_max caps WASM modules only; a {backend} plugin's state directory is not capped"
        ));
    }
    if settings.state {
        let (op, subop) = match driver {
            Driver::Network => ("stopped", "end"),
            _ => ("release", "end"),
        };
        let matches = |patterns: Vec<&str>, value: &str| {
            patterns.is_empty()
                || patterns
                    .iter()
                    .any(|p| glob::Pattern::new(p).is_ok_and(|p| p.matches(value)))
        };
        let ops: Vec<&str> = settings.matcher.ops().collect();
        let subops: Vec<&str> = settings.matcher.subops().collect();
        if !matches(ops, op) || !matches(subops, subop) {
            warnings.push(format!(
                "state = true, but its [match] leaves out `{op} {subop}`, the object's last event: it never gets to undo what it recorded (its directory is then KEPT, for you to undo by hand)"
            ));
        }
    }
    warnings
}
