//! `hookctl log`: the audit log that real dispatches wrote (the installed link run as
//! libvirt runs it), read back, filtered, followed, and kept safe from what is in it.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use assert_cmd::Command;

mod common;
use common::*;

/// A plugin that refuses `vm-bad` (two lines on stderr) and lets everything else go.
const REFUSE_BAD: &str = "#!/bin/sh\ncat >/dev/null\nif [ \"$1\" = vm-bad ]; then echo \"no capacity for $1\" >&2; echo 'second line' >&2; exit 3; fi\n";

/// A hooks dir with hookctl installed and two plugins: `10-ok` and `20-refuse`.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (tmp, hooks, plugins) = installed();
    script(&plugins.join("10-ok"), "#!/bin/sh\ncat >/dev/null\n");
    script(&plugins.join("20-refuse"), REFUSE_BAD);
    (tmp, hooks, plugins)
}

fn audit_log(tmp: &tempfile::TempDir) -> PathBuf {
    tmp.path().join("audit.jsonl")
}

/// One event, as libvirt fires it; `ok` is whether the dispatcher should succeed.
fn fire(hooks: &Path, object: &str, op: &str, ok: bool) {
    let assert = as_libvirt_xml(hooks, [object, op, "begin", "-"]).assert();
    if ok {
        assert.success();
    } else {
        assert.code(1);
    }
}

/// `hookctl --hooks-dir HOOKS log ARGS...` in a fixed time zone (UTC+5:30, no DST).
fn log_cmd(hooks: &Path, args: &[&str]) -> Command {
    let mut cmd = hookctl(hooks, &[&["log"], args].concat());
    cmd.env("TZ", "IST-5:30").timeout(Duration::from_secs(60));
    cmd
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(mut cmd: Command) -> Out {
    let out = cmd.output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The table's rows (without the header).
fn rows(out: &Out) -> Vec<&str> {
    out.stdout.lines().skip(1).collect()
}

/// The object column of each row (but those of lines that could not be read).
fn objects(out: &Out) -> Vec<&str> {
    rows(out)
        .iter()
        .filter(|r| !r.contains("UNREADABLE"))
        .map(|r| r.split_whitespace().nth(3).unwrap())
        .collect()
}

/// The rows of lines that could not be read.
fn unreadable(out: &Out) -> Vec<&str> {
    rows(out).into_iter().filter(|r| r.contains("UNREADABLE")).collect()
}

#[test]
fn one_row_per_event_and_a_failure_names_the_plugin_and_its_first_stderr_line() {
    let (tmp, hooks, _plugins) = setup();
    fire(&hooks, "vm-good", "prepare", true);
    fire(&hooks, "vm-bad", "prepare", false);
    let out = run(log_cmd(&hooks, &["-v"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let header = out.stdout.lines().next().unwrap();
    for column in ["TIME", "DRIVER", "OBJECT", "OP", "RESULT", "DURATION", "DETAIL"] {
        assert!(header.contains(column), "{header}");
    }
    let rows = rows(&out);
    assert_eq!(rows.len(), 2, "{}", out.stdout);
    let good: Vec<_> = rows[0].split_whitespace().collect();
    assert_eq!(good[2..6], ["qemu", "vm-good", "prepare/begin", "ok"], "{}", rows[0]);
    assert_eq!(good.len(), 7, "an event that went through has no detail: {}", rows[0]);
    let bad: Vec<_> = rows[1].split_whitespace().collect();
    assert_eq!(bad[2..6], ["qemu", "vm-bad", "prepare/begin", "failed"], "{}", rows[1]);
    assert!(
        rows[1].ends_with("qemu.plugins/20-refuse: exit status 3: no capacity for vm-bad"),
        "{}",
        rows[1]
    );
    assert!(!out.stdout.contains("second line"), "{}", out.stdout);
    // Local time (TZ), to the second; a duration.
    let time = format!("{} {}", bad[0], bad[1]);
    assert_eq!(time.len(), 19, "{time}");
    assert!(bad[6].ends_with('s'), "{}", rows[1]);
    // Which file was read, and no complaints.
    assert_eq!(
        out.stderr,
        format!("hookctl: read {} (written for qemu)\n", audit_log(&tmp).display())
    );
}

#[test]
fn filters_failed_object_op_driver_and_plugin_and_last_applies_after_them() {
    let (_tmp, hooks, plugins) = setup();
    fire(&hooks, "vm-good", "prepare", true);
    fire(&hooks, "vm-bad", "prepare", false);
    fire(&hooks, "vm-good", "start", true);
    fire(&hooks, "vm-bad", "start", false);
    fire(&hooks, "vm-other", "release", true);

    let out = run(log_cmd(&hooks, &["--failed"]));
    assert_eq!(objects(&out), ["vm-bad", "vm-bad"], "{}", out.stdout);
    assert!(rows(&out).iter().all(|r| r.contains(" failed ")));

    let out = run(log_cmd(&hooks, &["--object", "vm-good"]));
    assert_eq!(objects(&out), ["vm-good", "vm-good"]);

    let out = run(log_cmd(&hooks, &["--op", "start"]));
    assert_eq!(objects(&out), ["vm-good", "vm-bad"]);
    let out = run(log_cmd(&hooks, &["--op", "release/begin"]));
    assert_eq!(objects(&out), ["vm-other"]);
    let out = run(log_cmd(&hooks, &["--op", "release/end"]));
    assert!(objects(&out).is_empty());

    let out = run(log_cmd(&hooks, &["--driver", "qemu", "--object", "vm-other"]));
    assert_eq!(objects(&out), ["vm-other"]);
    let out = run(log_cmd(&hooks, &["--driver", "network"]));
    assert!(objects(&out).is_empty());

    // --last counts matching events, not lines.
    let out = run(log_cmd(&hooks, &["--failed", "--last", "1"]));
    assert_eq!(rows(&out).len(), 1);
    assert!(rows(&out)[0].contains("start/begin"), "{}", out.stdout);
    let out = run(log_cmd(&hooks, &["-n", "2"]));
    assert_eq!(objects(&out), ["vm-bad", "vm-other"]);

    // --plugin: by file name or by path; with --failed, the events in which it failed.
    let out = run(log_cmd(&hooks, &["--plugin", "20-refuse"]));
    assert_eq!(rows(&out).len(), 5);
    let path = plugins.join("20-refuse");
    let out = run(log_cmd(&hooks, &["--plugin", path.to_str().unwrap(), "--failed"]));
    assert_eq!(objects(&out), ["vm-bad", "vm-bad"]);
    let out = run(log_cmd(&hooks, &["--plugin", "10-ok", "--failed"]));
    assert!(rows(&out).is_empty());
    assert_eq!(out.code, 0);
    let out = run(log_cmd(&hooks, &["--plugin", "refuse"]));
    assert!(rows(&out).is_empty(), "a part of a name is not the name");
}

#[test]
fn an_ignored_failure_of_an_optional_plugin_is_shown_but_the_event_is_not_failed() {
    let (_tmp, hooks, plugins) = setup();
    script(
        &plugins.join("30-optional"),
        "#!/bin/sh\ncat >/dev/null\necho 'quota service down' >&2\nexit 2\n",
    );
    fs::write(plugins.join("30-optional.toml"), "policy = \"optional\"\n").unwrap();
    fire(&hooks, "vm-good", "prepare", true);
    let out = run(log_cmd(&hooks, &[]));
    let row = rows(&out)[0];
    assert!(row.contains(" ok "), "{row}");
    assert!(
        row.ends_with("ignored: qemu.plugins/30-optional: exit status 2: quota service down"),
        "{row}"
    );
    let out = run(log_cmd(&hooks, &["--failed"]));
    assert!(rows(&out).is_empty(), "{}", out.stdout);
    // Asked about that plugin's failures, the event is one.
    let out = run(log_cmd(&hooks, &["--failed", "--plugin", "30-optional"]));
    assert_eq!(objects(&out), ["vm-good"]);
}

#[test]
fn json_prints_the_matching_lines_unchanged() {
    let (tmp, hooks, _plugins) = setup();
    fire(&hooks, "vm-good", "prepare", true);
    fire(&hooks, "vm-bad", "prepare", false);
    fire(&hooks, "vm-good", "start", true);
    let lines: Vec<String> = fs::read_to_string(audit_log(&tmp))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let out = run(log_cmd(&hooks, &["--json"]));
    assert_eq!(out.stdout, format!("{}\n", lines.join("\n")));
    let out = run(log_cmd(&hooks, &["--json", "--object", "vm-good"]));
    assert_eq!(out.stdout, format!("{}\n{}\n", lines[0], lines[2]));
    let out = run(log_cmd(&hooks, &["--json", "--failed"]));
    assert_eq!(out.stdout, format!("{}\n", lines[1]));
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim_end()).unwrap();
    assert_eq!(v["result"], "failed");
}

/// Rewrites the `time` of the line at `index` of `log` (a line a real dispatch wrote).
fn set_time(log: &Path, index: usize, time: &str) {
    let text = fs::read_to_string(log).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut v: serde_json::Value = serde_json::from_str(&lines[index]).unwrap();
    v["time"] = time.into();
    lines[index] = v.to_string();
    fs::write(log, lines.join("\n") + "\n").unwrap();
}

#[test]
fn since_takes_a_duration_or_a_time_and_times_are_shown_in_local_time() {
    let (tmp, hooks, _plugins) = setup();
    fire(&hooks, "vm-old", "prepare", true);
    fire(&hooks, "vm-new", "prepare", true);
    set_time(&audit_log(&tmp), 0, "2024-05-01T20:00:03.250000Z");

    // TZ is UTC+5:30: 20:00:03Z is 01:30:03 the next day.
    let out = run(log_cmd(&hooks, &[]));
    assert!(rows(&out)[0].starts_with("2024-05-02 01:30:03  qemu"), "{}", out.stdout);

    for (since, expected) in [
        ("10m", &["vm-new"][..]),
        ("2h", &["vm-new"]),
        ("1d", &["vm-new"]),
        ("2024-05-01T20:00:03Z", &["vm-old", "vm-new"]),
        ("2024-05-01T20:00:04Z", &["vm-new"]),
        ("2024-05-01T22:00:00+02:00", &["vm-old", "vm-new"]),
        ("2024-05-01T22:01:00+02:00", &["vm-new"]),
        // Without an offset: local time, as the table shows it.
        ("2024-05-02 01:30", &["vm-old", "vm-new"]),
        ("2024-05-02 01:31", &["vm-new"]),
        ("2024-05-02", &["vm-old", "vm-new"]),
    ] {
        let out = run(log_cmd(&hooks, &["--since", since]));
        assert_eq!(out.code, 0, "{since}: {}", out.stderr);
        assert_eq!(objects(&out), expected, "--since {since}");
    }
    let out = run(log_cmd(&hooks, &["--since", "last tuesday"]));
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("neither a duration"), "{}", out.stderr);
}

/// Grows the log past the dispatcher's rotation threshold (10 MiB) with one line far
/// longer than `log` keeps, so that the next real dispatch rotates it.
fn fill_past_rotation(log: &Path) {
    let mut f = fs::OpenOptions::new().append(true).open(log).unwrap();
    let mut junk = vec![b'x'; (10 << 20) + 1];
    junk.push(b'\n');
    f.write_all(&junk).unwrap();
}

#[test]
fn rotated_logs_are_read_oldest_first_and_huge_lines_are_shown_as_unreadable() {
    let (tmp, hooks, _plugins) = setup();
    let log = audit_log(&tmp);
    fire(&hooks, "vm-1", "prepare", true);
    fill_past_rotation(&log);
    fire(&hooks, "vm-2", "prepare", true); // rotates: .1 = [vm-1, junk]
    fill_past_rotation(&log);
    fire(&hooks, "vm-bad", "prepare", false); // rotates: .2 = [vm-1, junk], .1 = [vm-2, junk]
    fire(&hooks, "vm-3", "prepare", true);
    let rotated = |n: u32| PathBuf::from(format!("{}.{n}", log.display()));
    assert!(rotated(2).exists() && !rotated(3).exists());

    let out = run(log_cmd(&hooks, &["-v"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(objects(&out), ["vm-1", "vm-2", "vm-bad", "vm-3"], "{}", out.stdout);
    assert!(
        out.stderr.contains(&format!(
            "hookctl: read {}, {}, {} (written for qemu)",
            rotated(2).display(),
            rotated(1).display(),
            log.display()
        )),
        "{}",
        out.stderr
    );
    let warnings: Vec<_> = out.stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{}", out.stderr);
    assert!(warnings[0].contains("2 unreadable lines"), "{}", warnings[0]);
    // Each where it is in the log, saying where and why, and nothing of its text.
    let rows = rows(&out);
    assert_eq!(rows.len(), 6, "{}", out.stdout);
    for (row, file) in [(rows[1], rotated(2)), (rows[3], rotated(1))] {
        assert!(row.contains("UNREADABLE line 2 (byte "), "{row}");
        assert!(
            row.contains(&format!("of {}: longer than 1 MiB (10.0 MiB)", file.display())),
            "{row}"
        );
    }
    assert!(out.stdout.len() < 4096, "nothing of the huge lines is shown");

    // --last and --failed across the rotations; what could not be read may have failed.
    let out = run(log_cmd(&hooks, &["--last", "4"]));
    assert_eq!(objects(&out), ["vm-2", "vm-bad", "vm-3"]);
    assert_eq!(unreadable(&out).len(), 1);
    let out = run(log_cmd(&hooks, &["--failed"]));
    assert_eq!(objects(&out), ["vm-bad"]);
    assert_eq!(unreadable(&out).len(), 2);
}

#[test]
fn a_huge_line_is_not_kept_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("huge.jsonl");
    let mut f = fs::File::create(&log).unwrap();
    f.write_all(b"{\"time\":\"2024-05-01T20:00:03Z\",\"object\":\"")
        .unwrap();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..160 {
        f.write_all(&chunk).unwrap();
    }
    f.write_all(b"\"}\n").unwrap();
    drop(f);
    // 160 MiB of one line, read within 128 MiB of address space (hookctl needs ~50).
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v $((128 * 1024)) && exec \"$0\" log --file '{}'",
            log.display()
        ))
        .arg(exe())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("1 unreadable line "), "{stderr}");
    // Shown, with what its first bytes say (its time), and not kept whole.
    let row = stdout.lines().nth(1).unwrap_or_default();
    assert!(row.contains("UNREADABLE line 1 (byte 0) of "), "{stdout}");
    assert!(row.ends_with("longer than 1 MiB (160.0 MiB)"), "{stdout}");
    assert!(stdout.len() < 4096, "{}", stdout.len());
}

#[test]
fn logs_named_by_several_plugins_dirs_are_each_read_once() {
    let (tmp, hooks, _plugins) = setup();
    // network writes its own log; lxc the same one as qemu.
    std::os::unix::fs::symlink(exe(), hooks.join("network")).unwrap();
    let net_log = tmp.path().join("network.jsonl");
    fs::create_dir(hooks.join("network.plugins")).unwrap();
    fs::write(
        hooks.join("network.plugins/hookctl.toml"),
        format!("log = \"{}\"\n", net_log.display()),
    )
    .unwrap();
    fs::create_dir(hooks.join("lxc.plugins")).unwrap();
    fs::copy(
        hooks.join("qemu.plugins/hookctl.toml"),
        hooks.join("lxc.plugins/hookctl.toml"),
    )
    .unwrap();
    // libxl the same one again, through a symlink.
    fs::create_dir(hooks.join("libxl.plugins")).unwrap();
    std::os::unix::fs::symlink(tmp.path(), tmp.path().join("link")).unwrap();
    let other_spelling = tmp.path().join("link/audit.jsonl");
    fs::write(
        hooks.join("libxl.plugins/hookctl.toml"),
        format!("log = \"{}\"\n", other_spelling.display()),
    )
    .unwrap();

    fire(&hooks, "vm-1", "prepare", true);
    as_libvirt_for(&hooks, "network", ["default", "start", "begin", "-"])
        .write_stdin("<network/>\n")
        .assert()
        .success();
    fire(&hooks, "vm-2", "prepare", true);

    let out = run(log_cmd(&hooks, &["-v"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Merged by time.
    assert_eq!(objects(&out), ["vm-1", "default", "vm-2"], "{}", out.stdout);
    assert!(rows(&out)[1].contains(" network "), "{}", out.stdout);
    assert_eq!(
        out.stderr,
        format!(
            "hookctl: read {} (written for qemu, lxc)\nhookctl: {} is a file read above (written for libxl)\n\
             hookctl: read {} (written for network)\n",
            audit_log(&tmp).display(),
            other_spelling.display(),
            net_log.display()
        )
    );
    let out = run(log_cmd(&hooks, &["--driver", "network", "--json"]));
    assert_eq!(out.stdout, fs::read_to_string(&net_log).unwrap());
}

#[test]
fn a_log_not_written_yet_is_no_error_but_a_missing_or_unreadable_file_is() {
    let (tmp, hooks, _plugins) = setup();
    let out = run(log_cmd(&hooks, &["-v"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr
            .contains(&format!("{} does not exist yet", audit_log(&tmp).display())),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("no events logged yet"), "{}", out.stderr);

    let missing = tmp.path().join("missing.jsonl");
    let out = run(log_cmd(&hooks, &["--file", missing.to_str().unwrap()]));
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains(&format!("cannot read `{}`", missing.display())),
        "{}",
        out.stderr
    );

    // A directory is not a log.
    let out = run(log_cmd(&hooks, &["--file", tmp.path().to_str().unwrap()]));
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("not a regular file"), "{}", out.stderr);

    // A log we may not read: the events of the others are still shown, then exit 2.
    fire(&hooks, "vm-good", "prepare", true);
    if !rustix::process::geteuid().is_root() {
        let rotated = PathBuf::from(format!("{}.1", audit_log(&tmp).display()));
        fs::write(&rotated, "").unwrap();
        fs::set_permissions(&rotated, fs::Permissions::from_mode(0o000)).unwrap();
        let out = run(log_cmd(&hooks, &[]));
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert_eq!(objects(&out), ["vm-good"]);
        assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);
        assert!(out.stderr.contains("try sudo"), "{}", out.stderr);
    }

    // A hooks dir that does not exist is a mistake, not an empty log.
    let out = run(hookctl(&tmp.path().join("nope"), &["log"]));
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("cannot read hooks dir"), "{}", out.stderr);
}

#[test]
fn nothing_matching_exits_0_and_says_so() {
    let (_tmp, hooks, _plugins) = setup();
    fire(&hooks, "vm-good", "prepare", true);
    for args in [&["--object", "nobody"][..], &["--failed"], &["--failed", "--json"]] {
        let out = run(log_cmd(&hooks, args));
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        assert_eq!(out.stdout, "", "{args:?}");
        assert!(
            out.stderr.contains("no events match (1 event read)"),
            "{args:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn malformed_lines_are_shown_as_unreadable_rows_with_one_warning() {
    let (tmp, hooks, _plugins) = setup();
    let log = audit_log(&tmp);
    fire(&hooks, "vm-1", "prepare", true);
    let real = fs::read_to_string(&log).unwrap();
    let mut f = fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"not json\n{}\n[1,2]\n\n").unwrap();
    f.write_all(
        b"{\"time\":\"yesterday\",\"driver\":\"qemu\",\"object\":\"x\",\"op\":\"prepare\",\"result\":\"ok\"}\n",
    )
    .unwrap();
    f.write_all(&real.as_bytes()[..real.len() / 2]).unwrap(); // a torn line
    f.write_all(b"\n\xff\xfe garbage\n").unwrap();
    f.write_all(&[b'['; 100_000]).unwrap(); // deep nesting: no stack overflow
    f.write_all(b"\n").unwrap();
    drop(f);
    fire(&hooks, "vm-2", "prepare", true);
    let out = run(log_cmd(&hooks, &[]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(objects(&out), ["vm-1", "vm-2"]);
    // Each in its place, by line number, saying why; the blank line is no event.
    let rows = rows(&out);
    assert_eq!(rows.len(), 9, "{}", out.stdout);
    for (row, line) in rows[1..8].iter().zip([2, 3, 4, 6, 7, 8, 9]) {
        let at = format!("UNREADABLE line {line} (byte ");
        assert!(row.contains(&at) && row.contains("not an audit record"), "{row}");
    }
    assert!(rows[1].ends_with(": not json"), "{}", rows[1]);
    // What can be read of a line is shown.
    assert!(rows[4].contains("its time `yesterday` is not RFC 3339"), "{}", rows[4]);
    assert!(rows[4].contains(" x ") && rows[4].contains(" prepare "), "{}", rows[4]);
    assert!(rows[7].ends_with(&format!(": {}…", "[".repeat(80))), "{}", rows[7]);
    let warnings: Vec<_> = out.stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{}", out.stderr);
    assert!(
        warnings[0].contains(&format!(
            "7 unreadable lines (not an audit record, or longer than 1 MiB; rows marked UNREADABLE when they match): {}: 7",
            log.display()
        )),
        "{}",
        warnings[0]
    );
}

#[test]
fn control_characters_from_the_log_never_reach_the_terminal_raw() {
    let (tmp, hooks, plugins) = setup();
    script(
        &plugins.join("30-noisy"),
        "#!/bin/sh\ncat >/dev/null\nprintf '\\033[2J\\033]0;owned\\007\\rfake: all good\\n' >&2\nexit 1\n",
    );
    let evil = "\u{1b}[31mred\u{1b}]0;title\u{7}\u{9b}1m\u{202e}gnp.exe";
    as_libvirt_xml(&hooks, [evil, "prepare", "begin", "-"]).assert().code(1);
    let out = run(log_cmd(&hooks, &[]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    for raw in ['\u{1b}', '\u{7}', '\r', '\u{9b}', '\u{202e}'] {
        assert!(!out.stdout.contains(raw), "{raw:?} reached stdout: {:?}", out.stdout);
    }
    assert!(
        out.stdout
            .contains("\\x1b[31mred\\x1b]0;title\\x07\\u{9b}1m\\u{202e}gnp.exe"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("qemu.plugins/30-noisy: exit status 1: \\x1b[2J\\x1b]0;owned\\x07\\rfake: all good"),
        "{}",
        out.stdout
    );
    // --json: the lines as they are (JSON has escaped the C0 controls already).
    let out = run(log_cmd(&hooks, &["--json"]));
    assert_eq!(out.stdout, fs::read_to_string(audit_log(&tmp)).unwrap());
    assert!(!out.stdout.contains('\u{1b}'));
    // Selecting it by that name still works.
    let out = run(log_cmd(&hooks, &["--object", evil]));
    assert_eq!(rows(&out).len(), 1);
}

#[test]
fn a_crashed_native_plugin_is_a_failed_event_naming_it_and_the_signal() {
    let (tmp, hooks, plugins) = setup();
    let so = plugins.join("15-crash.so");
    crashing_plugin(tmp.path(), &so);
    let _ = as_libvirt_xml(&hooks, ["vm-crash", "prepare", "begin", "-"])
        .output()
        .unwrap();
    let out = run(log_cmd(&hooks, &["--failed"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(rows(&out).len(), 1, "{}", out.stdout);
    let row = rows(&out)[0];
    let cells: Vec<_> = row.split_whitespace().collect();
    assert_eq!(cells[2..6], ["qemu", "vm-crash", "prepare/begin", "failed"], "{row}");
    assert!(row.contains("15-crash.so"), "{row}");
    assert!(row.contains("fatal signal 11"), "{row}");
    let out = run(log_cmd(&hooks, &["--plugin", "15-crash.so", "--failed"]));
    assert_eq!(rows(&out).len(), 1, "{}", out.stdout);
}

/// Lines of a child's stdout, as they come.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line that contains `what`, within 20 s.
fn wait_for(rx: &mpsc::Receiver<String>, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(what) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line with {what:?}: {e}"),
        }
    }
    panic!("no line with {what:?} in time");
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn follow_prints_new_events_and_survives_rotation() {
    let (tmp, hooks, _plugins) = setup();
    let log = audit_log(&tmp);
    // Started before anything is logged: it waits for the file.
    let mut child = std::process::Command::new(exe())
        .arg("--hooks-dir")
        .arg(&hooks)
        .args(["log", "--follow"])
        .env("TZ", "UTC0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut child);
    let mut child = Killed(child);
    wait_for(&rx, "TIME");

    fire(&hooks, "vm-1", "prepare", true);
    assert!(wait_for(&rx, "vm-1").contains(" ok"));
    fire(&hooks, "vm-bad", "start", false);
    assert!(wait_for(&rx, "vm-bad").contains("20-refuse: exit status 3: no capacity for vm-bad"));

    // The dispatcher rotates the log (renamed to .1, a new one made). What could not
    // be read of the old one is shown first.
    fill_past_rotation(&log);
    fire(&hooks, "vm-2", "prepare", true);
    assert!(PathBuf::from(format!("{}.1", log.display())).exists());
    assert!(wait_for(&rx, "UNREADABLE").contains("longer than 1 MiB (10.0 MiB)"));
    wait_for(&rx, "vm-2");
    fire(&hooks, "vm-3", "prepare", true);
    wait_for(&rx, "vm-3");

    // Renamed by hand and the new file made only later.
    fs::rename(&log, format!("{}.9", log.display())).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    fire(&hooks, "vm-4", "prepare", true);
    wait_for(&rx, "vm-4");

    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("no events logged yet; waiting for new ones"),
        "{stderr}"
    );
}

#[test]
fn follow_with_filters_and_json_prints_only_new_matching_lines() {
    let (tmp, hooks, _plugins) = setup();
    let log = audit_log(&tmp);
    fire(&hooks, "vm-bad", "prepare", false);
    let mut child = std::process::Command::new(exe())
        .args(["log", "--json", "--failed", "--last", "0", "-f", "--file"])
        .arg(&log)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut child);
    let _child = Killed(child);
    std::thread::sleep(Duration::from_millis(500));
    fire(&hooks, "vm-good", "prepare", true);
    fire(&hooks, "vm-bad", "start", false);
    let line = wait_for(&rx, "vm-");
    assert_eq!(line, fs::read_to_string(&log).unwrap().lines().last().unwrap());
    assert!(line.contains("\"object\":\"vm-bad\",\"op\":\"start\""), "{line}");
}

#[test]
fn help_describes_the_options() {
    let out = run(hookctl(Path::new("/"), &["log", "--help"]));
    assert_eq!(out.code, 0);
    for text in [
        "--failed",
        "--since",
        "10m, 2h, 1d",
        "--follow",
        "--plugin",
        "Exit status",
    ] {
        assert!(out.stdout.contains(text), "{text}: {}", out.stdout);
    }
}

#[test]
fn an_event_whose_hookctl_toml_was_ignored_says_so() {
    let (tmp, hooks, _plugins) = setup();
    let file = tmp.path().join("with-config-error.jsonl");
    let line = r#"{"v":1,"time":"2026-12-01T10:00:00Z","driver":"qemu","object":"web1","op":"prepare","subop":"begin","extra":"-","result":"ok","duration_us":900,"hooks":[],"config_error":"qemu.plugins/hookctl.toml:2: unknown field `tiemout`"}"#;
    fs::write(&file, format!("{line}\n")).unwrap();
    let out = run(log_cmd(&hooks, &["--file", file.to_str().unwrap()]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(rows(&out).len(), 1, "{}", out.stdout);
    assert!(
        rows(&out)[0].ends_with("hookctl.toml has a mistake: qemu.plugins/hookctl.toml:2: unknown field `tiemout`"),
        "{}",
        out.stdout
    );
}
