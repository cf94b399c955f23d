//! `hookctl` end to end: arguments, exit codes, stdout/stderr contracts.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::contains;

fn hookctl(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("hookctl").unwrap();
    cmd.arg("--hooks-dir").arg(dir);
    cmd
}

fn script(dir: &Path, rel: &str, body: &str) -> PathBuf {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, body).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[test]
fn run_succeeds_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    script(tmp.path(), "qemu", "#!/bin/sh\ncat >/dev/null\necho ignored\n");
    hookctl(tmp.path())
        .args(["run", "qemu", "vm", "prepare", "begin", "-"])
        .assert()
        .success()
        .stdout("")
        .stderr("");
}

#[test]
fn run_failure_exits_1_with_libvirts_message() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = script(
        tmp.path(),
        "qemu.d/20-refuse",
        "#!/bin/sh\necho 'refused: no owner' >&2\nexit 1\n",
    );
    hookctl(tmp.path())
        .args(["run", "qemu", "vm", "prepare", "begin", "-"])
        .assert()
        .code(1)
        .stdout("")
        .stderr(contains(
            "Hook script execution failed: internal error: Child process (LC_ALL=C",
        ))
        .stderr(contains(format!(
            "{} vm prepare begin -) unexpected exit status 1: refused: no owner",
            hook.display()
        )))
        .stderr(contains("libvirt would abort the operation"));
}

#[test]
fn ignored_failures_still_exit_1_and_say_libvirt_ignores_them() {
    let tmp = tempfile::tempdir().unwrap();
    script(tmp.path(), "qemu", "#!/bin/sh\nexit 4\n");
    hookctl(tmp.path())
        .args(["run", "qemu", "vm", "release", "end", "destroyed"])
        .assert()
        .code(1)
        .stderr(contains("unexpected exit status 4"))
        .stderr(contains("libvirt would ignore the failure"));
}

#[test]
fn filter_events_print_the_resulting_document() {
    let tmp = tempfile::tempdir().unwrap();
    script(tmp.path(), "qemu.d/10", "#!/bin/sh\nsed s/old/new/\n");
    let input = tmp.path().join("in.xml");
    fs::write(&input, "<domain>old</domain>\n").unwrap();
    hookctl(tmp.path())
        .args(["run", "qemu", "vm", "migrate", "begin", "-", "--input"])
        .arg(&input)
        .assert()
        .success()
        .stdout("<domain>new</domain>\n");
    // Unchanged: the original comes back.
    script(tmp.path(), "qemu.d/10", "#!/bin/sh\ncat >/dev/null\n");
    hookctl(tmp.path())
        .args(["run", "qemu", "vm", "restore", "begin", "-", "--input", "-"])
        .write_stdin("<domain>old</domain>\n")
        .assert()
        .success()
        .stdout("<domain>old</domain>\n");
}

#[test]
fn json_report_has_one_record_per_hook() {
    let tmp = tempfile::tempdir().unwrap();
    script(tmp.path(), "daemon", "#!/bin/sh\necho out; echo err >&2\n");
    script(tmp.path(), "daemon.d/x", "#!/bin/sh\nexit 3\n");
    let out = hookctl(tmp.path())
        .args(["run", "daemon", "-", "reload", "begin", "SIGHUP", "--json"])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["policy"], "ignore");
    assert_eq!(report["hooks"].as_array().unwrap().len(), 2);
    assert_eq!(report["hooks"][0]["stdout"], "out\n");
    assert_eq!(report["hooks"][0]["input"], "none");
    assert_eq!(report["hooks"][1]["status"]["code"], 3);
}

#[test]
fn positional_values_may_start_with_a_dash_and_double_dash_ends_options() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("args");
    script(
        tmp.path(),
        "qemu",
        &format!("#!/bin/sh\ncat >/dev/null\necho \"$@\" > '{}'\n", out.display()),
    );
    hookctl(tmp.path())
        .args(["run", "qemu", "-weird", "release", "end", "-"])
        .assert()
        .success();
    assert_eq!(fs::read_to_string(&out).unwrap(), "-weird release end -\n");
    hookctl(tmp.path())
        .args(["run", "--json", "--", "qemu", "--json", "prepare", "begin", "-"])
        .assert()
        .success();
    assert_eq!(fs::read_to_string(&out).unwrap(), "--json prepare begin -\n");
}

#[test]
fn usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    hookctl(tmp.path()).args(["run", "qemu", "vm"]).assert().code(2);
    hookctl(tmp.path())
        .args(["run", "xen", "vm", "prepare", "begin", "-"])
        .assert()
        .code(2)
        .stderr(contains("unknown driver `xen`"));
    hookctl(tmp.path())
        .args(["run", "qemu", "vm", "prepare", "begin", "-", "--timeout", "0"])
        .assert()
        .code(2);
    hookctl(&tmp.path().join("missing"))
        .args(["run", "qemu", "vm", "prepare", "begin", "-"])
        .assert()
        .code(2)
        .stderr(contains("cannot read hooks dir"));
    hookctl(tmp.path())
        .args(["run", "qemu", "vm", "prepare", "begin", "-", "--input", "/no/such/file"])
        .assert()
        .code(2)
        .stderr(contains("cannot read input `/no/such/file`"));
    hookctl(tmp.path())
        .args(["simulate", "qemu", "fly", "vm"])
        .assert()
        .code(2)
        .stderr(contains("unknown scenario `fly`"));
    hookctl(tmp.path())
        .args(["simulate", "lxc", "restore", "ct"])
        .assert()
        .code(2)
        .stderr(contains("lxc has no `restore` hook"));
}

#[test]
fn a_hanging_hook_with_a_timeout_returns_promptly() {
    let tmp = tempfile::tempdir().unwrap();
    script(tmp.path(), "qemu", "#!/bin/sh\nsleep 600\n");
    let start = Instant::now();
    hookctl(tmp.path())
        .args(["run", "qemu", "vm", "start", "begin", "-", "--timeout", "0.3"])
        .timeout(Duration::from_secs(20))
        .assert()
        .code(1)
        .stderr(contains("unexpected timeout after 300ms"));
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_background_child_or_flood_does_not_block_hookctl() {
    let tmp = tempfile::tempdir().unwrap();
    script(tmp.path(), "qemu.d/1-bg", "#!/bin/sh\n(sleep 60) &\nexit 0\n");
    script(tmp.path(), "qemu.d/2-flood", "#!/bin/sh\nhead -c 30000000 /dev/zero\n");
    hookctl(tmp.path())
        .args(["run", "qemu", "vm", "prepare", "begin", "-"])
        .timeout(Duration::from_secs(20))
        .assert()
        .success()
        .stderr(contains("background process"))
        .stderr(contains("stdout was cut at the output cap"));
}

#[test]
fn env_is_exactly_lc_all_and_whitelisted_variables() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("env");
    script(
        tmp.path(),
        "qemu",
        &format!(
            "#!/bin/sh\ncat >/dev/null\ntr '\\0' '\\n' < /proc/$$/environ > '{}'\n",
            out.display()
        ),
    );
    hookctl(tmp.path())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/root")
        .env("SECRET_TOKEN", "leak")
        .env("TMPDIR", "/tmp")
        .env("LANG", "de_DE.UTF-8")
        .args(["run", "qemu", "vm", "prepare", "begin", "-"])
        .assert()
        .success();
    assert_eq!(
        fs::read_to_string(out).unwrap(),
        "LC_ALL=C\nPATH=/usr/bin:/bin\nHOME=/root\nTMPDIR=/tmp\n"
    );
}

#[test]
fn list_shows_order_backends_and_skips() {
    hookctl(&examples().join("hooks"))
        .args(["list", "qemu"])
        .assert()
        .success()
        .stdout(contains("1. exec").and(contains("qemu.d/10-log")))
        .stdout(contains("3. exec").and(contains("qemu.d/30-migrate-rewrite")))
        .stdout(contains("README.txt  (not executable)"));
    let out = hookctl(&examples().join("hooks"))
        .args(["list", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let listing: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let qemu = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["driver"] == "qemu")
        .unwrap();
    assert_eq!(qemu["entries"][0]["order"], 1);
    assert_eq!(qemu["entries"][3]["skipped"], "not executable");
}

#[test]
fn check_names_each_broken_file() {
    let tmp = tempfile::tempdir().unwrap();
    script(tmp.path(), "qemu.d/good", "#!/bin/sh\nexit 0\n");
    let plain = script(tmp.path(), "qemu.d/no-shebang", "exit 0\n");
    let interp = script(tmp.path(), "network", "#!/usr/bin/no-such-python\n");
    hookctl(tmp.path())
        .arg("check")
        .assert()
        .code(1)
        .stdout(contains("qemu.d/good"))
        .stdout(contains(format!("`{}` (exec): no `#!` line", plain.display())))
        .stdout(contains(format!(
            "`{}` (exec): interpreter `/usr/bin/no-such-python` does not exist",
            interp.display()
        )))
        .stdout(contains("2 broken hook file(s), 1 sound"));
    hookctl(&examples().join("hooks"))
        .arg("check")
        .assert()
        .success()
        .stdout(contains("all 4 hook file(s) are sound"));
}

#[test]
fn simulate_the_readme_example() {
    let ex = examples();
    hookctl(&ex.join("hooks"))
        .args(["simulate", "qemu", "start", "demo", "--input"])
        .arg(ex.join("domain.xml"))
        .assert()
        .success()
        .stdout(contains("qemu demo prepare begin -"))
        .stdout(contains("qemu demo started begin -"))
        .stdout(contains("result: start of qemu demo would go through"));
    hookctl(&ex.join("hooks"))
        .args(["simulate", "qemu", "start", "nobody", "--libvirt", "10.5", "--input"])
        .arg(ex.join("domain-no-owner.xml"))
        .assert()
        .code(1)
        .stdout(contains("FAILED  exec  qemu.d/20-require-owner"))
        .stdout(contains("qemu nobody release end failed  (cleanup)"))
        .stdout(contains("would be REFUSED"));
}

#[test]
fn simulate_warns_about_ignored_failures_and_goes_through() {
    let tmp = tempfile::tempdir().unwrap();
    script(
        tmp.path(),
        "qemu",
        "#!/bin/sh\ncat >/dev/null\n[ \"$2\" = stopped ] && exit 2\nexit 0\n",
    );
    hookctl(tmp.path())
        .args(["simulate", "qemu", "stop", "vm", "--libvirt", "10.5"])
        .assert()
        .success()
        .stdout(contains("warning: a hook failed, and libvirt would ignore the failure"))
        .stdout(contains("qemu vm release end destroyed"))
        .stdout(contains("result: stop of qemu vm would go through"));
    // libvirt 9.0 (Debian 12) passes `-`: a hook written against `destroyed` never fires.
    hookctl(tmp.path())
        .args(["simulate", "qemu", "stop", "vm", "--libvirt", "9.0"])
        .assert()
        .success()
        .stdout(contains("qemu vm release end -"))
        .stderr(contains("emulating libvirt 9.0 (--libvirt)"));
    hookctl(tmp.path())
        .args(["simulate", "qemu", "stop", "vm", "--libvirt", "nine"])
        .assert()
        .code(2)
        .stderr(contains("--libvirt `nine`"));
}

#[test]
fn simulate_daemon_without_object_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    script(tmp.path(), "daemon", "#!/bin/sh\nexit 0\n");
    let out = hookctl(tmp.path())
        .args(["simulate", "daemon", "reload", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let seq: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(seq["verdict"]["verdict"], "proceed");
    assert_eq!(seq["steps"][0]["report"]["extra"], "SIGHUP");
}

#[test]
fn help_has_examples() {
    Command::cargo_bin("hookctl")
        .unwrap()
        .arg("--help")
        .assert()
        .success()
        .stdout(contains("Examples:"))
        .stdout(contains("simulate qemu start demo"));
}

/// The fixture plugin cargo builds as a dev-dependency next to this test binary.
fn fixture_plugin() -> PathBuf {
    fixture_plugin::shared_object().expect("libfixture_plugin.so: cargo builds it as a dev-dependency")
}

#[test]
fn native_plugins_run_list_and_check_beside_scripts() {
    let tmp = tempfile::tempdir().unwrap();
    script(tmp.path(), "qemu.d/10-script", "#!/bin/sh\ncat >/dev/null\n");
    let so = tmp.path().join("qemu.d/20-native.so");
    fs::copy(fixture_plugin(), &so).unwrap();
    fs::set_permissions(&so, fs::Permissions::from_mode(0o644)).unwrap();
    let junk = tmp.path().join("qemu.d/30-junk.so");
    fs::write(&junk, "not elf").unwrap();

    hookctl(tmp.path())
        .args(["list", "qemu"])
        .assert()
        .success()
        .stdout(contains("1. exec").and(contains("2. dylib")).and(contains("3. dylib")))
        .stdout(contains("30-junk.so  BROKEN: not a loadable shared object"))
        .stdout(contains("20-native.so  WARNING: libvirt runs qemu.d/ itself"));
    // libvirt runs qemu.d/ itself: there it would not load these, and `check` says so.
    hookctl(tmp.path())
        .arg("check")
        .assert()
        .code(1)
        .stdout(contains(format!(
            "broken: {}: libvirt runs qemu.d/ itself and would skip this file (not executable) rather than load it; move it to {}",
            so.display(),
            tmp.path().join("qemu.plugins/").display()
        )));
    fs::remove_file(&junk).unwrap();
    hookctl(tmp.path())
        .args(["run", "qemu", "vm", "migrate", "begin", "-", "--input", "-"])
        .write_stdin("<domain><source bridge='br-legacy'/></domain>")
        .assert()
        .success()
        .stdout("<domain><source bridge='br0'/></domain>")
        .stderr(contains("warning").and(contains("20-native.so: libvirt runs qemu.d/ itself")));
    hookctl(tmp.path())
        .args(["run", "qemu", "exit-9", "prepare", "begin", "-"])
        .assert()
        .code(1)
        .stderr(contains(format!(
            "Hook `{}` (dylib) failed at `exit-9 prepare begin -`: returned status 9: failing as asked with 9",
            so.display()
        )));
}

fn wat_example(name: &str) -> Vec<u8> {
    wat::parse_file(examples().join("wasm").join(name)).unwrap()
}

#[test]
fn wasm_modules_run_list_and_check_beside_scripts() {
    let tmp = tempfile::tempdir().unwrap();
    script(tmp.path(), "qemu.d/10-script", "#!/bin/sh\ncat\n");
    fs::write(
        tmp.path().join("qemu.d/20-require-owner.wasm"),
        wat_example("require-owner.wat"),
    )
    .unwrap();
    fs::write(
        tmp.path().join("qemu.d/30-rewrite.wasm"),
        wat_example("migrate-rewrite.wat"),
    )
    .unwrap();
    let bad = tmp.path().join("qemu.d/40-bad.wasm");
    fs::write(&bad, b"\0asm\x01\0\0\0garbage").unwrap();

    hookctl(tmp.path())
        .args(["list", "qemu"])
        .assert()
        .success()
        .stdout(
            contains("2. wasm")
                .and(contains("20-require-owner.wasm"))
                .and(contains("4. wasm")),
        )
        .stdout(contains(
            "40-bad.wasm  [timeout=10s (default)]  BROKEN: invalid WebAssembly",
        ));
    hookctl(tmp.path())
        .arg("check")
        .env("VIRT_HOOKS_WASM_CACHE", tmp.path().join("cache"))
        .assert()
        .code(1)
        .stdout(contains(format!(
            "broken: {}: libvirt runs qemu.d/ itself and would skip this file",
            bad.display()
        )));
    // In the dispatcher's plugins dir the same module is loaded, and found broken.
    fs::create_dir(tmp.path().join("qemu.plugins")).unwrap();
    fs::rename(&bad, tmp.path().join("qemu.plugins/40-bad.wasm")).unwrap();
    hookctl(tmp.path())
        .args(["check", "qemu"])
        .env("VIRT_HOOKS_WASM_CACHE", tmp.path().join("cache"))
        .assert()
        .code(1)
        .stdout(contains("qemu.plugins/40-bad.wasm` (wasm): invalid WebAssembly"));
    fs::remove_file(tmp.path().join("qemu.plugins/40-bad.wasm")).unwrap();
    // The script echoes, the WASM filter rewrites: chained.
    hookctl(tmp.path())
        .args(["run", "qemu", "vm", "migrate", "begin", "-", "--input", "-"])
        .env("VIRT_HOOKS_WASM_CACHE", tmp.path().join("cache"))
        .write_stdin("<domain><source bridge='br-legacy'/></domain>\n")
        .assert()
        .success()
        .stdout("<domain><source bridge='br0'/></domain>\n");
    hookctl(tmp.path())
        .args(["run", "qemu", "vm", "prepare", "begin", "-", "--input", "-"])
        .env("VIRT_HOOKS_WASM_CACHE", tmp.path().join("cache"))
        .write_stdin("<domain/>")
        .assert()
        .code(1)
        .stderr(contains("(wasm) failed at `vm prepare begin -`"))
        .stderr(contains("returned status 1: guest has no <owner:owner> element"));
}

#[test]
fn wasm_memory_and_timeout_options_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let grow = wat::parse_str(
        r#"(module (memory 1) (func (export "_start") (loop $g (br_if $g (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))))"#,
    )
    .unwrap();
    fs::create_dir(tmp.path().join("daemon.d")).unwrap();
    fs::write(tmp.path().join("daemon.d/bomb.wasm"), &grow).unwrap();
    hookctl(tmp.path())
        .args(["run", "daemon", "-", "start", "-", "start", "--wasm-memory", "4"])
        .env("VIRT_HOOKS_WASM_CACHE", "off")
        .assert()
        .code(1)
        .stderr(contains("memory limit of 4 MiB exceeded"));
    let spin = wat::parse_str(r#"(module (func (export "_start") (loop $l (br $l))))"#).unwrap();
    fs::write(tmp.path().join("daemon.d/bomb.wasm"), &spin).unwrap();
    let start = Instant::now();
    hookctl(tmp.path())
        .args(["run", "daemon", "-", "start", "-", "start", "--timeout", "0.2"])
        .env("VIRT_HOOKS_WASM_CACHE", "off")
        .timeout(Duration::from_secs(20))
        .assert()
        .code(1)
        .stderr(contains("timed out after 200ms"));
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// A reader that stops early (`| head -1`, `| grep -q`) ends hookctl's output quietly:
/// no panic, no "failed printing to stdout" (e2e's `hookctl state | grep -q` got one).
#[test]
fn a_reader_that_stops_early_gets_no_panic() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["10-a", "20-b", "30-c"] {
        script(tmp.path(), &format!("qemu.d/{name}"), "#!/bin/sh\nexit 0\n");
    }
    // Its own log and state root, never the host's.
    let plugins = tmp.path().join("qemu.plugins");
    fs::create_dir_all(plugins.join("state/qemu/vm1/10-a")).unwrap();
    fs::write(
        plugins.join("hookctl.toml"),
        format!("log = \"{0}/audit.jsonl\"\nstate = \"{0}/state\"\n", plugins.display()),
    )
    .unwrap();
    fs::write(plugins.join("audit.jsonl"), "").unwrap();
    for args in [&["check"][..], &["list"], &["state"], &["log"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookctl"))
            .arg("--hooks-dir")
            .arg(tmp.path())
            .args(args)
            .env("VIRT_HOOKS_WASM_CACHE", "off")
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("failed printing"),
            "{args:?}: {stderr}"
        );
    }
}
