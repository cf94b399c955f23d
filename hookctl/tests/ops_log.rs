//! `hookctl log` answering what a manager asks after a day on a host: what failed and
//! how (a refusal, a plugin that could not run, an ignored failure), between when and
//! when, how long each plugin took, whose XML a filter rewrote, and which rows came from
//! another hooks dir or caller; and nothing on stderr but what matters.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;

mod common;
use common::*;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn log_cmd(hooks: &Path, args: &[&str]) -> Out {
    let mut cmd = hookctl(hooks, &[&["log"], args].concat());
    cmd.env("TZ", "UTC").timeout(Duration::from_secs(60));
    let out = cmd.output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn header(out: &Out) -> &str {
    out.stdout.lines().next().unwrap_or("")
}

fn rows(out: &Out) -> Vec<&str> {
    out.stdout.lines().skip(1).collect()
}

/// The object column (date and time are two words).
fn objects(out: &Out) -> Vec<&str> {
    rows(out).iter().map(|r| r.split_whitespace().nth(3).unwrap()).collect()
}

/// A hooks dir whose plugins fail three ways: `20-gate` refuses `vm-refused`;
/// `30-broken.wasm`, for `vm-notrun` only, is no WASM module (it cannot be loaded);
/// `40-optional`, for `vm-ignored` only, fails but is optional.
fn three_failures() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (tmp, hooks, plugins) = installed();
    script(&plugins.join("10-ok"), "#!/bin/sh\ncat >/dev/null\n");
    script(
        &plugins.join("20-gate"),
        "#!/bin/sh\ncat >/dev/null\nif [ \"$1\" = vm-refused ]; then echo 'no capacity' >&2; exit 3; fi\n",
    );
    fs::write(plugins.join("30-broken.wasm"), "not a module").unwrap();
    fs::write(
        plugins.join("30-broken.wasm.toml"),
        "[match]\nobjects = [\"vm-notrun\"]\n",
    )
    .unwrap();
    script(
        &plugins.join("40-optional"),
        "#!/bin/sh\ncat >/dev/null\necho 'quota service down' >&2\nexit 1\n",
    );
    fs::write(
        plugins.join("40-optional.toml"),
        "policy = \"optional\"\n[match]\nobjects = [\"vm-ignored\"]\n",
    )
    .unwrap();
    for (object, ok) in [
        ("vm-good", true),
        ("vm-refused", false),
        ("vm-notrun", false),
        ("vm-ignored", true),
    ] {
        let assert = as_libvirt_xml(&hooks, [object, "prepare", "begin", "-"]).assert();
        if ok {
            assert.success();
        } else {
            assert.code(1);
        }
    }
    (tmp, hooks, plugins)
}

#[test]
fn a_refusal_a_plugin_that_could_not_run_and_an_ignored_failure_are_told_apart() {
    let (_tmp, hooks, _plugins) = three_failures();
    let out = log_cmd(&hooks, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows = rows(&out);
    assert_eq!(rows.len(), 4, "{}", out.stdout);
    let detail = |object: &str| {
        *rows
            .iter()
            .find(|r| r.split_whitespace().nth(3) == Some(object))
            .unwrap()
    };
    assert!(detail("vm-refused").contains(" refused: qemu.plugins/20-gate: exit status 3: no capacity"));
    assert!(
        detail("vm-notrun").contains(" not run: qemu.plugins/30-broken.wasm: could not run: "),
        "{}",
        detail("vm-notrun")
    );
    assert!(detail("vm-ignored").contains(" ok "));
    assert!(detail("vm-ignored").contains(" ignored: qemu.plugins/40-optional: exit status 1: quota service down"));

    // --failed alone: the events that failed; with a kind, that kind only.
    assert_eq!(objects(&log_cmd(&hooks, &["--failed"])), ["vm-refused", "vm-notrun"]);
    assert_eq!(objects(&log_cmd(&hooks, &["--failed", "refused"])), ["vm-refused"]);
    assert_eq!(objects(&log_cmd(&hooks, &["--failed=not-run"])), ["vm-notrun"]);
    assert_eq!(objects(&log_cmd(&hooks, &["--failed", "ignored"])), ["vm-ignored"]);
    assert!(objects(&log_cmd(&hooks, &["--failed", "error"])).is_empty());
    assert_eq!(
        objects(&log_cmd(&hooks, &["--failed", "all"])),
        ["vm-refused", "vm-notrun", "vm-ignored"]
    );
    // With --plugin, the kind of that plugin's failure.
    assert_eq!(
        objects(&log_cmd(&hooks, &["--plugin", "40-optional", "--failed", "ignored"])),
        ["vm-ignored"]
    );
    assert!(objects(&log_cmd(&hooks, &["--plugin", "40-optional", "--failed", "refused"])).is_empty());
    let bad = log_cmd(&hooks, &["--failed", "sort-of"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("refused") && bad.stderr.contains("not-run"),
        "{}",
        bad.stderr
    );
}

#[test]
fn plugins_view_gives_each_plugin_its_result_and_duration() {
    let (_tmp, hooks, _plugins) = three_failures();
    let out = log_cmd(&hooks, &["--plugins", "--object", "vm-refused"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let head: Vec<_> = header(&out).split_whitespace().collect();
    assert_eq!(
        head,
        ["TIME", "DRIVER", "OBJECT", "OP", "PLUGIN", "RESULT", "DURATION", "DETAIL"]
    );
    let cells: Vec<Vec<&str>> = rows(&out).iter().map(|r| r.split_whitespace().collect()).collect();
    assert_eq!(cells.len(), 2, "{}", out.stdout);
    assert_eq!(cells[0][5..7], ["qemu.plugins/10-ok", "ok"], "{}", out.stdout);
    assert_eq!(cells[1][5..7], ["qemu.plugins/20-gate", "refused"], "{}", out.stdout);
    for c in &cells {
        // Its own duration: a number and a unit (`1.2ms`, `850µs`).
        let duration = c[7];
        assert!(
            duration.starts_with(|ch: char| ch.is_ascii_digit()) && duration.ends_with('s'),
            "{c:?}"
        );
    }
    let out = log_cmd(&hooks, &["--plugins", "--object", "vm-notrun"]);
    let results: Vec<_> = rows(&out)
        .iter()
        .map(|r| r.split_whitespace().nth(6).unwrap())
        .collect();
    assert_eq!(results, ["ok", "ok", "not"], "{}", out.stdout);
    assert!(rows(&out)[2].contains(" not run "), "{}", out.stdout);
    let out = log_cmd(
        &hooks,
        &["--plugins", "--object", "vm-ignored", "--plugin", "40-optional"],
    );
    assert_eq!(rows(&out).len(), 1, "{}", out.stdout);
    assert!(rows(&out)[0].contains(" ignored "), "{}", out.stdout);
}

#[test]
fn no_read_noise_on_stderr_unless_asked() {
    let (tmp, hooks, _plugins) = three_failures();
    let out = log_cmd(&hooks, &[]);
    assert_eq!(out.stderr, "", "stderr is for what matters");
    let out = log_cmd(&hooks, &["-v"]);
    assert_eq!(
        out.stderr,
        format!(
            "hookctl: read {} (written for qemu)\n",
            tmp.path().join("audit.jsonl").display()
        )
    );
}

#[test]
fn a_row_says_when_a_filter_rewrote_the_xml() {
    let (_tmp, hooks, plugins) = installed();
    script(
        &plugins.join("10-describe"),
        "#!/bin/sh\ncat >/dev/null\nprintf '<domain>\\n<description>moved</description>\\n</domain>\\n'\n",
    );
    script(&plugins.join("20-pass"), "#!/bin/sh\ncat >/dev/null\n");
    as_libvirt_xml(&hooks, ["vm", "migrate", "begin", "-"])
        .assert()
        .success();
    as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"])
        .assert()
        .success();
    let out = log_cmd(&hooks, &[]);
    let both = rows(&out);
    assert!(
        both[0].ends_with("XML rewritten: qemu.plugins/10-describe rewrote the XML (+3 -1 lines)"),
        "{}",
        out.stdout
    );
    assert!(!both[1].contains("XML"), "prepare is no filter: {}", both[1]);
    let out = log_cmd(&hooks, &["--plugins", "--op", "migrate"]);
    assert!(
        rows(&out)[0].ends_with("rewrote the XML (+3 -1 lines)"),
        "{}",
        out.stdout
    );
    assert!(!rows(&out)[1].contains("XML"), "{}", out.stdout);
}

/// An audit line as the dispatcher writes it, with what the test needs.
fn line(time: &str, object: &str, result: &str, hooks: &str, extra: &str) -> String {
    format!(
        r#"{{"v":1,"time":"{time}","pid":1,"caller":{{"pid":1,"name":"libvirtd"}},"driver":"qemu","object":"{object}","op":"prepare","subop":"begin","extra":"-","result":"{result}","duration_us":1500,"hooks":[{hooks}]{extra}}}"#
    )
}

/// Rows are written when an event ends; a long event started earlier is listed by when
/// it started (it came after the short ones that ended first), and `--last` counts so.
#[test]
fn rows_are_in_the_order_events_started_not_ended() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("audit.jsonl");
    let lines = [
        line("2024-05-01T10:00:05Z", "vm-short", "ok", "", ""),
        line("2024-05-01T10:00:00Z", "vm-long", "ok", "", ""),
        line("2024-05-01T10:00:07Z", "vm-last", "ok", "", ""),
    ];
    fs::write(&log, lines.join("\n") + "\n").unwrap();
    let file = log.to_str().unwrap();
    let at = |args: &[&str]| objects(&log_cmd(tmp.path(), &[&["--file", file], args].concat())).join(" ");
    assert_eq!(at(&[]), "vm-long vm-short vm-last");
    assert_eq!(at(&["--last", "2"]), "vm-short vm-last");
    // Past what `--last` keeps in memory while reading: 200 rows, the last one written
    // the first to start.
    let mut many: Vec<String> = (0..199)
        .map(|i| {
            line(
                &format!("2024-05-01T11:{:02}:{:02}Z", i / 60, i % 60),
                &format!("vm-{i}"),
                "ok",
                "",
                "",
            )
        })
        .collect();
    many.push(line("2024-05-01T10:59:00Z", "vm-early", "ok", "", ""));
    fs::write(&log, many.join("\n") + "\n").unwrap();
    assert_eq!(at(&["--last", "2"]), "vm-197 vm-198");
    assert_eq!(at(&["--last", "200"]).split(' ').next(), Some("vm-early"));
}

/// A failed `release`: the dispatcher exited 1, but libvirt ignores failures there.
/// The trial saw it labelled `refused:` and matched by `--failed refused`.
#[test]
fn a_failure_libvirt_ignores_is_labelled_ignored_not_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("audit.jsonl");
    let failed = r#"{"name":"/h/qemu.plugins/20-free","success":false,"status":"exit status 1","duration_us":900}"#;
    let release = line(
        "2024-05-01T10:00:00Z",
        "vm-r",
        "failed",
        failed,
        r#","policy":"ignore""#,
    )
    .replace(r#""op":"prepare","subop":"begin""#, r#""op":"release","subop":"end""#);
    let refusal = line("2024-05-01T10:01:00Z", "vm-p", "failed", failed, r#","policy":"abort""#);
    fs::write(&log, format!("{release}\n{refusal}\n")).unwrap();
    let file = log.to_str().unwrap();
    let at = |args: &[&str]| objects(&log_cmd(tmp.path(), &[&["--file", file], args].concat())).join(" ");
    assert_eq!(at(&["--failed", "refused"]), "vm-p");
    assert_eq!(at(&["--failed", "ignored"]), "vm-r");
    assert_eq!(at(&["--failed"]), "vm-r vm-p", "a failed cleanup is still worth seeing");
    let out = log_cmd(tmp.path(), &["--file", file, "--object", "vm-r"]);
    assert!(
        rows(&out)[0].contains("ignored: /h/qemu.plugins/20-free"),
        "{}",
        out.stdout
    );
}

#[test]
fn until_bounds_the_window_and_reconnect_failures_ignored_are_shown() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("audit.jsonl");
    let failed = r#"{"name":"/h/qemu.plugins/20-gate","success":false,"status":"exit status 1","duration_us":900}"#;
    let lines = [
        line("2024-05-01T10:00:00Z", "vm-10", "ok", "", ""),
        line("2024-05-01T11:00:00Z", "vm-11", "failed", failed, ""),
        line("2024-05-01T12:00:00Z", "vm-12", "ok", "", ""),
        // A reconnect whose plugin failed and which the dispatcher let through.
        line("2024-05-01T13:00:00Z", "vm-13", "ok", failed, "").replace(
            r#""op":"prepare","subop":"begin""#,
            r#""op":"reconnect","subop":"begin""#,
        ),
    ];
    fs::write(&log, lines.join("\n") + "\n").unwrap();
    let file = log.to_str().unwrap();
    let at = |args: &[&str]| objects(&log_cmd(tmp.path(), &[&["--file", file], args].concat())).join(" ");
    assert_eq!(at(&["--until", "2024-05-01T11:00:00Z"]), "vm-10 vm-11");
    assert_eq!(
        at(&["--since", "2024-05-01 10:30", "--until", "2024-05-01 11:30"]),
        "vm-11"
    );
    assert_eq!(at(&["--until", "2024-05-01"]), "", "a date is its midnight");
    assert_eq!(at(&["--until", "1m"]), "vm-10 vm-11 vm-12 vm-13");
    assert_eq!(at(&["--failed", "--until", "2024-05-01T12:30:00Z"]), "vm-11");
    // The reconnect that went through although its plugin failed.
    assert_eq!(at(&["--failed", "ignored"]), "vm-13");
    let out = log_cmd(tmp.path(), &["--file", file, "--op", "reconnect"]);
    assert!(rows(&out)[0].contains(" ok "), "{}", out.stdout);
    assert!(
        rows(&out)[0].ends_with("ignored: /h/qemu.plugins/20-gate: exit status 1"),
        "{}",
        out.stdout
    );

    let out = log_cmd(
        tmp.path(),
        &[
            "--file",
            file,
            "--since",
            "2024-05-01T12:00:00Z",
            "--until",
            "2024-05-01T11:00:00Z",
        ],
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--since is later than --until"), "{}", out.stderr);
    let out = log_cmd(tmp.path(), &["--file", file, "--until", "1h", "--follow"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("cannot be used with"), "{}", out.stderr);
    let out = log_cmd(tmp.path(), &["--file", file, "--until", "yesterday-ish"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("neither a duration"), "{}", out.stderr);
}

#[test]
fn rows_from_another_hooks_dir_or_caller_say_where_they_came_from() {
    let (tmp, hooks, plugins) = installed();
    script(&plugins.join("10-ok"), "#!/bin/sh\ncat >/dev/null\n");
    let log = tmp.path().join("audit.jsonl");
    // A second hooks dir writing the same log (a test run's, a second install's).
    let other = tmp.path().join("other-hooks");
    fs::create_dir_all(other.join("qemu.plugins")).unwrap();
    std::os::unix::fs::symlink(exe(), other.join("qemu")).unwrap();
    fs::copy(plugins.join("hookctl.toml"), other.join("qemu.plugins/hookctl.toml")).unwrap();

    as_libvirt_xml(&hooks, ["vm-a", "prepare", "begin", "-"])
        .assert()
        .success();
    as_libvirt_xml(&hooks, ["vm-b", "prepare", "begin", "-"])
        .assert()
        .success();
    // Only one dir and one caller so far: no extra columns.
    let out = log_cmd(&hooks, &[]);
    let head: Vec<_> = header(&out).split_whitespace().collect();
    assert_eq!(head, ["TIME", "DRIVER", "OBJECT", "OP", "RESULT", "DURATION", "DETAIL"]);

    as_libvirt_xml(&other, ["vm-c", "prepare", "begin", "-"])
        .assert()
        .success();
    let out = log_cmd(&hooks, &[]);
    assert!(header(&out).contains(" HOOKS DIR "), "{}", out.stdout);
    assert!(!header(&out).contains("CALLER"), "{}", out.stdout);
    let rows_now = rows(&out);
    assert!(rows_now[0].contains(&hooks.display().to_string()), "{}", out.stdout);
    assert!(rows_now[2].contains(&other.display().to_string()), "{}", out.stdout);

    // Someone trying the hook by hand from a shell.
    let mut by_hand = Command::new("sh");
    libvirt_env(&mut by_hand).arg("-c").arg(format!(
        "'{}' vm-d prepare begin - </dev/null; exit $?",
        hooks.join("qemu").display()
    ));
    by_hand.assert().success();
    let out = log_cmd(&hooks, &["--file", log.to_str().unwrap()]);
    assert!(header(&out).contains(" CALLER "), "{}", out.stdout);
    let last = rows(&out)[3].split_whitespace().collect::<Vec<_>>();
    assert_eq!(last[3], "vm-d");
    assert!(last.contains(&"sh"), "{last:?}");
}

/// Local times around clock changes (a POSIX `TZ` rule: Central Europe, no tz database
/// needed) show and read as they always have: a skipped hour read past the gap, a
/// repeated one as its second pass; and times at the ends of what RFC 3339 holds show
/// without a panic.
#[test]
fn local_times_at_clock_changes_and_at_the_ends_of_the_calendar() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("audit.jsonl");
    let lines = [
        line("1970-01-01T00:00:00Z", "vm-epoch", "ok", "", ""),
        // 2024-03-31: 02:00 CET became 03:00 CEST (01:00Z).
        line("2024-03-31T00:45:00Z", "vm-before-gap", "ok", "", ""),
        line("2024-03-31T01:15:00Z", "vm-after-gap", "ok", "", ""),
        // 2024-10-27: 03:00 CEST became 02:00 CET (01:00Z); 02:xx came twice.
        line("2024-10-27T00:45:00Z", "vm-first-pass", "ok", "", ""),
        line("2024-10-27T01:15:00Z", "vm-second-pass", "ok", "", ""),
        line("9999-12-31T23:59:59Z", "vm-last", "ok", "", ""),
    ];
    fs::write(&log, lines.join("\n") + "\n").unwrap();
    let file = log.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut cmd = hookctl(tmp.path(), &[&["log", "--file", file], args].concat());
        cmd.env("TZ", "CET-1CEST,M3.5.0,M10.5.0/3")
            .timeout(Duration::from_secs(60));
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let table = run(&[]);
    let times: Vec<String> = (table.lines().skip(1))
        .map(|r| r.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        times,
        [
            "1970-01-01 01:00:00",
            "2024-03-31 01:45:00",
            "2024-03-31 03:15:00",
            "2024-10-27 02:45:00",
            "2024-10-27 02:15:00",
            "9999-12-31T23:59:59Z qemu",
        ],
        "{table}"
    );
    let objects = |args: &[&str]| {
        (run(args).lines().skip(1))
            .map(|r| r.split_whitespace().nth(3).unwrap_or("").to_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    // 02:30 on 31 March does not exist: read as 03:30 CEST (01:30Z).
    assert_eq!(objects(&["--since", "2024-03-31 02:30", "--until", "2024-04-01"]), "");
    assert_eq!(
        objects(&["--since", "2024-03-31 01:30", "--until", "2024-03-31 02:30"]),
        "vm-before-gap vm-after-gap"
    );
    // 02:30 on 27 October came twice: read as the second (02:30 CET, 01:30Z).
    assert_eq!(
        objects(&["--since", "2024-10-27", "--until", "2024-10-27 02:30"]),
        "vm-first-pass vm-second-pass"
    );
    assert_eq!(objects(&["--since", "2024-10-27 02:30", "--until", "2024-10-28"]), "");
}

/// qemu's `log` in a directory that does not exist: `hookctl log` showed other rows and
/// said nothing unless `-v` ("does not exist yet").
#[test]
fn a_log_whose_directory_is_missing_is_named_without_verbose() {
    let (_tmp, hooks, plugins) = installed();
    fs::write(
        plugins.join("hookctl.toml"),
        "log = \"/nonexistent-hookctl-dir/audit.jsonl\"\n",
    )
    .unwrap();
    let out = log_cmd(&hooks, &[]);
    assert!(
        out.stderr
            .contains("/nonexistent-hookctl-dir/audit.jsonl: its directory does not exist"),
        "{}",
        out.stderr
    );
}
