//! `hookctl install` / `uninstall`: put `hookctl` in place as libvirt's hook script for
//! some drivers (a symlink) with an empty plugins dir, or take it away again.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use hooks_core::Driver;

use crate::cli::{InstallArgs, Outcome, UsageError};

/// The hooks dir of unprivileged (session) daemons: `$XDG_CONFIG_HOME/libvirt/hooks`.
pub(crate) fn user_hooks_dir() -> Result<PathBuf, UsageError> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("libvirt/hooks"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".config/libvirt/hooks"))
        .ok_or_else(|| UsageError("--user needs $XDG_CONFIG_HOME or $HOME".into()))
}

fn original_name(driver: Driver) -> String {
    format!("00-{}-original", driver.as_str())
}

fn is_us(link: &Path, exe: &Path) -> bool {
    fs::canonicalize(link).is_ok_and(|target| target == exe)
}

fn io_err(what: &str, path: &Path, e: io::Error) -> UsageError {
    UsageError(format!("cannot {what} `{}`: {e}", path.display()))
}

pub(crate) fn install(dir: &Path, args: InstallArgs) -> Outcome {
    let exe = std::env::current_exe()
        .and_then(fs::canonicalize)
        .map_err(|e| UsageError(format!("cannot find hookctl itself: {e}")))?;
    fs::create_dir_all(dir).map_err(|e| io_err("create", dir, e))?;
    for driver in args.drivers {
        let link = dir.join(driver.as_str());
        let plugins = dir.join(format!("{}.plugins", driver.as_str()));
        fs::create_dir_all(&plugins).map_err(|e| io_err("create", &plugins, e))?;
        if is_us(&link, &exe) {
            println!("{}: already installed", link.display());
            continue;
        }
        if fs::symlink_metadata(&link).is_ok() {
            if !args.force {
                return Err(UsageError(format!(
                    "`{}` exists and is not hookctl; rerun with --force to move it to `{}` (where it keeps running, first)",
                    link.display(),
                    plugins.join(original_name(driver)).display()
                )));
            }
            let kept = plugins.join(original_name(driver));
            fs::rename(&link, &kept).map_err(|e| io_err("move", &link, e))?;
            println!("{}: moved the existing hook to {}", link.display(), kept.display());
        }
        std::os::unix::fs::symlink(&exe, &link).map_err(|e| io_err("create the link", &link, e))?;
        println!(
            "{}: -> {} (plugins in {})",
            link.display(),
            exe.display(),
            plugins.display()
        );
    }
    println!("libvirt reads which hooks exist at start: restart it, or send it SIGHUP, to pick them up.");
    Ok(true)
}

pub(crate) fn uninstall(dir: &Path, args: InstallArgs) -> Outcome {
    let exe = std::env::current_exe()
        .and_then(fs::canonicalize)
        .map_err(|e| UsageError(format!("cannot find hookctl itself: {e}")))?;
    for driver in args.drivers {
        let link = dir.join(driver.as_str());
        if !is_us(&link, &exe) {
            println!("{}: not hookctl, left alone", link.display());
            continue;
        }
        fs::remove_file(&link).map_err(|e| io_err("remove", &link, e))?;
        let kept = dir
            .join(format!("{}.plugins", driver.as_str()))
            .join(original_name(driver));
        if fs::symlink_metadata(&kept).is_ok() {
            fs::rename(&kept, &link).map_err(|e| io_err("restore", &kept, e))?;
            println!("{}: restored the original hook", link.display());
        } else {
            println!("{}: removed (the plugins dir is kept)", link.display());
        }
    }
    Ok(true)
}
