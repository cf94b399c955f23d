//! `hookctl-native`: runs one native plugin (`*.so`) in a process of its own, for hookctl.
//!
//! hookctl is linked statically, so that libvirt's hook costs what a script costs, and
//! a static program cannot load shared objects. This small dynamically linked program
//! does it instead, with the plugin's stdout, stderr and status as its own (see
//! `native_wire.rs`). hookctl runs it like an exec hook, which gives native plugins what
//! exec hooks have: a timeout that kills, and a crash that fails only that plugin.
//!
//! ```text
//! hookctl-native call [--no-input] [--max-output BYTES] PLUGIN DRIVER OBJECT OP SUBOP EXTRA
//! hookctl-native check|inspect PLUGIN [ANYTHING...]
//! ```
//! Not meant to be run by hand: it trusts its arguments (hookctl has checked the plugin).

#[path = "../native_wire.rs"]
mod native_wire;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use hooks_core::backend::{HookLoader, HookSettings};
use hooks_core::{Driver, EventArgs, Hook, HookStatus, Invocation, LoadError, LoadErrorKind};
use native_wire::{LoadKind, Report, REPORT_STATUS};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let status = match args.first().and_then(|a| a.to_str()) {
        Some("call") => call(&args[1..]),
        Some(what @ ("check" | "inspect")) => match args.get(1) {
            Some(plugin) => examine(what, PathBuf::from(plugin)),
            None => usage(),
        },
        _ => usage(),
    };
    // Exit statuses are a byte; `status` is one by construction.
    ExitCode::from(u8::try_from(status).unwrap_or(REPORT_STATUS as u8))
}

fn usage() -> i32 {
    report(&Report::Failed {
        message: "usage: hookctl-native call [--no-input] [--max-output BYTES] PLUGIN DRIVER OBJECT OP SUBOP EXTRA"
            .into(),
    })
}

/// Writes `report` as the last stderr line; the status to exit with.
fn report(report: &Report) -> i32 {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(report.line().as_bytes());
    let _ = err.flush();
    REPORT_STATUS
}

fn load_report(err: &LoadError) -> Report {
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
        other => LoadKind::Other {
            message: other.to_string(),
        },
    };
    let source = err.source.as_deref().map(|s| hooks_core::error_chain(s));
    Report::LoadError { kind, source }
}

/// `check` loads the plugin (running its constructors); `inspect` only reads its header.
fn examine(what: &str, plugin: PathBuf) -> i32 {
    let loader = hooks_dylib::DylibLoader;
    let settings = HookSettings::default();
    let result = if what == "check" {
        loader.check(&plugin, &settings)
    } else {
        loader.inspect(&plugin, &settings)
    };
    match result {
        Ok(()) => 0,
        Err(e) => report(&load_report(&e)),
    }
}

fn call(args: &[OsString]) -> i32 {
    let mut args = args.iter();
    let mut with_input = true;
    let mut max_output = hooks_core::DEFAULT_MAX_OUTPUT;
    let plugin = loop {
        match args.next().map(|a| (a, a.to_str())) {
            Some((_, Some("--no-input"))) => with_input = false,
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
    let input: Option<Arc<[u8]>> = if with_input {
        let mut buf = Vec::new();
        if let Err(e) = std::io::stdin().lock().read_to_end(&mut buf) {
            return report(&Report::Failed {
                message: format!("cannot read the document on stdin: {e}"),
            });
        }
        Some(buf.into())
    } else {
        None
    };
    let hook = match hooks_dylib::DylibHook::load(&plugin) {
        Ok(hook) => hook.with_max_output(max_output),
        Err(e) => return report(&load_report(&e)),
    };
    let inv = Invocation::new(driver, EventArgs::new([object, op, subop, extra]), input);
    let outcome = hooks_core::block_on(hook.call(&inv));
    // A stream cut at the cap gets one byte more, so hookctl's reader (with the same
    // cap) sees it cut too.
    let overflow = |cut: bool| if cut { &b"\n"[..] } else { &b""[..] };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&outcome.stdout);
    let _ = out.write_all(overflow(outcome.stdout_truncated));
    let _ = out.flush();
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(&outcome.stderr);
    let _ = err.write_all(overflow(outcome.stderr_truncated));
    drop(err);
    for warning in &outcome.warnings {
        eprintln!("hookctl-native: warning: {warning}");
    }
    match outcome.status {
        HookStatus::Exited(code) if (0..=255).contains(&code) && code != REPORT_STATUS => code,
        HookStatus::Exited(code) => report(&Report::Exited { code }),
        HookStatus::Crashed(message) => report(&Report::Crashed { message }),
        // No timeout is set here (hookctl's supervisor kills us at the plugin's), and a
        // signal ends this process rather than being reported.
        other => report(&Report::Failed {
            message: other.describe(),
        }),
    }
}
