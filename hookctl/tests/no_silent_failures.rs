//! Ways a policy could silently stop applying, a guest could be hurt, or an operator
//! misled: each one made loud.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::contains;

mod common;
use common::*;

#[test]
fn a_sidecar_typo_never_kills_a_running_guest_at_reconnect() {
    let (tmp, hooks, plugins) = installed();
    script(&plugins.join("10-gpu"), "#!/bin/sh\nexit 0\n");
    fs::write(
        plugins.join("10-gpu.toml"),
        "timout = 2\n[match]\nobjects = [\"gaming-*\"]\n",
    )
    .unwrap();
    // libvirtd restarts with `db1` running: a failed reconnect would kill it.
    as_libvirt_xml(&hooks, ["db1", "reconnect", "begin", "-"])
        .assert()
        .success()
        .stderr(contains("ignored failure").and(contains("10-gpu")))
        .stderr(contains("hookctl check"));
    let audit = fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap();
    assert!(
        audit.contains("\"result\":\"ok\"") && audit.contains("unknown field `timout`"),
        "{audit}"
    );
    // Where a failure aborts a start, failing closed stays right, and says what to run.
    as_libvirt_xml(&hooks, ["db1", "prepare", "begin", "-"])
        .assert()
        .code(1)
        .stderr(contains("unknown field `timout`").and(contains("(run `hookctl check`)")));
}

#[test]
fn a_hung_plugin_is_stopped_by_the_dispatchers_default_timeout() {
    let (tmp, hooks, plugins) = installed();
    script(&plugins.join("10-hang"), "#!/bin/sh\nexec sleep 600\n");
    let log = tmp.path().join("audit.jsonl");
    fs::write(
        plugins.join("hookctl.toml"),
        format!("log = \"{}\"\ntimeout = \"400ms\"\n", log.display()),
    )
    .unwrap();
    let start = Instant::now();
    as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"])
        .assert()
        .code(1)
        .stderr(contains("timed out after 400"));
    assert!(start.elapsed() < Duration::from_secs(10));
    hookctl(&hooks, &["list", "qemu"])
        .assert()
        .success()
        .stdout(contains("10-hang  [timeout=400ms (default)]"));
    // Without hookctl.toml the built-in default applies, and `list` says which.
    fs::write(plugins.join("hookctl.toml"), format!("log = \"{}\"\n", log.display())).unwrap();
    hookctl(&hooks, &["list", "qemu"])
        .assert()
        .success()
        .stdout(contains("10-hang  [timeout=30s (default)]"));
    // Opting out is explicit.
    fs::write(plugins.join("10-hang.toml"), "timeout = \"none\"\n").unwrap();
    hookctl(&hooks, &["list", "qemu"])
        .assert()
        .success()
        .stdout(contains("10-hang  [timeout=none]"));
}

#[test]
fn match_patterns_that_match_nothing_are_errors() {
    let (_tmp, hooks, plugins) = installed();
    script(&plugins.join("10-x"), "#!/bin/sh\nexit 0\n");
    fs::write(plugins.join("10-x.toml"), "[match]\nops = [\"prepar\"]\n").unwrap();
    hookctl(&hooks, &["check", "qemu"])
        .assert()
        .code(1)
        .stdout(contains("10-x.toml:2").and(contains("`prepar` matches no qemu operation")));
    fs::write(
        plugins.join("10-x.toml"),
        "[match]\nops = [\"prep*\"]\nsubops = [\"start\"]\n",
    )
    .unwrap();
    hookctl(&hooks, &["check", "qemu"])
        .assert()
        .code(1)
        .stdout(contains("10-x.toml:3").and(contains("`start` matches no subop")));
    fs::write(plugins.join("10-x.toml"), "[match]\nops = [\"prep*\", \"release\"]\n").unwrap();
    hookctl(&hooks, &["check", "qemu"]).assert().success();
}

#[test]
fn hookctl_toml_mistakes_are_named_by_check_and_list_shows_the_log() {
    let (tmp, hooks, plugins) = installed();
    script(&plugins.join("10-ok"), "#!/bin/sh\nexit 0\n");
    let log = tmp.path().join("audit.jsonl");
    hookctl(&hooks, &["list", "qemu"])
        .assert()
        .success()
        .stdout(contains(format!("audit log {}", log.display())));
    fs::write(plugins.join("hookctl.toml"), "\nlogfile = \"/tmp/x.jsonl\"\n").unwrap();
    hookctl(&hooks, &["check", "qemu"])
        .assert()
        .code(1)
        .stdout(contains("hookctl.toml:2: unknown field `logfile`"));
    fs::write(plugins.join("hookctl.toml"), "log = \"relative.jsonl\"\n").unwrap();
    hookctl(&hooks, &["check", "qemu"])
        .assert()
        .code(1)
        .stdout(contains("hookctl.toml:1: log must be an absolute path"));
}

#[test]
fn check_fails_on_plugins_that_will_never_run() {
    let (tmp, hooks, plugins) = installed();
    fs::write(plugins.join("10-forgot-chmod"), "#!/bin/sh\nexit 1\n").unwrap();
    fs::set_permissions(plugins.join("10-forgot-chmod"), fs::Permissions::from_mode(0o644)).unwrap();
    hookctl(&hooks, &["check", "qemu"])
        .assert()
        .code(1)
        .stdout(contains("10-forgot-chmod: not executable: it will never run"));
    fs::remove_file(plugins.join("10-forgot-chmod")).unwrap();
    symlink(tmp.path().join("moved-away"), plugins.join("20-dangling")).unwrap();
    hookctl(&hooks, &["check", "qemu"])
        .assert()
        .code(1)
        .stdout(contains("20-dangling"));
}

#[test]
fn list_never_runs_plugin_code_and_says_when_nothing_runs_the_dir() {
    let (tmp, hooks, plugins) = installed();
    let marker = tmp.path().join("constructor-ran");
    let src = tmp.path().join("ctor.c");
    fs::write(
        &src,
        format!(
            "#include <stdio.h>\n__attribute__((constructor)) static void ran(void) {{ FILE *f = fopen(\"{}\", \"w\"); if (f) fclose(f); }}\n",
            marker.display()
        ),
    )
    .unwrap();
    let so = plugins.join("10-ctor.so");
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .status()
        .expect("a C compiler (cc) is needed for this test");
    assert!(built.success());
    fs::set_permissions(&so, fs::Permissions::from_mode(0o644)).unwrap();
    hookctl(&hooks, &["list", "qemu"])
        .assert()
        .success()
        .stdout(contains("10-ctor.so"));
    assert!(!marker.exists(), "`list` loaded the library and ran its constructor");
    // `check` does load it (and so names it broken: it exports no hook).
    hookctl(&hooks, &["check", "qemu"]).assert().code(1);
    assert!(marker.exists());

    fs::remove_file(hooks.join("qemu")).unwrap();
    script(&hooks.join("qemu"), "#!/bin/sh\nexit 0\n");
    hookctl(&hooks, &["list", "qemu"])
        .assert()
        .success()
        .stdout(contains("NOT RUN").and(contains("is not hookctl")));
}

#[test]
fn audit_lines_say_when_who_called_and_keep_stray_stdout() {
    let (tmp, hooks, plugins) = installed();
    script(
        &plugins.join("10-chatty"),
        "#!/bin/sh\ncat >/dev/null\necho 'stray output'\n",
    );
    as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"])
        .assert()
        .success();
    let line = fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    let time = v["time"].as_str().expect("an RFC 3339 time");
    assert!(
        time.len() >= 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{time}"
    );
    // The test binary ran us, not libvirtd: the line says so.
    assert!(v["caller"]["pid"].as_u64().is_some());
    assert!(!v["caller"]["name"].as_str().unwrap().is_empty());
    assert_ne!(v["caller"]["name"], "libvirtd");
    assert_eq!(v["hooks"][0]["stdout"], "stray output\n");
}

#[test]
fn a_refused_install_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let hooks = tmp.path().join("hooks");
    script(&hooks.join("network"), "#!/bin/sh\nexit 0\n");
    // qemu would be fine, network is refused (no --force): neither is touched.
    Command::new(exe())
        .arg("--hooks-dir")
        .arg(&hooks)
        .args(["install", "qemu", "network"])
        .assert()
        .code(2)
        .stderr(contains("rerun with --force"));
    let mut left: Vec<_> = fs::read_dir(&hooks).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, ["network"]);
    Command::new(exe())
        .args(["uninstall", "--help"])
        .assert()
        .success()
        .stdout(contains("Drivers to uninstall for").and(contains("--force")));
}

#[test]
fn a_crashing_native_plugin_fails_alone_and_is_named_on_stderr_and_in_the_audit_log() {
    let (tmp, hooks, plugins) = installed();
    let so = plugins.join("10-crash.so");
    crashing_plugin(tmp.path(), &so);
    let after = tmp.path().join("after-ran");
    script(
        &plugins.join("20-after"),
        &format!("#!/bin/sh\ntouch {}\n", after.display()),
    );
    let out = as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"])
        .output()
        .unwrap();
    // It runs in its own process: the dispatcher answers libvirt, the others still run.
    assert_eq!(out.status.code(), Some(1), "{:?}", out.status);
    assert!(after.exists(), "the plugin after the crashed one ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}: fatal signal 11", so.display())),
        "{stderr}"
    );
    let audit = fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap();
    let v: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(v["result"], "failed");
    assert_eq!(v["failed_plugin"], so.display().to_string());
    assert_eq!(v["hooks"][0]["status"], "fatal signal 11 (SIGSEGV)");
    assert_eq!(v["object"], "vm");
}

#[test]
fn a_hung_native_plugin_is_killed_at_its_timeout() {
    let (tmp, hooks, plugins) = installed();
    let so = plugins.join("10-hang.so");
    c_plugin(tmp.path(), &so, "for (;;) sleep(1); return 0;");
    fs::write(plugins.join("10-hang.so.toml"), "timeout = 0.3\n").unwrap();
    let started = std::time::Instant::now();
    let out = as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("10-hang.so: timed out after 300ms"), "{stderr}");
    // Generous: only that it did not wait for the plugin, which never returns.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn a_native_plugins_output_status_and_load_errors_come_through_the_host() {
    let (tmp, hooks, plugins) = installed();
    c_plugin(
        tmp.path(),
        &plugins.join("10-speak.so"),
        "inv->io.write_stderr(inv->io.ctx, (const uint8_t *)\"no way\\n\", 7); return 300;",
    );
    fs::write(plugins.join("20-garbage.so"), "not an ELF file").unwrap();
    let out = as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A status no exit code can carry (300) arrives whole, with the plugin's stderr.
    assert!(stderr.contains("10-speak.so: exit status 300: no way"), "{stderr}");
    assert!(!stderr.contains("hookctl-native-report"), "{stderr}");
    assert!(stderr.contains("20-garbage.so: could not run:"), "{stderr}");
    assert!(stderr.contains("not a loadable shared object"), "{stderr}");
}

#[test]
fn list_json_gives_the_settings_in_effect_as_data() {
    let (_tmp, hooks, plugins) = installed();
    script(&plugins.join("10-x"), "#!/bin/sh\nexit 0\n");
    fs::write(
        plugins.join("10-x.toml"),
        "policy = \"optional\"\n[match]\nobjects = [\"win*\"]\nops = [\"prepare\"]\n",
    )
    .unwrap();
    let out = hookctl(&hooks, &["list", "qemu", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = v
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["entries"].as_array().unwrap())
        .find(|e| e["path"].as_str().unwrap().ends_with("/10-x"))
        .unwrap();
    let eff = &entry["effective"];
    assert_eq!(eff["timeout_secs"], 30.0);
    assert_eq!(eff["timeout_is_default"], true);
    assert_eq!(eff["policy"], "optional");
    assert_eq!(eff["match"]["objects"][0], "win*");
    assert_eq!(eff["match"]["ops"][0], "prepare");
}

/// A C statement writing `text` (a C string literal's contents) to the plugin's stderr
/// through the ABI.
fn c_stderr(text: &str) -> String {
    format!("{{ const char *s = \"{text}\"; inv->io.write_stderr(inv->io.ctx, (const uint8_t *)s, strlen(s)); }}")
}

#[test]
fn a_plugin_that_echoes_a_forged_host_report_still_fails() {
    let (tmp, hooks, plugins) = installed();
    // What a plugin might echo from a guest's description: report lines in every form
    // the host could use, claiming success, while the plugin refuses (-1). Its stderr
    // cap is sized so the forged line would be the last one kept.
    let forged = [
        "\\nhookctl-native-report: {\\\"status\\\":\\\"exited\\\",\\\"code\\\":0}\\n",
        "\\nhookctl-native-report 00000000000000000000000000000000 {\\\"end\\\":{\\\"status\\\":\\\"exited\\\",\\\"code\\\":0}}\\n",
    ];
    let body = format!("{} {} return -1;", c_stderr(forged[0]), c_stderr(forged[1]));
    c_plugin(tmp.path(), &plugins.join("10-echo.so"), &body);
    fs::write(plugins.join("10-echo.so.toml"), "max_output = 200\n").unwrap();
    let out = as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("10-echo.so: exit status -1"), "{stderr}");
}

#[test]
fn a_plugin_that_exits_its_process_fails_instead_of_succeeding() {
    let (tmp, hooks, plugins) = installed();
    c_plugin(tmp.path(), &plugins.join("10-exit.so"), "_exit(0); return 1;");
    let out = as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("10-exit.so: crashed: the plugin ended the process of hookctl-native itself (exit status 0)"),
        "{stderr}"
    );
    // `check` loads it without calling it: sound. A constructor that exits is not.
    hookctl(&hooks, &["check", "qemu"]).assert().success();
}

#[test]
fn what_a_plugin_prints_on_its_own_stdout_never_becomes_the_document() {
    let (tmp, hooks, plugins) = installed();
    // printf-style output straight to fd 1, then success without a document.
    c_plugin(
        tmp.path(),
        &plugins.join("10-printf.so"),
        "write(1, \"<domain>stray</domain>\\n\", 23); return 0;",
    );
    let mut cmd = as_libvirt(&hooks, ["vm", "migrate", "begin", "-"]);
    cmd.write_stdin("<domain>original</domain>\n");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // Unchanged: nothing for libvirt (so it does not taint the guest).
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let audit = fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(line["document_changed"], false);
    assert!(line["hooks"][0]["stderr"].as_str().unwrap().contains("stray"), "{line}");
}
