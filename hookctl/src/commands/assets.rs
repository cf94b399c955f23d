//! `hookctl generate-assets DIR` (hidden): the man pages and shell completions that the
//! Debian package ships (`packaging/build-deb.sh`), made from the same definition as
//! `--help`, so they cannot drift from it.

use std::path::{Path, PathBuf};

use clap::Args;
use clap_complete::Shell;

use super::{Outcome, UsageError};

/// `generate-assets DIR`.
#[derive(Debug, Args)]
pub(crate) struct AssetsArgs {
    /// Where to write `man/` and `completions/`.
    dir: PathBuf,
}

/// Writes `DIR/man/hookctl.1` and `DIR/man/hookctl-<subcommand>.1` for every visible
/// subcommand of `cli` (the whole program's parser), and
/// `DIR/completions/{hookctl.bash,_hookctl,hookctl.fish}`.
pub(crate) fn exec(args: AssetsArgs, cli: clap::Command) -> Outcome {
    let dir = args.dir.as_path();
    let write = || -> std::io::Result<()> {
        let man = dir.join("man");
        let completions = dir.join("completions");
        std::fs::create_dir_all(&man)?;
        std::fs::create_dir_all(&completions)?;
        // Built, subcommands are named `hookctl-run` and so on; `help` needs no page.
        let mut cmd = cli.clone().disable_help_subcommand(true);
        cmd.build();
        let source = format!("hookctl {}", cmd.get_version().unwrap_or_default());
        man_pages(&cmd, &source, &man)?;
        let mut cmd = without_hidden_subcommands(&cli);
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            clap_complete::generate_to(shell, &mut cmd, "hookctl", &completions)?;
        }
        Ok(())
    };
    write().map_err(|e| UsageError(format!("cannot write to `{}`: {e}", dir.display())))?;
    Ok(true)
}

/// One page for `cmd` and one for each visible subcommand, all with the program's name
/// and version in the footer (clap's subcommands have no version of their own).
fn man_pages(cmd: &clap::Command, source: &str, dir: &Path) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, source, dir)?;
    }
    clap_mangen::Man::new(cmd.clone()).source(source).generate_to(dir)?;
    Ok(())
}

/// clap_complete offers hidden subcommands too (`generate-assets`): complete a copy of
/// the command that has only the visible ones.
fn without_hidden_subcommands(cmd: &clap::Command) -> clap::Command {
    clap::Command::new("hookctl")
        .version(env!("CARGO_PKG_VERSION"))
        .about(cmd.get_about().cloned().unwrap_or_default())
        .args(cmd.get_arguments().cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}
