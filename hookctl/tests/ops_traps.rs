//! Issue 20, items 8 and 10 (and a trap from issue 19): `check`'s findings on stdout,
//! `.disabled` copies, a sidecar named after the script's stem, the default timeout, a
//! filter's bad output quoted, and the Debian packaging scripts (run against temp dirs:
//! `DPKG_ROOT` for the maintainer script, stub `cargo` and `readelf` for the build).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command as Std;

use predicates::prelude::*;
use predicates::str::contains;

mod common;
use common::*;

fn installed_quietly() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (tmp, hooks, plugins) = installed();
    let config = format!(
        "log = \"{}\"\njournal = false\nstate = \"{}\"\n",
        tmp.path().join("audit.jsonl").display(),
        tmp.path().join("state").display()
    );
    fs::write(plugins.join("hookctl.toml"), config).unwrap();
    (tmp, hooks, plugins)
}

/// `check 2>/dev/null | grep broken` must find what is broken.
#[test]
fn check_prints_its_findings_on_stdout_and_exits_1() {
    let (_tmp, hooks, plugins) = installed_quietly();
    script(&plugins.join("10-ok"), "#!/bin/sh\nexit 0\n");
    script_mode(&plugins.join("20-noexec"), "#!/bin/sh\nexit 0\n", 0o644);
    script(&plugins.join("30-typo"), "#!/bin/sh\nexit 0\n");
    fs::write(plugins.join("30-typo.toml"), "timout = 2\n").unwrap();
    let out = hookctl(&hooks, &["check", "qemu"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let broken: Vec<&str> = stdout.lines().filter(|l| l.contains("broken")).collect();
    assert!(
        broken
            .iter()
            .any(|l| l.contains("20-noexec") && l.contains("not executable")),
        "{stdout}"
    );
    assert!(
        broken
            .iter()
            .any(|l| l.contains("30-typo.toml:1") && l.contains("unknown field `timout`")),
        "{stdout}"
    );
    assert!(stdout.contains("2 broken hook file(s)"), "{stdout}");
    assert!(stderr.is_empty(), "findings leaked to stderr: {stderr}");
    // hookctl's own errors still go to stderr.
    hookctl(&tmp_missing(), &["check"])
        .assert()
        .failure()
        .stdout("")
        .stderr(contains("does-not-exist"));
}

fn tmp_missing() -> PathBuf {
    std::env::temp_dir().join("hookctl-ops-traps-does-not-exist")
}

/// `mv 10-x 10-x.disabled` used to leave it running.
#[test]
fn a_disabled_copy_never_runs_and_list_shows_it_skipped() {
    let (tmp, hooks, plugins) = installed_quietly();
    let ran = tmp.path().join("ran");
    let body = format!("#!/bin/sh\necho \"$0\" >> {}\nexit 0\n", ran.display());
    script(&plugins.join("10-gpu.disabled"), &body);
    script(&plugins.join("20-cpu"), &body);
    as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"])
        .assert()
        .success();
    let ran = fs::read_to_string(&ran).unwrap();
    assert_eq!(
        ran.lines().collect::<Vec<_>>(),
        [plugins.join("20-cpu").to_str().unwrap()]
    );
    hookctl(&hooks, &["list", "qemu"])
        .assert()
        .success()
        .stdout(contains("10-gpu.disabled  (disabled (`.disabled`), never run)"));
}

/// A plugin set aside while an event runs is not run by it, and does not fail it (it
/// failed the event with exit status 127, as libvirt would for a missing file).
#[test]
fn a_plugin_set_aside_during_an_event_is_skipped_not_a_failure() {
    let (_tmp, hooks, plugins) = installed_quietly();
    let refuser = plugins.join("20-refuse");
    script(
        &plugins.join("10-set-aside"),
        &format!(
            "#!/bin/sh
mv {0} {0}.disabled
",
            refuser.display()
        ),
    );
    script(
        &refuser,
        "#!/bin/sh
echo refused >&2
exit 1
",
    );
    as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"])
        .assert()
        .success()
        .stderr(
            contains("20-refuse")
                .and(contains("not run"))
                .and(contains("refused").not()),
        );
    assert!(plugins.join("20-refuse.disabled").exists());
}

/// Issue 19: `10-x.toml` beside `10-x.sh` is no one's sidecar; it was silently
/// "settings, never a hook" and its `[match]` or `timeout` applied to nothing.
#[test]
fn a_sidecar_named_after_the_stem_is_a_warning_with_the_right_name() {
    let (_tmp, hooks, plugins) = installed_quietly();
    script(&plugins.join("10-x.sh"), "#!/bin/sh\nexit 0\n");
    fs::write(plugins.join("10-x.toml"), "[match]\nobjects = [\"prod-*\"]\n").unwrap();
    hookctl(&hooks, &["check", "qemu"])
        .assert()
        .success()
        .stdout(contains("warning: ").and(contains("10-x.toml")))
        .stdout(contains("matches no hook").and(contains("rename it `10-x.sh.toml`")));
    hookctl(&hooks, &["list", "qemu"])
        .assert()
        .success()
        .stdout(contains("10-x.toml  (settings file that matches no hook)  WARNING: "))
        .stdout(contains("rename it `10-x.sh.toml`"));
}

/// A hung plugin holds libvirtd's lock on the guest: the default limit is 30 s.
#[test]
fn the_default_timeout_is_30_seconds() {
    let (_tmp, hooks, plugins) = installed_quietly();
    script(&plugins.join("10-slow"), "#!/bin/sh\nexit 0\n");
    let out = hookctl(&hooks, &["list", "qemu", "--json"]).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let timeouts: Vec<f64> = (json.as_array().unwrap().iter())
        .flat_map(|d| d["entries"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["path"].as_str().is_some_and(|p| p.ends_with("10-slow")))
        .filter_map(|e| e["effective"]["timeout_secs"].as_f64())
        .collect();
    assert_eq!(timeouts, [30.0], "{json}");
}

/// A filter that prints a log line instead of XML: the message shows what it printed
/// (80 bytes at most, with nothing a terminal would act on).
#[test]
fn a_filters_bad_output_is_quoted_short_and_escaped() {
    let (_tmp, hooks, plugins) = installed_quietly();
    // One shell builtin, no pipeline: 2000 more bytes after the colour codes.
    let body = format!(
        "#!/bin/sh\nprintf 'ERROR \\033[31mno such guest\\033[0m: %s\\n' {}\n",
        "x".repeat(2000)
    );
    script(&plugins.join("10-filter"), &body);
    let mut cmd = as_libvirt(&hooks, ["vm", "restore", "begin", "-"]);
    cmd.write_stdin("<domain>\n<name>vm</name>\n</domain>\n");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not well-formed XML") && stderr.contains(r"it began `ERROR \x1b[31mno such guest\x1b[0m: xxx"),
        "{stderr}"
    );
    let quote = stderr.split("it began `").nth(1).unwrap();
    let quote = &quote[..quote.find('`').unwrap()];
    assert!(quote.ends_with('…') && quote.matches('x').count() < 80, "{quote}");
    assert!(
        !stderr.contains('\u{1b}'),
        "a raw escape reached the terminal: {stderr:?}"
    );
}

// ---- packaging -------------------------------------------------------------------

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn run_postrm(root: &Path, arg: &str) -> std::process::Output {
    Std::new("sh")
        .arg(repo().join("packaging/debian/postrm"))
        .arg(arg)
        .env("DPKG_ROOT", root)
        .output()
        .unwrap()
}

fn run_postinst(root: &Path) -> std::process::Output {
    Std::new("sh")
        .arg(repo().join("packaging/debian/postinst"))
        .arg("configure")
        .env("DPKG_ROOT", root)
        .output()
        .unwrap()
}

/// Purge removes the package's own log and state, and a cache dir only if it made it.
#[test]
fn purge_removes_its_own_log_and_state_and_only_a_cache_it_created() {
    // A cache that was there before the package (another virt-hooks embedder's).
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::create_dir_all(r.join("var/cache/virt-hooks")).unwrap();
    fs::write(r.join("var/cache/virt-hooks/theirs"), "x").unwrap();
    fs::create_dir_all(r.join("var/log/libvirt")).unwrap();
    fs::write(r.join("var/log/libvirt/qemu.log"), "libvirt's own").unwrap();
    let out = run_postinst(r);
    assert!(out.status.success(), "{out:?}");
    for log in ["hookctl.jsonl", "hookctl.jsonl.1", "hookctl.jsonl.5"] {
        fs::write(r.join("var/log/libvirt").join(log), "{}\n").unwrap();
    }
    // Empty levels only: nothing is held.
    fs::create_dir_all(r.join("run/virt-hooks/state/qemu/vm1")).unwrap();
    fs::create_dir_all(r.join("run/virt-hooks/state/.kept/qemu/vm1")).unwrap();
    let out = run_postrm(r, "purge");
    assert!(out.status.success(), "{out:?}");
    assert!(
        r.join("var/cache/virt-hooks/theirs").exists(),
        "removed a cache it did not create"
    );
    assert!(!r.join("var/log/libvirt/hookctl.jsonl").exists());
    assert!(!r.join("var/log/libvirt/hookctl.jsonl.1").exists());
    assert!(!r.join("var/log/libvirt/hookctl.jsonl.5").exists());
    assert!(r.join("var/log/libvirt/qemu.log").exists(), "removed libvirt's own log");
    assert!(!r.join("run/virt-hooks").exists(), "left its state");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("var/cache/virt-hooks"),
        "{out:?}"
    );

    // A plugin's directory records work not undone (the trial's 32 huge pages for a
    // guest still running): purge names it and leaves the state root.
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    assert!(run_postinst(r).status.success());
    fs::create_dir_all(r.join("run/virt-hooks/state/qemu/db1/hugepages")).unwrap();
    fs::write(r.join("run/virt-hooks/state/qemu/db1/hugepages/pages"), "32").unwrap();
    let out = run_postrm(r, "purge");
    assert!(out.status.success(), "{out:?}");
    assert!(r.join("run/virt-hooks/state/qemu/db1/hugepages/pages").exists());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("qemu/db1/hugepages") && said.contains("left"), "{said}");
    // The same under a root that hookctl.toml moved: named, not only the file's line.
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    assert!(run_postinst(r).status.success());
    fs::create_dir_all(r.join("etc/libvirt/hooks/qemu.plugins")).unwrap();
    fs::write(
        r.join("etc/libvirt/hooks/qemu.plugins/hookctl.toml"),
        "state = \"/srv/hk-state\"\n",
    )
    .unwrap();
    fs::create_dir_all(r.join("srv/hk-state/qemu/tmp-1/35-stateful.sh")).unwrap();
    let out = run_postrm(r, "purge");
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("qemu/tmp-1/35-stateful.sh") && said.contains("/srv/hk-state"),
        "{said}"
    );
    assert_eq!(said.matches("35-stateful.sh").count(), 1, "named once: {said}");
    assert!(r.join("srv/hk-state/qemu/tmp-1/35-stateful.sh").exists());
    // A TOML literal string, and a root only the dispatcher's record knows (the file
    // moved `state` back since): both named; the record goes with the package.
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    assert!(run_postinst(r).status.success());
    fs::create_dir_all(r.join("etc/libvirt/hooks/network.plugins")).unwrap();
    fs::write(
        r.join("etc/libvirt/hooks/network.plugins/hookctl.toml"),
        "state = '/srv/hkN'\n",
    )
    .unwrap();
    fs::create_dir_all(r.join("srv/hkN/network/n1/30-nfw")).unwrap();
    fs::write(r.join("etc/libvirt/hooks/.qemu.state-roots"), "/srv/old-root\n").unwrap();
    fs::create_dir_all(r.join("srv/old-root/qemu/db1/hugepages")).unwrap();
    let out = run_postrm(r, "purge");
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("network/n1/30-nfw") && said.contains("qemu/db1/hugepages"),
        "{said}"
    );
    assert!(!r.join("etc/libvirt/hooks/.qemu.state-roots").exists());

    // A cache the package made goes with it.
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let out = run_postinst(r);
    assert!(out.status.success(), "{out:?}");
    let cache = r.join("var/cache/virt-hooks");
    assert_eq!(fs::metadata(&cache).unwrap().mode() & 0o777, 0o700);
    fs::write(cache.join("module.cwasm"), "x").unwrap();
    // `remove` alone keeps everything (the plugins may come back with the package).
    assert!(run_postrm(r, "remove").status.success());
    assert!(cache.join("module.cwasm").exists());
    let out = run_postrm(r, "purge");
    assert!(out.status.success(), "{out:?}");
    assert!(!cache.exists(), "kept the cache it created");
    // Nothing of the package's bookkeeping is left either.
    assert!(!r.join("var/lib/hookctl").exists());
}

/// Every file under `dir` (not following links), with its size, mode and mtime.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, u32, i64, i64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            out.insert(entry.path(), (meta.len(), meta.mode(), meta.mtime(), meta.mtime_nsec()));
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    out.insert(dir.to_owned(), {
        let meta = fs::metadata(dir).unwrap();
        (meta.len(), meta.mode(), meta.mtime(), meta.mtime_nsec())
    });
    out
}

/// `build-deb.sh` from a checkout nobody may write to: everything it makes goes under
/// the target dir. Cargo, cargo-deb and readelf are stubs that record how they were
/// called and make what the real ones would (the release build itself takes minutes).
#[test]
fn build_deb_writes_nothing_into_the_checkout() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("checkout");
    for file in [
        "packaging/build-deb.sh",
        "packaging/build-release.sh",
        "README.md",
        "DESIGN.md",
        "CHANGELOG.md",
        "hookctl/Cargo.toml",
    ] {
        let dest = tree.join(file);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::copy(repo().join(file), &dest).unwrap();
    }
    for dir in ["docs", "docs/plugins"] {
        fs::create_dir(tree.join(dir)).unwrap();
        for doc in fs::read_dir(repo().join(dir)).unwrap() {
            let doc = doc.unwrap().path();
            if doc.is_file() {
                fs::copy(&doc, tree.join(dir).join(doc.file_name().unwrap())).unwrap();
            }
        }
    }
    let target = tmp.path().join("build");
    let stubs = tmp.path().join("stubs");
    let calls = tmp.path().join("calls");
    // `cargo build`/`cargo rustc` leave a hookctl (the test's own, which can make the
    // assets) in the target dir; `cargo deb` checks its assets exist where the manifest says.
    script(
        &stubs.join("cargo"),
        &format!(
            r#"#!/bin/sh
echo "cargo $*" >> {calls}
case "$1" in
  build|rustc) mkdir -p "$CARGO_TARGET_DIR/release" && cp {exe} "$CARGO_TARGET_DIR/release/hookctl" && touch "$CARGO_TARGET_DIR/release/hookctl-native" ;;
  deb)
    for asset in man/hookctl.1.gz completions/hookctl.bash completions/_hookctl completions/hookctl.fish README.md.gz docs/settings.md.gz docs/plugins/c.md.gz; do
      [ -s "$CARGO_TARGET_DIR/release/deb-assets/$asset" ] || {{ echo "missing asset $asset" >&2; exit 1; }}
    done
    grep -q 'target/release/deb-assets/man/\*.1' hookctl/Cargo.toml || {{ echo "manifest does not take the assets from the target dir" >&2; exit 1; }}
    mkdir -p "$CARGO_TARGET_DIR/debian" && touch "$CARGO_TARGET_DIR/debian/hookctl_0.1.0-1_amd64.deb" ;;
esac
"#,
            calls = calls.display(),
            exe = exe().display()
        ),
    );
    script(&stubs.join("cargo-deb"), "#!/bin/sh\nexit 0\n");
    script(&stubs.join("readelf"), "#!/bin/sh\necho 'no interpreter'\n");
    let before = snapshot(&tree);
    // Read-only for everyone: root ignores it, so the snapshot is what proves it.
    for path in before.keys() {
        let mode = fs::symlink_metadata(path).unwrap().mode() & 0o555;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }
    let before = snapshot(&tree);
    let out = Std::new("bash")
        .arg(tree.join("packaging/build-deb.sh"))
        .env("PATH", format!("{}:/usr/bin:/bin", stubs.display()))
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(snapshot(&tree), before, "build-deb.sh changed the checkout");
    assert!(target.join("debian/hookctl_0.1.0-1_amd64.deb").exists());
    let calls = fs::read_to_string(&calls).unwrap();
    assert!(calls.contains("cargo deb -p hookctl --no-build"), "{calls}");
    for path in before.keys() {
        let mode = fs::symlink_metadata(path).unwrap().mode() | 0o200;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// libvirt runs the dispatcher, not the plugin: simulate's "libvirt would say" named the
/// plugin, with the plugin's exit status, where virsh shows the hook and status 1.
#[test]
fn simulate_quotes_libvirt_naming_the_hook_it_runs() {
    let (tmp, hooks, plugins) = installed_quietly();
    script(
        &plugins.join("20-gate"),
        "#!/bin/sh\ncat >/dev/null\necho \"no capacity for $1\" >&2\nexit 3\n",
    );
    let xml = tmp.path().join("vm1.xml");
    fs::write(&xml, "<domain><name>vm1</name></domain>\n").unwrap();
    hookctl(
        &hooks,
        &["simulate", "qemu", "start", "vm1", "--input", xml.to_str().unwrap()],
    )
    .assert()
    .code(1)
    .stdout(contains(format!(
        "{} vm1 prepare begin -) unexpected exit status 1: {}: exit status 3: no capacity for vm1",
        hooks.join("qemu").display(),
        plugins.join("20-gate").display()
    )));
}

/// A plugin without its execute bit never runs; the trial found no event said so (only
/// `check` and `list` did).
#[test]
fn a_plugin_that_cannot_run_is_named_at_every_event_and_in_the_audit_line() {
    let (tmp, hooks, plugins) = installed_quietly();
    script_mode(&plugins.join("10-deny"), "#!/bin/sh\nexit 1\n", 0o644);
    as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"])
        .assert()
        .success()
        .stderr(contains("10-deny did not run: not executable"));
    let log = fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap();
    let row: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(row["skipped"][0]["why"], "not executable", "{row}");
    assert!(
        row["skipped"][0]["path"].as_str().unwrap().ends_with("10-deny"),
        "{row}"
    );
    // And `hookctl log` shows it on the row, which was a plain `ok`.
    hookctl(&hooks, &["log"])
        .assert()
        .success()
        .stdout(contains("did not run: qemu.plugins/10-deny (not executable)"));
}
