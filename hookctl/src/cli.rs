//! Argument parsing and dispatch to the subcommands; exit codes 0/1/2.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hooks_core::Driver;

use crate::commands;

const DEFAULT_HOOKS_DIR: &str = "/etc/libvirt/hooks";

const EXAMPLES: &str = "\
Examples:
  hookctl --hooks-dir examples/hooks simulate qemu start demo --input examples/domain.xml
  hookctl run qemu web1 prepare begin - --input /tmp/web1.xml --timeout 30
  hookctl run qemu web1 migrate begin - --input web1.xml > rewritten.xml
  hookctl run daemon - reload begin SIGHUP --json
  hookctl list qemu
  hookctl check
  hookctl install qemu daemon network      # then drop plugins into /etc/libvirt/hooks/qemu.plugins/

Exit status: 0 every hook succeeded (or the operation would go through), 1 a hook failed
(or the operation would be refused), 2 usage error or unreadable hooks dir.";

/// Run, simulate, list and check libvirt hooks (daemon, qemu, lxc, libxl, bhyve, network).
#[derive(Debug, Parser)]
#[command(name = "hookctl", version, after_help = EXAMPLES)]
pub(crate) struct Cli {
    /// The hooks directory.
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_HOOKS_DIR)]
    pub(crate) hooks_dir: PathBuf,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Fire one event through <DIR>/<DRIVER> and <DIR>/<DRIVER>.d/ exactly as libvirt would.
    #[command(after_help = "Positional values may start with `-` (`-` is the usual \"none\"); `--` ends the options.")]
    Run(RunArgs),
    /// Run a whole lifecycle sequence and print each step: test hooks without a hypervisor.
    /// The plugins RUN FOR REAL (they reserve hugepages, add firewall rules, ...); only
    /// their state directories are temporary. --dry-run runs none.
    #[command(after_help = "Scenarios: start, stop, restore, migrate-in, migrate-out, reconnect; \
for the daemon driver: start, reload, shutdown (OBJECT may be omitted).

Without --dry-run every matching plugin runs for real, as root if you are root: what it does
to the host (hugepages, iptables, GPU binding) is done. Its per-guest state goes to a
temporary directory (or --state DIR), so a plugin that undoes its work at `release` finds
nothing to undo in a later real event. --dry-run shows which plugins would run, in order,
and what each one's [match] decided, running none.")]
    Simulate(SimulateArgs),
    /// Print the run order per driver, each entry's backend, and skipped entries with the reason.
    List(ListArgs),
    /// Load every hook and name each broken file and why.
    Check(CheckArgs),
    /// Show the dispatcher's audit log: one row per hook event; a failed one names the
    /// plugin and the first line of its stderr.
    #[command(after_help = LOG_HELP)]
    Log(LogArgs),
    /// Run the plugins of a plugins dir for one event, as the installed dispatcher does.
    #[command(
        after_help = "Installed as /etc/libvirt/hooks/<driver> (see `install`), hookctl does this by itself \
with <dir>/<driver>.plugins/ when libvirt calls it with four arguments."
    )]
    Dispatch(DispatchArgs),
    /// Install hookctl as libvirt's hook for these drivers (a symlink) with a plugins dir.
    Install(InstallArgs),
    /// Remove hookctl as libvirt's hook for these drivers, restoring a moved original;
    /// refused while a guest or network holds live plugin state (unless --force).
    Uninstall(UninstallArgs),
    /// List plugins' per-object state (live and kept), or clear a kept one.
    #[command(after_help = STATE_HELP, args_conflicts_with_subcommands = true)]
    State(StateArgs),
    /// Write the man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateAssets {
        /// Where to write `man/` and `completions/`.
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub(crate) struct DispatchArgs {
    /// The plugins dir (exec scripts, `*.so`, `*.wasm`, sidecar `*.toml` settings).
    #[arg(long, value_name = "DIR")]
    pub(crate) plugins: PathBuf,
    #[command(flatten)]
    pub(crate) event: EventCli,
}

#[derive(Debug, Args)]
pub(crate) struct InstallArgs {
    /// Drivers to install for: daemon, qemu, lxc, libxl, bhyve, network.
    #[arg(required = true, value_parser = parse_driver)]
    pub(crate) drivers: Vec<Driver>,
    /// The hooks dir of session (unprivileged) daemons: $XDG_CONFIG_HOME/libvirt/hooks.
    #[arg(long)]
    pub(crate) user: bool,
    /// Replace an existing hook script: it is kept as <driver>.pre-hookctl beside it and
    /// keeps running, first.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct UninstallArgs {
    /// Drivers to uninstall for: daemon, qemu, lxc, libxl, bhyve, network.
    #[arg(required = true, value_parser = parse_driver)]
    pub(crate) drivers: Vec<Driver>,
    /// The hooks dir of session (unprivileged) daemons: $XDG_CONFIG_HOME/libvirt/hooks.
    #[arg(long)]
    pub(crate) user: bool,
    /// Uninstall even while objects hold live state: their `release` will then never
    /// reach the plugins that hold it (hugepages stay reserved, firewall rules stay).
    #[arg(long)]
    pub(crate) force: bool,
}

const STATE_HELP: &str = "\
A plugin with `state = true` keeps a directory per guest or network from the object's first
event until its last (`release end`; a network's `stopped end`). LIVE: that last event has not
come (the object runs, or libvirt lost track of it). KEPT: the plugin failed the last event,
so what it did may not be undone; the note says why.

Examples:
  hookctl state                         # every object's state, for every driver
  hookctl state --json
  hookctl state clear qemu web1         # remove web1's kept state, once its work is undone
  hookctl state clear qemu web1 10-fw --force   # remove live state (its release will miss it)

Exit status: 0; 1 when a state root cannot be read (listing) or a live directory is not
removed without --force (clear); 2 usage error or nothing to clear.";

#[derive(Debug, Args)]
pub(crate) struct StateArgs {
    #[command(subcommand)]
    pub(crate) action: Option<StateAction>,
    /// Only this driver (when listing).
    #[arg(value_parser = parse_driver)]
    pub(crate) driver: Option<Driver>,
    /// Print JSON (when listing).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum StateAction {
    /// Remove an object's kept state (every plugin's, or PLUGIN's); live state only with --force.
    Clear(StateClearArgs),
}

#[derive(Debug, Args)]
pub(crate) struct StateClearArgs {
    /// daemon, qemu, lxc, libxl, bhyve or network.
    #[arg(value_parser = parse_driver)]
    pub(crate) driver: Driver,
    /// The guest or network.
    #[arg(allow_hyphen_values = true)]
    pub(crate) object: OsString,
    /// Only this plugin's directory (its file name).
    #[arg(allow_hyphen_values = true)]
    pub(crate) plugin: Option<OsString>,
    /// Remove live state too: the object's `release` will then find nothing to undo.
    #[arg(long)]
    pub(crate) force: bool,
}

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
    /// "500ms", "2s", "1m" (at most 7 days).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub(crate) timeout: Option<Duration>,

    /// Memory cap for each WASM hook, in MiB (default 64).
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) wasm_memory: Option<u32>,
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
    pub(crate) fn args(self) -> [OsString; 4] {
        [self.object, self.op, self.subop, self.extra]
    }
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) event: EventCli,
    #[command(flatten)]
    pub(crate) input: InputArgs,
}

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
    #[command(flatten)]
    pub(crate) input: InputArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only this driver.
    #[arg(value_parser = parse_driver)]
    pub(crate) driver: Option<Driver>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Only this driver.
    #[arg(value_parser = parse_driver)]
    pub(crate) driver: Option<Driver>,
}

const LOG_HELP: &str = "\
Reads the log and its rotations (<log>.5 … <log>.1, oldest first; -v says which files on
stderr). A failed event's DETAIL starts with why: `refused:` (a plugin said no), `not run:`
(a plugin could not be run), `error:` (a plugin broke); an event that went through despite a
failure says `ignored:`; one whose XML a filter rewrote says so. When the rows come from
more than one caller (libvirtd, a shell) or hooks dir, CALLER and HOOKS DIR columns say
which. Control characters and bidi overrides from the log are shown escaped
(\\x1b, \\u{202e}); --json prints the lines as they are (on a terminal, with those as \\u
escapes). A line that cannot be read (not an audit record, or longer than 1 MiB) is a row
marked UNREADABLE, with its line number and what can still be read of it.

Examples:
  hookctl log --failed --object web1          # why did web1 not start?
  hookctl log --plugin 20-limits.sh --since 1d
  hookctl log --failed not-run --since '2024-05-01 08:00' --until '2024-05-01 18:00'
  hookctl log --plugins --object web1 --last 3  # each plugin's result and duration
  hookctl log --follow                        # watch events as libvirt fires them

Exit status: 0, also when nothing matches (stderr says so); 2 when a log cannot be read
or --file does not exist.";

#[derive(Debug, Args)]
pub(crate) struct LogArgs {
    /// The audit log to read (with its rotations PATH.1 … PATH.5). Default: the log each
    /// <DIR>/<driver>.plugins/hookctl.toml names (`log = …`), else
    /// /var/log/libvirt/hookctl.jsonl.
    #[arg(long, value_name = "PATH")]
    pub(crate) file: Option<PathBuf>,
    /// Only events for this guest or network (its exact name; `-` for the daemon).
    #[arg(long, value_name = "NAME")]
    pub(crate) object: Option<String>,
    /// Only this driver: daemon, qemu, lxc, libxl, bhyve or network.
    #[arg(long, value_name = "D", value_parser = parse_driver)]
    pub(crate) driver: Option<Driver>,
    /// Only this operation (prepare, start, started, stopped, release, migrate, ...), or
    /// OP/SUBOP (prepare/begin).
    #[arg(long, value_name = "OP")]
    pub(crate) op: Option<String>,
    /// Only events this plugin ran in: its path or its file name (20-x.sh). With --failed,
    /// only those in which it failed.
    #[arg(long, value_name = "NAME")]
    pub(crate) plugin: Option<String>,
    /// Only failed events (a plugin refused, could not run, timed out or crashed); with
    /// KIND, only failures of that kind. `ignored` and `all` include events that went
    /// through despite a failure (an optional plugin's, or one libvirt ignores).
    #[arg(long, value_name = "KIND", num_args = 0..=1, default_missing_value = "failed", hide_default_value = true)]
    pub(crate) failed: Option<commands::log::FailedKind>,
    /// Only events since WHEN: a duration back from now (10m, 2h, 1d) or a time
    /// (2024-05-01T12:00:00Z, 2024-05-01T12:00:00+02:00, or local "2024-05-01 12:00").
    #[arg(long, value_name = "WHEN", value_parser = commands::log::parse_since)]
    pub(crate) since: Option<std::time::SystemTime>,
    /// Only events up to WHEN (the same forms as --since: `--until 1h` ends an hour ago).
    #[arg(long, value_name = "WHEN", value_parser = commands::log::parse_since, conflicts_with = "follow")]
    pub(crate) until: Option<std::time::SystemTime>,
    /// One row per plugin run (its result and its own duration) instead of one per event.
    #[arg(long)]
    pub(crate) plugins: bool,
    /// Say on stderr which files were read.
    #[arg(long, short = 'v')]
    pub(crate) verbose: bool,
    /// Only the last N matching events.
    #[arg(long, short = 'n', value_name = "N")]
    pub(crate) last: Option<usize>,
    /// Print the matching audit lines unchanged (JSON, one per line) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Keep reading: print new events as they are logged, across rotations (Ctrl-C ends).
    #[arg(long, short = 'f')]
    pub(crate) follow: bool,
}

fn parse_driver(s: &str) -> Result<Driver, String> {
    s.parse::<Driver>().map_err(|e| e.to_string())
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    hooks_core::backend::parse_duration(s).map_err(|e| e.to_string())
}

/// An error that ends the program with exit status 2 (usage, unreadable dir or input).
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

/// What a subcommand returns: whether everything succeeded (0) or a hook failed (1).
pub(crate) type Outcome = Result<bool, UsageError>;

pub(crate) fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if let Some(driver) = commands::dispatch::invoked_as_hook(&args) {
        let plugins = commands::dispatch::plugins_dir_for(Path::new(&args[0]), driver);
        let [_, object, op, subop, extra] =
            <[OsString; 5]>::try_from(args).unwrap_or_else(|_| unreachable!("checked: five arguments"));
        return if commands::dispatch::dispatch(&plugins, driver, [object, op, subop, extra]) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    let cli = Cli::parse();
    let hooks_dir = std::path::absolute(&cli.hooks_dir).unwrap_or(cli.hooks_dir.clone());
    let result = match cli.command {
        Command::Run(args) => commands::run::exec(&hooks_dir, args),
        Command::Simulate(args) => commands::simulate::exec(&hooks_dir, args),
        Command::List(args) => commands::list::exec(&hooks_dir, args),
        Command::Check(args) => commands::check::exec(&hooks_dir, args),
        Command::Log(args) => commands::log::exec(&hooks_dir, cli.hooks_dir != Path::new(DEFAULT_HOOKS_DIR), args),
        Command::Dispatch(args) => commands::dispatch::exec(args),
        Command::Install(args) => {
            install_dir(args.user, &cli.hooks_dir, hooks_dir).and_then(|d| commands::install::install(&d, args))
        }
        Command::Uninstall(args) => {
            install_dir(args.user, &cli.hooks_dir, hooks_dir).and_then(|d| commands::install::uninstall(&d, args))
        }
        Command::State(args) => commands::state::exec(&hooks_dir, args),
        Command::GenerateAssets { dir } => commands::assets::exec(&dir),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(UsageError(msg)) => {
            // Errors name files and objects: escaped, their own line breaks kept.
            eprintln!("hookctl: error: {}", hooks_core::text::escape_lines(&msg));
            ExitCode::from(2)
        }
    }
}

/// Where `install`/`uninstall` work: the session daemon's dir with `--user`.
fn install_dir(user: bool, given: &Path, hooks_dir: PathBuf) -> Result<PathBuf, UsageError> {
    match (user, given == Path::new(DEFAULT_HOOKS_DIR)) {
        (true, false) => Err(UsageError("--user and --hooks-dir are alternatives; give one".into())),
        (true, true) => commands::install::user_hooks_dir(),
        (false, _) => Ok(hooks_dir),
    }
}

/// The hooks dir must be a readable directory; libvirt would simply run nothing, but
/// here a wrong path is almost always a typo.
pub(crate) fn require_dir(dir: &Path) -> Result<(), UsageError> {
    match std::fs::read_dir(dir) {
        Ok(_) => Ok(()),
        Err(e) => Err(UsageError(format!("cannot read hooks dir `{}`: {e}", dir.display()))),
    }
}
