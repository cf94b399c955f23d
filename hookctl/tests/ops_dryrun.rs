//! `simulate --dry-run`: which plugins would run, in order, with what each `[match]`
//! decided, and none of them run (a real `simulate` reserved hugepages on a host).

use predicates::prelude::*;
use predicates::str::contains;
use std::fs;
use std::path::Path;

mod common;
use common::*;

const XML: &str = "<domain type='kvm'><name>win10</name><devices><disk/></devices></domain>\n";

/// A plugin that leaves a mark when it runs: the dry run must leave none.
fn marking(plugins: &Path, name: &str, marks: &Path) {
    script(
        &plugins.join(name),
        &format!(
            "#!/bin/sh\ncat >/dev/null\necho \"{name} $*\" >> '{}'\n",
            marks.display()
        ),
    );
}

/// A hooks dir with hookctl installed over a user's old hook, and plugins that match in
/// different ways; (temp dir, hooks dir, the file every plugin that runs writes to).
fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let (tmp, hooks, plugins) = installed();
    let marks = tmp.path().join("marks");
    marking(&hooks, "qemu.pre-hookctl", &marks);
    marking(&plugins, "10-gpu", &marks);
    fs::write(
        plugins.join("10-gpu.toml"),
        "[match]\nobjects = [\"win*\"]\nops = [\"prepare\", \"release\"]\n",
    )
    .unwrap();
    marking(&plugins, "20-hugepages", &marks);
    fs::write(
        plugins.join("20-hugepages.toml"),
        "[match]\nxpath = [\"/domain/memoryBacking/hugepages\"]\n",
    )
    .unwrap();
    marking(&plugins, "30-log", &marks);
    marking(&plugins, "30-log.bak", &marks);
    fs::write(tmp.path().join("win10.xml"), XML).unwrap();
    (tmp, hooks, marks)
}

fn dry_run(hooks: &Path, tmp: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    let input = tmp.join("win10.xml");
    let args = [
        &[
            "simulate",
            "qemu",
            "start",
            "win10",
            "--dry-run",
            "--input",
            input.to_str().unwrap(),
        ][..],
        extra,
    ]
    .concat();
    hookctl(hooks, &args).assert()
}

#[test]
fn dry_run_runs_nothing_and_says_what_each_match_decided_in_order() {
    let (tmp, hooks, marks) = setup();
    let out = dry_run(&hooks, tmp.path(), &[]).success().get_output().clone();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !marks.exists(),
        "a plugin ran: {}",
        fs::read_to_string(&marks).unwrap_or_default()
    );
    assert!(stdout.contains("DRY RUN, no plugin runs"), "{stdout}");
    // The events of a start, each with its decisions, in run order.
    let prepare = stdout.split("\n  qemu win10 ").nth(1).unwrap();
    assert!(prepare.starts_with("prepare begin -"), "{stdout}");
    let lines: Vec<&str> = prepare.lines().skip(1).take_while(|l| !l.is_empty()).collect();
    let expect = [
        ("1. would run", "qemu.pre-hookctl", "no [match]: every event"),
        (
            "2. would run",
            "qemu.plugins/10-gpu",
            "matched: objects=win* ops=prepare,release",
        ),
        (
            "- skip",
            "qemu.plugins/20-hugepages",
            "xpath = [\"/domain/memoryBacking/hugepages\"] does not hold on this XML",
        ),
        ("3. would run", "qemu.plugins/30-log", "no [match]: every event"),
    ];
    assert_eq!(lines.len(), expect.len(), "{prepare}");
    for (line, (decision, path, why)) in lines.iter().zip(expect) {
        let squeezed = line.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(squeezed.starts_with(decision), "{line}");
        assert!(squeezed.contains(path) && squeezed.contains(why), "{line}");
    }
    let start = stdout.split("\n  qemu win10 ").nth(2).unwrap();
    assert!(start.starts_with("start begin -"), "{stdout}");
    assert!(
        start.contains("ops = [\"prepare\", \"release\"] does not match `start`"),
        "{start}"
    );
    // A backup is listed as never run, not as a plugin.
    assert!(
        stdout.contains("never run:\n    qemu.plugins/30-log.bak  (backup"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Without --dry-run the plugins run for real"),
        "{stdout}"
    );

    // With the document that has hugepages, its plugin is taken.
    fs::write(
        tmp.path().join("win10.xml"),
        "<domain><memoryBacking><hugepages/></memoryBacking></domain>\n",
    )
    .unwrap();
    let out = dry_run(&hooks, tmp.path(), &["--json"]).success().get_output().clone();
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["dry_run"], true);
    let prepare = &plan["events"][0];
    assert_eq!(prepare["event"], "qemu win10 prepare begin -");
    let hugepages = prepare["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "qemu.plugins/20-hugepages")
        .unwrap();
    assert_eq!(hugepages["decision"], "run", "{hugepages}");
    assert!(!marks.exists());
}

#[test]
fn a_plugin_that_would_fail_without_running_is_said_and_fails_the_dry_run() {
    let (tmp, hooks, marks) = setup();
    let plugins = hooks.join("qemu.plugins");
    // Writable by its group: the trust rule refuses it, so the event would fail.
    script_mode(&plugins.join("40-loose"), "#!/bin/sh\nexit 0\n", 0o775);
    fs::write(plugins.join("30-log.toml"), "timeout = \"soon\"\n").unwrap();
    let out = dry_run(&hooks, tmp.path(), &[]).code(1).get_output().clone();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let squeezed: Vec<String> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert!(
        squeezed
            .iter()
            .any(|l| l.contains("would FAIL") && l.contains("40-loose") && l.contains("refused:")),
        "{stdout}"
    );
    assert!(
        squeezed
            .iter()
            .any(|l| l.contains("would FAIL") && l.contains("30-log") && l.contains("invalid settings")),
        "{stdout}"
    );
    assert!(!marks.exists());
}

#[test]
fn simulate_help_says_plugins_run_for_real_without_dry_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = hookctl(tmp.path(), &["simulate", "--help"])
        .assert()
        .success()
        .get_output()
        .clone();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("The plugins RUN FOR REAL"), "{help}");
    assert!(
        help.contains("Without --dry-run every matching plugin runs for real"),
        "{help}"
    );
    assert!(help.contains("--dry-run"), "{help}");
}

/// simulate without `--dry-run` ran a hugepages plugin for real and threw its record of
/// the reserved pages away, saying nothing (the third trial).
#[test]
fn simulate_says_when_a_plugin_recorded_state_it_throws_away() {
    let (tmp, hooks, plugins) = installed();
    script(
        &plugins.join("10-reserve"),
        "#!/bin/sh\ncat >/dev/null\n[ \"$2\" = prepare ] && echo 32 > \"$VIRT_HOOK_STATE/pages\"\nexit 0\n",
    );
    fs::write(plugins.join("10-reserve.toml"), "state = true\n").unwrap();
    script(&plugins.join("20-quiet"), "#!/bin/sh\ncat >/dev/null\n");
    fs::write(plugins.join("20-quiet.toml"), "state = true\n").unwrap();
    let xml = tmp.path().join("db1.xml");
    fs::write(&xml, "<domain><name>db1</name></domain>\n").unwrap();
    let out = hookctl(
        &hooks,
        &["simulate", "qemu", "start", "db1", "--input", xml.to_str().unwrap()],
    )
    .assert()
    .success()
    .get_output()
    .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: 10-reserve recorded state for qemu db1") && stderr.contains("--state DIR"),
        "{stderr}"
    );
    assert!(!stderr.contains("20-quiet"), "it recorded nothing: {stderr}");
    // With --state the record is kept: nothing to warn about.
    let kept = tmp.path().join("sim");
    hookctl(
        &hooks,
        &[
            "simulate",
            "qemu",
            "start",
            "db1",
            "--input",
            xml.to_str().unwrap(),
            "--state",
            kept.to_str().unwrap(),
        ],
    )
    .assert()
    .success()
    .stderr(contains("recorded state").not());
    assert!(kept.join("qemu/db1/10-reserve/pages").exists());
}
