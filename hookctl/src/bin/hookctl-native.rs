//! `hookctl-native`: runs one native plugin (`*.so`) in a process of its own, for hookctl.
//!
//! hookctl is linked statically, so that libvirt's hook costs what a script costs, and
//! a static program cannot load shared objects. This small dynamically linked program
//! does it instead (see [`hookctl::native_wire`] for how they talk). hookctl runs it like an
//! exec hook, which gives native plugins what exec hooks have: a timeout that kills,
//! and a crash that fails only that plugin.
//!
//! ```text
//! hookctl-native call [--no-input] [--guard-input] [--max-output BYTES] PLUGIN DRIVER OBJECT OP SUBOP EXTRA
//! hookctl-native check|inspect PLUGIN [ANYTHING...]
//! ```
//! with hookctl's header line first on stdin. Not meant to be run by hand.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use hookctl::native_wire::{bounded, read_header, End, LoadKind, Report, REPORT_STATUS, UNUSABLE_STATUS};
use virt_hooks_core::backend::{ConfigValue, HookLoader, HookSettings, PluginConfig};
use virt_hooks_core::error::LoadErrorKind;
use virt_hooks_core::outcome::LogLine;
use virt_hooks_core::{Driver, EventArgs, Hook, HookStatus, Invocation, LoadError};

/// Where the host's results go: its original stdout and stderr, kept aside before any
/// plugin code runs, so the plugin's own writes to fds 1 and 2 cannot become the
/// document or the report.
struct Out {
    stdout: File,
    stderr: File,
}

fn main() -> ExitCode {
    let status = run();
    // Exit statuses are a byte; `status` is one by construction.
    ExitCode::from(u8::try_from(status).unwrap_or(UNUSABLE_STATUS as u8))
}

fn unusable(why: &str) -> i32 {
    eprintln!("hookctl-native: {why}");
    UNUSABLE_STATUS
}

fn run() -> i32 {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut input) {
        return unusable(&format!("cannot read stdin: {e}"));
    }
    let header = match read_header(&input) {
        Ok(header) => header,
        Err(e) => return unusable(&e.to_string()),
    };
    let document = input.split_off(header.document_start);
    let config = match PluginConfig::from_entries(header.config.into_iter().map(|(k, v)| (k, ConfigValue::String(v)))) {
        Ok(config) => config,
        Err(why) => return unusable(&format!("an unusable [config] on stdin: {why}")),
    };
    let token = header.token;
    let out = match set_aside() {
        Ok(out) => out,
        Err(e) => return unusable(&format!("cannot set up its output: {e}")),
    };
    let (end, plugin_out) = match args.first().and_then(|a| a.to_str()) {
        Some("call") => call(&args[1..], document, &config),
        Some(what @ ("check" | "inspect")) => match args.get(1) {
            Some(plugin) => (examine(what, PathBuf::from(plugin), &config), None),
            None => return unusable("usage: hookctl-native check|inspect PLUGIN"),
        },
        _ => return unusable("usage: hookctl-native call|check|inspect ..."),
    };
    finish(out, &token, end, plugin_out)
}

/// Keeps the real stdout and stderr on private descriptors, and points fds 1 and 2
/// both at stderr: a plugin that prints directly (printf) is heard, never taken for the
/// document.
fn set_aside() -> std::io::Result<Out> {
    let stdout = rustix::io::fcntl_dupfd_cloexec(std::io::stdout(), 3)?;
    let stderr = rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), 3)?;
    rustix::stdio::dup2_stdout(std::io::stderr())?;
    Ok(Out {
        stdout: File::from(stdout),
        stderr: File::from(stderr),
    })
}

/// What the plugin wrote through the ABI, and whether the host cut it.
struct PluginOutput {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    log: Vec<LogLine>,
    warnings: Vec<String>,
    stdout_truncated: bool,
    stderr_truncated: bool,
}

/// Writes the plugin's output and the report; a failed write leaves no report, which
/// hookctl takes as a failed call.
fn finish(mut out: Out, token: &str, end: End, plugin: Option<PluginOutput>) -> i32 {
    let mut report = Report {
        end,
        stdout_truncated: false,
        stderr_truncated: false,
        log: Vec::new(),
        warnings: Vec::new(),
    };
    let written = (|| -> std::io::Result<()> {
        if let Some(p) = plugin {
            out.stdout.write_all(&p.stdout)?;
            out.stdout.flush()?;
            out.stderr.write_all(&p.stderr)?;
            report.stdout_truncated = p.stdout_truncated;
            report.stderr_truncated = p.stderr_truncated;
            report.log = p.log;
            report.warnings = p.warnings.into_iter().map(bounded).collect();
        }
        // Its own line, whatever the plugin's stderr ended with.
        out.stderr.write_all(b"\n")?;
        out.stderr.write_all(report.line(token).as_bytes())?;
        out.stderr.flush()
    })();
    match written {
        Ok(()) => REPORT_STATUS,
        Err(_) => UNUSABLE_STATUS,
    }
}

fn load_end(err: &LoadError) -> End {
    let kind = match &err.kind {
        LoadErrorKind::Unreadable => LoadKind::Unreadable,
        LoadErrorKind::NotSharedObject => LoadKind::NotSharedObject,
        LoadErrorKind::MissingSymbol { symbol } => LoadKind::MissingSymbol {
            symbol: (*symbol).to_owned(),
        },
        LoadErrorKind::AbiMismatch { expected, found } => LoadKind::AbiMismatch {
            expected: *expected,
            found: *found,
        },
        LoadErrorKind::InvalidDescriptor { what } => LoadKind::InvalidDescriptor {
            what: (*what).to_owned(),
        },
        LoadErrorKind::InitFailed { code, message } => LoadKind::InitFailed {
            code: *code,
            message: bounded(message.clone()),
        },
        other => LoadKind::Other {
            message: other.to_string(),
        },
    };
    let source = err.source.as_deref().map(|s| bounded(virt_hooks_core::error::chain(s)));
    End::LoadError { kind, source }
}

/// `check` loads the plugin (running its constructors); `inspect` only reads its header.
fn examine(what: &str, plugin: PathBuf, config: &PluginConfig) -> End {
    let loader = virt_hooks_dylib::DylibLoader;
    let mut settings = HookSettings::default();
    settings.config = config.clone();
    let result = if what == "check" {
        loader.check(&plugin, &settings)
    } else {
        loader.inspect(&plugin, &settings)
    };
    match result {
        Ok(()) => End::Exited { code: 0 },
        Err(e) => load_end(&e),
    }
}

fn call(args: &[OsString], document: Vec<u8>, config: &PluginConfig) -> (End, Option<PluginOutput>) {
    let usage = || {
        let message =
            "usage: hookctl-native call [--no-input] [--guard-input] [--max-output BYTES] PLUGIN DRIVER OBJECT OP SUBOP EXTRA";
        (
            End::Failed {
                message: message.into(),
            },
            None,
        )
    };
    let mut args = args.iter();
    let mut with_input = true;
    let mut guard_input = false;
    let mut max_output = virt_hooks_core::DEFAULT_MAX_OUTPUT;
    let plugin = loop {
        match args.next().map(|a| (a, a.to_str())) {
            Some((_, Some("--no-input"))) => with_input = false,
            Some((_, Some("--guard-input"))) => guard_input = true,
            Some((_, Some("--max-output"))) => match args.next().and_then(|n| n.to_str()?.parse().ok()) {
                Some(n) => max_output = n,
                None => return usage(),
            },
            Some((plugin, _)) => break PathBuf::from(plugin),
            None => return usage(),
        }
    };
    let rest: Vec<&OsString> = args.collect();
    let (Some(driver), [object, op, subop, extra]) = (
        rest.first().and_then(|d| d.to_str()?.parse::<Driver>().ok()),
        rest.get(1..).unwrap_or_default(),
    ) else {
        return usage();
    };
    let input: Option<Arc<[u8]>> = with_input.then(|| document.into());
    let hook = match virt_hooks_dylib::DylibHook::load_with_config(&plugin, config) {
        Ok(hook) => hook.with_max_output(max_output).with_guarded_input(guard_input),
        Err(e) => return (load_end(&e), None),
    };
    // hookctl names the state directory in this process's environment: a version 1
    // plugin reads it there, a version 2 plugin gets it in its event.
    let state_dir = std::env::var_os(virt_hooks_exec::STATE_ENV).map(|d| Arc::from(Path::new(&d)));
    let inv = Invocation::new(driver, EventArgs::new([object, op, subop, extra]), input).with_state_dir(state_dir);
    let mut outcome = virt_hooks_core::block_on(hook.call(&inv));
    // The plugin's fini runs now (the hook is done): what it, or a thread the call left
    // running, writes through a kept output is ignored, and said so.
    let strays = virt_hooks_dylib::stray_writes();
    drop(hook);
    let late = virt_hooks_dylib::stray_writes() - strays;
    if late > 0 {
        outcome.warnings.push(format!(
            "{late} write(s) through its output callbacks after its call returned (from fini, or a thread it left running) were ignored"
        ));
    }
    let end = match outcome.status {
        HookStatus::Exited(code) => End::Exited { code },
        HookStatus::Crashed(message) => End::Crashed {
            message: bounded(message),
        },
        // No timeout is set here (hookctl's supervisor kills us at the plugin's), and a
        // signal ends this process rather than being reported.
        other => End::Failed {
            message: bounded(other.describe()),
        },
    };
    let output = PluginOutput {
        stdout: outcome.stdout,
        stderr: outcome.stderr,
        log: outcome.log,
        warnings: outcome.warnings,
        stdout_truncated: outcome.stdout_truncated,
        stderr_truncated: outcome.stderr_truncated,
    };
    (end, Some(output))
}
