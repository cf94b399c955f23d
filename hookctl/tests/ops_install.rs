//! `install --force` as an operator runs it on a live host: from a second hookctl (an
//! upgrade from `/usr/local/bin` to the package's `/usr/bin`), and while libvirt fires
//! events. A hookctl is never kept as the user's old hook, and the hook is never missing.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::contains;

mod common;
use common::*;

/// A user's hook from before hookctl.
const USER_HOOK: &str = "#!/bin/sh\ncat >/dev/null\nexit 0\n";

/// Two copies of hookctl in directories only root (the owner) can write, as the hand
/// installed one and the packaged one would be: (temp dir, hooks dir, first, second).
fn two_hookctls() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let copy = |dir: &str| {
        let bin = tmp.path().join(dir);
        fs::create_dir(&bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        let copy = bin.join("hookctl");
        // Copied by `cp`, not here: a write descriptor of ours, inherited by a child that
        // another test thread forks meanwhile, would make running the copy fail with
        // "text file busy".
        let copied = StdCommand::new("cp").arg(exe()).arg(&copy).status().unwrap();
        assert!(copied.success());
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
        copy
    };
    let (first, second) = (copy("local-bin"), copy("usr-bin"));
    let hooks = tmp.path().join("hooks");
    // The dispatcher's log and state stay in the temp dir, and no journal entries.
    let plugins = hooks.join("qemu.plugins");
    fs::create_dir_all(&plugins).unwrap();
    fs::write(
        plugins.join("hookctl.toml"),
        format!(
            "log = \"{}\"\nstate = \"{}\"\njournal = false\n",
            tmp.path().join("audit.jsonl").display(),
            tmp.path().join("state").display()
        ),
    )
    .unwrap();
    (tmp, hooks, first, second)
}

fn with(hookctl: &Path, hooks: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(hookctl);
    cmd.env("VIRT_HOOKS_WASM_CACHE", "off")
        .arg("--hooks-dir")
        .arg(hooks)
        .args(args);
    cmd
}

/// Entries of the hooks dir a failed or interrupted swap would leave behind.
fn leftovers(hooks: &Path) -> Vec<String> {
    fs::read_dir(hooks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("hookctl-new"))
        .collect()
}

#[test]
fn install_force_from_a_second_hookctl_relinks_and_never_saves_the_first() {
    let (_tmp, hooks, first, second) = two_hookctls();
    let pre = hooks.join("qemu.pre-hookctl");
    // A host with no hook of its own: the first hookctl's link must not become one.
    with(&first, &hooks, &["install", "qemu"]).assert().success();
    with(&second, &hooks, &["install", "qemu"])
        .assert()
        .code(2)
        .stderr(contains("runs another hookctl"))
        .stderr(contains("rerun with --force"));
    with(&second, &hooks, &["install", "--force", "qemu"])
        .assert()
        .success()
        .stdout(contains("relinked in one rename"));
    assert_eq!(fs::read_link(hooks.join("qemu")).unwrap(), second);
    assert!(
        fs::symlink_metadata(&pre).is_err(),
        "the first hookctl was saved as an old hook"
    );
    as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"])
        .assert()
        .success();

    // A host with its own hook, saved by the first install: the upgrade keeps it, byte
    // for byte, and it still runs first.
    fs::remove_file(hooks.join("qemu")).unwrap();
    script(&hooks.join("qemu"), USER_HOOK);
    with(&first, &hooks, &["install", "--force", "qemu"]).assert().success();
    assert_eq!(fs::read_to_string(&pre).unwrap(), USER_HOOK);
    with(&second, &hooks, &["install", "--force", "qemu"])
        .assert()
        .success();
    assert_eq!(fs::read_link(hooks.join("qemu")).unwrap(), second);
    assert_eq!(fs::read_to_string(&pre).unwrap(), USER_HOOK);
    as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"])
        .assert()
        .success();
    // Uninstalling puts the user's hook back.
    with(&second, &hooks, &["uninstall", "qemu"]).assert().success();
    assert_eq!(fs::read_to_string(hooks.join("qemu")).unwrap(), USER_HOOK);
    assert!(leftovers(&hooks).is_empty(), "{:?}", leftovers(&hooks));
}

#[test]
fn a_hookctl_saved_as_the_old_hook_by_an_earlier_version_is_removed() {
    let (_tmp, hooks, first, second) = two_hookctls();
    // What hookctl before this fix left: the first hookctl's link kept as the old hook,
    // which then ran as `qemu.pre-hookctl` and failed every event.
    std::os::unix::fs::symlink(&first, hooks.join("qemu.pre-hookctl")).unwrap();
    std::os::unix::fs::symlink(&second, hooks.join("qemu")).unwrap();
    as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"]).assert().code(1);
    with(&second, &hooks, &["install", "qemu"])
        .assert()
        .success()
        .stdout(contains("it was an earlier hookctl's link"));
    assert!(fs::symlink_metadata(hooks.join("qemu.pre-hookctl")).is_err());
    as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"])
        .assert()
        .success();

    // A link to a hookctl that is gone (removed from /usr/local/bin) is hookctl's too.
    let gone = hooks.parent().unwrap().join("gone/hookctl");
    fs::remove_file(hooks.join("qemu")).unwrap();
    std::os::unix::fs::symlink(&gone, hooks.join("qemu")).unwrap();
    with(&second, &hooks, &["install", "--force", "qemu"])
        .assert()
        .success();
    assert!(fs::symlink_metadata(hooks.join("qemu.pre-hookctl")).is_err());
    as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"])
        .assert()
        .success();
}

/// How libvirt finds a hook before it runs it (`virFileIsExecutable`): a regular file,
/// through links, with an execute bit.
fn libvirt_sees_a_hook(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What went wrong with one event while the hook was being swapped.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Miss {
    /// libvirt would have failed with 127 ("not found") or 126 ("cannot execute"): the
    /// hook was not there, or was there but not runnable.
    HookMissing(String),
    /// Another failure (the event started, and something inside it did not).
    Failed(String),
}

/// Fires one event through `qemu` as libvirt does.
fn fire_once(hooks: &Path) -> Option<Miss> {
    let out = StdCommand::new(hooks.join("qemu"))
        .args(["vm", "prepare", "begin", "-"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("VIRT_HOOKS_WASM_CACHE", "off")
        .stdin(Stdio::null())
        .output();
    match out {
        Err(e) => Some(Miss::HookMissing(format!("could not start the hook: {e}"))),
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            match out.status.code() {
                Some(0) => None,
                Some(code @ (126 | 127)) => Some(Miss::HookMissing(format!("exit status {code}: {stderr}"))),
                code => Some(Miss::Failed(format!("exit status {code:?}: {stderr}"))),
            }
        }
    }
}

/// Runs `steps` (hookctl, arguments) `cycles` times while two loops fire events through
/// the hook and a third looks for it as libvirt does before each event, as fast as it
/// can; returns what those saw go wrong.
fn swap_under_events(hooks: &Path, steps: &[(&Path, &[&str])], cycles: usize) -> Vec<Miss> {
    let done = Arc::new(AtomicBool::new(false));
    let fired = Arc::new(AtomicUsize::new(0));
    let probes = Arc::new(AtomicUsize::new(0));
    let misses = Arc::new(Mutex::new(Vec::new()));
    let mut loops = Vec::new();
    for _ in 0..2 {
        let (hooks, done, fired, misses) = (hooks.to_owned(), done.clone(), fired.clone(), misses.clone());
        loops.push(std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(miss) = fire_once(&hooks) {
                    misses.lock().unwrap().push(miss);
                }
                fired.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    {
        let (hooks, done, probes, misses) = (hooks.to_owned(), done.clone(), probes.clone(), misses.clone());
        loops.push(std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if !libvirt_sees_a_hook(&hooks.join("qemu")) {
                    let miss = Miss::HookMissing("libvirt found no hook to run".into());
                    misses.lock().unwrap().push(miss);
                }
                probes.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut failed_step = None;
    'cycles: for _ in 0..cycles {
        for (hookctl, args) in steps {
            let out = with(hookctl, hooks, args).output().unwrap();
            if !out.status.success() {
                failed_step = Some(format!(
                    "hookctl {args:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
                break 'cycles;
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    for l in loops {
        l.join().unwrap();
    }
    if let Some(why) = failed_step {
        panic!("{why}");
    }
    let misses = std::mem::take(&mut *misses.lock().unwrap());
    let (fired, probes) = (fired.load(Ordering::Relaxed), probes.load(Ordering::Relaxed));
    eprintln!(
        "{} swaps, {fired} events and {probes} looks at the hook meanwhile; {} went wrong: {:?}",
        cycles * steps.len(),
        misses.len(),
        misses.iter().collect::<std::collections::BTreeSet<_>>()
    );
    assert!(fired > 0 && probes > 0);
    misses
}

#[test]
fn an_upgrade_to_another_hookctl_under_events_fails_none() {
    let (_tmp, hooks, first, second) = two_hookctls();
    script(&hooks.join("qemu"), USER_HOOK);
    with(&first, &hooks, &["install", "--force", "qemu"]).assert().success();
    // From /usr/local/bin to /usr/bin and back, the user's old hook kept throughout.
    let relink: [(&Path, &[&str]); 2] = [
        (&second, &["install", "--force", "qemu"]),
        (&first, &["install", "--force", "qemu"]),
    ];
    let misses = swap_under_events(&hooks, &relink, 40);
    assert!(misses.is_empty(), "{misses:?}");
    assert_eq!(fs::read_to_string(hooks.join("qemu.pre-hookctl")).unwrap(), USER_HOOK);
    assert!(leftovers(&hooks).is_empty(), "{:?}", leftovers(&hooks));
}

#[test]
fn install_force_and_uninstall_under_events_never_leave_libvirt_without_a_hook() {
    let (_tmp, hooks, first, _) = two_hookctls();
    script(&hooks.join("qemu"), USER_HOOK);
    // Replace the user's hook (kept), and put it back.
    let steps: [(&Path, &[&str]); 2] = [
        (&first, &["install", "--force", "qemu"]),
        (&first, &["uninstall", "qemu"]),
    ];
    let misses = swap_under_events(&hooks, &steps, 40);
    // Not asserted: an event that was already running when its file was swapped can
    // still fail (a shell reopening the script by name finds the other one; a
    // dispatcher about to run the saved hook finds it restored). No rename prevents that.
    let missing: Vec<_> = misses.iter().filter(|m| matches!(m, Miss::HookMissing(_))).collect();
    assert!(missing.is_empty(), "{missing:?}");
    assert_eq!(fs::read_to_string(hooks.join("qemu")).unwrap(), USER_HOOK);
    assert!(leftovers(&hooks).is_empty(), "{:?}", leftovers(&hooks));
}

/// `uninstall --force qemu network` with no network hook said "network: not hookctl,
/// left alone", as if a foreign hook were there.
#[test]
fn uninstall_tells_a_missing_hook_from_someone_elses() {
    let tmp = tempfile::tempdir().unwrap();
    let hooks = tmp.path().join("hooks");
    fs::create_dir(&hooks).unwrap();
    script(&hooks.join("lxc"), USER_HOOK);
    hookctl(&hooks, &["install", "qemu"]).assert().success();
    hookctl(&hooks, &["uninstall", "--force", "qemu", "network", "lxc"])
        .assert()
        .success()
        .stdout(
            contains("qemu: removed")
                .and(contains("network: no hook here, nothing to remove"))
                .and(contains("lxc: not hookctl, left alone")),
        );
}
