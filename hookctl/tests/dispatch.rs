//! Dispatcher mode, install/uninstall, per-hook settings and the audit log.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::contains;

mod common;
use common::*;

#[test]
fn the_link_runs_the_plugins_with_libvirts_arguments_and_stdin() {
    let (tmp, hooks, plugins) = installed();
    let seen = tmp.path().join("seen");
    script(
        &plugins.join("10-record"),
        &format!("#!/bin/sh\n{{ echo \"$0 $*\"; cat; }} > '{}'\n", seen.display()),
    );
    as_libvirt(&hooks, ["vm1", "prepare", "begin", "-"])
        .write_stdin("<domain/>\n")
        .assert()
        .success()
        .stdout("")
        .stderr("");
    assert_eq!(
        fs::read_to_string(&seen).unwrap(),
        format!(
            "{} vm1 prepare begin -\n<domain/>\n",
            plugins.join("10-record").display()
        )
    );
    let line: serde_json::Value = serde_json::from_str(
        fs::read_to_string(tmp.path().join("audit.jsonl"))
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["result"], "ok");
    assert_eq!(line["op"], "prepare");
    assert_eq!(line["hooks"][0]["success"], true);
}

#[test]
fn a_failing_plugin_fails_the_hook_with_its_name_and_stderr() {
    let (_tmp, hooks, plugins) = installed();
    script(&plugins.join("10-ok"), "#!/bin/sh\ncat >/dev/null\n");
    script(
        &plugins.join("20-refuse"),
        "#!/bin/sh\necho 'no capacity for vm1' >&2\nexit 3\n",
    );
    script(&plugins.join("30-ok"), "#!/bin/sh\ncat >/dev/null\n");
    as_libvirt(&hooks, ["vm1", "start", "begin", "-"])
        .write_stdin("<domain/>\n")
        .assert()
        .code(1)
        .stderr(format!(
            "{}: exit status 3: no capacity for vm1\n",
            plugins.join("20-refuse").display()
        ));
}

#[test]
fn an_audit_line_names_the_failing_plugin_and_when_the_event_started() {
    let (tmp, hooks, plugins) = installed();
    script(
        &plugins.join("10-slow-refuse"),
        "#!/bin/sh\ncat >/dev/null\nsleep 1\nhead -c 2000 /dev/zero | tr '\\0' e >&2\nexit 3\n",
    );
    let before = std::time::SystemTime::now();
    as_libvirt(&hooks, ["vm1", "start", "begin", "-"])
        .write_stdin("<domain/>\n")
        .assert()
        .code(1);
    let text = fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(line["v"], 1);
    assert_eq!(
        line["failed_plugin"],
        plugins.join("10-slow-refuse").display().to_string()
    );
    // Its first 500 characters, and how much was cut.
    let stderr = format!("{}… (1.5 KiB cut)", "e".repeat(500));
    assert_eq!(line["hooks"][0]["stderr"], stderr);
    assert_eq!(line["hooks"][0]["stderr_truncated"], true);
    // `time` is when the event started, not when the line was written 1 s later.
    let time = humantime::parse_rfc3339(line["time"].as_str().unwrap()).unwrap();
    let started = time.duration_since(before).unwrap_or_default();
    assert!(
        started < Duration::from_millis(800),
        "logged {started:?} after the start"
    );
}

#[test]
fn filters_print_only_a_changed_document() {
    let (_tmp, hooks, plugins) = installed();
    script(&plugins.join("10-rewrite"), "#!/bin/sh\nsed s/br-legacy/br0/\n");
    as_libvirt(&hooks, ["vm1", "migrate", "begin", "-"])
        .write_stdin("<domain>br-legacy</domain>\n")
        .assert()
        .success()
        .stdout("<domain>br0</domain>\n");
    script(&plugins.join("10-rewrite"), "#!/bin/sh\ncat > /dev/null\n");
    as_libvirt(&hooks, ["vm1", "restore", "begin", "-"])
        .write_stdin("<domain/>\n")
        .assert()
        .success()
        .stdout("");
}

#[test]
fn sidecar_settings_time_out_match_and_make_optional() {
    let (tmp, hooks, plugins) = installed();
    script(&plugins.join("10-slow"), "#!/bin/sh\nsleep 60\n");
    fs::write(plugins.join("10-slow.toml"), "timeout = 0.3\n").unwrap();
    let start = Instant::now();
    as_libvirt(&hooks, ["vm1", "prepare", "begin", "-"])
        .write_stdin("<domain/>")
        .timeout(Duration::from_secs(30))
        .assert()
        .code(1)
        .stderr(contains("10-slow: timed out after 300ms"));
    assert!(start.elapsed() < Duration::from_secs(10));

    // Optional: logged, never fails the event.
    fs::write(plugins.join("10-slow.toml"), "timeout = 0.2\npolicy = \"optional\"\n").unwrap();
    as_libvirt(&hooks, ["vm1", "prepare", "begin", "-"])
        .write_stdin("<domain/>")
        .timeout(Duration::from_secs(30))
        .assert()
        .success();
    let last = fs::read_to_string(tmp.path().join("audit.jsonl"))
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();
    assert!(
        last.contains("\"optional\":true") && last.contains("\"success\":false"),
        "{last}"
    );

    // Match: only win* guests at prepare.
    let seen = tmp.path().join("seen");
    fs::remove_file(plugins.join("10-slow")).unwrap();
    fs::remove_file(plugins.join("10-slow.toml")).unwrap();
    script(
        &plugins.join("20-win"),
        &format!("#!/bin/sh\ncat >/dev/null\necho \"$1 $2\" >> '{}'\n", seen.display()),
    );
    fs::write(
        plugins.join("20-win.toml"),
        "[match]\nobjects = [\"win*\"]\nops = [\"prepare\"]\n",
    )
    .unwrap();
    for (obj, op) in [("win10", "prepare"), ("linux", "prepare"), ("win11", "release")] {
        as_libvirt(&hooks, [obj, op, "begin", "-"])
            .write_stdin("<domain/>")
            .assert()
            .success();
    }
    assert_eq!(fs::read_to_string(&seen).unwrap(), "win10 prepare\n");
}

#[test]
fn bad_settings_are_named_with_file_and_line() {
    let (_tmp, _hooks, plugins) = installed();
    script(&plugins.join("10-x"), "#!/bin/sh\nexit 0\n");
    fs::write(plugins.join("10-x.toml"), "timeout = 1\n\nretries = 3\n").unwrap();
    let sidecar = plugins.join("10-x.toml");
    Command::new(exe())
        .args(["dispatch", "--plugins"])
        .arg(&plugins)
        .args(["qemu", "vm", "prepare", "begin", "-"])
        .write_stdin("")
        .assert()
        .code(1)
        .stderr(contains("its settings file is invalid"));
    // `check` on a hooks dir reads `<driver>.d`; point it at a layout with the file inside.
    let layout = tempfile::tempdir().unwrap();
    fs::create_dir(layout.path().join("qemu.d")).unwrap();
    fs::copy(plugins.join("10-x"), layout.path().join("qemu.d/10-x")).unwrap();
    fs::set_permissions(layout.path().join("qemu.d/10-x"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::copy(&sidecar, layout.path().join("qemu.d/10-x.toml")).unwrap();
    Command::new(exe())
        .arg("--hooks-dir")
        .arg(layout.path())
        .arg("check")
        .assert()
        .code(1)
        .stdout(contains(format!(
            "{}:3: unknown field `retries`",
            layout.path().join("qemu.d/10-x.toml").display()
        )));
}

#[test]
fn list_shows_effective_settings() {
    let tmp = tempfile::tempdir().unwrap();
    script(&tmp.path().join("qemu.d/10-x"), "#!/bin/sh\nexit 0\n");
    fs::write(
        tmp.path().join("qemu.d/10-x.toml"),
        "timeout = 5\npolicy = \"optional\"\n[match]\nops = [\"prepare\"]\n",
    )
    .unwrap();
    Command::new(exe())
        .arg("--hooks-dir")
        .arg(tmp.path())
        .args(["list", "qemu"])
        .assert()
        .success()
        .stdout(contains("[timeout=5s policy=optional match: ops=prepare]"))
        .stdout(contains("10-x.toml  (settings file, never a hook)"));
}

#[test]
fn install_is_idempotent_refuses_foreign_scripts_and_uninstall_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let hooks = tmp.path().join("hooks");
    let run = |args: &[&str]| {
        let mut c = Command::new(exe());
        c.arg("--hooks-dir").arg(&hooks).args(args);
        c
    };
    run(&["install", "qemu", "daemon"]).assert().success();
    assert_eq!(
        fs::canonicalize(hooks.join("qemu")).unwrap(),
        fs::canonicalize(exe()).unwrap()
    );
    assert!(hooks.join("daemon.plugins").is_dir());
    run(&["install", "qemu"])
        .assert()
        .success()
        .stdout(contains("already installed"));

    script(&hooks.join("network"), "#!/bin/sh\nexit 0\n");
    run(&["install", "network"])
        .assert()
        .code(2)
        .stderr(contains("rerun with --force"));
    run(&["install", "--force", "network"]).assert().success();
    assert!(hooks.join("network.pre-hookctl").is_file());
    // uninstall reads each driver's state root: a temporary one, never the host's.
    for driver in ["network", "qemu"] {
        let toml = hooks.join(format!("{driver}.plugins/hookctl.toml"));
        fs::write(toml, format!("state = \"{}/state\"\n", tmp.path().display())).unwrap();
    }
    run(&["uninstall", "network", "qemu"])
        .assert()
        .success()
        .stdout(contains("restored the original hook"));
    assert!(fs::symlink_metadata(hooks.join("network")).unwrap().is_file());
    assert!(fs::symlink_metadata(hooks.join("qemu")).is_err());
}

#[test]
fn a_log_that_cannot_be_opened_refuses_what_can_be_refused_and_never_loses_a_row() {
    let (tmp, hooks, plugins) = installed();
    // No journal: as on a host without journald.
    fs::write(
        plugins.join("hookctl.toml"),
        "log = \"/nonexistent-dir/audit.jsonl\"\njournal = false\n",
    )
    .unwrap();
    let ran = tmp.path().join("ran");
    script(
        &plugins.join("10-ok"),
        &format!("#!/bin/sh\ncat >/dev/null\necho \"$2\" >> {}\n", ran.display()),
    );
    // A start would change the host with no record of it: refused, nothing run.
    as_libvirt(&hooks, ["vm1", "prepare", "begin", "-"])
        .write_stdin("<domain/>")
        .assert()
        .code(1)
        .stderr(contains("/nonexistent-dir/audit.jsonl").and(contains("refused, with no plugin run")));
    assert!(!ran.exists(), "a plugin ran with no audit log");
    // `check` said "sound" (a warning) while every start was refused.
    hookctl(&hooks, &["check", "qemu"])
        .assert()
        .code(1)
        .stdout(contains("broken: audit log /nonexistent-dir/audit.jsonl"));
    // Cleanup must run; its row goes to stderr, with an exit status libvirt logs.
    as_libvirt(&hooks, ["vm1", "release", "end", "-"])
        .write_stdin("<domain/>")
        .assert()
        .code(1)
        .stderr(
            contains("not in the audit log")
                .and(contains(r#""op":"release""#))
                .and(contains("10-ok\"")),
        );
    assert_eq!(fs::read_to_string(&ran).unwrap(), "release\n");
    // reconnect: the guest lives (exit 0), so libvirt drops stderr: with no journal
    // either, a summary goes to the kernel's log (here a file standing for /dev/kmsg).
    let kmsg = tmp.path().join("kmsg");
    fs::write(&kmsg, "").unwrap();
    as_libvirt(&hooks, ["vm1", "reconnect", "begin", "-"])
        .env("HOOKCTL_TEST_KMSG", &kmsg)
        .write_stdin("<domain/>")
        .assert()
        .success()
        .stderr(
            contains("not in the audit log")
                .and(contains(r#""op":"reconnect""#))
                .and(contains("went to the kernel's log")),
        );
    let line = fs::read_to_string(&kmsg).unwrap();
    assert!(
        line.starts_with("<3>hookctl[")
            && line.contains("qemu vm1 reconnect begin -: not in the audit log")
            && line.contains("10-ok: exit status 0"),
        "{line}"
    );
}

/// A log that opens but does not take the row (here a file-size limit: a full disk
/// does the same) after the plugins ran.
#[test]
fn a_row_the_log_does_not_take_fails_the_event_where_that_costs_no_guest() {
    let (tmp, hooks, plugins) = installed();
    let log = tmp.path().join("audit.jsonl");
    fs::write(&log, vec![b'\n'; 64 << 10]).unwrap();
    script(&plugins.join("10-ok"), "#!/bin/sh\ncat >/dev/null\n");
    let run = |op: &str, subop: &str| {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!(
                "trap '' XFSZ; ulimit -f 4; exec '{}' vm1 {op} {subop} -",
                hooks.join("qemu").display()
            ))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("VIRT_HOOKS_WASM_CACHE", "off")
            .write_stdin("<domain/>");
        cmd.assert()
    };
    run("prepare", "begin").code(1).stderr(
        contains("not in the audit log")
            .and(contains(r#""result":"failed""#))
            .and(contains("failing the event, so that no change goes unrecorded")),
    );
    run("release", "end")
        .code(1)
        .stderr(contains(r#""op":"release""#).and(contains("so that libvirt logs the record above")));
    run("reconnect", "begin")
        .success()
        .stderr(contains(r#""op":"reconnect""#).and(contains(r#""result":"ok""#)));
    assert_eq!(fs::metadata(&log).unwrap().len(), 64 << 10);
    // A row that fits only in part (the fourth trial's full disk) is cut off again: the
    // next row was appended to the torn one, and `log` lost it.
    fs::write(&log, "x".repeat(1799) + "\n").unwrap();
    run("release", "end").code(1);
    assert_eq!(fs::metadata(&log).unwrap().len(), 1800, "a torn row was left");
    // A line torn before (a crash) is ended before the next row.
    fs::write(&log, r#"{"v":1,"time":"2026-"#).unwrap();
    as_libvirt(&hooks, ["vm1", "prepare", "begin", "-"])
        .write_stdin("<domain/>")
        .assert()
        .success();
    let text = fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let row: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(row["op"], "prepare");
}

/// libvirt reads a hook's stderr whole: hundreds of ignored failures say a bounded
/// amount, and how much more there was.
#[test]
fn stderr_about_ignored_failures_is_capped_in_total() {
    let (_tmp, hooks, plugins) = installed();
    let long = "x".repeat(200);
    for n in 0..150 {
        let name = format!("{n:03}-{long}");
        script(&plugins.join(&name), "#!/bin/sh\ncat >/dev/null\nexit 1\n");
        fs::write(plugins.join(format!("{name}.toml")), "policy = \"optional\"\n").unwrap();
    }
    let out = as_libvirt(&hooks, ["vm1", "prepare", "begin", "-"])
        .write_stdin("<domain/>")
        .assert()
        .success()
        .get_output()
        .clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.len() <= (16 << 10) + 200, "{} bytes of stderr", stderr.len());
    assert!(stderr.starts_with("hookctl: ignored failure: "), "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("hookctl: and ") && last.contains(" more lines"),
        "{last}"
    );
}

#[test]
fn concurrent_dispatches_never_mix_audit_lines() {
    let (tmp, hooks, plugins) = installed();
    // A long stderr makes each line large, so a torn write would show.
    script(
        &plugins.join("10-noisy"),
        "#!/bin/sh\ncat >/dev/null\nhead -c 400 /dev/zero | tr '\\0' x >&2\n",
    );
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let hooks = hooks.clone();
            std::thread::spawn(move || {
                for j in 0..10 {
                    as_libvirt(&hooks, [&format!("vm{i}-{j}"), "prepare", "begin", "-"])
                        .write_stdin("<domain/>")
                        .assert()
                        .success();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let log = fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap();
    let lines: Vec<_> = log.lines().collect();
    assert_eq!(lines.len(), 80);
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("torn line ({e}): {line}"));
        assert_eq!(v["hooks"][0]["stderr"].as_str().unwrap().len(), 400);
    }
}

#[test]
fn list_and_check_cover_the_dispatcher_plugins_dirs() {
    let (_tmp, hooks, plugins) = installed();
    script(&plugins.join("10-ok"), "#!/bin/sh\nexit 0\n");
    script(&plugins.join("20-no-shebang"), "exit 0\n");
    Command::new(exe())
        .arg("--hooks-dir")
        .arg(&hooks)
        .args(["list", "qemu"])
        .assert()
        .success()
        .stdout(contains(format!(
            "qemu plugins ({}, run by the hookctl dispatcher; audit log ",
            plugins.display()
        )))
        .stdout(contains("10-ok"))
        .stdout(contains("hookctl.toml  (settings file, never a hook)"));
    Command::new(exe())
        .arg("--hooks-dir")
        .arg(&hooks)
        .arg("check")
        .assert()
        .code(1)
        .stdout(contains(plugins.join("10-ok").display().to_string()))
        .stdout(contains(format!(
            "`{}` (exec): no `#!` line",
            plugins.join("20-no-shebang").display()
        )));
}

/// VFIO-Tools' per-VM dispatcher, the most common qemu hook: it finds its per-VM scripts
/// through `$(dirname "$0")`.
const VFIO_DISPATCHER: &str = r#"#!/bin/sh
GUEST_NAME="$1"; HOOK_NAME="$2"; STATE_NAME="$3"
BASEDIR="$(dirname "$0")"
HOOKPATH="$BASEDIR/qemu.d/$GUEST_NAME/$HOOK_NAME/$STATE_NAME"
set -e
if [ -f "$HOOKPATH" ] && [ -x "$HOOKPATH" ]; then
  eval "\"$HOOKPATH\"" "$@"
elif [ -d "$HOOKPATH" ]; then
  for file in "$HOOKPATH"/*; do
    if [ -f "$file" ] && [ -x "$file" ]; then "$file" "$@"; fi
  done
fi
"#;

#[test]
fn install_force_keeps_a_vfio_tools_dispatcher_working_and_uninstall_restores_it() {
    let tmp = tempfile::tempdir().unwrap();
    let hooks = tmp.path().join("hooks");
    let seen = tmp.path().join("seen");
    script(&hooks.join("qemu"), VFIO_DISPATCHER);
    script(
        &hooks.join("qemu.d/win10/prepare/begin/10-isolate-cpus.sh"),
        &format!("#!/bin/sh\necho \"isolate $*\" >> '{}'\n", seen.display()),
    );
    let hookctl = |args: &[&str]| {
        let mut c = Command::new(exe());
        c.arg("--hooks-dir").arg(&hooks).args(args);
        c
    };
    hookctl(&["install", "--force", "qemu"]).assert().success();
    let log = tmp.path().join("audit.jsonl");
    fs::write(
        hooks.join("qemu.plugins/hookctl.toml"),
        format!(
            "log = \"{}\"\nstate = \"{}/state\"\n",
            log.display(),
            tmp.path().display()
        ),
    )
    .unwrap();
    let plugin_seen = tmp.path().join("plugin-seen");
    script(
        &hooks.join("qemu.plugins/20-plugin.sh"),
        &format!("#!/bin/sh\necho \"plugin $*\" >> '{}'\n", plugin_seen.display()),
    );
    as_libvirt(&hooks, ["win10", "prepare", "begin", "-"])
        .write_stdin("<domain/>\n")
        .assert()
        .success();
    assert_eq!(fs::read_to_string(&seen).unwrap(), "isolate win10 prepare begin -\n");
    assert_eq!(
        fs::read_to_string(&plugin_seen).unwrap(),
        "plugin win10 prepare begin -\n"
    );
    // The old dispatcher still runs first, and `list` says where it lives.
    hookctl(&["list", "qemu"])
        .assert()
        .success()
        .stdout(contains(hooks.join("qemu.pre-hookctl").display().to_string()));

    // A second --force over a new script never overwrites the saved original.
    hookctl(&["uninstall", "qemu"]).assert().success();
    assert_eq!(fs::read_to_string(hooks.join("qemu")).unwrap(), VFIO_DISPATCHER);
    hookctl(&["install", "--force", "qemu"]).assert().success();
    fs::remove_file(hooks.join("qemu")).unwrap();
    script(&hooks.join("qemu"), "#!/bin/sh\nexit 0\n");
    hookctl(&["install", "--force", "qemu"])
        .assert()
        .code(2)
        .stderr(contains("already holds a hook saved by an earlier install"));
    assert_eq!(
        fs::read_to_string(hooks.join("qemu.pre-hookctl")).unwrap(),
        VFIO_DISPATCHER
    );
}

#[test]
fn install_refuses_a_binary_that_others_could_replace() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let copy = bin.join("hookctl");
    fs::copy(exe(), &copy).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o777)).unwrap();
    let hooks = tmp.path().join("hooks");
    Command::new(&copy)
        .arg("--hooks-dir")
        .arg(&hooks)
        .args(["install", "qemu"])
        .assert()
        .code(2)
        .stderr(contains(format!(
            "refusing to make `{}` libvirt's hook",
            fs::canonicalize(&copy).unwrap().display()
        )))
        .stderr(contains("writable by others (mode 0777)"))
        .stderr(contains("install -m 0755 target/release/hookctl /usr/bin/"));
    assert!(fs::symlink_metadata(hooks.join("qemu")).is_err());
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    if rustix::process::geteuid().is_root() {
        // A binary a user owns (`sudo ~/.cargo/bin/hookctl install`) is refused as well.
        rustix::fs::chown(&copy, Some(rustix::fs::Uid::from_raw(1000)), None).unwrap();
        Command::new(&copy)
            .arg("--hooks-dir")
            .arg(&hooks)
            .args(["install", "qemu"])
            .assert()
            .code(2)
            .stderr(contains("owned by uid 1000"));
    } else {
        eprintln!("SKIPPED part of install_refuses_a_binary_that_others_could_replace: chown needs root");
    }
}

#[test]
fn a_filter_plugin_that_prints_a_broken_document_is_named_with_line_and_column() {
    let (tmp, hooks, plugins) = installed();
    script(
        &plugins.join("10-retype"),
        "#!/bin/sh\nsed \"s|<domain>|<domain type='kvm'>|\"\n",
    );
    script(
        &plugins.join("20-broken"),
        "#!/bin/sh\ncat >/dev/null\nprintf '<domain>\\n<name>x</nam>\\n'\n",
    );
    let mut cmd = as_libvirt(&hooks, ["vm", "migrate", "begin", "-"]);
    cmd.write_stdin("<domain>\n<name>vm</name>\n</domain>\n");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    // Nothing for libvirt to take: the migration is refused, naming the stage and where.
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("20-broken: exit status 0, but its output is not well-formed XML: line 2, column"),
        "{stderr}"
    );
    let audit = std::fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(line["failed_plugin"], plugins.join("20-broken").display().to_string());
    let first = &line["hooks"][0]["document"];
    assert_eq!(
        (first["changed"].as_bool(), first["lines_added"].as_u64()),
        (Some(true), Some(1))
    );
    assert!(line["hooks"][1].get("document").is_none(), "{line}");
}

/// The audit line says what contained each exec plugin (and, in a cgroup, its CPU
/// time), and `list` says the same of the plugins dir.
#[test]
fn the_audit_line_and_list_say_how_plugins_are_contained() {
    let (tmp, hooks, plugins) = installed();
    script(&plugins.join("10-ok"), "#!/bin/sh\ncat >/dev/null\n");
    as_libvirt(&hooks, ["vm1", "prepare", "begin", "-"])
        .write_stdin("<domain/>\n")
        .assert()
        .success();
    let text = fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let hook = &line["hooks"][0];
    let kind = hook["containment"]
        .as_str()
        .unwrap_or_else(|| panic!("no containment: {line}"));
    match kind {
        "cgroup" => assert!(hook["cpu_us"].is_u64(), "{line}"),
        "subreaper" => assert!(hook.get("cpu_us").is_none(), "{line}"),
        other => panic!("{other}: {line}"),
    }
    let out = hookctl(&hooks, &["list", "qemu"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8_lossy(&out);
    let said = out
        .lines()
        .find_map(|l| l.strip_prefix("  exec containment: "))
        .unwrap_or_else(|| panic!("{out}"));
    // No libvirt daemon here: it says whose cgroup it judged by.
    assert!(said.contains(&format!(": {kind}: ")), "{said}");
}

/// `list` only looks: run from a cgroup of its own, it makes no `virt-hooks` there (it
/// used to, and reported its own cgroup's containment as the dispatcher's).
#[test]
fn list_creates_no_cgroup() {
    // SAFETY: geteuid takes nothing and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED list_creates_no_cgroup: needs root to make a cgroup");
        return;
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let Some(mount) = mountinfo
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split(' ').nth(4))
    else {
        eprintln!("SKIPPED list_creates_no_cgroup: no cgroup v2 here");
        return;
    };
    let own = fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    let cgroup = std::path::Path::new(mount)
        .join(own.trim_start_matches('/'))
        .join(format!("hookctl-list-test-{}", std::process::id()));
    if let Err(e) = fs::create_dir(&cgroup) {
        eprintln!("SKIPPED list_creates_no_cgroup: cannot make {}: {e}", cgroup.display());
        return;
    }
    let (_tmp, hooks, plugins) = installed();
    script(&plugins.join("10-ok"), "#!/bin/sh\ncat >/dev/null\n");
    // The shell moves itself into the cgroup, then becomes `hookctl list`.
    let out = std::process::Command::new("/bin/sh")
        .args([
            "-c",
            "echo $$ > \"$1/cgroup.procs\" && exec \"$2\" --hooks-dir \"$3\" list qemu",
            "sh",
        ])
        .arg(&cgroup)
        .arg(env!("CARGO_BIN_EXE_hookctl"))
        .arg(&hooks)
        .output()
        .unwrap();
    let made = cgroup.join("virt-hooks").exists();
    let _ = fs::remove_dir(cgroup.join("virt-hooks"));
    let _ = fs::remove_dir(&cgroup);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!made, "list made a virt-hooks cgroup in its own cgroup");
}
