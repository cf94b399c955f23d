//! Dispatcher mode: `hookctl` installed as `/etc/libvirt/hooks/<driver>` runs the
//! plugins in `<driver>.plugins/` and answers libvirt the way a hook script does.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use clap::Args;
use virt_hooks_core::text::Limit;
use virt_hooks_core::{Driver, HookEvent, HooksDir, RawEvent, Report};

use super::args::{EventCli, SettingsArgs};
use super::Outcome;
use crate::audit::line::AuditLine;
use crate::output;

#[derive(Debug, Args)]
pub(crate) struct DispatchArgs {
    /// The plugins dir (exec scripts, `*.so`, `*.wasm`, sidecar `*.toml` settings).
    #[arg(long, value_name = "DIR")]
    pub(crate) plugins: PathBuf,
    #[command(flatten)]
    pub(crate) settings: SettingsArgs,
    #[command(flatten)]
    pub(crate) event: EventCli,
}

/// The plugins dir for a hook installed at `argv0`: `<dirname(argv0)>/<driver>.plugins`.
pub(crate) fn plugins_dir_for(argv0: &Path, driver: Driver) -> PathBuf {
    argv0
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("{}.plugins", driver.as_str()))
}

/// Where `install --force` keeps the hook it replaced: beside it in the hooks dir, so
/// that `$(dirname "$0")` still names the hooks dir when the dispatcher runs it.
pub(crate) fn saved_original(hooks_dir: &Path, driver: Driver) -> PathBuf {
    hooks_dir.join(format!("{}.pre-hookctl", driver.as_str()))
}

/// The plugins dir as the dispatcher runs it: the saved original hook (if any) first, as
/// libvirt ran it, the configured `timeout` for plugins whose settings set none, the
/// configured root for plugins that keep state, and a failure at `reconnect` logged
/// rather than killing the running guest unless a plugin's sidecar says `kill`.
pub(crate) fn dispatcher_dir(plugins: &Path, driver: Driver, config: &crate::config::DispatchConfig) -> HooksDir {
    let dir = super::with_backends(HooksDir::plugins(plugins))
        .with_default_timeout(config.timeout)
        .with_reconnect_failure(virt_hooks_core::OnReconnectFailure::Log)
        .with_state_root(Some(virt_hooks_core::state::StateRoot::new(&config.state)));
    match hooks_dir_of(plugins, driver) {
        Some(hooks) => dir.with_main_script(saved_original(&hooks, driver)),
        None => dir,
    }
}

/// The hooks dir of a plugins dir named `<driver>.plugins` (as `install` makes it): where
/// the saved original hook and the record of state roots are. `None` for a plugins dir
/// of another name (`dispatch --plugins /tmp/try`), whose parent is nobody's hooks dir.
pub(crate) fn hooks_dir_of(plugins: &Path, driver: Driver) -> Option<PathBuf> {
    let named_for_driver = plugins
        .file_name()
        .is_some_and(|n| n.to_str() == Some(&format!("{}.plugins", driver.as_str())));
    named_for_driver.then(|| crate::config::hooks_dir_of(plugins))
}

/// Whether we were run as a hook script: `argv[0]`'s file name is a driver and four
/// arguments follow.
pub(crate) fn invoked_as_hook(args: &[OsString]) -> Option<Driver> {
    if args.len() != 5 {
        return None;
    }
    Path::new(&args[0]).file_name()?.to_str()?.parse().ok()
}

pub(crate) fn exec(args: DispatchArgs) -> Outcome {
    let overrides = args.settings.overrides();
    Ok(dispatch(
        &args.plugins,
        args.event.driver,
        args.event.args(),
        &overrides,
        true,
    ))
}

/// Runs the plugins for one event; `true` when libvirt should see success. `overrides`
/// replace `hookctl.toml`'s `log` and `state` (`--log`, `--state`); `by_hand` is set for
/// `hookctl dispatch`, which says when no audit row is written (libvirt keeps a hook's
/// stderr only when the event fails, and then shows it to the user).
pub(crate) fn dispatch(
    plugins: &Path,
    driver: Driver,
    args: [OsString; 4],
    overrides: &crate::config::Overrides,
    by_hand: bool,
) -> bool {
    let start = Instant::now();
    // Every audit line carries when the event started, the crash line included.
    let started = SystemTime::now();
    let mut input = Vec::new();
    let stdin_ok = std::io::stdin().lock().read_to_end(&mut input).is_ok();
    let mut event = RawEvent::from_os_args(driver, args);
    // libvirt gives daemon hooks /dev/null; pass that on rather than an empty pipe.
    if driver != Driver::Daemon || !input.is_empty() {
        event = event.with_input(Some(input));
    }
    let mut settings = crate::config::settings(plugins).overridden(overrides);
    super::dispatch_settings::report(&settings);
    // A log that cannot be opened is as unusable as a wrong `log` key: opened before
    // any plugin runs, so that what cannot be recorded can still be refused.
    let log_file = match &settings.log {
        Ok(Some(log)) => match crate::audit::open(log) {
            Ok(file) => Some(file),
            Err(e) => {
                settings.log = Err(crate::config::ConfigError::unopenable_log(log, &e.to_string()));
                None
            }
        },
        Ok(None) | Err(_) => None,
    };
    let registry = super::dispatch_settings::registry(plugins, driver, &settings, &event);
    let result = registry.fire_blocking(&event);
    // libvirt applies its own policy to our exit status: any failed plugin fails it.
    let report = result.unwrap_or_else(virt_hooks_core::HookFailure::into_report);
    let mut ok = report.succeeded();
    if ok {
        if let (true, Some(doc)) = (report.document_changed, &report.document) {
            output::stdout(doc);
        }
    } else {
        eprint!("{}", libvirt_error_line(&report));
    }
    let mut notes = Notes::default();
    for rec in report.hooks.iter().filter(|r| !r.success && r.optional) {
        if rec.spared {
            spared_error(rec, &mut notes);
            continue;
        }
        notes.line(format!(
            "hookctl: ignored failure: {}: {}",
            output::name(&rec.name),
            output::message(&output::status(rec))
        ));
        notes.warnings(rec);
    }
    for dir in &report.state_kept {
        notes.line(format!(
            "hookctl: kept the state directory {} (`hookctl state` says why)",
            output::path(dir)
        ));
    }
    for why in &report.state_errors {
        notes.line(format!("hookctl: {}", output::message(why)));
    }
    for entry in &report.skipped {
        notes.line(format!(
            "hookctl: warning: {} did not run: {} (`hookctl check` says how to fix it)",
            output::path(&entry.path),
            entry.why
        ));
    }
    if !stdin_ok {
        notes.line("hookctl: could not read stdin; the plugins got what was read".into());
    }
    if let (Ok(None), true) = (&settings.log, by_hand) {
        notes.line(match overrides.log {
            Some(None) => "hookctl: note: --log none: this dispatch is in no audit log".to_owned(),
            _ => format!(
                "hookctl: note: no audit log: {} is not in {} and its hookctl.toml names no `log` (set one there, or pass --log FILE)",
                output::path(plugins),
                output::path(&crate::config::system_hooks_dir())
            ),
        });
    }
    // State of this object left under the default root when `state` moved: this last
    // event could not reach it (the plugins undid nothing of it). Only a plugins dir in
    // a hooks dir keeps a record of its roots.
    let hooks_dir = hooks_dir_of(plugins, driver);
    if let (Ok(root), false, Some(hooks_dir)) = (&settings.state, driver == Driver::Daemon, &hooks_dir) {
        // Once it exists, the root is recorded: a later move of `state` leaves no state
        // unseen (`hookctl state`, `check`, `uninstall` and this warning read it). The
        // daemon has no objects, so no state.
        if root.exists() {
            super::state::record_root(hooks_dir, driver, root);
        }
    }
    let ends = virt_hooks_core::state::state_ends_object(&event);
    let orphaned: Vec<PathBuf> = match (&settings.state, ends, &hooks_dir) {
        (Ok(root), true, Some(hooks_dir)) => {
            super::state::orphaned(hooks_dir, driver, &virt_hooks_core::state::StateRoot::new(root))
                .into_iter()
                .filter(|e| e.object == event.os_args()[0])
                .map(|e| e.path)
                .collect()
        }
        _ => Vec::new(),
    };
    let elsewhere = match overrides.state {
        Some(_) => "a root other than this run's --state",
        None => "a root hookctl.toml no longer names",
    };
    for path in &orphaned {
        notes.line(format!(
            "hookctl: warning: {} holds state of this object under {elsewhere}: this event did not reach it ({})",
            output::path(path),
            super::state::ORPHANED_HINT
        ));
    }
    notes.emit();
    // The file's own mistakes (a log that cannot be opened is `not_logged`).
    let config_error = match settings.mistakes.is_empty() {
        true => None,
        false => settings.config().err().map(|e| e.to_string()),
    };
    let mut record = AuditLine::new(plugins, &event, &report, ok, (start, started), config_error);
    record.state_orphaned(&orphaned);
    let not_written = match &settings.log {
        Ok(None) => None,
        Ok(Some(log)) => crate::audit::append(log, log_file, &record.to_bytes(), crate::audit::ROTATE_BYTES)
            .err()
            .map(|e| {
                format!(
                    "cannot write `{}`: {}",
                    output::path(log),
                    output::message(&e.to_string())
                )
            }),
        Err(why) => Some(output::message(&why.to_string()).into_owned()),
    };
    let journaled = crate::journal::send(settings.journal, &event, &report, start);
    if let Some(why) = not_written {
        ok = unrecorded(record, &why, &report, event.on_failure(), ok);
        if ok && !journaled && event.on_failure() == virt_hooks_core::FailurePolicy::KillObject {
            // libvirt drops the stderr of a hook that succeeds, and failing would kill
            // the guest: the kernel's log is the one record left.
            kernel_note(&event, &report, &why);
        }
    }
    ok
}

/// One line for the kernel's log about a dispatch that is in no other record: the event,
/// why, and each plugin's result.
fn kernel_note(event: &RawEvent, report: &Report, why: &str) {
    let plugins: Vec<String> = (report.hooks.iter().filter(|r| r.backend != "hookctl"))
        .map(|r| {
            let name = Path::new(&r.name)
                .file_name()
                .map_or(r.name.clone(), |n| n.to_string_lossy().into_owned());
            let spared = if r.spared { " (spared)" } else { "" };
            let said = output::first_line(&r.stderr);
            let sep = if said.is_empty() { "" } else { ": " };
            format!("{name}: {}{spared}{sep}{said}", output::status(r))
        })
        .collect();
    let line = format!(
        "{} {}: not in the audit log ({why}); plugins: {}",
        event.driver(),
        report.args_line(),
        plugins.join("; ")
    );
    match crate::journal::kernel_log(&line) {
        Ok(()) => eprintln!("hookctl: a summary of this record went to the kernel's log (`dmesg`)"),
        Err(e) => eprintln!("hookctl: the kernel's log did not take a summary of this record either: {e}"),
    }
}

/// A dispatch whose audit record the log did not take (`why`): the record goes to
/// stderr, and the dispatcher fails where that costs no guest, since libvirt keeps a
/// hook's stderr only when the hook fails: where libvirt ignores failures, so that its
/// log holds the record; where it refuses the operation, so that no change goes
/// unrecorded (libvirt then runs the cleanup events). Never at `reconnect`, which would
/// kill the guest. Returns whether libvirt is to see success.
fn unrecorded(
    mut record: AuditLine,
    why: &str,
    report: &Report,
    policy: virt_hooks_core::FailurePolicy,
    ok: bool,
) -> bool {
    // A refusal that ran no plugin (the settings gate alone) changed nothing: its
    // message says everything, and a row on virsh's error line would only bury it.
    if !report.hooks.iter().any(|r| r.backend != "hookctl") {
        return ok;
    }
    let fail = ok && policy != virt_hooks_core::FailurePolicy::KillObject;
    record.not_logged(why, fail);
    eprint!(
        "hookctl: this dispatch is not in the audit log ({why}); its record: {}",
        String::from_utf8_lossy(&record.to_bytes())
    );
    if fail && policy == virt_hooks_core::FailurePolicy::Ignore {
        eprintln!("hookctl: exit status 1, so that libvirt logs the record above (it ignores a failure at this event)");
    } else if fail {
        eprintln!(
            "hookctl: failing the event, so that no change goes unrecorded ({})",
            policy.consequence()
        );
    }
    ok && !fail
}

/// All that the dispatcher writes to stderr about failed plugins.
const ERROR_LINE_BYTES: usize = 4096;

/// What virsh shows on its error line when required plugins failed: each one's name,
/// status and first lines of stderr, escaped (its lines kept), in at most
/// [`ERROR_LINE_BYTES`] however many failed. The first failure is kept (cut only if it
/// alone is too long), then as many whole ones as fit, then how many more failed.
pub(crate) fn libvirt_error_line(report: &Report) -> String {
    /// Room kept for the last line: `and N more plugins failed: see …`.
    const MORE_ROOM: usize = 96;
    let failed: Vec<_> = report.hooks.iter().filter(|r| !r.success && !r.optional).collect();
    let mut out = String::new();
    for (shown, rec) in failed.iter().enumerate() {
        let stderr = output::said(rec);
        let sep = if stderr.is_empty() { "" } else { ": " };
        // `check` finds broken files and settings (the plugins' and hookctl.toml's).
        let hint = match (rec.failure, &*rec.backend) {
            (Some(virt_hooks_core::Failure::Load), _) | (_, "hookctl") => " (run `hookctl check`)",
            _ => "",
        };
        let entry = format!(
            "{}: {}{sep}{stderr}{hint}\n",
            output::name(&rec.name),
            output::message(&output::status(rec))
        );
        let room = if shown + 1 == failed.len() { 0 } else { MORE_ROOM };
        if shown == 0 {
            // Already escaped: the limit only cuts it (escaping again changes nothing).
            let first = Limit::bytes(ERROR_LINE_BYTES - MORE_ROOM).escaped_lines().apply(&entry);
            out.push_str(&first);
            if !first.ends_with('\n') {
                out.push('\n');
            }
        } else if out.len() + entry.len() + room <= ERROR_LINE_BYTES {
            out.push_str(&entry);
        } else {
            let more = failed.len() - shown;
            let plural = if more == 1 { "" } else { "s" };
            let _ = writeln!(
                out,
                "hookctl: and {more} more plugin{plural} failed: see `hookctl log --failed`"
            );
            break;
        }
    }
    out
}

/// A plugin whose failure at `reconnect` would have killed the running guest: an error
/// for the operator (libvirt's log keeps our stderr), with what it said and why the guest
/// still runs.
fn spared_error(rec: &virt_hooks_core::HookRecord, notes: &mut Notes) {
    let stderr = output::said(rec);
    let sep = if stderr.is_empty() { "" } else { ": " };
    notes.line(format!(
        "hookctl: error: {}: {}{sep}{stderr}",
        output::name(&rec.name),
        output::message(&output::status(rec))
    ));
    notes.line(format!(
        "hookctl: ignored failure: {}: the guest keeps running",
        output::name(&rec.name)
    ));
    // The registry's note says why (the plugin's choice, or a file that cannot load).
    notes.warnings(rec);
}

/// All that the dispatcher writes to stderr about plugins whose failure did not fail
/// the event (and the like), however many there were.
const NOTES_BYTES: usize = 16 << 10;

/// The dispatcher's stderr lines besides libvirt's error line, written at once and cut
/// at [`NOTES_BYTES`] on a line boundary (libvirt reads a hook's stderr whole).
#[derive(Default)]
struct Notes {
    text: String,
    cut: usize,
}

impl Notes {
    /// Adds one line (no newline), or counts it once the cap is reached.
    fn line(&mut self, line: String) {
        if self.cut == 0 && self.text.len() + line.len() < NOTES_BYTES {
            self.text.push_str(&line);
            self.text.push('\n');
        } else {
            self.cut += 1;
        }
    }

    /// A record's warnings, as `hookctl check` and the audit log cap them.
    fn warnings(&mut self, rec: &virt_hooks_core::HookRecord) {
        output::warning_lines(rec).into_iter().for_each(|line| self.line(line));
    }

    fn emit(self) {
        eprint!("{}", self.text);
        if self.cut > 0 {
            eprintln!(
                "hookctl: and {} more lines (`hookctl log --failed` has every plugin's record)",
                self.cut
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use virt_hooks_core::RegistryBuilder;

    /// The longest audit line: every text a plugin or a guest controls a megabyte of
    /// what JSON writes longest (`\u0001`, six bytes a character).
    #[test]
    fn every_text_in_an_audit_line_is_capped() {
        let huge = "\u{1}".repeat(1 << 20);
        let hook = json!({
            "name": huge, "backend": "wasm", "success": false,
            "status": {"kind": "crashed", "message": huge},
            "duration_us": 1, "stdout": huge, "stderr": huge, "input": "none",
            "warnings": vec![huge.clone(); 100],
        });
        let report: Report = serde_json::from_value(json!({
            "driver": "qemu", "object": huge, "op": huge, "subop": huge, "extra": huge,
            "policy": "ignore", "filters": false, "hooks": [hook.clone(), hook],
            "unevaluated_document": huge, "state_kept": [huge, huge], "state_errors": [huge],
        }))
        .unwrap();
        let event = RawEvent::new(Driver::Qemu, [huge.as_str(), &huge, &huge, &huge]);
        let times = (Instant::now(), SystemTime::now());
        let plugins = Path::new("/etc/libvirt/hooks/qemu.plugins");
        let line = AuditLine::new(plugins, &event, &report, false, times, Some(huge.clone()));
        let line = String::from_utf8(line.to_bytes()).unwrap();
        // Per hook 15 KiB; the event's own fields 24 KiB, 4 KiB a kept state directory,
        // 2 KiB a state error; 1 KiB for the rest.
        let bound = 2 * (15 << 10) + (24 << 10) + 2 * (4 << 10) + (2 << 10) + (1 << 10);
        eprintln!("audit line: {} bytes (bound {bound})", line.len());
        assert!(line.len() <= bound, "{} > {bound}", line.len());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let status = v["hooks"][0]["status"].as_str().unwrap();
        assert!(
            status.ends_with(" KiB cut)") || status.ends_with(" MiB cut)"),
            "{status}"
        );
        assert_eq!(v["hooks"][0]["warnings"].as_array().unwrap().len(), 9);
        assert_eq!(v["hooks"][0]["warnings"][8], "… (92 more warnings)");
    }

    /// virsh's error line stays within its cap whatever the failed plugins carry: a first
    /// failure whose every text is a megabyte, and a thousand more.
    #[test]
    fn the_error_line_for_libvirt_is_capped_in_total() {
        let hook = |name: &str, text: &str| {
            json!({
                "name": name, "backend": "exec", "success": false,
                "status": {"kind": "crashed", "message": text},
                "duration_us": 1, "stdout": "", "stderr": text, "input": "none",
            })
        };
        let report = |hooks: Vec<serde_json::Value>| -> Report {
            serde_json::from_value(json!({
                "driver": "qemu", "object": "web1", "op": "prepare", "subop": "begin", "extra": "-",
                "policy": "abort", "filters": false, "hooks": hooks,
            }))
            .unwrap()
        };
        let huge = "\u{1b}x\n".repeat(1 << 20);
        let mut hooks = vec![hook(&huge, &huge)];
        hooks.extend((1..1000).map(|n| hook(&format!("{n:03}-fails"), "out of disks")));
        let line = libvirt_error_line(&report(hooks));
        assert!(line.len() <= ERROR_LINE_BYTES, "{} bytes", line.len());
        assert!(!line.contains('\u{1b}'), "{line}");
        // The first, cut, and all the others counted.
        assert!(line.starts_with("\\x1bx\\n\\x1bx"), "{line}");
        assert!(line.contains("… (") && line.contains(" cut)\n"), "{line}");
        assert!(
            line.ends_with("hookctl: and 999 more plugins failed: see `hookctl log --failed`\n"),
            "{line}"
        );
        // Small failures are all shown, and nothing more is said.
        let few: Vec<_> = (0..3).map(|n| hook(&format!("{n}-fails"), "out of disks")).collect();
        let line = libvirt_error_line(&report(few));
        assert_eq!(line.lines().count(), 3, "{line}");
        assert!(
            line.starts_with("0-fails: crashed: out of disks: out of disks\n"),
            "{line}"
        );
        assert!(!line.contains("more plugin"), "{line}");
    }

    #[test]
    fn an_unusable_hookctl_toml_is_recorded_in_the_audit_line() {
        let event = RawEvent::new(Driver::Qemu, ["vm", "prepare", "begin", "-"]);
        let report = RegistryBuilder::new().build().fire_blocking(&event).unwrap();
        let why = "/etc/libvirt/hooks/qemu.plugins/hookctl.toml:2: unknown field `tiemout`";
        let times = (Instant::now(), SystemTime::now());
        let plugins = Path::new("/etc/libvirt/hooks/qemu.plugins");
        let mut text = AuditLine::new(plugins, &event, &report, true, times, Some(why.to_owned())).to_bytes();
        text.extend(AuditLine::new(plugins, &event, &report, true, times, None).to_bytes());
        let text = String::from_utf8(text).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["config_error"], why);
        assert_eq!(lines[0]["result"], "ok");
        assert!(lines[1].get("config_error").is_none(), "{}", lines[1]);
    }
}
