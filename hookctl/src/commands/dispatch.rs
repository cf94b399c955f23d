//! Dispatcher mode: `hookctl` installed as `/etc/libvirt/hooks/<driver>` runs the
//! plugins in `<driver>.plugins/` and answers libvirt the way a hook script does.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use hooks_core::text::Limit;
use hooks_core::{Driver, HookEvent, HooksDir, RawEvent, Report};
use serde_json::json;

use crate::cli::{DispatchArgs, Outcome};
use crate::output;

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
        .with_reconnect_failure(hooks_core::OnReconnectFailure::Log)
        .with_state_root(Some(hooks_core::StateRoot::new(&config.state)));
    let named_for_driver = plugins
        .file_name()
        .is_some_and(|n| n.to_str() == Some(&format!("{}.plugins", driver.as_str())));
    match plugins.parent() {
        Some(hooks) if named_for_driver => dir.with_main_script(saved_original(hooks, driver)),
        _ => dir,
    }
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
    Ok(dispatch(&args.plugins, args.event.driver, args.event.args()))
}

/// Runs the plugins for one event; `true` when libvirt should see success.
pub(crate) fn dispatch(plugins: &Path, driver: Driver, args: [OsString; 4]) -> bool {
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
    let mut settings = crate::config::settings(plugins);
    super::dispatch_settings::report(&settings);
    // A log that cannot be opened is as unusable as a wrong `log` key: opened before
    // any plugin runs, so that what cannot be recorded can still be refused.
    let log_file = match &settings.log {
        Ok(log) => match crate::audit::open(log) {
            Ok(file) => Some(file),
            Err(e) => {
                settings.log = Err(crate::config::ConfigError::unopenable_log(log, &e.to_string()));
                None
            }
        },
        Err(_) => None,
    };
    let registry = super::dispatch_settings::registry(plugins, driver, &settings, &event);
    let result = registry.fire_blocking(&event);
    // libvirt applies its own policy to our exit status: any failed plugin fails it.
    let report = result.unwrap_or_else(hooks_core::HookFailure::into_report);
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
    // State of this object left under the default root when `state` moved: this last
    // event could not reach it (the plugins undid nothing of it).
    let orphaned: Vec<PathBuf> = match (&settings.state, hooks_core::state_ends_object(&event)) {
        (Ok(root), true) => super::state::orphaned(driver, &hooks_core::StateRoot::new(root))
            .into_iter()
            .filter(|e| e.object == event.os_args()[0])
            .map(|e| e.path)
            .collect(),
        _ => Vec::new(),
    };
    for path in &orphaned {
        notes.line(format!(
            "hookctl: warning: {} holds state of this object under the default root, which hookctl.toml no longer names: this event did not reach it ({})",
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
    let mut record = audit_record(plugins, &event, &report, ok, (start, started), config_error);
    if !orphaned.is_empty() {
        let paths: Vec<_> = (orphaned.iter())
            .map(|p| capped(&p.to_string_lossy(), output::NAME))
            .collect();
        record.insert("state_orphaned".into(), paths.into());
    }
    let not_written = match &settings.log {
        Ok(log) => crate::audit::append(log, log_file, &audit_bytes(&record), crate::audit::ROTATE_BYTES)
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
        if ok && !journaled && event.on_failure() == hooks_core::FailurePolicy::KillObject {
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
    mut record: serde_json::Map<String, serde_json::Value>,
    why: &str,
    report: &Report,
    policy: hooks_core::FailurePolicy,
    ok: bool,
) -> bool {
    // A refusal that ran no plugin (the settings gate alone) changed nothing: its
    // message says everything, and a row on virsh's error line would only bury it.
    if !report.hooks.iter().any(|r| r.backend != "hookctl") {
        return ok;
    }
    let fail = ok && policy != hooks_core::FailurePolicy::KillObject;
    if fail {
        record.insert("result".into(), "failed".into());
    }
    record.insert("not_logged".into(), capped(why, output::MESSAGE));
    eprint!(
        "hookctl: this dispatch is not in the audit log ({why}); its record: {}",
        String::from_utf8_lossy(&audit_bytes(&record))
    );
    if fail && policy == hooks_core::FailurePolicy::Ignore {
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
        let stderr = output::STDERR_LINES.apply(rec.stderr.trim_end());
        let sep = if stderr.is_empty() { "" } else { ": " };
        // `check` finds broken files and settings (the plugins' and hookctl.toml's).
        let hint = match (rec.failure, &*rec.backend) {
            (Some(hooks_core::Failure::Load), _) | (_, "hookctl") => " (run `hookctl check`)",
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
fn spared_error(rec: &hooks_core::HookRecord, notes: &mut Notes) {
    let stderr = output::STDERR_LINES.apply(rec.stderr.trim_end());
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
    fn warnings(&mut self, rec: &hooks_core::HookRecord) {
        let (kept, more) = output::capped_warnings(rec, output::WARNING.escaped());
        for w in kept {
            self.line(format!("hookctl: warning: {}: {w}", output::name(&rec.name)));
        }
        if more > 0 {
            self.line(format!(
                "hookctl: warning: {}: … ({more} more warnings)",
                output::name(&rec.name)
            ));
        }
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

/// The audit lines' format version: readers may rely on the fields of this version.
const AUDIT_VERSION: u32 = 1;

/// What every audit line starts with: when the event started, who, and the event.
fn event_fields(event: &RawEvent, started: SystemTime) -> serde_json::Map<String, serde_json::Value> {
    let mut fields = serde_json::Map::new();
    let time = humantime::format_rfc3339_micros(started).to_string();
    fields.insert("v".into(), AUDIT_VERSION.into());
    fields.insert("time".into(), time.into());
    fields.insert("pid".into(), std::process::id().into());
    fields.insert("caller".into(), caller());
    fields.insert("driver".into(), event.driver().as_str().into());
    for (key, value) in [
        ("object", event.object()),
        ("op", event.op()),
        ("subop", event.subop()),
        ("extra", event.extra()),
    ] {
        fields.insert(key.into(), capped(value, output::NAME));
    }
    fields
}

/// Who ran us: libvirtd, or someone trying a hook by hand (a shell, `hookctl run`).
fn caller() -> serde_json::Value {
    let ppid = std::os::unix::process::parent_id();
    let comm = std::fs::read_to_string(format!("/proc/{ppid}/comm")).unwrap_or_default();
    json!({ "pid": ppid, "name": comm.trim_end() })
}

/// `text` within `limit` as it will be in the audit line (a JSON string).
fn capped(text: &str, limit: hooks_core::text::Limit) -> serde_json::Value {
    limit.json().apply(text).into()
}

/// Appends one JSON line per dispatch; a single `write` on an `O_APPEND` file, so
/// concurrent dispatches never interleave within a line. Every text from a plugin or a
/// guest in it is capped (`output`'s limits, measured as JSON), so a line stays a few
/// KiB per plugin.
fn audit_record(
    plugins: &Path,
    event: &RawEvent,
    report: &Report,
    ok: bool,
    (start, started): (Instant, SystemTime),
    config_error: Option<String>,
) -> serde_json::Map<String, serde_json::Value> {
    let excerpt = output::EXCERPT.json();
    let hooks: Vec<_> = report
        .hooks
        .iter()
        .map(|r| {
            let stderr = excerpt.apply(&r.stderr);
            // Measured as JSON, a text is only ever copied when it is cut.
            let stderr_cut = matches!(stderr, std::borrow::Cow::Owned(_));
            let (mut warnings, more) = output::capped_warnings(r, output::WARNING.json());
            if more > 0 {
                warnings.push(format!("… ({more} more warnings)").into());
            }
            let mut hook = json!({
                "name": capped(&r.name, output::NAME),
                "backend": r.backend,
                "status": capped(&output::status(r), output::MESSAGE),
                "success": r.success,
                "optional": r.optional,
                "spared": r.spared,
                "duration_us": r.duration_us,
                "stderr": stderr,
                "stderr_truncated": stderr_cut || r.stderr_truncated,
                // libvirt throws a hook's stdout away except for filters; keep a trace.
                "stdout": excerpt.apply(&r.stdout),
                "warnings": warnings,
            });
            // Filter stages: whether it changed the document, in lines (no diff here).
            if let (Some(d), serde_json::Value::Object(fields)) = (&r.document, &mut hook) {
                let summary =
                    json!({"changed": d.changed, "lines_added": d.lines_added, "lines_removed": d.lines_removed});
                fields.insert("document".into(), summary);
            }
            crate::audit::containment_fields(r, &mut hook);
            hook
        })
        .collect();
    let mut line = event_fields(event, started);
    crate::audit::origin_field(plugins, &mut line);
    let failed = report
        .failed_hook()
        .or_else(|| report.hooks.iter().find(|r| !r.success));
    let rest = json!({
        "result": if ok { "ok" } else { "failed" },
        "failed_plugin": failed.map(|r| capped(&r.name, output::NAME)),
        "policy": report.policy,
        "document_changed": report.document_changed,
        "duration_us": start.elapsed().as_micros() as u64,
        "hooks": hooks,
    });
    if let serde_json::Value::Object(rest) = rest {
        line.extend(rest);
    }
    // `[match] xpath` failed closed: every plugin that matches on the document ran.
    // Failures at `reconnect` logged instead of killing the running guest: errors.
    let spared: Vec<_> = (report.hooks.iter().filter(|r| r.spared))
        .map(|r| capped(&r.name, output::NAME))
        .collect();
    if !spared.is_empty() {
        line.insert("spared_plugins".into(), spared.into());
    }
    if let Some(why) = &report.unevaluated_document {
        line.insert("document_not_evaluated".into(), capped(why, output::MESSAGE));
    }
    // After an object's last event: state kept for the operator, or not removable.
    if !report.state_kept.is_empty() {
        let kept: Vec<_> = (report.state_kept.iter())
            .map(|p| capped(&p.to_string_lossy(), output::NAME))
            .collect();
        line.insert("state_kept".into(), kept.into());
    }
    // Entries that look meant to run but never do (a script without its execute bit).
    if !report.skipped.is_empty() {
        let skipped: Vec<_> = (report.skipped.iter())
            .map(|e| json!({"path": capped(&e.path.to_string_lossy(), output::NAME), "why": e.why}))
            .collect();
        line.insert("skipped".into(), skipped.into());
    }
    if !report.state_errors.is_empty() {
        let errors: Vec<_> = (report.state_errors.iter())
            .map(|why| capped(why, output::MESSAGE))
            .collect();
        line.insert("state_errors".into(), errors.into());
    }
    // A hookctl.toml it could not use: stderr reaches nobody when the event succeeds.
    if let Some(why) = config_error {
        line.insert("config_error".into(), capped(&why, output::MESSAGE));
    }
    line
}

/// An audit record as the line written: characters that JSON leaves raw but a terminal
/// acts on are `\u` escapes, so the log is safe to `cat`. Ends with a newline.
fn audit_bytes(record: &serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
    let text = serde_json::to_string(record).unwrap_or_default();
    let mut bytes = hooks_core::text::escape_json(&text).into_owned().into_bytes();
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use hooks_core::RegistryBuilder;

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
        let line = audit_record(plugins, &event, &report, false, times, Some(huge.clone()));
        let line = String::from_utf8(audit_bytes(&line)).unwrap();
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
        let mut text = audit_bytes(&audit_record(
            plugins,
            &event,
            &report,
            true,
            times,
            Some(why.to_owned()),
        ));
        text.extend(audit_bytes(&audit_record(plugins, &event, &report, true, times, None)));
        let text = String::from_utf8(text).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["config_error"], why);
        assert_eq!(lines[0]["result"], "ok");
        assert!(lines[1].get("config_error").is_none(), "{}", lines[1]);
    }
}
