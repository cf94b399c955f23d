//! Snapshots of what operators read: `list`, `simulate` and failure messages. Paths
//! under the temp dir and timings are redacted; anything else that changes shows up in
//! review (`cargo insta review`, or `INSTA_UPDATE=always` then read the diff).

mod common;

use std::fs;
use std::path::Path;

use common::{hookctl, libvirt_env, script};

/// A hooks dir with a logging hook, a refusing hook with a sidecar, and leftovers.
fn hooks_dir(root: &Path) {
    script(&root.join("qemu.d/10-log"), "#!/bin/sh\ncat >/dev/null\nexit 0\n");
    script(
        &root.join("qemu.d/20-owner"),
        "#!/bin/sh\ncat >/dev/null\n[ \"$2\" = prepare ] && { echo 'guest has no owner' >&2; exit 1; }\nexit 0\n",
    );
    fs::write(
        root.join("qemu.d/20-owner.toml"),
        "timeout = \"5s\"\n[match]\nops = [\"prepare\", \"start\"]\n",
    )
    .unwrap();
    fs::write(root.join("qemu.d/README"), "notes\n").unwrap();
}

/// `hookctl` with the environment libvirt gives hooks, so messages do not depend on
/// the caller's.
fn hookctl_clean(root: &Path, args: &[&str]) -> assert_cmd::Command {
    let mut cmd = hookctl(root, args);
    libvirt_env(&mut cmd);
    cmd
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

macro_rules! snapshot {
    ($root:expr, $name:expr, $value:expr) => {
        let root = regex_escape(&$root.display().to_string());
        insta::with_settings!({
            filters => vec![
                (root.as_str(), "[HOOKS]"),
                // Times vary in width and are right-aligned: the padding goes with them.
                (r" +\d+(\.\d+)?(µs|ms|s)\b", " [TIME]"),
                (r"\b\d+(\.\d+)?(µs|ms|s)\b", "[TIME]"),
                // What contains exec hooks depends on the host (cgroups, privileges).
                (r"exec containment: .*", "exec containment: [CONTAINMENT]"),
            ],
            prepend_module_to_snapshot => false,
        }, {
            insta::assert_snapshot!($name, $value);
        });
    };
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect()
}

#[test]
fn list_shows_run_order_settings_and_skips() {
    let tmp = tempfile::tempdir().unwrap();
    hooks_dir(tmp.path());
    let out = hookctl_clean(tmp.path(), &["list", "qemu"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    snapshot!(tmp.path(), "list_qemu", text(&out.stdout));
}

#[test]
fn simulate_shows_the_refusal_and_the_cleanup() {
    let tmp = tempfile::tempdir().unwrap();
    hooks_dir(tmp.path());
    let out = hookctl_clean(tmp.path(), &["simulate", "qemu", "start", "web1", "--libvirt", "10.5"])
        .write_stdin("<domain/>\n")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    snapshot!(tmp.path(), "simulate_qemu_start_refused", text(&out.stdout));
}

#[test]
fn a_failed_run_says_which_hook_and_why() {
    let tmp = tempfile::tempdir().unwrap();
    hooks_dir(tmp.path());
    let out = hookctl_clean(tmp.path(), &["run", "qemu", "web1", "prepare", "begin", "-"])
        .write_stdin("<domain/>\n")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    snapshot!(tmp.path(), "run_prepare_refused_stderr", text(&out.stderr));
}
