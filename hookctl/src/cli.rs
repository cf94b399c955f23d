//! The top-level parser and the dispatch table: which subcommand runs, with the
//! arguments its module defines (`commands::*`); exit codes 0/1/2.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::commands;

const DEFAULT_HOOKS_DIR: &str = crate::config::SYSTEM_HOOKS_DIR;

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
    #[command(
        after_help = "Positional values may start with `-` (`-` is the usual \"none\"); `--` ends the options.
--log and --state are for hookctl's dispatcher: they apply when <DIR>/<DRIVER> is hookctl (`install`)."
    )]
    Run(commands::run::RunArgs),
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
    Simulate(commands::simulate::SimulateArgs),
    /// Print the run order per driver, each entry's backend, and skipped entries with the reason.
    List(commands::list::ListArgs),
    /// Load every hook and name each broken file and why.
    Check(commands::check::CheckArgs),
    /// Show the dispatcher's audit log: one row per hook event; a failed one names the
    /// plugin and the line that explains it (the last it logged at error, else the first
    /// line of its stderr).
    #[command(after_help = commands::log::HELP)]
    Log(commands::log::LogArgs),
    /// Run the plugins of a plugins dir for one event, as the installed dispatcher does.
    #[command(
        after_help = "Installed as /etc/libvirt/hooks/<driver> (see `install`), hookctl does this by itself \
with <dir>/<driver>.plugins/ when libvirt calls it with four arguments."
    )]
    Dispatch(commands::dispatch::DispatchArgs),
    /// Install hookctl as libvirt's hook for these drivers (a symlink) with a plugins dir.
    Install(commands::install::InstallArgs),
    /// Remove hookctl as libvirt's hook for these drivers, restoring a moved original;
    /// refused while a guest or network holds live plugin state (unless --force).
    Uninstall(commands::install::UninstallArgs),
    /// List plugins' per-object state (live and kept), or clear a kept one.
    #[command(after_help = commands::state::HELP, args_conflicts_with_subcommands = true)]
    State(commands::state::StateArgs),
    /// Write the man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateAssets(commands::assets::AssetsArgs),
}

pub(crate) fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if let Some(driver) = commands::dispatch::invoked_as_hook(&args) {
        let plugins = commands::dispatch::plugins_dir_for(Path::new(&args[0]), driver);
        choose_wasm_cache(&commands::dispatch::hooks_dir_of(&plugins, driver).unwrap_or(plugins.clone()));
        let [_, object, op, subop, extra] =
            <[OsString; 5]>::try_from(args).unwrap_or_else(|_| unreachable!("checked: five arguments"));
        let settings = crate::config::Overrides::default();
        return if commands::dispatch::dispatch(&plugins, driver, [object, op, subop, extra], &settings, false) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    let cli = Cli::parse();
    let hooks_dir = std::path::absolute(&cli.hooks_dir).unwrap_or(cli.hooks_dir.clone());
    match &cli.command {
        Command::Dispatch(args) => choose_wasm_cache(
            &commands::dispatch::hooks_dir_of(&args.plugins, args.event.driver).unwrap_or(args.plugins.clone()),
        ),
        _ => choose_wasm_cache(&hooks_dir),
    }
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
        Command::GenerateAssets(args) => commands::assets::exec(args, Cli::command()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(commands::UsageError(msg)) => {
            // Errors name files and objects: escaped, their own line breaks kept.
            eprintln!("hookctl: error: {}", virt_hooks_core::text::escape_lines(&msg));
            ExitCode::from(2)
        }
    }
}

/// Where `install`/`uninstall` work: the session daemon's dir with `--user`.
fn install_dir(user: bool, given: &Path, hooks_dir: PathBuf) -> Result<PathBuf, commands::UsageError> {
    match (user, given == Path::new(DEFAULT_HOOKS_DIR)) {
        (true, false) => Err(commands::UsageError(
            "--user and --hooks-dir are alternatives; give one".into(),
        )),
        (true, true) => commands::install::user_hooks_dir(),
        (false, _) => Ok(hooks_dir),
    }
}

/// Gives this process's WASM sandbox no disk cache when root works on a hooks dir other
/// than the system one: trying modules in a scratch dir must leave the system's cache
/// (`/var/cache/virt-hooks/wasm`) alone, and writing a cache into that dir would write
/// into whatever it is (a checkout, the package's examples). Other users keep theirs
/// (`~/.cache/virt-hooks/wasm`); `VIRT_HOOKS_WASM_CACHE`, when set, wins.
fn choose_wasm_cache(hooks_dir: &Path) {
    #[cfg(feature = "wasm")]
    if std::env::var_os("VIRT_HOOKS_WASM_CACHE").is_none()
        && rustix::process::geteuid().is_root()
        && !crate::config::is_system_hooks_dir(hooks_dir)
    {
        let _ = virt_hooks_wasm::Sandbox::configure_global_cache(None);
    }
    #[cfg(not(feature = "wasm"))]
    let _ = hooks_dir;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(value: &str) -> Result<Option<std::time::Duration>, String> {
        let args = [
            "hookctl",
            "run",
            "qemu",
            "vm",
            "prepare",
            "begin",
            "-",
            "--timeout",
            value,
        ];
        match Cli::try_parse_from(args).map_err(|e| e.to_string())?.command {
            Command::Run(run) => Ok(run.input.timeout),
            other => panic!("parsed as {other:?}"),
        }
    }

    /// `--timeout` reads what a sidecar's `timeout` reads, with its bounds.
    #[test]
    fn timeout_takes_the_sidecars_grammar_and_bounds() {
        use std::time::Duration;
        assert_eq!(timeout("1d"), Ok(Some(Duration::from_secs(86_400))));
        assert_eq!(timeout("2h 30m"), Ok(Some(Duration::from_secs(9_000))));
        assert_eq!(timeout("0.5"), Ok(Some(Duration::from_millis(500))));
        for (value, want) in [
            ("8d", "too long"),
            ("99999999999999999999d", "too long"),
            ("0s", "0 would"),
        ] {
            let e = timeout(value).unwrap_err();
            assert!(e.contains(want) && e.contains("--timeout"), "{value}: {e}");
        }
    }
}
