//! Trying plugins by hand never touches the host (issue 22, item 6): a plugins dir
//! outside the system hooks dir writes no row to the system audit log and keeps no state
//! under the system state root unless its `hookctl.toml` names them, its views show no
//! other dir's state, and `dispatch`, `run` and `simulate` take `--log FILE|none` and
//! `--state DIR` for one run.
//!
//! Tests that would write the system paths if they failed run in a private mount
//! namespace with empty tmpfs mounts on `/run` and `/var/log`
//! ([`with_default_paths_private`]): a write there is seen, and the host's are never
//! reached. They need root and `unshare`, and are skipped loudly otherwise.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use predicates::prelude::*;
use predicates::str::contains;

mod common;
use common::*;

const SYSTEM_ROOT: &str = "/run/virt-hooks/state";

/// A plugin that appends `<op> <its state dir>` to `<tmp>/<name>.ran` at each call, and
/// its op to `seen` in its state directory; `state = true` in its sidecar.
fn stateful_plugin(tmp: &Path, plugins: &Path, name: &str) -> PathBuf {
    let ran = tmp.join(format!("{name}.ran"));
    script(
        &plugins.join(name),
        &format!(
            "#!/bin/sh\ncat >/dev/null\necho \"$2 ${{VIRT_HOOK_STATE-}}\" >> '{}'\n\
             [ -n \"${{VIRT_HOOK_STATE-}}\" ] && echo \"$2\" >> \"$VIRT_HOOK_STATE/seen\"\nexit 0\n",
            ran.display()
        ),
    );
    fs::write(plugins.join(format!("{name}.toml")), "state = true\n").unwrap();
    ran
}

/// A plugin author's scratch dir: hookctl linked as `qemu`, a stateful plugin in
/// `qemu.plugins/`, and no `hookctl.toml`. (temp dir, hooks dir, plugins dir, the
/// plugin's `.ran` file.)
fn scratch() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let (tmp, hooks, plugins) = installed();
    fs::remove_file(plugins.join("hookctl.toml")).unwrap();
    let ran = stateful_plugin(tmp.path(), &plugins, "10-reserve");
    (tmp, hooks, plugins, ran)
}

/// Every path under `dir`, sorted, with each file's contents: what a test compares
/// before and after.
fn tree(dir: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(path) = todo.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            for entry in fs::read_dir(&path).unwrap() {
                todo.push(entry.unwrap().path());
            }
            found.push((path, None));
        } else {
            found.push((path.clone(), fs::read(&path).ok()));
        }
    }
    found.sort();
    found
}

/// Another dispatcher's live state under the system root, as the real guests' is:
/// `/run/virt-hooks/state/qemu/realguest/20-other/seen`, levels 0700.
fn real_guests_state() {
    let dir = Path::new(SYSTEM_ROOT).join("qemu/realguest/20-other");
    fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).unwrap();
    fs::write(dir.join("seen"), "prepare\n").unwrap();
}

fn audit(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The issue's trial: three `dispatch` runs on a scratch dir without `hookctl.toml` went
/// into `/var/log/libvirt/hookctl.jsonl`, the plugin's state under the system root, and
/// `list` there showed another plugin's state from the system root. Every command a
/// plugin author runs on such a dir leaves the system log and state root as they were,
/// and the state still goes from `prepare` to `release` across separate runs.
#[test]
fn a_scratch_dir_without_hookctl_toml_leaves_the_system_log_and_state_root_alone() {
    with_default_paths_private(|| {
        let (tmp, hooks, plugins, ran) = scratch();
        real_guests_state();
        // What a dispatcher of an earlier version recorded here: it used the system root.
        fs::write(hooks.join(".qemu.state-roots"), format!("{SYSTEM_ROOT}\n")).unwrap();
        let system_before = tree(Path::new(DEFAULT_STATE));

        let dispatch = |op: &str, subop: &str| {
            hookctl(
                &hooks,
                &[
                    "dispatch",
                    "--plugins",
                    plugins.to_str().unwrap(),
                    "qemu",
                    "web1",
                    op,
                    subop,
                    "-",
                ],
            )
            .write_stdin("<domain/>\n")
            .assert()
            .success()
        };
        dispatch("prepare", "begin");
        dispatch("start", "begin");
        // libvirt's way (the link run with libvirt's arguments), and `run`, which runs it.
        as_libvirt_xml(&hooks, ["web1", "started", "begin", "-"])
            .assert()
            .success();
        hookctl(&hooks, &["run", "qemu", "web1", "stopped", "end", "-", "--input", "-"])
            .write_stdin("<domain/>\n")
            .assert()
            .success();
        hookctl(&hooks, &["simulate", "qemu", "start", "sim1"])
            .assert()
            .success();
        assert!(!Path::new(DEFAULT_LOG).exists(), "a trial wrote {DEFAULT_LOG}");
        assert_eq!(
            tree(Path::new(DEFAULT_STATE)),
            system_before,
            "a trial changed {DEFAULT_STATE}"
        );
        // The state the plugin keeps under the dir itself, found by each later run.
        let own = fs::canonicalize(&plugins).unwrap().join(".state/qemu/web1/10-reserve");
        assert_eq!(
            fs::read_to_string(own.join("seen")).unwrap(),
            "prepare\nstart\nstarted\nstopped\n"
        );

        // The views: this dir's state, none of the system root's.
        for args in [
            &["list", "qemu"][..],
            &["list", "qemu", "--json"],
            &["state"],
            &["check", "qemu"],
        ] {
            let out = hookctl(&hooks, args).output().unwrap();
            let shown = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
            assert!(
                !shown.contains("realguest") && !shown.contains(SYSTEM_ROOT),
                "{args:?} shows the system root's state:\n{shown}"
            );
            assert_eq!(out.status.code(), Some(0), "{args:?}:\n{shown}");
        }
        let listed = stdout(&hookctl(&hooks, &["list", "qemu"]).output().unwrap());
        assert!(listed.contains("no audit log"), "{listed}");
        assert!(listed.contains(&format!("state: {}", own.display())), "{listed}");
        assert!(
            !listed.contains(".state  ("),
            "its own state dir listed as a leftover: {listed}"
        );
        // `hookctl log` there reads no other dir's log.
        let row = r#"{"v":1,"time":"2026-12-01T10:00:00Z","driver":"qemu","object":"realguest","op":"prepare","subop":"begin","extra":"-","result":"ok","duration_us":900,"hooks":[]}"#;
        fs::write(DEFAULT_LOG, format!("{row}\n")).unwrap();
        hookctl(&hooks, &["log"])
            .assert()
            .success()
            .stdout(contains("realguest").not())
            .stderr(contains("no audit log"));
        fs::remove_file(DEFAULT_LOG).unwrap();

        // The release, by hand, finds what prepare recorded, and removes it; `dispatch`
        // says that no audit log has the event.
        dispatch("release", "end").stderr(contains("no audit log").and(contains("--log FILE")));
        assert!(!own.exists(), "release left {}", own.display());
        let calls = fs::read_to_string(&ran).unwrap();
        assert!(calls.starts_with(&format!("prepare {}\n", own.display())), "{calls}");
        assert!(calls.ends_with(&format!("release {}\n", own.display())), "{calls}");

        assert!(!Path::new(DEFAULT_LOG).exists(), "a trial wrote {DEFAULT_LOG}");
        assert_eq!(
            tree(Path::new(DEFAULT_STATE)),
            system_before,
            "a trial changed {DEFAULT_STATE}"
        );
        drop(tmp);
    });
}

/// `dispatch --plugins DIR` for a dir that is not `<driver>.plugins` writes nothing
/// beside it: its parent (`/tmp`, say) is nobody's hooks dir, so no record of state
/// roots goes there.
#[test]
fn a_plugins_dir_of_another_name_writes_only_inside_itself() {
    with_default_paths_private(|| {
        let tmp = tempfile::tempdir().unwrap();
        let try_dir = tmp.path().join("try");
        let ran = stateful_plugin(tmp.path(), &try_dir, "10-reserve");
        let before: Vec<_> = tree(tmp.path()).into_iter().map(|(p, _)| p).collect();
        for (op, subop) in [("prepare", "begin"), ("release", "end")] {
            hookctl(
                tmp.path(),
                &[
                    "dispatch",
                    "--plugins",
                    try_dir.to_str().unwrap(),
                    "qemu",
                    "vm",
                    op,
                    subop,
                    "-",
                ],
            )
            .write_stdin("<domain/>\n")
            .assert()
            .success();
        }
        let state = fs::canonicalize(&try_dir).unwrap().join(".state/qemu/vm/10-reserve");
        assert_eq!(
            fs::read_to_string(&ran).unwrap(),
            format!("prepare {0}\nrelease {0}\n", state.display())
        );
        let after: Vec<_> = tree(tmp.path()).into_iter().map(|(p, _)| p).collect();
        let outside: Vec<_> = after
            .iter()
            .filter(|p| !before.contains(p) && !p.starts_with(&try_dir) && **p != ran)
            .collect();
        assert!(outside.is_empty(), "written beside the plugins dir: {outside:?}");
        assert!(!Path::new(DEFAULT_LOG).exists() && !Path::new(DEFAULT_STATE).exists());
    });
}

/// The system hooks dir keeps the system's defaults: its dispatcher logs to
/// `/var/log/libvirt/hookctl.jsonl` and keeps state under `/run/virt-hooks/state` with
/// no `hookctl.toml` (here a temporary dir stands for `/etc/libvirt/hooks`, in the
/// namespace where those paths are not the host's).
#[test]
fn the_system_hooks_dir_keeps_the_system_log_and_state_root() {
    with_default_paths_private(|| {
        let (_tmp, hooks, plugins, ran) = scratch();
        make_system_hooks_dir(&hooks);
        as_libvirt_xml(&hooks, ["web1", "prepare", "begin", "-"])
            .assert()
            .success();
        let state = Path::new(SYSTEM_ROOT).join("qemu/web1/10-reserve");
        assert_eq!(fs::read_to_string(state.join("seen")).unwrap(), "prepare\n");
        assert!(!plugins.join(".state").exists());
        let rows = audit(Path::new(DEFAULT_LOG));
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0]["op"], "prepare");
        hookctl(&hooks, &["list", "qemu"])
            .assert()
            .success()
            .stdout(contains(format!("audit log {DEFAULT_LOG}")).and(contains(state.to_str().unwrap())));
        // By hand too: the operator's `dispatch --plugins /etc/libvirt/hooks/qemu.plugins`
        // releases a guest that libvirt lost track of.
        hookctl(
            &hooks,
            &[
                "dispatch",
                "--plugins",
                plugins.to_str().unwrap(),
                "qemu",
                "web1",
                "release",
                "end",
                "-",
            ],
        )
        .write_stdin("<domain/>\n")
        .assert()
        .success()
        .stderr(contains("no audit log").not());
        assert!(!state.exists());
        assert_eq!(audit(Path::new(DEFAULT_LOG)).len(), 2);
        assert!(fs::read_to_string(&ran)
            .unwrap()
            .ends_with(&format!("release {}\n", state.display())));
    });
}

/// `--log FILE` and `--state DIR` replace `hookctl.toml`'s `log` and `state` for one
/// run of `dispatch`, `run` (through the installed link) and `simulate`; the file's own
/// log and state root see nothing of it, and `prepare` then `release` in separate runs
/// with the same `--state` find the state.
#[test]
fn log_and_state_options_replace_hookctl_toml_for_one_run() {
    let (tmp, hooks, plugins) = installed();
    let own_state = tmp.path().join("state");
    fs::write(
        plugins.join("hookctl.toml"),
        format!(
            "log = \"{}\"\nstate = \"{}\"\n",
            tmp.path().join("audit.jsonl").display(),
            own_state.display()
        ),
    )
    .unwrap();
    let ran = stateful_plugin(tmp.path(), &plugins, "10-reserve");
    let trial_log = tmp.path().join("trial.jsonl");
    let trial_state = tmp.path().join("trial-state");
    let (log, state) = (trial_log.to_str().unwrap(), trial_state.to_str().unwrap());
    let plugins_arg = plugins.to_str().unwrap();

    hookctl(
        &hooks,
        &[
            "dispatch",
            "--plugins",
            plugins_arg,
            "--log",
            log,
            "--state",
            state,
            "qemu",
            "web1",
            "prepare",
            "begin",
            "-",
        ],
    )
    .write_stdin("<domain/>\n")
    .assert()
    .success();
    let kept = trial_state.join("qemu/web1/10-reserve");
    assert_eq!(fs::read_to_string(kept.join("seen")).unwrap(), "prepare\n");
    // `run` fires the installed link, which is told the same.
    hookctl(
        &hooks,
        &[
            "run", "qemu", "web1", "start", "begin", "-", "--log", log, "--state", state,
        ],
    )
    .write_stdin("<domain/>\n")
    .assert()
    .success();
    assert_eq!(fs::read_to_string(kept.join("seen")).unwrap(), "prepare\nstart\n");
    let rows = audit(&trial_log);
    let ops: Vec<_> = rows.iter().map(|r| r["op"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ops, ["prepare", "start"], "{rows:?}");
    // `--log none`: no row anywhere, and `dispatch` says so.
    hookctl(
        &hooks,
        &[
            "dispatch",
            "--plugins",
            plugins_arg,
            "--log",
            "none",
            "--state",
            state,
            "qemu",
            "web1",
            "release",
            "end",
            "-",
        ],
    )
    .write_stdin("<domain/>\n")
    .assert()
    .success()
    .stderr(contains("--log none: this dispatch is in no audit log"));
    assert!(!kept.exists(), "the release did not find the state prepare made");
    assert_eq!(audit(&trial_log).len(), 2);
    assert!(fs::read_to_string(&ran)
        .unwrap()
        .ends_with(&format!("release {}\n", kept.display())));

    // `simulate --log FILE`: a row per simulated event, readable with `log --file`.
    let sim_log = tmp.path().join("sim.jsonl");
    hookctl(
        &hooks,
        &["simulate", "qemu", "start", "sim1", "--log", sim_log.to_str().unwrap()],
    )
    .assert()
    .success();
    let rows = audit(&sim_log);
    let ops: Vec<_> = rows.iter().map(|r| r["op"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ops, ["prepare", "start", "started"], "{rows:?}");
    assert!(
        rows.iter().all(|r| r["object"] == "sim1" && r["result"] == "ok"),
        "{rows:?}"
    );
    assert!(
        rows[0]["hooks"][0]["name"].as_str().unwrap().ends_with("10-reserve"),
        "{rows:?}"
    );
    hookctl(&hooks, &["log", "--file", sim_log.to_str().unwrap()])
        .assert()
        .success()
        .stdout(contains("sim1").and(contains("started/begin")));

    // The file's own log and root never saw any of it.
    assert!(!tmp.path().join("audit.jsonl").exists());
    assert!(!own_state.exists());
}

/// The options are checked as the keys are, and an unusable `--log` is what an unusable
/// `log` key is (issue 20): at an event libvirt can refuse nothing runs and the event
/// fails naming the file; at a release the plugins run and the row goes to stderr. No
/// other file is written in its place.
#[test]
fn a_bad_log_or_state_option_is_refused_as_the_keys_are() {
    let (tmp, hooks, plugins) = installed();
    let ran = stateful_plugin(tmp.path(), &plugins, "10-reserve");
    let plugins_arg = plugins.to_str().unwrap();
    let state = tmp.path().join("state");
    let state_arg = state.to_str().unwrap();
    for (option, value) in [("--log", "trial.jsonl"), ("--state", "state")] {
        hookctl(
            &hooks,
            &[
                "dispatch",
                "--plugins",
                plugins_arg,
                option,
                value,
                "qemu",
                "vm",
                "prepare",
                "begin",
                "-",
            ],
        )
        .assert()
        .code(2)
        .stderr(contains(format!("{option} must be an absolute path, not `{value}`")));
        hookctl(&hooks, &["run", "qemu", "vm", "prepare", "begin", "-", option, value])
            .assert()
            .code(2)
            .stderr(contains("must be an absolute path"));
    }
    // A log whose directory is missing: refused before any plugin runs...
    let missing = tmp.path().join("no-such-dir/trial.jsonl");
    let missing_arg = missing.to_str().unwrap();
    hookctl(
        &hooks,
        &[
            "dispatch",
            "--plugins",
            plugins_arg,
            "--log",
            missing_arg,
            "--state",
            state_arg,
            "qemu",
            "vm",
            "prepare",
            "begin",
            "-",
        ],
    )
    .write_stdin("<domain/>\n")
    .assert()
    .code(1)
    .stderr(
        contains(missing_arg)
            .and(contains("cannot be opened"))
            .and(contains("no plugin run")),
    );
    assert!(!ran.exists(), "a plugin ran at a prepare that went unrecorded");
    // ... and at the release the plugins run, the row on stderr.
    hookctl(
        &hooks,
        &[
            "dispatch",
            "--plugins",
            plugins_arg,
            "--log",
            missing_arg,
            "--state",
            state_arg,
            "qemu",
            "vm",
            "release",
            "end",
            "-",
        ],
    )
    .write_stdin("<domain/>\n")
    .assert()
    .code(1)
    .stderr(contains("not in the audit log").and(contains(r#""op":"release""#)));
    assert!(ran.exists());
    assert!(!missing.parent().unwrap().exists());
    assert!(
        !tmp.path().join("audit.jsonl").exists(),
        "written to hookctl.toml's log instead"
    );

    // `run` passes them to hookctl's dispatcher only: a hook that is not hookctl would
    // not take them.
    let plain = tmp.path().join("plain");
    script(&plain.join("qemu"), "#!/bin/sh\nexit 0\n");
    hookctl(&plain, &["run", "qemu", "vm", "prepare", "begin", "-", "--log", "none"])
        .assert()
        .code(2)
        .stderr(contains("is not hookctl"));
    // `simulate` never logs simulated events in the audit log of real events.
    let real_log = tmp.path().join("audit.jsonl");
    for real in [real_log.to_str().unwrap(), DEFAULT_LOG] {
        hookctl(&hooks, &["simulate", "qemu", "start", "vm", "--log", real])
            .assert()
            .code(2)
            .stderr(contains("the audit log of real events"));
    }
    assert!(!real_log.exists());
}

/// `install` into a hooks dir of one's own says where its dispatchers log and keep state,
/// since it is not where the system's do.
#[test]
fn install_elsewhere_says_there_is_no_audit_log_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    hookctl(tmp.path(), &["install", "qemu"])
        .assert()
        .success()
        .stdout(contains("write no audit log").and(contains("<driver>.plugins/.state")));
}
