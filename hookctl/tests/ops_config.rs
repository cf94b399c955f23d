//! `hookctl.toml` read key by key (issue 20, item 1): one bad value never moves the audit
//! log or the state root, and a `log` or `state` that cannot be used fails the events
//! that need it instead of falling back to the defaults.
//!
//! The dispatcher runs inside a private mount namespace with empty tmpfs mounts on
//! `/run` and `/var/log`, so that the defaults (`/var/log/libvirt/hookctl.jsonl`,
//! `/run/virt-hooks/state`) are never the host's, and a fallback to them is seen. Needs
//! root and util-linux `unshare`; skipped loudly otherwise.

use std::fs;
use std::path::Path;

use predicates::prelude::*;
use predicates::str::contains;

mod common;
use common::*;

/// A hooks dir with hookctl installed for qemu and this `hookctl.toml`.
fn installed_with(toml: impl Fn(&Path) -> String) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let (tmp, hooks, plugins) = installed();
    fs::write(plugins.join("hookctl.toml"), toml(tmp.path())).unwrap();
    (tmp, hooks, plugins)
}

/// A plugin that notes each call in `<tmp>/<name>.ran`, and with state, its directory.
fn noting(tmp: &Path, plugins: &Path, name: &str, stateful: bool) {
    let ran = tmp.join(format!("{name}.ran"));
    script(
        &plugins.join(name),
        &format!(
            "#!/bin/sh\ncat >/dev/null\necho \"$2 ${{VIRT_HOOK_STATE-}}\" >> '{}'\n\
             [ -n \"${{VIRT_HOOK_STATE-}}\" ] && echo \"$2\" >> \"$VIRT_HOOK_STATE/seen\"\nexit 0\n",
            ran.display()
        ),
    );
    if stateful {
        fs::write(plugins.join(format!("{name}.toml")), "state = true\n").unwrap();
    }
}

fn audit(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn assert_no_default_paths() {
    assert!(
        !Path::new(DEFAULT_LOG).exists(),
        "the dispatcher fell back to {DEFAULT_LOG}"
    );
    assert!(
        !Path::new(DEFAULT_STATE).exists(),
        "the dispatcher fell back to {DEFAULT_STATE}"
    );
}

/// The issue's file: `journal = "no"` threw `log` and `state` away, the audit line went
/// to the default log and the plugin's state to the default root.
#[test]
fn one_bad_value_keeps_the_log_and_the_state_where_the_file_says() {
    with_default_paths_private(|| {
        let (tmp, hooks, plugins) = installed_with(|tmp| {
            format!(
                "log = \"{}/audit.jsonl\"\nstate = \"{}/state\"\njournal = \"no\"\n",
                tmp.display(),
                tmp.display()
            )
        });
        noting(tmp.path(), &plugins, "10-reserve", true);
        for op in ["prepare", "start"] {
            as_libvirt_xml(&hooks, ["web1", op, "begin", "-"])
                .assert()
                .success()
                .stderr(contains("hookctl: ignoring").and(contains("hookctl.toml:3: journal")));
        }
        let seen = tmp.path().join("state/qemu/web1/10-reserve/seen");
        assert_eq!(fs::read_to_string(&seen).unwrap(), "prepare\nstart\n");
        let lines = audit(&tmp.path().join("audit.jsonl"));
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0]["config_error"]
                .as_str()
                .unwrap()
                .contains("journal: expected true or false"),
            "{}",
            lines[0]
        );
        assert_no_default_paths();
    });
}

#[test]
fn an_unusable_log_refuses_what_libvirt_can_refuse_and_never_writes_elsewhere() {
    with_default_paths_private(|| {
        let (tmp, hooks, plugins) =
            installed_with(|tmp| format!("log = \"audit.jsonl\"\nstate = \"{}/state\"\n", tmp.display()));
        noting(tmp.path(), &plugins, "10-note", false);
        let ran = tmp.path().join("10-note.ran");
        as_libvirt_xml(&hooks, ["web1", "prepare", "begin", "-"])
            .assert()
            .code(1)
            .stderr(
                contains("hookctl.toml:1: log must be an absolute path, not `audit.jsonl`")
                    .and(contains("no plugin run")),
            );
        assert!(!ran.exists(), "a plugin ran at a start that went unrecorded");
        // Cleanup must reach the host, and a failed reconnect would kill the guest; the
        // row goes to stderr, which libvirt logs at release since the hook then fails.
        for (op, subop, code) in [("release", "end", 1), ("reconnect", "begin", 0)] {
            as_libvirt_xml(&hooks, ["web1", op, subop, "-"])
                .assert()
                .code(code)
                .stderr(
                    contains("hookctl: ignored failure")
                        .and(contains("`log` cannot be used"))
                        .and(contains("not in the audit log"))
                        .and(contains(format!(r#""op":"{op}""#))),
                );
        }
        assert_eq!(fs::read_to_string(&ran).unwrap(), "release \nreconnect \n");
        assert!(!Path::new("/audit.jsonl").exists());
        assert_no_default_paths();
    });
}

#[test]
fn an_unusable_state_fails_the_plugins_that_keep_state_and_only_them() {
    with_default_paths_private(|| {
        let (tmp, hooks, plugins) =
            installed_with(|tmp| format!("log = \"{}/audit.jsonl\"\nstate = 5\n", tmp.display()));
        noting(tmp.path(), &plugins, "10-plain", false);
        noting(tmp.path(), &plugins, "20-reserve", true);
        as_libvirt_xml(&hooks, ["web1", "prepare", "begin", "-"])
            .assert()
            .code(1)
            .stderr(
                contains("20-reserve")
                    .and(contains("`state` in hookctl.toml cannot be used"))
                    .and(contains("hookctl.toml:2: state: expected an absolute path")),
            );
        assert!(tmp.path().join("10-plain.ran").exists(), "the other plugins run");
        assert!(!tmp.path().join("20-reserve.ran").exists(), "ran without its record");
        let lines = audit(&tmp.path().join("audit.jsonl"));
        assert_eq!(lines.len(), 1);
        assert!(lines[0]["failed_plugin"].as_str().unwrap().ends_with("20-reserve"));
        // Its last event fails it too (recorded; libvirt ignores it), and removes nothing.
        as_libvirt_xml(&hooks, ["web1", "release", "end", "-"])
            .assert()
            .code(1)
            .stderr(contains("20-reserve").and(contains("`state` in hookctl.toml cannot be used")));
        assert!(!tmp.path().join("20-reserve.ran").exists());
        assert_no_default_paths();
    });
}

#[test]
fn an_unreadable_hookctl_toml_leaves_log_and_state_unknown() {
    with_default_paths_private(|| {
        let (tmp, hooks, plugins) = installed_with(|tmp| format!("log = \"{}/audit.jsonl\"\n", tmp.display()));
        let toml = plugins.join("hookctl.toml");
        fs::write(&toml, b"log = \"/tmp/\xff.jsonl\"\n").unwrap();
        noting(tmp.path(), &plugins, "10-note", false);
        as_libvirt_xml(&hooks, ["web1", "start", "begin", "-"])
            .assert()
            .code(1)
            .stderr(contains("hookctl.toml: not UTF-8 text"));
        assert!(!tmp.path().join("10-note.ran").exists());
        assert!(!tmp.path().join("audit.jsonl").exists());
        assert_no_default_paths();
    });
}

/// `check` still fails on the file, and names every mistake, not the first only.
#[test]
fn check_exits_1_naming_every_mistake() {
    let (tmp, hooks, _plugins) = installed_with(|tmp| {
        format!(
            "log = \"{}/audit.jsonl\"\nstate = \"{}/state\"\njournal = \"no\"\ntiemout = 5\n",
            tmp.display(),
            tmp.display()
        )
    });
    let out = hookctl(&hooks, &["check", "qemu"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    // Findings may be on stdout or stderr.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("hookctl.toml:3: journal: expected true or false")
            && said.contains("line 4: unknown field `tiemout`"),
        "{said}"
    );
    drop(tmp);
}

/// `hookctl log` reads the log the file names even when another key is wrong (it read
/// the default log).
#[test]
fn log_reads_the_log_the_file_names_despite_another_mistake() {
    let (tmp, hooks, _plugins) =
        installed_with(|tmp| format!("log = \"{}/audit.jsonl\"\njournal = \"no\"\n", tmp.display()));
    let line = r#"{"v":1,"time":"2026-12-01T10:00:00Z","driver":"qemu","object":"ops-config-only-here","op":"prepare","subop":"begin","extra":"-","result":"ok","duration_us":900,"hooks":[]}"#;
    fs::write(tmp.path().join("audit.jsonl"), format!("{line}\n")).unwrap();
    hookctl(&hooks, &["log", "--json"])
        .assert()
        .success()
        .stdout(contains("\"object\":\"ops-config-only-here\""));
}

/// `list` shows what the dispatcher applies: a valid `timeout` beside a bad key is the
/// plugins' limit (it showed the built-in default, `30s (default)`, beside "the other
/// settings apply"), and `check` judges the log and state root the file names, never
/// the defaults.
#[test]
fn list_and_check_show_the_keys_that_apply_beside_a_bad_one() {
    let (_tmp, hooks, plugins) = installed_with(|tmp| {
        format!(
            "log = \"{0}/audit.jsonl\"\nstate = \"{0}/state\"\ntimeout = \"2s\"\njournal = \"no\"\n",
            tmp.display()
        )
    });
    script(&plugins.join("10-ok"), "#!/bin/sh\ncat >/dev/null\n");
    let out = hookctl(&hooks, &["list", "qemu"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("timeout=2s"), "{out}");
    assert!(!out.contains("timeout=30s"), "{out}");
    let out = hookctl(&hooks, &["check", "qemu"])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("journal"), "{out}");
    assert!(
        !out.contains("/var/log/libvirt") && !out.contains("/run/virt-hooks"),
        "{out}"
    );
}

/// The third trial moved `state` from the default root to another while a guest held
/// hugepages there: `check` said sound, `state` said "no state", `uninstall` went ahead,
/// and the guest's release found nothing to undo. State under the default root that the
/// file no longer names is found and named, and holds uninstall back.
#[test]
fn state_left_under_the_default_root_after_state_moved_is_named_and_holds_uninstall() {
    with_default_paths_private(|| {
        let (tmp, hooks, plugins) = installed_with(|t| format!("log = \"{}/audit.jsonl\"\n", t.display()));
        // The system hooks dir: only its dispatchers default to the system root.
        make_system_hooks_dir(&hooks);
        noting(tmp.path(), &plugins, "10-reserve", true);
        as_libvirt_xml(&hooks, ["db1", "prepare", "begin", "-"])
            .assert()
            .success();
        assert!(Path::new("/run/virt-hooks/state/qemu/db1/10-reserve/seen").exists());
        // The operator moves the state root while db1 runs.
        let moved = tmp.path().join("state2");
        fs::write(
            plugins.join("hookctl.toml"),
            format!(
                "log = \"{}/audit.jsonl\"\nstate = \"{}\"\n",
                tmp.path().display(),
                moved.display()
            ),
        )
        .unwrap();
        hookctl(&hooks, &["check", "qemu"]).assert().code(1).stdout(
            contains("broken: state")
                .and(contains("/run/virt-hooks/state"))
                .and(contains("qemu db1: 10-reserve")),
        );
        hookctl(&hooks, &["state"]).assert().success().stdout(
            contains("db1")
                .and(contains("ORPHANED"))
                .and(contains("no state").not()),
        );
        hookctl(&hooks, &["uninstall", "qemu"])
            .assert()
            .code(1)
            .stderr(contains("qemu db1: 10-reserve").and(contains("/run/virt-hooks/state")));
        assert!(fs::symlink_metadata(hooks.join("qemu")).is_ok(), "uninstalled");
        // Its release cannot reach it, and says so (it logged a plain "ok").
        as_libvirt_xml(&hooks, ["db1", "release", "end", "-"])
            .assert()
            .stderr(contains(
                "holds state of this object under a root hookctl.toml no longer names",
            ));
        let rows = audit(&tmp.path().join("audit.jsonl"));
        let last = rows.last().unwrap();
        assert!(
            last["state_orphaned"][0]
                .as_str()
                .unwrap()
                .ends_with("qemu/db1/10-reserve"),
            "{last}"
        );
    });
}

/// `/var/run` is `/run`: a root named through a link to the default one is the default
/// one, not a second root holding ORPHANED copies of live state (fourth trial).
#[test]
fn the_default_root_under_another_name_is_not_a_moved_root() {
    with_default_paths_private(|| {
        let (tmp, hooks, plugins) = installed_with(|t| format!("log = \"{}/audit.jsonl\"\n", t.display()));
        // The system hooks dir: only its dispatchers default to the system root.
        make_system_hooks_dir(&hooks);
        noting(tmp.path(), &plugins, "10-reserve", true);
        as_libvirt_xml(&hooks, ["web1", "prepare", "begin", "-"])
            .assert()
            .success();
        std::os::unix::fs::symlink("/run", tmp.path().join("var-run")).unwrap();
        fs::write(
            plugins.join("hookctl.toml"),
            format!(
                "log = \"{0}/audit.jsonl\"\nstate = \"{0}/var-run/virt-hooks/state\"\n",
                tmp.path().display()
            ),
        )
        .unwrap();
        let out = hookctl(&hooks, &["state"])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("web1").count(), 1, "{text}");
        assert!(!text.contains("ORPHANED"), "{text}");
        hookctl(&hooks, &["check", "qemu"])
            .assert()
            .stdout(contains("left under").not());
    });
}

/// The fifth trial moved `state` from a root of its own back to the default while a
/// guest held hugepages: only the default root was looked at, so nothing was found.
/// And a second hooks dir (the hugepages README's "try it") called the first one's live
/// state under the default root ORPHANED and said to `rm -r` it.
#[test]
fn every_root_a_dispatcher_used_is_looked_at_and_only_its_own() {
    with_default_paths_private(|| {
        let (tmp, hooks, plugins) =
            installed_with(|t| format!("log = \"{0}/audit.jsonl\"\nstate = \"{0}/own-root\"\n", t.display()));
        // The system hooks dir: only its dispatchers default to the system root.
        make_system_hooks_dir(&hooks);
        noting(tmp.path(), &plugins, "10-reserve", true);
        as_libvirt_xml(&hooks, ["db1", "prepare", "begin", "-"])
            .assert()
            .success();
        assert!(tmp.path().join("own-root/qemu/db1/10-reserve/seen").exists());
        // Back to the default root (no `state` line).
        fs::write(
            plugins.join("hookctl.toml"),
            format!("log = \"{}/audit.jsonl\"\n", tmp.path().display()),
        )
        .unwrap();
        hookctl(&hooks, &["state"])
            .assert()
            .success()
            .stdout(contains("ORPHANED").and(contains("db1")));
        hookctl(&hooks, &["check", "qemu"])
            .assert()
            .code(1)
            .stdout(contains("own-root/qemu/db1/10-reserve"));
        hookctl(&hooks, &["uninstall", "qemu"]).assert().code(1);

        // Another hooks dir, with its own root, while db1's state sits under the first
        // dir's roots and a guest of the first holds state under the default root.
        as_libvirt_xml(&hooks, ["web1", "prepare", "begin", "-"])
            .assert()
            .success();
        assert!(Path::new("/run/virt-hooks/state/qemu/web1/10-reserve").exists());
        let (tmp2, hooks2, plugins2) =
            installed_with(|t| format!("log = \"{0}/audit.jsonl\"\nstate = \"{0}/state\"\n", t.display()));
        noting(tmp2.path(), &plugins2, "10-reserve", true);
        as_libvirt_xml(&hooks2, ["try1", "prepare", "begin", "-"])
            .assert()
            .success();
        hookctl(&hooks2, &["state"])
            .assert()
            .success()
            .stdout(contains("ORPHANED").not().and(contains("web1").not()));
        hookctl(&hooks2, &["check", "qemu"]).assert().success();
    });
}

/// A root nested in another (`state = "/run/virt-hooks/state/qemu"`): moving to it hid
/// the default root's state (sixth check), and moving back showed the nested root's
/// `qemu` level as a phantom object.
#[test]
fn a_root_nested_in_the_default_is_a_root_of_its_own_both_ways() {
    with_default_paths_private(|| {
        let (tmp, hooks, plugins) = installed_with(|t| format!("log = \"{}/audit.jsonl\"\n", t.display()));
        // The system hooks dir: only its dispatchers default to the system root.
        make_system_hooks_dir(&hooks);
        noting(tmp.path(), &plugins, "10-reserve", true);
        let toml = |state: &str| {
            let extra = if state.is_empty() {
                String::new()
            } else {
                format!("state = \"{state}\"\n")
            };
            fs::write(
                plugins.join("hookctl.toml"),
                format!("log = \"{}/audit.jsonl\"\n{extra}", tmp.path().display()),
            )
            .unwrap();
        };
        let state = || String::from_utf8(hookctl(&hooks, &["state"]).assert().get_output().stdout.clone()).unwrap();
        let row = |text: &str, object: &str| {
            text.lines()
                .find(|l| l.split_whitespace().nth(1) == Some(object))
                .map(|l| l.split_whitespace().nth(3).unwrap_or("").to_owned())
        };
        as_libvirt_xml(&hooks, ["db1", "prepare", "begin", "-"])
            .assert()
            .success();
        toml("/run/virt-hooks/state/qemu");
        as_libvirt_xml(&hooks, ["web1", "prepare", "begin", "-"])
            .assert()
            .success();
        let text = state();
        assert_eq!(row(&text, "db1").as_deref(), Some("ORPHANED"), "{text}");
        assert_eq!(row(&text, "web1").as_deref(), Some("live"), "{text}");
        assert_eq!(row(&text, "qemu"), None, "a phantom object: {text}");
        toml("");
        let text = state();
        assert_eq!(row(&text, "db1").as_deref(), Some("live"), "{text}");
        assert_eq!(row(&text, "web1").as_deref(), Some("ORPHANED"), "{text}");
        assert_eq!(row(&text, "qemu"), None, "a phantom object: {text}");
        hookctl(&hooks, &["uninstall", "qemu"]).assert().code(1);
    });
}
