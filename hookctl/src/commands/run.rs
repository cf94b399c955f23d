//! `hookctl run`: one event, exactly as libvirt fires it.

use std::path::Path;

use clap::Args;
use virt_hooks_core::{HookEvent, RawEvent};

use super::args::{EventCli, InputArgs, SettingsArgs};
use super::{require_dir, Outcome, UsageError};
use crate::output;

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) event: EventCli,
    // For `<DIR>/<DRIVER>` when it is hookctl: the dispatcher libvirt runs.
    #[command(flatten)]
    pub(crate) settings: SettingsArgs,
    #[command(flatten)]
    pub(crate) input: InputArgs,
}

pub(crate) fn exec(dir: &Path, args: RunArgs) -> Outcome {
    require_dir(dir)?;
    let input = super::read_input(args.input.input.as_deref())?;
    let mut event = RawEvent::from_os_args(args.event.driver, args.event.args());
    if input.is_some() {
        event = event.with_input(input);
    }
    if !event.is_known() {
        eprintln!(
            "hookctl: note: libvirt never calls {} hooks with op `{}`; a failure is treated as fatal",
            event.driver(),
            output::name(event.op())
        );
    }
    let registry = if args.settings.overrides().is_empty() {
        super::registry(dir, args.input.timeout, args.input.wasm_memory)
    } else {
        let hooks = super::hooks_dir(dir, args.input.wasm_memory);
        virt_hooks_core::RegistryBuilder::new()
            .hooks_dir_with(told_dispatcher(hooks, event.driver(), &args.settings)?)
            .timeout(args.input.timeout)
            .build()
    };
    registry
        .hooks_dirs()
        .for_each(|d| super::warn_misplaced(d, event.driver()));
    // Exit 1 for any failed hook, also one libvirt would ignore: the report says which.
    let report = registry
        .fire_blocking(&event)
        .unwrap_or_else(virt_hooks_core::HookFailure::into_report);
    let ok = report.succeeded();
    report.hooks.iter().for_each(output::warnings);
    // After an object's last event: what stayed, or a run by hand that kept a record
    // would say nothing at all.
    for dir in &report.state_kept {
        eprintln!(
            "hookctl: kept the state directory {} (`hookctl state` says why)",
            output::path(dir)
        );
    }
    for why in &report.state_errors {
        eprintln!("hookctl: {}", output::message(why));
    }
    // What a hook that succeeded printed on stderr: libvirt drops it, but a run by hand
    // is for reading it (hookctl's dispatcher says there what it kept or could not reach).
    if !args.input.json {
        for rec in report.hooks.iter().filter(|r| r.success && !r.stderr.trim().is_empty()) {
            let said = output::STDERR_LINES.apply(rec.stderr.trim_end());
            eprintln!("{}: {said}", output::name(&rec.name));
        }
    }
    if args.input.json {
        output::json(&report);
    } else if ok {
        if let Some(doc) = &report.document {
            output::stdout(doc);
        }
    }
    if report.hooks.is_empty() {
        eprintln!("hookctl: note: no {} hooks in `{}`", event.driver(), output::path(dir));
    }
    if !ok {
        // libvirt's message, with the hook's whole stderr: its first lines, escaped.
        for rec in report.hooks.iter().filter(|r| !r.success) {
            if let Some(msg) = &rec.message {
                eprintln!("{}", output::STDERR_LINES.apply(msg));
            }
        }
        let failed = report.hooks.iter().filter(|r| !r.success).count();
        eprintln!(
            "hookctl: {failed} of {} hooks failed for `{} {}`: {}",
            report.hooks.len(),
            report.driver,
            output::name(&report.args_line()),
            report.policy.consequence()
        );
    }
    Ok(ok)
}

/// `hooks` with its main script `<dir>/<driver>`, hookctl's dispatcher, run as `hookctl
/// dispatch --plugins <dir>/<driver>.plugins` with `settings` (`--log`, `--state`):
/// everything else as libvirt runs it (its environment, stdin, limits, and the `.d`
/// hooks after it). Refused when the main script is not hookctl, which would not take
/// them: a script around hookctl would run the dispatcher on the configured log and state.
fn told_dispatcher(
    hooks: virt_hooks_core::HooksDir,
    driver: virt_hooks_core::Driver,
    settings: &SettingsArgs,
) -> Result<virt_hooks_core::HooksDir, UsageError> {
    let main = hooks.main_path(driver);
    if !super::install::runs_a_hookctl(&main) {
        return Err(UsageError(format!(
            "--log and --state are settings of hookctl's dispatcher, and {} is not hookctl (`hookctl install {driver}` makes it so): nothing here would take them",
            output::path(&main)
        )));
    }
    let plugins = super::dispatch::plugins_dir_for(&main, driver);
    let mut leading = vec!["dispatch".into(), "--plugins".into(), plugins.into_os_string()];
    if let Some(super::args::LogArg(log)) = &settings.log {
        let log = log.as_ref().map_or("none".into(), |file| file.clone().into_os_string());
        leading.extend(["--log".into(), log]);
    }
    if let Some(state) = &settings.state {
        leading.extend(["--state".into(), state.clone().into_os_string()]);
    }
    // Whatever libvirt's arguments hold, they are the event's, never options.
    leading.extend(["--".into(), driver.as_str().into()]);
    told::with_loader(hooks, main, leading)
}

#[cfg(feature = "exec")]
mod told {
    use std::ffi::OsString;
    use std::fs::Metadata;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use virt_hooks_core::backend::{HookLoader, HookSettings};
    use virt_hooks_core::{Hook, HooksDir, LoadError};
    use virt_hooks_exec::ExecHook;

    use crate::commands::UsageError;

    pub(super) fn with_loader(hooks: HooksDir, main: PathBuf, leading: Vec<OsString>) -> Result<HooksDir, UsageError> {
        Ok(hooks.with_loader(ToldDispatcher { main, leading }))
    }

    /// Loads the one main script, with options from its sidecar as the exec backend's.
    struct ToldDispatcher {
        main: PathBuf,
        leading: Vec<OsString>,
    }

    impl HookLoader for ToldDispatcher {
        fn backend(&self) -> &'static str {
            "hookctl-dispatch"
        }

        /// Before every other backend: it claims one file.
        fn priority(&self) -> i32 {
            0
        }

        fn claims(&self, path: &Path, meta: &Metadata) -> bool {
            path == self.main && meta.is_file()
        }

        fn load(&self, path: &Path, settings: &HookSettings) -> Result<Arc<dyn Hook>, LoadError> {
            Ok(Arc::new(
                ExecHook::with_settings(path, settings).with_leading_args(&self.leading),
            ))
        }

        fn check(&self, path: &Path, _settings: &HookSettings) -> Result<(), LoadError> {
            virt_hooks_exec::check_executable(path)
        }
    }
}

#[cfg(not(feature = "exec"))]
mod told {
    use std::ffi::OsString;
    use std::path::PathBuf;

    use virt_hooks_core::HooksDir;

    use crate::commands::UsageError;

    pub(super) fn with_loader(_: HooksDir, _: PathBuf, _: Vec<OsString>) -> Result<HooksDir, UsageError> {
        Err(UsageError(
            "--log and --state: this hookctl is built without exec hooks, and cannot run the dispatcher".into(),
        ))
    }
}
