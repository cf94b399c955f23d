//! Arguments that several commands take, and the parsers of their values.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use virt_hooks_core::Driver;

/// What `run` and `simulate` give the hooks: their input, limits, and the report's form.
#[derive(Debug, Args)]
pub(crate) struct InputArgs {
    /// The document on the hooks' stdin (`-` reads this program's stdin). Without it,
    /// domain and network hooks get empty input and daemon hooks /dev/null.
    #[arg(long, value_name = "FILE|-")]
    pub(crate) input: Option<PathBuf>,

    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,

    /// Kill a hook (and everything it started) that runs longer than this: seconds, or
    /// "500ms", "2s", "1m", "2h 30m", "1d" (at most 7 days).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub(crate) timeout: Option<Duration>,

    /// Memory cap for each WASM hook, in MiB (default 64).
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) wasm_memory: Option<u32>,
}

/// `--log FILE|none` and `--state DIR`: the dispatcher's `log` and `state` for one run,
/// in place of what `hookctl.toml` says (or its defaults).
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct SettingsArgs {
    /// The audit log for this run instead of `log` in hookctl.toml (an absolute path), or
    /// `none`: no audit row.
    #[arg(long, value_name = "FILE|none", value_parser = parse_log)]
    pub(crate) log: Option<LogArg>,
    /// Where plugins with `state = true` keep their state in this run, instead of `state`
    /// in hookctl.toml (an absolute path).
    #[arg(long, value_name = "DIR", value_parser = parse_state)]
    pub(crate) state: Option<PathBuf>,
}

impl SettingsArgs {
    /// As the settings take them.
    pub(crate) fn overrides(&self) -> crate::config::Overrides {
        crate::config::Overrides {
            log: self.log.clone().map(|l| l.0),
            state: self.state.clone(),
        }
    }
}

/// `--log FILE|none`: the file, or `None` for `none`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LogArg(pub(crate) Option<PathBuf>);

/// `--log`: `none`, or a path as `log` in hookctl.toml takes it.
pub(crate) fn parse_log(s: &str) -> Result<LogArg, String> {
    match s {
        "none" => Ok(LogArg(None)),
        path => crate::config::absolute_path("--log", path).map(|p| LogArg(Some(p))),
    }
}

/// `--state`: a path as `state` in hookctl.toml takes it.
fn parse_state(s: &str) -> Result<PathBuf, String> {
    crate::config::absolute_path("--state", s)
}

/// libvirt's driver and four arguments, as a hook script receives them.
#[derive(Debug, Args)]
pub(crate) struct EventCli {
    /// daemon, qemu, lxc, libxl, bhyve or network.
    #[arg(value_parser = parse_driver)]
    pub(crate) driver: Driver,
    /// The object: domain or network name, `-` for the daemon.
    #[arg(allow_hyphen_values = true)]
    pub(crate) object: OsString,
    /// The operation (prepare, start, started, stopped, release, migrate, restore, reconnect, ...).
    #[arg(allow_hyphen_values = true)]
    pub(crate) op: OsString,
    /// The sub-operation: begin, end or -.
    #[arg(allow_hyphen_values = true)]
    pub(crate) subop: OsString,
    /// The extra argument: -, a release reason, SIGHUP, ...
    #[arg(allow_hyphen_values = true)]
    pub(crate) extra: OsString,
}

impl EventCli {
    /// The four arguments, in libvirt's order.
    pub(crate) fn args(self) -> [OsString; 4] {
        [self.object, self.op, self.subop, self.extra]
    }
}

/// A driver's name, as `clap` parses a value.
pub(crate) fn parse_driver(s: &str) -> Result<Driver, String> {
    s.parse::<Driver>().map_err(|e| e.to_string())
}

/// `--timeout`: the sidecars' grammar and limits.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    virt_hooks_core::backend::parse_duration(s).map_err(|e| e.to_string())
}
