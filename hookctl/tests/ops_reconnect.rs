//! Issue 20, item 3: a plugin that fails at `reconnect` (libvirtd restarting with the
//! guest running) must not kill the guest, unless its sidecar asks for exactly that.
//! libvirt's own layout keeps libvirt's behaviour.

use std::fs;

use predicates::prelude::*;
use predicates::str::contains;

mod common;
use common::*;

/// The commonest way to write a hook: a `case` on the operation whose default fails.
const CASE_WITH_DEFAULT_EXIT_1: &str = r#"#!/bin/sh
case "$2" in
  prepare|release) exit 0 ;;
  *) echo "hugepages: unknown operation $2" >&2; exit 1 ;;
esac
"#;

/// A hooks dir with hookctl installed for qemu, its audit log, journal off and state in
/// the temp dir (never the host's).
fn installed_quietly() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let (tmp, hooks, plugins) = installed();
    let config = format!(
        "log = \"{}\"\njournal = false\nstate = \"{}\"\n",
        tmp.path().join("audit.jsonl").display(),
        tmp.path().join("state").display()
    );
    fs::write(plugins.join("hookctl.toml"), config).unwrap();
    (tmp, hooks, plugins)
}

fn last_audit_line(tmp: &tempfile::TempDir) -> serde_json::Value {
    let audit = fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap();
    serde_json::from_str(audit.lines().last().unwrap()).unwrap()
}

#[test]
fn a_plugin_failing_at_reconnect_is_logged_as_an_error_and_the_guest_lives() {
    let (tmp, hooks, plugins) = installed_quietly();
    script(&plugins.join("10-hugepages"), CASE_WITH_DEFAULT_EXIT_1);
    // libvirtd restarts with `db1` running: libvirt kills it if the hook exits non-zero.
    as_libvirt_xml(&hooks, ["db1", "reconnect", "begin", "-"])
        .assert()
        .success()
        .stdout("")
        .stderr(contains("hookctl: error: "))
        .stderr(contains("10-hugepages").and(contains("exit status 1")))
        .stderr(contains("hugepages: unknown operation reconnect"))
        .stderr(contains("the guest keeps running"))
        .stderr(contains("on_reconnect_failure = \"kill\""));
    let line = last_audit_line(&tmp);
    assert_eq!(line["result"], "ok", "{line}");
    assert_eq!(line["op"], "reconnect");
    assert_eq!(line["hooks"][0]["success"], false, "{line}");
    assert_eq!(line["hooks"][0]["spared"], true, "{line}");
    assert_eq!(
        line["failed_plugin"],
        plugins.join("10-hugepages").display().to_string(),
        "{line}"
    );
    assert_eq!(
        line["spared_plugins"][0],
        plugins.join("10-hugepages").display().to_string()
    );
    // Only `reconnect` is spared: the same plugin still refuses a start.
    as_libvirt_xml(&hooks, ["db1", "start", "begin", "-"])
        .assert()
        .code(1)
        .stderr(contains("hugepages: unknown operation start"));
}

#[test]
fn on_reconnect_failure_kill_kills_the_guest_as_libvirt_does() {
    let (tmp, hooks, plugins) = installed_quietly();
    script(&plugins.join("10-hugepages"), CASE_WITH_DEFAULT_EXIT_1);
    script(&plugins.join("20-fine"), "#!/bin/sh\nexit 0\n");
    fs::write(plugins.join("10-hugepages.toml"), "on_reconnect_failure = \"kill\"\n").unwrap();
    as_libvirt_xml(&hooks, ["db1", "reconnect", "begin", "-"])
        .assert()
        .code(1)
        .stderr(contains("10-hugepages").and(contains("hugepages: unknown operation reconnect")))
        .stderr(contains("the guest keeps running").not());
    let line = last_audit_line(&tmp);
    assert_eq!(line["result"], "failed", "{line}");
    assert_eq!(line["hooks"][0]["spared"], false, "{line}");
    assert!(line.get("spared_plugins").is_none(), "{line}");
    // A typo in the key's value is never taken as either: `check` names file and line.
    fs::write(
        plugins.join("10-hugepages.toml"),
        "timeout = 5\non_reconnect_failure = \"kil\"\n",
    )
    .unwrap();
    hookctl(&hooks, &["check", "qemu"])
        .assert()
        .code(1)
        .stdout(contains("10-hugepages.toml:2"));
}

#[test]
fn libvirts_own_layout_keeps_libvirts_behaviour() {
    let tmp = tempfile::tempdir().unwrap();
    let hooks = tmp.path().join("hooks");
    script(&hooks.join("qemu.d/10-hugepages"), CASE_WITH_DEFAULT_EXIT_1);
    // libvirt runs qemu.d/ itself: no sidecar can make it spare the guest.
    fs::write(
        hooks.join("qemu.d/10-hugepages.toml"),
        "on_reconnect_failure = \"log\"\n",
    )
    .unwrap();
    hookctl(&hooks, &["run", "qemu", "db1", "reconnect", "begin", "-"])
        .write_stdin("<domain/>\n")
        .assert()
        .failure()
        .stderr(contains("hugepages: unknown operation reconnect"));
    hookctl(&hooks, &["simulate", "qemu", "reconnect", "db1", "--libvirt", "9.0"])
        .assert()
        .failure()
        .stdout(contains("would be KILLED"));
    // `check` says the key does nothing there.
    hookctl(&hooks, &["check", "qemu"])
        .assert()
        .stdout(contains("warning: ").and(contains("on_reconnect_failure")))
        .stdout(contains("libvirt runs qemu.d/ itself"));
}

#[test]
fn check_and_list_show_what_a_failure_at_reconnect_does() {
    let (_tmp, hooks, plugins) = installed_quietly();
    script(&plugins.join("10-hugepages"), CASE_WITH_DEFAULT_EXIT_1);
    script(&plugins.join("20-gpu"), "#!/bin/sh\nexit 0\n");
    fs::write(plugins.join("20-gpu.toml"), "on_reconnect_failure = \"kill\"\n").unwrap();
    hookctl(&hooks, &["check", "qemu"])
        .assert()
        .success()
        .stdout(contains(
            "10-hugepages  (at reconnect a failure is logged; the guest lives)",
        ))
        .stdout(contains("20-gpu  (at reconnect a failure KILLS the guest)"));
    hookctl(&hooks, &["list", "qemu"])
        .assert()
        .success()
        .stdout(contains(
            "at reconnect a plugin's failure is logged and the guest lives",
        ))
        .stdout(contains("10-hugepages  [timeout=30s (default)]"))
        .stdout(contains("20-gpu  [timeout=30s (default) on_reconnect_failure=kill]"));
    let out = hookctl(&hooks, &["list", "qemu", "--json"]).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = json
        .as_array()
        .and_then(|drivers| drivers.iter().find(|d| d["plugins_dir"].is_string()))
        .map(|d| d["entries"].clone())
        .unwrap_or_else(|| panic!("{json}"));
    let reconnect: Vec<_> = (entries.as_array().unwrap().iter())
        .filter_map(|e| e["effective"]["on_reconnect_failure"].as_str())
        .collect();
    assert_eq!(reconnect, ["log", "kill"], "{entries}");
}

#[test]
fn simulate_reconnect_shows_both_outcomes() {
    let (_tmp, hooks, plugins) = installed_quietly();
    script(&plugins.join("10-hugepages"), CASE_WITH_DEFAULT_EXIT_1);
    hookctl(&hooks, &["simulate", "qemu", "reconnect", "db1", "--libvirt", "9.0"])
        .assert()
        .success()
        .stdout(contains("FAILED").and(contains("10-hugepages")))
        .stdout(contains(
            "error logged; the guest keeps running (on_reconnect_failure = log;",
        ))
        .stdout(contains("result: reconnect of qemu db1 would go through"));
    fs::write(plugins.join("10-hugepages.toml"), "on_reconnect_failure = \"kill\"\n").unwrap();
    hookctl(&hooks, &["simulate", "qemu", "reconnect", "db1", "--libvirt", "9.0"])
        .assert()
        .code(1)
        .stdout(contains("FAILED").and(contains("10-hugepages")))
        .stdout(contains("the guest keeps running").not())
        .stdout(contains("would be KILLED"));
}
