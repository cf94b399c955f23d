//! `hookctl install` / `uninstall`: put `hookctl` in place as libvirt's hook script for
//! some drivers (a symlink) with an empty plugins dir, or take it away again.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap::Args;
use virt_hooks_core::backend::TrustPolicy;
use virt_hooks_core::Driver;

use super::args::parse_driver;
use super::{Outcome, UsageError};
use crate::commands::dispatch::saved_original;

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

/// Where hookctl before 0.2 kept a replaced hook (inside the plugins dir, where
/// `$(dirname "$0")` no longer named the hooks dir); still restored by `uninstall`.
fn legacy_original(dir: &Path, driver: Driver) -> PathBuf {
    dir.join(format!("{}.plugins", driver.as_str()))
        .join(format!("00-{}-original", driver.as_str()))
}

/// The running binary, when nobody but root (or, for `--user`, the caller) can
/// replace it: libvirt runs the hook as root on every event.
fn trusted_self() -> Result<PathBuf, UsageError> {
    let exe = std::env::current_exe()
        .and_then(fs::canonicalize)
        .map_err(|e| UsageError(format!("cannot find hookctl itself: {e}")))?;
    TrustPolicy::current_user().check_file(&exe).map_err(|why| {
        UsageError(format!(
            "refusing to make `{}` libvirt's hook: {}; whoever can replace it would run code as root on the next event\n\thint: install it where only root can write first, e.g. `install -m 0755 target/release/hookctl /usr/bin/`, and run that copy",
            crate::output::path(&exe),
            why.reason()
        ))
    })?;
    Ok(exe)
}

/// Bytes every hookctl binary carries, so that another copy of it (a hard link, the
/// installed one while a build runs `simulate`) is known for what it is.
#[used]
static DISPATCHER_MARK: [u8; 36] = *b"virt-hooks: hookctl dispatcher mark\n";

/// Whether `path` runs a hookctl (this one or any other build): the same file, or an
/// executable that carries [`DISPATCHER_MARK`]. Reads the whole file; not for dispatch.
pub(crate) fn runs_a_hookctl(path: &Path) -> bool {
    use std::io::Read;
    if is_hookctl(path) {
        return true;
    }
    let Ok(mut file) = fs::File::open(path) else {
        return false;
    };
    let finder = memchr::memmem::Finder::new(&DISPATCHER_MARK);
    let mut buf = vec![0u8; 1 << 20];
    let keep = DISPATCHER_MARK.len() - 1;
    let mut filled = 0;
    loop {
        let n = match file.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        filled += n;
        if finder.find(&buf[..filled]).is_some() {
            return true;
        }
        // Keep a tail that a mark split across two reads starts in.
        let tail = filled.saturating_sub(keep);
        buf.copy_within(tail..filled, 0);
        filled -= tail;
    }
}

/// Whether `link` runs this very hookctl.
pub(crate) fn is_hookctl(link: &Path) -> bool {
    std::env::current_exe()
        .and_then(fs::canonicalize)
        .is_ok_and(|exe| is_us(link, &exe))
}

fn is_us(link: &Path, exe: &Path) -> bool {
    fs::canonicalize(link).is_ok_and(|target| target == exe)
}

fn io_err(what: &str, path: &Path, e: io::Error) -> UsageError {
    UsageError(format!("cannot {what} `{}`: {e}", crate::output::path(path)))
}

/// What `install` will do for one driver, decided before anything is touched.
enum Step {
    AlreadyInstalled,
    Link,
    /// The link runs another hookctl (an install from another path, say `/usr/local/bin`
    /// before the package's `/usr/bin`): pointed at this one, never kept as an old hook.
    Relink(PathBuf),
    /// Keep the existing hook under this name, then link.
    ReplaceKeeping(PathBuf),
}

/// One driver's plan: the step, and a saved "original" that is really an earlier
/// hookctl's link (saved by older versions), to be removed: run as an old hook, it
/// failed every event.
struct Plan {
    step: Step,
    stale_saved: Option<PathBuf>,
}

pub(crate) fn install(dir: &Path, args: InstallArgs) -> Outcome {
    let exe = trusted_self()?;
    // Every refusal comes before the first change: a refused install leaves no trace.
    let mut plans = Vec::new();
    for &driver in &args.drivers {
        plans.push((driver, plan(dir, driver, &exe, args.force)?));
    }
    fs::create_dir_all(dir).map_err(|e| io_err("create", dir, e))?;
    // libvirt caches which hooks exist: only a hook that was not there before needs it
    // to look again (a relink or an existing hook kept changes nothing it cached).
    let mut new_hook = false;
    for (driver, Plan { step, stale_saved }) in plans {
        let link = dir.join(driver.as_str());
        let plugins = dir.join(format!("{}.plugins", driver.as_str()));
        fs::create_dir_all(&plugins).map_err(|e| io_err("create", &plugins, e))?;
        if let Some(stale) = stale_saved {
            fs::remove_file(&stale).map_err(|e| io_err("remove", &stale, e))?;
            outln!(
                "{}: removed: it was an earlier hookctl's link, saved as if it were your hook (it failed every event)",
                crate::output::path(&stale)
            );
        }
        match step {
            Step::AlreadyInstalled => {
                outln!("{}: already installed", crate::output::path(&link));
                continue;
            }
            Step::Link => {
                link_in_place(dir, driver, &exe)?;
                new_hook = true;
            }
            Step::Relink(other) => {
                link_in_place(dir, driver, &exe)?;
                outln!(
                    "{}: was the hookctl at {}; relinked in one rename (nothing saved: a hookctl is never kept as an old hook)",
                    crate::output::path(&link),
                    crate::output::path(&other)
                );
            }
            Step::ReplaceKeeping(kept) => {
                replace_keeping(dir, driver, &exe, &kept)?;
                outln!(
                    "{}: moved the existing hook to {} (the dispatcher runs it first, as libvirt did)",
                    crate::output::path(&link),
                    crate::output::path(&kept)
                );
            }
        }
        outln!(
            "{}: -> {} (plugins in {})",
            crate::output::path(&link),
            crate::output::path(&exe),
            crate::output::path(&plugins)
        );
    }
    apparmor_note(&exe);
    if !crate::config::is_system_hooks_dir(dir) {
        outln!(
            "note: {} is not {}: its dispatchers write no audit log, and plugins with `state = true` keep theirs in <driver>.plugins/{}, unless hookctl.toml there sets `log` and `state`",
            crate::output::path(dir),
            crate::output::path(&crate::config::system_hooks_dir()),
            crate::config::OWN_STATE_DIR
        );
    }
    if new_hook {
        outln!("libvirt reads which hooks exist at start: restart it, or send it SIGHUP, to pick them up.");
    }
    Ok(true)
}

/// A new symlink to `exe` under a temporary name in `dir` (a dot name, which libvirt
/// never runs): what [`link_in_place`] renames over the hook.
fn temporary_link(dir: &Path, driver: Driver, exe: &Path) -> Result<PathBuf, UsageError> {
    let tmp = dir.join(format!(".{}.hookctl-new-{}", driver.as_str(), std::process::id()));
    let made = std::os::unix::fs::symlink(exe, &tmp).or_else(|e| {
        // Left by an earlier run that had our pid and was killed: the hooks dir is
        // root's (or, for `--user`, the caller's) alone, so it is ours to replace.
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(e);
        }
        fs::remove_file(&tmp)?;
        std::os::unix::fs::symlink(exe, &tmp)
    });
    made.map_err(|e| io_err("create the link", &tmp, e))?;
    Ok(tmp)
}

/// Makes `<dir>/<driver>` a link to `exe` with one `rename`: libvirt, running the hook
/// meanwhile, finds the old one or the new one, never nothing (a 126/127 failure).
fn link_in_place(dir: &Path, driver: Driver, exe: &Path) -> Result<(), UsageError> {
    let link = dir.join(driver.as_str());
    let tmp = temporary_link(dir, driver, exe)?;
    fs::rename(&tmp, &link).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err("put the link in place at", &link, e)
    })
}

/// Keeps the existing hook as `kept` and links `exe` in its place, with no moment in
/// which the hook is missing: `kept` is a second name of the same file (a hard link,
/// which never replaces an existing `kept`), then the new link is renamed over the
/// hook. When that fails, `kept` is removed again and the hook is as it was.
fn replace_keeping(dir: &Path, driver: Driver, exe: &Path, kept: &Path) -> Result<(), UsageError> {
    let link = dir.join(driver.as_str());
    // Linux's link(2) links a symlink itself, not its target.
    fs::hard_link(&link, kept).map_err(|e| io_err("keep the existing hook as", kept, e))?;
    link_in_place(dir, driver, exe).inspect_err(|_| {
        let _ = fs::remove_file(kept);
    })
}

/// Whether `path` is a link to a hookctl that is gone (`/usr/local/bin/hookctl`,
/// removed after the package was installed): it is hookctl's, not a user's hook.
fn dangling_hookctl_link(path: &Path) -> bool {
    let is_dangling = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
        && fs::metadata(path).is_err_and(|e| e.kind() == io::ErrorKind::NotFound);
    is_dangling
        && fs::read_link(path).is_ok_and(|target| {
            target
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == "hookctl" || n.starts_with("hookctl-"))
        })
}

/// Whether `path` is some hookctl (this one, another build, or a link to a removed one).
fn is_a_hookctl(path: &Path) -> bool {
    runs_a_hookctl(path) || dangling_hookctl_link(path)
}

fn plan(dir: &Path, driver: Driver, exe: &Path, force: bool) -> Result<Plan, UsageError> {
    let stale_saved = [saved_original(dir, driver), legacy_original(dir, driver)]
        .into_iter()
        .find(|saved| fs::symlink_metadata(saved).is_ok() && is_a_hookctl(saved));
    let step = step(dir, driver, exe, force, stale_saved.as_deref())?;
    Ok(Plan { step, stale_saved })
}

fn step(dir: &Path, driver: Driver, exe: &Path, force: bool, stale_saved: Option<&Path>) -> Result<Step, UsageError> {
    let link = dir.join(driver.as_str());
    if is_us(&link, exe) {
        return Ok(Step::AlreadyInstalled);
    }
    if fs::symlink_metadata(&link).is_err() {
        return Ok(Step::Link);
    }
    if is_a_hookctl(&link) {
        let other = fs::canonicalize(&link)
            .or_else(|_| fs::read_link(&link))
            .unwrap_or_else(|_| link.clone());
        if !force {
            return Err(UsageError(format!(
                "`{}` runs another hookctl (`{}`); rerun with --force to point it at this one (a hookctl is replaced, never kept as an old hook)",
                crate::output::path(&link),
                crate::output::path(&other)
            )));
        }
        return Ok(Step::Relink(other));
    }
    let kept = saved_original(dir, driver);
    if !force {
        return Err(UsageError(format!(
            "`{}` exists and is not hookctl; rerun with --force to move it to `{}` (where it keeps running first, from the same directory)",
            crate::output::path(&link),
            crate::output::path(&kept)
        )));
    }
    for earlier in [kept.clone(), legacy_original(dir, driver)] {
        if fs::symlink_metadata(&earlier).is_ok() && Some(earlier.as_path()) != stale_saved {
            return Err(UsageError(format!(
                "`{}` already holds a hook saved by an earlier install; not overwriting it. Move one of them away by hand first",
                crate::output::path(&earlier)
            )));
        }
    }
    // The dispatcher checks what it runs; a hook others can change would fail every
    // event from now on (libvirt ran it as root regardless: say so now).
    let trust = TrustPolicy::current_user();
    let runs_with = |link: &Path| {
        let meta = fs::metadata(link).ok()?;
        let loader = virt_hooks_core::backend::registered_loaders()
            .into_iter()
            .find(|l| l.claims(link, &meta))?;
        loader.check_dependencies(link, &trust).err()
    };
    if let Some(why) = trust.check_file(&link).err().or_else(|| runs_with(&link)) {
        return Err(UsageError(format!(
            "not moving `{}`: {}; libvirt runs it as root, so whoever can change it has root today. Fix its owner and mode (e.g. `chown root: FILE; chmod go-w FILE`), then rerun",
            crate::output::path(&link),
            why.reason()
        )));
    }
    Ok(Step::ReplaceKeeping(kept))
}

/// Where Debian's and Ubuntu's libvirtd AppArmor profile lets libvirtd execute a hook.
const APPARMOR_EXEC_OK: [&str; 5] = ["/usr/bin/", "/usr/sbin/", "/bin/", "/sbin/", "/etc/libvirt/hooks/"];

/// Whether Debian's/Ubuntu's libvirtd profile lets libvirtd execute `exe`.
fn apparmor_lets_libvirtd_run(exe: &Path) -> bool {
    APPARMOR_EXEC_OK.iter().any(|p| exe.starts_with(p))
}

/// With AppArmor enforcing, libvirtd may be denied running a hookctl outside the
/// profile's paths (a hand install in /usr/local/bin): say how to allow it.
fn apparmor_note(exe: &Path) {
    let enabled = fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|v| v.trim() == "Y");
    if enabled && !apparmor_lets_libvirtd_run(exe) {
        outln!(
            "note: AppArmor is enabled, and Debian's/Ubuntu's libvirtd profile lets libvirtd run hooks only from /usr/bin, /usr/sbin, /bin, /sbin or /etc/libvirt/hooks. If libvirtd's hooks fail with \"Permission denied\", add\n    {} PUx,\nto /etc/apparmor.d/local/usr.sbin.libvirtd and reload it (apparmor_parser -r /etc/apparmor.d/usr.sbin.libvirtd), or install hookctl as /usr/bin/hookctl.",
            crate::output::path(exe)
        );
    }
}

pub(crate) fn uninstall(dir: &Path, args: UninstallArgs) -> Outcome {
    let exe = std::env::current_exe()
        .and_then(fs::canonicalize)
        .map_err(|e| UsageError(format!("cannot find hookctl itself: {e}")))?;
    // Before anything changes: an object whose state is live still has its `release`
    // to come, and once hookctl is not the hook it never reaches the plugins.
    let ours: Vec<Driver> = (args.drivers.iter().copied())
        .filter(|d| is_us(&dir.join(d.as_str()), &exe))
        .collect();
    let held = super::state::live_state(dir, &ours);
    if held.kept > 0 {
        eprintln!(
            "hookctl: note: {} kept state director{} stay: their plugins failed to undo work that their notes describe (`hookctl state` lists them)",
            held.kept,
            if held.kept == 1 { "y" } else { "ies" }
        );
    }
    if !held.is_empty() {
        if !args.force {
            let objects = held.describe(true);
            if held.live.is_empty() && held.orphaned.is_empty() {
                eprintln!(
                    "hookctl: not uninstalling: it cannot tell whether guests or networks hold live plugin state, whose last event (`release`) would then never reach their plugins:\n{objects}Fix that (`hookctl check` names it), then uninstall again; or pass --force. Nothing was changed."
                );
            } else {
                eprintln!(
                    "hookctl: not uninstalling: once hookctl is not libvirt's hook, these objects' last event (`release`) never reaches the plugins that hold their state (hugepages stay reserved, firewall rules stay):\n{objects}Release them first, then uninstall again; or pass --force to leave their state behind. Nothing was changed."
                );
            }
            return Ok(false);
        }
        let objects = held.describe(false);
        eprintln!(
            "hookctl: warning: uninstalling with --force: these objects' `release` will not reach the plugins that hold their state:\n{objects}`hookctl state` lists what is left; undo it by hand."
        );
    }
    for driver in args.drivers {
        let link = dir.join(driver.as_str());
        if !is_us(&link, &exe) {
            match fs::symlink_metadata(&link) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    outln!("{}: no hook here, nothing to remove", crate::output::path(&link));
                }
                _ => outln!("{}: not hookctl, left alone", crate::output::path(&link)),
            }
            continue;
        }
        let kept = [saved_original(dir, driver), legacy_original(dir, driver)]
            .into_iter()
            .find(|k| fs::symlink_metadata(k).is_ok());
        match kept {
            // Renamed over the link: libvirt finds one hook or the other, never none.
            Some(kept) => {
                fs::rename(&kept, &link).map_err(|e| io_err("restore", &kept, e))?;
                outln!("{}: restored the original hook", crate::output::path(&link));
            }
            None => {
                fs::remove_file(&link).map_err(|e| io_err("remove", &link, e))?;
                outln!("{}: removed (the plugins dir is kept)", crate::output::path(&link));
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apparmor_paths() {
        assert!(apparmor_lets_libvirtd_run(Path::new("/usr/bin/hookctl")));
        assert!(apparmor_lets_libvirtd_run(Path::new("/etc/libvirt/hooks/qemu")));
        assert!(!apparmor_lets_libvirtd_run(Path::new("/usr/local/bin/hookctl")));
        assert!(!apparmor_lets_libvirtd_run(Path::new("/usr/binx/hookctl")));
    }
}
