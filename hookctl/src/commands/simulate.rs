//! `hookctl simulate`: a whole lifecycle sequence, step by step.

use std::fmt::Write as _;
use std::path::Path;

use clap::Args;
use virt_hooks_core::events::ReleaseReason;
use virt_hooks_core::lifecycle::{Scenario, Sequence, StepResult, Verdict};
use virt_hooks_core::{Driver, Guest, Lifecycle, LifecycleError};

use super::args::{parse_driver, parse_log, InputArgs, LogArg};
use super::{require_dir, Outcome, UsageError};
use crate::output;

#[derive(Debug, Args)]
pub(crate) struct SimulateArgs {
    /// daemon, qemu, lxc, libxl, bhyve or network.
    #[arg(value_parser = parse_driver)]
    pub(crate) driver: Driver,
    /// start, stop, restore, migrate-in, migrate-out, reconnect (daemon: start, reload, shutdown).
    pub(crate) scenario: String,
    /// The domain or network name.
    #[arg(allow_hyphen_values = true)]
    pub(crate) object: Option<String>,
    /// The release reason for `stop` (qemu): unknown, shutdown, destroyed, crashed,
    /// migrated, saved, failed, "from snapshot", daemon.
    #[arg(long, value_name = "R", default_value = "destroyed")]
    pub(crate) reason: String,
    /// The libvirt version to emulate (release reasons came in 10.5); by default the
    /// one installed here (`libvirtd --version`), else the newest.
    #[arg(long, value_name = "VERSION")]
    pub(crate) libvirt: Option<String>,
    /// Run no plugin: print the events of the scenario and, for each, the plugins that
    /// would run in order and what each one's `[match]` decided.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Where plugins with `state = true` keep their state (created 0700, kept), so a
    /// later `simulate` (`start`, then `stop`) sees it. By default a temporary one,
    /// removed at the end: never the real guests' state.
    #[arg(long, value_name = "DIR")]
    pub(crate) state: Option<std::path::PathBuf>,
    /// Write the row the dispatcher would log for each simulated event to FILE (an
    /// absolute path; never the audit log of real events), for `hookctl log --file FILE`.
    /// By default, and with `none`, simulated events are in no audit log.
    #[arg(long, value_name = "FILE|none", value_parser = parse_log)]
    pub(crate) log: Option<LogArg>,
    /// Test native plugins strictly: each one's input is followed by its NUL byte and an
    /// unmapped page, so reading past its end crashes the plugin (SIGSEGV) here rather
    /// than reading garbage in production.
    #[arg(long)]
    pub(crate) strict: bool,
    #[command(flatten)]
    pub(crate) input: InputArgs,
}

pub(crate) fn exec(dir: &Path, args: SimulateArgs) -> Outcome {
    #[cfg(feature = "dylib")]
    if args.strict {
        crate::native::GUARD_INPUT.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    require_dir(dir)?;
    let scenario = Scenario::parse_for(args.driver, &args.scenario).map_err(|e| UsageError(e.to_string()))?;
    let object = match (args.driver, args.object) {
        (_, Some(o)) => o,
        (Driver::Daemon, None) => "-".to_owned(),
        (d, None) => {
            return Err(UsageError(format!(
                "simulate {d} {scenario} needs an OBJECT (the guest's name)"
            )))
        }
    };
    let reason: ReleaseReason = args
        .reason
        .parse()
        .map_err(|e: virt_hooks_core::events::UnknownReleaseReason| UsageError(e.to_string()))?;
    let xml = super::read_input(args.input.input.as_deref())?.unwrap_or_default();
    let guest = Guest::new(args.driver, object, String::from_utf8_lossy(&xml));
    let (version, from) = match &args.libvirt {
        Some(v) => (
            parse_version(v)
                .ok_or_else(|| UsageError(format!("--libvirt `{v}`: expected a version like 9.0 or 10.5.0")))?,
            "--libvirt",
        ),
        None => match installed_libvirt() {
            Some(v) => (v, "libvirtd --version"),
            None => (NEWEST, "the newest; no libvirtd here"),
        },
    };
    let reasons = version >= (10, 5);
    // A whole lifecycle with state, and none of it touches the real guests' state.
    let scratch = tempfile::Builder::new()
        .prefix("hookctl-simulate-")
        .tempdir()
        .map_err(|e| UsageError(format!("cannot make a temporary state directory: {e}")))?;
    let state = match &args.state {
        Some(dir) => virt_hooks_core::state::StateRoot::new(resolved(dir)),
        None => virt_hooks_core::state::StateRoot::new(scratch.path().join("state")),
    };
    let plugins = dir.join(format!("{}.plugins", args.driver.as_str()));
    let real = crate::config::settings(&plugins).in_effect().state;
    for real in [
        resolved(&real),
        resolved(Path::new(virt_hooks_core::state::SYSTEM_STATE_ROOT)),
    ] {
        if state.path().starts_with(&real) || real.starts_with(state.path()) {
            return Err(UsageError(format!(
                "--state {}: that is (or holds) {}, where the dispatcher keeps the real guests' state; simulate elsewhere",
                state.path().display(),
                real.display()
            )));
        }
    }
    if args.state.is_some() {
        state
            .check()
            .map_err(|e| UsageError(format!("--state {}: {e}", state.path().display())))?;
    }
    // Reads the whole hook file when it is not this very binary: once.
    let dispatcher = super::install::runs_a_hookctl(&dir.join(args.driver.as_str()));
    if !dispatcher {
        refuse_wrapped_dispatcher(dir, args.driver)?;
    }
    let trial_log = match args.log.and_then(|LogArg(file)| file) {
        Some(file) => Some(trial_log(dir, args.driver, dispatcher, file)?),
        None => None,
    };
    let registry = simulation(
        dir,
        args.driver,
        dispatcher,
        (args.input.timeout, args.input.wasm_memory),
        state,
    );
    registry
        .hooks_dirs()
        .for_each(|d| super::warn_misplaced(d, args.driver));
    if args.dry_run {
        return dry_run(&registry, (scenario, reason, reasons), &guest, dir, args.input.json);
    }
    let lifecycle = Lifecycle::new(&registry).release_reasons(reasons);
    let started = std::time::SystemTime::now();
    let seq = ran(pollster::block_on(lifecycle.run(scenario, &guest, reason)))?;
    if let Some(log) = &trial_log {
        // The plugins ran: their results are printed whatever became of the rows.
        if let Err(why) = log_rows(log, dir, &seq, &guest, started) {
            eprintln!("hookctl: warning: {}", output::message(&why));
        }
    }
    if !args.input.json {
        let note = if reasons {
            ""
        } else {
            "; `release` passes `-`, not its reason (that came in 10.5)"
        };
        eprintln!("hookctl: emulating libvirt {}.{} ({from}){note}", version.0, version.1);
    }
    for step in &seq.steps {
        step.report.hooks.iter().for_each(output::warnings);
    }
    if args.input.json {
        output::json(&seq);
    } else {
        output::stdout(render(&seq, &guest, dir, args.state.is_none()).as_bytes());
    }
    if args.state.is_none() {
        warn_state_thrown_away(
            &virt_hooks_core::state::StateRoot::new(scratch.path().join("state")),
            &guest,
        );
    }
    Ok(seq.proceeds())
}

/// What a simulated sequence ran, whatever its verdict (a refusal is a result here).
fn ran(result: Result<Sequence, LifecycleError>) -> Result<Sequence, UsageError> {
    match result {
        Ok(seq) => Ok(seq),
        Err(LifecycleError::Unsupported(e)) => Err(UsageError(e.to_string())),
        Err(e) => e.sequence().cloned().ok_or_else(|| UsageError(e.to_string())),
    }
}

/// Plugins ran for real and recorded what they did in simulate's temporary state root,
/// which goes when simulate ends: what they did on the host stays, with no record left
/// for a release to undo it. Says so for each plugin that recorded something.
fn warn_state_thrown_away(scratch: &virt_hooks_core::state::StateRoot, guest: &Guest) {
    let recorded = (scratch.entries(guest.driver).into_iter())
        .filter(|e| std::fs::read_dir(&e.path).is_ok_and(|mut d| d.next().is_some()));
    for e in recorded {
        eprintln!(
            "hookctl: warning: {} recorded state for {} {}, thrown away as simulate ends: what it did on this host (it ran for real) stays, with no record to undo it. Keep the record with `--state DIR`, then `hookctl simulate {} stop {} --input FILE --state DIR` (the same XML) undoes it; `--dry-run` runs nothing.",
            output::name(&e.hook.to_string_lossy()),
            guest.driver,
            output::name(&e.object.to_string_lossy()),
            guest.driver,
            output::name(&e.object.to_string_lossy()),
        );
    }
}

/// The hooks libvirt would run. When its hook is hookctl's dispatcher, the plugins run
/// here instead of through it, so that they keep their state under `state` (never the
/// real guests') and the simulated events stay out of the audit log and the journal.
fn simulation(
    dir: &Path,
    driver: Driver,
    dispatcher: bool,
    (timeout, wasm_memory): (Option<std::time::Duration>, Option<u32>),
    state: virt_hooks_core::state::StateRoot,
) -> virt_hooks_core::Registry {
    if !dispatcher {
        return super::registry(dir, timeout, wasm_memory);
    }
    let plugins = super::dispatch::plugins_dir_for(&dir.join(driver.as_str()), driver);
    let config = crate::config::DispatchConfig {
        state: state.path().to_owned(),
        ..crate::config::settings(&plugins).in_effect()
    };
    virt_hooks_core::RegistryBuilder::new()
        .hooks_dir_with(super::dispatch::dispatcher_dir(&plugins, driver, &config))
        .hooks_dir_with(super::hooks_dir(dir, wasm_memory).without_main_script())
        .timeout(timeout)
        .build()
}

/// `--log FILE` checked as the dispatcher checks its log (`audit::check`: the trust rule
/// for its directory, a file of our own), and never the log of real events: the plugins
/// dir's `log`, or the system's.
fn trial_log(
    dir: &Path,
    driver: Driver,
    dispatcher: bool,
    file: std::path::PathBuf,
) -> Result<std::path::PathBuf, UsageError> {
    let shown = output::path(&file);
    if !dispatcher {
        return Err(UsageError(format!(
            "--log {shown}: {} is not hookctl, so no dispatcher runs here and no event would be logged (`hookctl install {driver}`)",
            output::path(&dir.join(driver.as_str()))
        )));
    }
    let plugins = super::dispatch::plugins_dir_for(&dir.join(driver.as_str()), driver);
    let real_logs = crate::config::settings(&plugins).in_effect().log.into_iter();
    for real in real_logs.chain([std::path::PathBuf::from(crate::config::DEFAULT_LOG)]) {
        if resolved(&file) == resolved(&real) {
            return Err(UsageError(format!(
                "--log {shown}: that is {}, the audit log of real events; simulate into another file",
                output::path(&real)
            )));
        }
    }
    crate::audit::check(&file).map_err(|e| UsageError(format!("--log {shown}: cannot be written: {e}")))?;
    Ok(file)
}

/// Appends to `log` the row the dispatcher would have written for each event of `seq`:
/// its plugins only (not libvirt's own `<driver>.d/`), each event's time and duration
/// those of its hooks, one after another from `started`.
fn log_rows(
    log: &Path,
    dir: &Path,
    seq: &Sequence,
    guest: &Guest,
    started: std::time::SystemTime,
) -> Result<(), String> {
    let plugins = super::dispatch::plugins_dir_for(&dir.join(guest.driver.as_str()), guest.driver);
    let libvirts_own = dir.join(format!("{}.d", guest.driver.as_str()));
    let mut at = started;
    for step in &seq.steps {
        let mut report = step.report.clone();
        report.hooks.retain(|r| !Path::new(&r.name).starts_with(&libvirts_own));
        let args = report.args();
        let event =
            virt_hooks_core::RawEvent::from_os_args(report.driver, [0, 1, 2, 3].map(|i| args.get(i).to_owned()))
                .with_input(Some(guest.xml.as_bytes().to_vec()));
        let times = (std::time::Instant::now(), at);
        let mut line = crate::audit::line::AuditLine::new(&plugins, &event, &report, report.succeeded(), times, None);
        line.duration_us = Some(report.duration().as_micros() as u64);
        crate::audit::append(log, None, &line.to_bytes(), crate::audit::ROTATE_BYTES).map_err(|e| {
            format!(
                "--log {}: cannot be written, so the rows from `{}` on are in no log: {e}",
                output::path(log),
                report.args_line()
            )
        })?;
        at += step.report.duration();
    }
    Ok(())
}

/// A hook script that wraps hookctl's dispatcher (`exec hookctl dispatch --plugins ...`)
/// cannot be simulated safely: run as a hook, it would use the real state and audit log.
/// For a hook that is not itself a hookctl binary.
fn refuse_wrapped_dispatcher(dir: &Path, driver: Driver) -> Result<(), UsageError> {
    use std::io::Read;
    let main = dir.join(driver.as_str());
    let mut head = Vec::new();
    let read = std::fs::File::open(&main).and_then(|f| f.take(64 << 10).read_to_end(&mut head));
    let wraps = read.is_ok() && head.starts_with(b"#!") && memchr::memmem::find(&head, b"hookctl").is_some();
    if wraps {
        return Err(UsageError(format!(
            "{} looks like a script around hookctl; simulating through it would run the dispatcher on the real guests' state and audit log. Make it hookctl itself (`hookctl install {driver}`), or simulate the plugins dir: `hookctl --hooks-dir DIR simulate ...` with DIR/{driver} a link to hookctl",
            main.display()
        )));
    }
    Ok(())
}

/// A path as it will be used: symlinks and `..` resolved as far as it exists.
fn resolved(path: &Path) -> std::path::PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    if let Ok(real) = std::fs::canonicalize(&absolute) {
        return real;
    }
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => resolved(parent).join(name),
        _ => absolute,
    }
}

/// The newest libvirt behaviour this emulates.
const NEWEST: (u32, u32) = (10, 5);

/// `9.0`, `10.5.0`, `libvirtd (libvirt) 9.0.0` -> (major, minor).
/// The most log lines shown per hook; the last ones, which explain.
const LOG_LINES_SHOWN: usize = 20;

/// A hook's log lines under its row: `            info: moved 2 interfaces`.
fn render_log(out: &mut String, log: &[virt_hooks_core::outcome::LogLine]) {
    let skipped = log.len().saturating_sub(LOG_LINES_SHOWN);
    if skipped > 0 {
        let _ = writeln!(out, "            … {skipped} earlier log line(s)");
    }
    for line in &log[skipped..] {
        let _ = writeln!(out, "            {}: {}", line.level, output::message(&line.message));
    }
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text.split_whitespace().last()?;
    let mut parts = v.split('.').map(str::parse::<u32>);
    Some((parts.next()?.ok()?, parts.next().unwrap_or(Ok(0)).ok()?))
}

/// The version of the libvirtd installed here, if any.
fn installed_libvirt() -> Option<(u32, u32)> {
    ["libvirtd", "/usr/sbin/libvirtd", "virtqemud", "/usr/sbin/virtqemud"]
        .into_iter()
        .find_map(|cmd| std::process::Command::new(cmd).arg("--version").output().ok())
        .filter(|out| out.status.success())
        .and_then(|out| parse_version(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The sequence for a terminal: names, paths, hooks' words and the XML escaped
/// ([`output::name`], [`output::message`]), a refusal's message and the XML bounded.
fn render(seq: &Sequence, guest: &Guest, dir: &Path, temporary: bool) -> String {
    let mut out = String::new();
    let who = if guest.driver == Driver::Daemon {
        "daemon".to_owned()
    } else {
        format!("{} {}", guest.driver, output::name(&guest.name))
    };
    let _ = writeln!(out, "simulate {who}: {} (hooks in {})", seq.scenario, output::path(dir));
    for step in &seq.steps {
        let r = &step.report;
        let cleanup = if step.cleanup { "  (cleanup)" } else { "" };
        let _ = writeln!(out, "\n  {} {}{cleanup}", r.driver, output::name(&r.args().to_string()));
        if r.hooks.is_empty() {
            let _ = writeln!(out, "    (no hooks)");
        }
        for rec in &r.hooks {
            let name = output::name(&output::short(&rec.name, dir)).into_owned();
            let time = virt_hooks_core::backend::format_duration(std::time::Duration::from_micros(rec.duration_us));
            if rec.success {
                let rewrote = match &rec.document {
                    Some(d) if rec.replaced_document && d.changed => {
                        format!("  rewrote the XML (+{} -{} lines)", d.lines_added, d.lines_removed)
                    }
                    _ if rec.replaced_document => "  printed the XML unchanged".to_owned(),
                    _ => String::new(),
                };
                let _ = writeln!(out, "    ok      {:<5} {name:<40} {time:>8}{rewrote}", rec.backend);
            } else {
                let explaining = virt_hooks_core::outcome::explaining_line(&rec.log, rec.stderr.as_bytes());
                let why = output::message(explaining.as_deref().unwrap_or_default());
                let sep = if why.is_empty() { "" } else { ": " };
                let _ = writeln!(
                    out,
                    "    FAILED  {:<5} {name:<40} {time:>8}  {}{sep}{why}",
                    rec.backend,
                    output::message(&output::status(rec))
                );
                if rec.spared {
                    // At `reconnect`: libvirt would kill the guest; the dispatcher did not.
                    let unusable = rec.warnings.iter().any(|w| w.starts_with("could not be loaded"));
                    let reason = if unusable {
                        "it could not be loaded or configured; run `hookctl check`"
                    } else {
                        "on_reconnect_failure = log; `kill` in its sidecar would kill it"
                    };
                    let _ = writeln!(out, "            error logged; the guest keeps running ({reason})");
                }
            }
            render_log(&mut out, &rec.log);
        }
        for kept in &r.state_kept {
            let _ = writeln!(
                out,
                "    state kept: {} ({}{})",
                output::path(kept),
                if virt_hooks_core::state::state_ends_at(r.driver, &r.op(), &r.subop()) {
                    "its plugin failed this last event, or is gone"
                } else {
                    "made at this refused event, which libvirt follows with no release"
                },
                if temporary {
                    "; temporary, removed when simulate ends"
                } else {
                    ""
                }
            );
        }
        match step.result {
            StepResult::Ok => {}
            StepResult::FailureIgnored => {
                let _ = writeln!(out, "    warning: a hook failed, and {}", r.policy.consequence());
            }
            StepResult::Fatal => {
                let _ = writeln!(out, "    -> {}", r.policy.consequence());
            }
        }
    }
    let _ = writeln!(out);
    let op = seq.scenario.as_str();
    // libvirt's message holds the hook's whole stderr: its first lines, as libvirt's.
    let said = |message: &str, hook: &Option<String>| {
        let dispatched = hook
            .as_deref()
            .and_then(|h| as_dispatched(seq, message, h, dir, guest.driver));
        output::STDERR_LINES
            .apply(dispatched.as_deref().unwrap_or(message))
            .into_owned()
    };
    let _ = match &seq.verdict {
        Verdict::Proceed => writeln!(out, "result: {op} of {who} would go through"),
        Verdict::Aborted { message, hook } => {
            writeln!(out, "result: {op} of {who} would be REFUSED\n  {}", said(message, hook))
        }
        Verdict::Killed { message, hook } => writeln!(out, "result: {who} would be KILLED\n  {}", said(message, hook)),
    };
    if let (Some(xml), true) = (&seq.xml, seq.steps.first().is_some_and(|s| s.report.document_changed)) {
        let xml = virt_hooks_core::text::escape_lines(xml);
        let _ = writeln!(out, "\nthe guest starts with this XML (rewritten by a hook):\n{xml}");
    }
    out
}

/// libvirt's message when a plugin of `dir`'s dispatcher (`<driver>.plugins/`) failed an
/// event: libvirt ran the hook `<dir>/<driver>`, which exited 1 with the dispatcher's
/// error line, not the plugin itself. `None` for a hook libvirt runs itself.
fn as_dispatched(seq: &Sequence, message: &str, hook: &str, dir: &Path, driver: Driver) -> Option<String> {
    let plugins = super::dispatch::plugins_dir_for(&dir.join(driver.as_str()), driver);
    if !Path::new(hook).starts_with(&plugins) {
        return None;
    }
    let failed = seq.steps.iter().find(|s| s.result == StepResult::Fatal)?;
    // The environment libvirt gives a hook, as the plugin's own command line shows it
    // (less what hookctl adds for plugins); PATH alone when it ran no command.
    let env = message
        .split_once("Child process (")
        .and_then(|(_, rest)| rest.split_once(&format!(" {hook} ")))
        .map(|(env, _)| {
            let vars = env.split(' ').filter(|v| !v.starts_with("VIRT_HOOK"));
            vars.collect::<Vec<_>>().join(" ")
        })
        .unwrap_or_else(|| format!("LC_ALL=C PATH={}", std::env::var("PATH").unwrap_or_default()));
    let report = &failed.report;
    let stderr = super::dispatch::libvirt_error_line(report);
    Some(format!(
        "Hook script execution failed: internal error: Child process ({env} {} {}) unexpected exit status 1: {}",
        dir.join(driver.as_str()).display(),
        report.args_line(),
        stderr.trim_end()
    ))
}

/// One entry of a hooks dir at one event of a `--dry-run`.
#[derive(serde::Serialize)]
struct PlannedEntry {
    path: String,
    backend: &'static str,
    /// `run`, `skip` (its `[match]` does not take this event) or `fail` (it would fail
    /// the event without running: refused by the trust rule, or its settings are invalid).
    decision: &'static str,
    /// Why: what its `[match]` said about this event, or why it would fail.
    why: String,
}

#[derive(serde::Serialize)]
struct PlannedEvent {
    event: String,
    entries: Vec<PlannedEntry>,
}

#[derive(serde::Serialize)]
struct DryRun {
    scenario: Scenario,
    dry_run: bool,
    /// Entries that never run, whatever the event (not executable, backups), but settings.
    never_run: Vec<PlannedEntry>,
    events: Vec<PlannedEvent>,
}

/// `simulate --dry-run`: the events of the scenario (as if every plugin let it go on),
/// and for each, which entries would run in order and what their `[match]` decided.
/// Nothing is loaded or run: only the directories and the sidecars are read.
fn dry_run(
    registry: &virt_hooks_core::Registry,
    (scenario, reason, reasons): (Scenario, ReleaseReason, bool),
    guest: &Guest,
    dir: &Path,
    json: bool,
) -> Outcome {
    use virt_hooks_core::backend::Disposition;
    // The events themselves, from a registry with no hooks: the sequence libvirt fires
    // when every hook lets the operation go on.
    let nothing = virt_hooks_core::RegistryBuilder::new().build();
    let lifecycle = Lifecycle::new(&nothing).release_reasons(reasons);
    let seq = ran(pollster::block_on(lifecycle.run(scenario, guest, reason)))?;
    let short = |p: &Path| output::short(&p.to_string_lossy(), dir);
    let mut plan = DryRun {
        scenario,
        dry_run: true,
        never_run: Vec::new(),
        events: Vec::new(),
    };
    let mut certain_failure = false;
    let scanned: Vec<_> = registry
        .hooks_dirs()
        .map(|d| {
            let entries = d.scan(guest.driver).map_err(|e| (d.drop_in_dir(guest.driver), e));
            entries.map(|all| {
                all.into_iter()
                    .filter(|e| !super::is_own_state_dir(d, e, guest.driver))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for entries in &scanned {
        match entries {
            Ok(entries) => {
                for e in entries {
                    // Sidecars and hookctl.toml are settings, not hooks that do not run.
                    let settings = matches!(
                        e.disposition,
                        Disposition::Skipped(virt_hooks_core::backend::SkipReason::Settings)
                    );
                    if let (Disposition::Skipped(why), false) = (&e.disposition, settings) {
                        plan.never_run.push(PlannedEntry {
                            path: short(&e.path),
                            backend: "-",
                            decision: "skip",
                            why: why.to_string(),
                        });
                    }
                }
            }
            Err((path, e)) => return Err(UsageError(format!("cannot read `{}`: {e}", path.display()))),
        }
    }
    for step in &seq.steps {
        let args = step.report.args();
        let event =
            virt_hooks_core::RawEvent::from_os_args(step.report.driver, [0, 1, 2, 3].map(|i| args.get(i).to_owned()))
                .with_input(Some(guest.xml.as_bytes().to_vec()));
        let mut entries = Vec::new();
        for e in scanned.iter().flatten().flatten() {
            let (backend, decision, why) = match &e.disposition {
                Disposition::Skipped(_) => continue,
                Disposition::Refused(loader, why) => (
                    loader.as_ref().map_or("-", |l| l.backend()),
                    "fail",
                    format!("refused: {}", why.reason()),
                ),
                Disposition::Hook(loader) => match e.settings() {
                    Err(err) => (loader.backend(), "fail", format!("invalid settings: {err}")),
                    Ok(settings) => {
                        let (runs, why) = match_decision(&settings.matcher, &event);
                        (loader.backend(), if runs { "run" } else { "skip" }, why)
                    }
                },
            };
            certain_failure |= decision == "fail";
            entries.push(PlannedEntry {
                path: short(&e.path),
                backend,
                decision,
                why,
            });
        }
        plan.events.push(PlannedEvent {
            event: format!("{} {}", step.report.driver, step.report.args()),
            entries,
        });
    }
    if json {
        output::json(&plan);
    } else {
        output::stdout(render_dry_run(&plan, guest, dir).as_bytes());
    }
    Ok(!certain_failure)
}

/// Whether `matcher` takes `event`, and why, clause by clause: the first of `objects`,
/// `ops`, `subops` that does not match, else `xpath`.
fn match_decision(matcher: &virt_hooks_core::backend::Matcher, event: &virt_hooks_core::RawEvent) -> (bool, String) {
    use virt_hooks_core::HookEvent;
    if matcher.is_empty() {
        return (true, "no [match]: every event".to_owned());
    }
    let clauses: [(&str, Vec<&str>, &str); 3] = [
        ("objects", matcher.objects().collect(), event.object()),
        ("ops", matcher.ops().collect(), event.op()),
        ("subops", matcher.subops().collect(), event.subop()),
    ];
    for (key, patterns, value) in &clauses {
        let matched = patterns.is_empty()
            || patterns
                .iter()
                .any(|p| glob::Pattern::new(p).is_ok_and(|p| p.matches(value)));
        if !matched {
            return (false, format!("{key} = {patterns:?} does not match `{value}`"));
        }
    }
    if matcher.matches(event) {
        (true, format!("matched: {matcher}"))
    } else {
        let xpath: Vec<&str> = matcher.xpath().collect();
        (
            false,
            format!("xpath = {xpath:?} does not hold on this XML (or it has none)"),
        )
    }
}

fn render_dry_run(plan: &DryRun, guest: &Guest, dir: &Path) -> String {
    let mut out = String::new();
    let who = if guest.driver == Driver::Daemon {
        "daemon".to_owned()
    } else {
        format!("{} {}", guest.driver, output::name(&guest.name))
    };
    let _ = writeln!(
        out,
        "simulate {who}: {} (hooks in {}): DRY RUN, no plugin runs",
        plan.scenario,
        output::path(dir)
    );
    if !plan.never_run.is_empty() {
        let _ = writeln!(out, "\n  never run:");
        for e in &plan.never_run {
            let _ = writeln!(out, "    {}  ({})", output::name(&e.path), output::message(&e.why));
        }
    }
    for event in &plan.events {
        let _ = writeln!(out, "\n  {}", output::name(&event.event));
        if event.entries.is_empty() {
            let _ = writeln!(out, "    (no hooks)");
        }
        let mut order = 0;
        for e in &event.entries {
            let (mark, what) = match e.decision {
                "run" => {
                    order += 1;
                    (format!("{order:>3}."), "would run ")
                }
                "fail" => {
                    order += 1;
                    (format!("{order:>3}."), "would FAIL")
                }
                _ => ("   -".to_owned(), "skip      "),
            };
            let _ = writeln!(
                out,
                "    {mark} {what} {:<5} {:<40} {}",
                e.backend,
                output::name(&e.path),
                output::message(&e.why)
            );
        }
    }
    let _ = writeln!(
        out,
        "\nnothing ran. The events above assume every plugin lets {} go on; a refusal would stop it there (and start's cleanup events would follow). Without --dry-run the plugins run for real.",
        plan.scenario
    );
    out
}
