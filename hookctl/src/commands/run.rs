//! `hookctl run`: one event, exactly as libvirt fires it.

use std::path::Path;

use clap::Args;
use virt_hooks_core::{HookEvent, RawEvent};

use super::args::{EventCli, InputArgs};
use super::{require_dir, Outcome};
use crate::output;

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) event: EventCli,
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
    let registry = super::registry(dir, args.input.timeout, args.input.wasm_memory);
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
