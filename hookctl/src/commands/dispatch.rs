//! Dispatcher mode: `hookctl` installed as `/etc/libvirt/hooks/<driver>` runs the
//! plugins in `<driver>.plugins/` and answers libvirt the way a hook script does.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hooks_core::{Driver, HookEvent, HooksDir, RawEvent, RegistryBuilder, Report};
use serde::Deserialize;
use serde_json::json;

use crate::cli::{DispatchArgs, Outcome};
use crate::output;

/// Where the audit log goes unless `hookctl.toml` says otherwise.
pub(crate) const DEFAULT_LOG: &str = "/var/log/libvirt/hookctl.jsonl";
/// Past this size the log is moved to `<log>.1` before the next line.
const LOG_ROTATE_BYTES: u64 = 10 << 20;

/// `<plugins dir>/hookctl.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DispatchConfig {
    /// The audit log file.
    log: Option<PathBuf>,
}

/// The plugins dir for a hook installed at `argv0`: `<dirname(argv0)>/<driver>.plugins`.
pub(crate) fn plugins_dir_for(argv0: &Path, driver: Driver) -> PathBuf {
    argv0
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("{}.plugins", driver.as_str()))
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
    let mut input = Vec::new();
    let stdin_ok = std::io::stdin().lock().read_to_end(&mut input).is_ok();
    let mut event = RawEvent::from_os_args(driver, args);
    // libvirt gives daemon hooks /dev/null; pass that on rather than an empty pipe.
    if driver != Driver::Daemon || !input.is_empty() {
        event = event.with_input(Some(input));
    }
    let config = load_config(plugins);
    let registry = RegistryBuilder::new()
        .hooks_dir_with(HooksDir::plugins(plugins))
        .build();
    let result = registry.fire_blocking(&event);
    let (report, ok) = match result {
        Ok(report) => (report, true),
        Err(failure) => (failure.into_report(), false),
    };
    if ok {
        if let (true, Some(doc)) = (report.document_changed, &report.document) {
            output::stdout(doc);
        }
    } else {
        for rec in report.hooks.iter().filter(|r| !r.success && !r.optional) {
            let stderr = rec.stderr.trim_end();
            let sep = if stderr.is_empty() { "" } else { ": " };
            eprintln!("{}: {}{sep}{stderr}", rec.name, output::status(rec));
        }
    }
    if !stdin_ok {
        eprintln!("hookctl: could not read stdin; the plugins got what was read");
    }
    audit(
        &config.log.unwrap_or_else(|| PathBuf::from(DEFAULT_LOG)),
        &event,
        &report,
        ok,
        start,
    );
    ok
}

fn load_config(plugins: &Path) -> DispatchConfig {
    let path = plugins.join("hookctl.toml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return DispatchConfig::default();
    };
    toml::from_str(&text).unwrap_or_else(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(0);
        eprintln!(
            "hookctl: {}:{line}: {} (using the defaults)",
            path.display(),
            e.message().trim()
        );
        DispatchConfig::default()
    })
}

/// Appends one JSON line per dispatch; a single `write` on an `O_APPEND` file, so
/// concurrent dispatches never interleave within a line.
fn audit(log: &Path, event: &RawEvent, report: &Report, ok: bool, start: Instant) {
    let excerpt = |s: &str| -> String { s.chars().take(500).collect() };
    let hooks: Vec<_> = report
        .hooks
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "backend": r.backend,
                "status": output::status(r),
                "success": r.success,
                "optional": r.optional,
                "duration_us": r.duration_us,
                "stderr": excerpt(&r.stderr),
                "warnings": r.warnings,
            })
        })
        .collect();
    let line = json!({
        "time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
        "pid": std::process::id(),
        "driver": event.driver(),
        "object": event.object(),
        "op": event.op(),
        "subop": event.subop(),
        "extra": event.extra(),
        "result": if ok { "ok" } else { "failed" },
        "policy": report.policy,
        "document_changed": report.document_changed,
        "duration_us": start.elapsed().as_micros() as u64,
        "hooks": hooks,
    });
    let mut bytes = line.to_string().into_bytes();
    bytes.push(b'\n');
    if let Err(e) = append(log, &bytes) {
        eprintln!(
            "hookctl: cannot write the audit log `{}`: {e} (dispatch itself is unaffected)",
            log.display()
        );
    }
}

fn append(log: &Path, line: &[u8]) -> std::io::Result<()> {
    if std::fs::metadata(log).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
        let mut rotated = log.as_os_str().to_owned();
        rotated.push(".1");
        let _ = std::fs::rename(log, rotated);
    }
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    file.write_all(line)
}
