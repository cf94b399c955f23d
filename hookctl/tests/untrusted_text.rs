//! Text that plugins and guests control, where hookctl writes it: capped in the audit
//! line, on the stderr libvirt shows, and in `log`; escaped wherever it reaches a
//! terminal (names, paths, statuses, stderr), `--json` on a terminal included.

use std::fs;
use std::io::Write;
use std::path::Path;

mod common;
use common::*;

/// What a terminal acts on, or what makes a line read other than it is.
const RAW: [char; 7] = ['\u{1b}', '\u{7}', '\r', '\u{9b}', '\u{85}', '\u{202e}', '\u{2066}'];

fn assert_no_raw(what: &str, text: &str) {
    for c in RAW {
        assert!(!text.contains(c), "{what}: a raw {c:?} in {text:?}");
    }
}

/// A WASI module whose call of the host's `random_get` fails (a buffer out of bounds)
/// inside a function with a `len`-byte name (its name section): wasmtime's error, and so
/// the plugin's status, names that function.
fn long_named_failure(len: usize) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
          (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func ${name} (drop (call $random_get (i32.const 65500) (i32.const 100))))
          (func (export "_start") (call ${name})))"#,
        name = "f".repeat(len)
    ))
    .unwrap()
}

/// As long a guest name as an argument may be (128 KiB), made of what libvirt allows in
/// names and a terminal acts on: C1 CSI and NEL, a bidi override, a fake line.
fn hostile_object() -> String {
    let mut name = "web1".to_owned();
    while name.len() < 120_000 {
        name.push_str("\u{9b}2J\u{85}\u{202e}\nfake line\r");
    }
    name
}

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_hostile_plugin_and_guest_name_get_a_bounded_audit_line_and_stderr() {
    let (tmp, hooks, plugins) = installed();
    // 1.2 MB of a function's name in the module's status.
    fs::write(plugins.join("10-long-name.wasm"), long_named_failure(1_200_000)).unwrap();
    // 4 MiB of stderr (escape sequences, many lines) and of stdout.
    script(
        &plugins.join("20-noisy"),
        "#!/bin/sh\ncat >/dev/null\n\
         yes \"$(printf '\\033[2J\\033]0;owned\\007\\302\\233 fake: all good\\r')\" | head -c 4194304 >&2\n\
         yes out | head -c 4194304\nexit 1\n",
    );
    let object = hostile_object();
    // `release end`: libvirt ignores failures there, so every plugin runs.
    let out = as_libvirt_xml(&hooks, [&object, "release", "end", "-"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = stderr_of(&out);
    let line = fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap();
    eprintln!(
        "longest audit line: {} bytes; stderr for libvirt: {} bytes (a 1.2 MB status, 4 MiB of stderr and stdout, a {} byte object name)",
        line.len(),
        out.stderr.len(),
        object.len()
    );

    // The audit line: a few KiB per field, and each cut says how much went.
    assert!(line.len() < 32 << 10, "an audit line of {} bytes", line.len());
    assert_no_raw("the audit line", &line);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let wasm = &v["hooks"][0];
    let status = wasm["status"].as_str().unwrap();
    assert!(status.starts_with("crashed: "), "{status}");
    // Cut twice: by the WASM backend (its backtrace, after the cause) and here.
    assert!(status.contains("random_get: buffer"), "{status}");
    assert!(status.ends_with(" cut)"), "{}", &status[status.len() - 60..]);
    let noisy = &v["hooks"][1];
    for stream in ["stderr", "stdout"] {
        let text = noisy[stream].as_str().unwrap();
        assert!(text.ends_with(" MiB cut)"), "{stream}: {text}");
    }
    assert_eq!(noisy["stderr_truncated"], true);
    let logged = v["object"].as_str().unwrap();
    assert!(
        logged.ends_with(" KiB cut)") && logged.len() <= 4096,
        "{}",
        logged.len()
    );
    assert!(object.starts_with(logged.split('…').next().unwrap()));

    // What libvirt shows: each failed plugin, its status and its first lines, escaped.
    assert!(out.stderr.len() < 16 << 10, "{} bytes of stderr", out.stderr.len());
    assert_no_raw("the dispatcher's stderr", &stderr);
    assert!(stderr.contains("10-long-name.wasm: crashed: "), "{stderr}");
    assert!(stderr.contains(" MiB cut)"), "{stderr}");
    let noisy_lines = stderr
        .lines()
        .filter(|l| l.contains("\\x1b[2J\\x1b]0;owned\\x07\\u{9b} fake: all good\\r"))
        .count();
    assert_eq!(noisy_lines, 10, "{stderr}");
    assert!(stderr.contains("more lines, 4.0 MiB cut)"), "{stderr}");

    // And the event is in the operator's view.
    let out = hookctl(&hooks, &["log", "--failed"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let table = stdout_of(&out);
    assert_no_raw("log", &table);
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(table.contains("release/end"), "{table}");
}

/// An audit line as an older hookctl wrote it for a plugin whose status was `len` bytes
/// long (keys in serde_json's order: sorted).
fn old_huge_line(object: &str, len: usize) -> String {
    format!(
        r#"{{"caller":{{"name":"libvirtd","pid":1}},"driver":"qemu","duration_us":5,"extra":"-","failed_plugin":"/etc/libvirt/hooks/qemu.plugins/10-bad.wasm","hooks":[{{"name":"/etc/libvirt/hooks/qemu.plugins/10-bad.wasm","status":"crashed: {}","success":false}}],"object":"{object}","op":"start","pid":2,"policy":"abort","result":"failed","subop":"begin","time":"2026-03-01T10:00:01Z","v":1}}"#,
        "f".repeat(len)
    )
}

fn good_line(object: &str, time: &str) -> String {
    format!(
        r#"{{"v":1,"time":"{time}","driver":"qemu","object":"{object}","op":"prepare","subop":"begin","extra":"-","result":"ok","duration_us":900,"hooks":[]}}"#
    )
}

#[test]
fn log_shows_over_long_and_malformed_lines_as_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("audit.jsonl");
    let mut f = fs::File::create(&log).unwrap();
    writeln!(f, "{}", good_line("vm-1", "2026-03-01T10:00:00Z")).unwrap();
    writeln!(f, "{}", old_huge_line("vm-refused", 1_200_000)).unwrap();
    writeln!(f, "not json \u{1b}[2J").unwrap();
    let torn = good_line("vm-torn", "2026-03-01T10:00:02Z");
    writeln!(f, "{}", &torn[..torn.len() / 2]).unwrap();
    writeln!(f, "{}", good_line("vm-2", "2026-03-01T10:00:03Z")).unwrap();
    drop(f);
    let file = log.to_str().unwrap();
    let second = good_line("vm-1", "2026-03-01T10:00:00Z").len() + 1;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(exe())
            .args(["log", "--file", file])
            .args(args)
            .env("TZ", "UTC0")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
        (stdout_of(&out), stderr_of(&out))
    };

    let (table, stderr) = run(&[]);
    assert_no_raw("log", &table);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 5, "{table}");
    assert!(rows[0].contains(" vm-1 "), "{}", rows[0]);
    // What could be read of the long line: its time, object, op and result.
    assert!(rows[1].starts_with("2026-03-01 10:00:01  qemu"), "{}", rows[1]);
    assert!(
        rows[1].contains(" vm-refused ") && rows[1].contains(" failed "),
        "{}",
        rows[1]
    );
    assert!(
        rows[1].contains(&format!(
            "UNREADABLE line 2 (byte {second}) of {file}: longer than 1 MiB (1.1 MiB)"
        )),
        "{}",
        rows[1]
    );
    assert!(rows[1].contains("10-bad.wasm"), "{}", rows[1]);
    assert!(rows[2].contains("UNREADABLE line 3"), "{}", rows[2]);
    assert!(rows[2].contains("not an audit record"), "{}", rows[2]);
    assert!(rows[2].contains("not json \\x1b[2J"), "{}", rows[2]);
    assert!(
        rows[3].contains("UNREADABLE line 4") && rows[3].contains(" vm-torn "),
        "{}",
        rows[3]
    );
    assert!(rows[4].contains(" vm-2 "), "{}", rows[4]);
    assert!(stderr.contains("3 unreadable lines"), "{stderr}");

    // Filters apply to what could be read; what could not passes them.
    let (table, _) = run(&["--failed"]);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows[0].contains("vm-refused"), "{table}");
    let (table, _) = run(&["--object", "vm-refused"]);
    assert_eq!(table.lines().count(), 3, "{table}");

    // --json: the readable lines on stdout, unchanged; the others said on stderr.
    let (json, stderr) = run(&["--json"]);
    assert_eq!(json.lines().count(), 2, "{json}");
    assert!(
        stderr.contains(&format!(
            "{file}: line 2 (byte {second}) is unreadable: longer than 1 MiB"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("line 3 (byte "), "{stderr}");
    assert_no_raw("log --json's stderr", &stderr);
}

/// Runs `hookctl ARGS` on a terminal (util-linux `script`), and returns what it showed.
fn on_a_terminal(hooks: &Path, args: &str) -> Option<String> {
    if std::process::Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPED the terminal part: util-linux `script` is not installed");
        return None;
    }
    let command = format!("'{}' --hooks-dir '{}' {args}", exe().display(), hooks.display());
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .unwrap();
    Some(stdout_of(&out))
}

#[test]
fn guest_names_never_reach_a_terminal_raw() {
    let (tmp, hooks, plugins) = installed();
    let state = tmp.path().join("state");
    let config = plugins.join("hookctl.toml");
    let text = fs::read_to_string(&config).unwrap() + &format!("state = \"{}\"\n", state.display());
    fs::write(&config, text).unwrap();
    script(
        &plugins.join("10-fw"),
        "#!/bin/sh\ncat >/dev/null\n[ \"$2\" = release ] && { echo 'could not undo' >&2; exit 1; }\nexit 0\n",
    );
    fs::write(plugins.join("10-fw.toml"), "state = true\n").unwrap();
    let guest = "\u{9b}2J\u{85}web\u{202e}1\u{2066}";
    as_libvirt_xml(&hooks, [guest, "start", "begin", "-"])
        .assert()
        .success();
    let out = as_libvirt_xml(&hooks, [guest, "release", "end", "-"]).output().unwrap();
    let stderr = stderr_of(&out);
    assert!(stderr.contains("kept the state directory"), "{stderr}");
    assert_no_raw("the dispatcher's stderr", &stderr);
    assert!(stderr.contains("\\u{9b}2J\\u{85}web\\u{202e}1\\u{2066}"), "{stderr}");

    let out = hookctl(&hooks, &["list", "qemu"]).output().unwrap();
    let listed = stdout_of(&out);
    assert!(listed.contains("state KEPT"), "{listed}");
    assert_no_raw("list", &listed);
    assert!(listed.contains("\\u{9b}2J\\u{85}web\\u{202e}1\\u{2066}"), "{listed}");

    let out = hookctl(&hooks, &["simulate", "qemu", "start", guest]).output().unwrap();
    assert_no_raw("simulate", &stdout_of(&out));
    assert_no_raw("simulate's stderr", &stderr_of(&out));
    let out = hookctl(&hooks, &["run", "qemu", guest, "release", "end", "-"])
        .output()
        .unwrap();
    assert_no_raw("run's stderr", &stderr_of(&out));

    // JSON on a terminal: still JSON, with those characters as `\u` escapes.
    for args in ["log --json", "list qemu --json"] {
        let Some(shown) = on_a_terminal(&hooks, args) else {
            return;
        };
        assert_no_raw(args, &shown.replace("\r\n", "\n"));
        assert!(shown.contains("\\u009b2J\\u0085web\\u202e1\\u2066"), "{args}: {shown}");
    }
}

#[test]
fn plugin_file_names_are_escaped_in_list_check_run_and_simulate() {
    let tmp = tempfile::tempdir().unwrap();
    let hooks = tmp.path().join("hooks");
    let evil = "10-\u{1b}[31mred\u{9b}1m\u{202e}hs.exe";
    script(
        &hooks.join("qemu.d").join(evil),
        "#!/bin/sh\ncat >/dev/null\nprintf 'refused\\033[2J\\n' >&2\nexit 1\n",
    );
    let check = |what: &str, out: std::process::Output| {
        let (stdout, stderr) = (stdout_of(&out), stderr_of(&out));
        assert_no_raw(what, &stdout);
        assert_no_raw(what, &stderr);
        assert!(
            format!("{stdout}{stderr}").contains("10-\\x1b[31mred\\u{9b}1m\\u{202e}hs.exe"),
            "{what}: {stdout}{stderr}"
        );
    };
    check("list", hookctl(&hooks, &["list"]).output().unwrap());
    check("check", hookctl(&hooks, &["check"]).output().unwrap());
    let run = hookctl(&hooks, &["run", "qemu", "vm", "prepare", "begin", "-"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    check("run", run);
    check(
        "simulate",
        hookctl(&hooks, &["simulate", "qemu", "start", "vm"]).output().unwrap(),
    );
}

/// A native or WASM plugin in libvirt's own `qemu.d/` gets a warning from `run` and
/// `simulate` (libvirt would not load it): that warning names the file escaped, also
/// beside `--json` output and on a terminal.
#[test]
fn a_misplaced_plugins_file_name_is_escaped_in_the_warning_of_run_and_simulate() {
    let tmp = tempfile::tempdir().unwrap();
    let hooks = tmp.path().join("hooks");
    let drop_ins = hooks.join("qemu.d");
    fs::create_dir_all(&drop_ins).unwrap();
    let evil = "x\u{1b}]0;OWNED\u{7}\u{1b}[2J\u{9b}H\u{202e}.wasm";
    let module = wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "_start")))"#).unwrap();
    fs::write(drop_ins.join(evil), module).unwrap();
    let shown = "x\\x1b]0;OWNED\\x07\\x1b[2J\\u{9b}H\\u{202e}.wasm";
    let commands = [
        "run qemu vm prepare begin -",
        "run qemu vm prepare begin - --json",
        "simulate qemu start vm",
        "simulate qemu start vm --json",
    ];
    for what in commands {
        let args: Vec<&str> = what.split(' ').collect();
        let out = hookctl(&hooks, &args).output().unwrap();
        let stderr = stderr_of(&out);
        assert_eq!(out.status.code(), Some(0), "{what}: {stderr}");
        assert_no_raw(what, &stderr);
        if !what.ends_with("--json") {
            assert_no_raw(what, &stdout_of(&out));
        }
        let warning = stderr
            .lines()
            .find(|l| l.contains("libvirt runs qemu.d/ itself"))
            .unwrap_or_else(|| panic!("{what}: no warning about the misplaced plugin: {stderr}"));
        assert!(warning.contains(shown), "{what}: {warning}");
    }
    // What the operator sees: stdout and stderr on one terminal.
    for what in commands {
        let Some(seen) = on_a_terminal(&hooks, what) else {
            return;
        };
        assert_no_raw(what, &seen.replace("\r\n", "\n"));
        assert!(seen.contains(shown), "{what} on a terminal: {seen}");
    }
}

/// Forty plugins failing with 1.9 KB of stderr each (90 KB before) give libvirt at most
/// 4 KiB: the first failure whole, then as many as fit, then how many more failed.
#[test]
fn many_failing_plugins_give_libvirt_a_bounded_error_line() {
    let (_tmp, hooks, plugins) = installed();
    for n in 0..40 {
        script(
            &plugins.join(format!("{n:02}-fails")),
            &format!("#!/bin/sh\ncat >/dev/null\nprintf 'plugin {n:02} says: %01900d\\n' 0 >&2\nexit 1\n"),
        );
    }
    let out = as_libvirt_xml(&hooks, ["web1", "release", "end", "-"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = stderr_of(&out);
    eprintln!("stderr for libvirt: {} bytes from 40 failed plugins", out.stderr.len());
    assert!(
        out.stderr.len() <= 4096,
        "{} bytes of stderr:\n{stderr}",
        out.stderr.len()
    );
    // The first failure is there whole: its name, status and stderr.
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.contains("00-fails: exit status 1: plugin 00 says: "), "{stderr}");
    assert!(first.ends_with(&"0".repeat(1900)), "{first}");
    // Those shown and those counted are all forty.
    let shown = stderr.lines().filter(|l| l.contains("-fails: exit status 1")).count();
    let more = 40 - shown;
    assert!(shown >= 1 && more > 0, "{stderr}");
    assert!(
        stderr.contains(&format!("and {more} more plugins failed: see `hookctl log --failed`")),
        "{stderr}"
    );
}
