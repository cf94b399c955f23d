//! The audit log read back by `hookctl log` (written by the dispatcher, but holding
//! what plugins print and guests' names): hookctl's own modules, compiled here from its
//! source (a binary crate; the list below is `hookctl/src/main.rs`'s), run as
//! `hookctl log --file LOG` with and without `--json` and filters, stdout captured.
//!
//! Properties: nothing panics; the table reaches the terminal with no control or
//! bidirectional-control character but its newlines, one row per event `--json`
//! prints; `--json` prints lines of the log unchanged and in order; filters only drop
//! lines.
#![no_main]
#![allow(dead_code, unused_imports, unexpected_cfgs)]

// First, as in hookctl: its `outln!` is used by the modules below.
#[macro_use]
#[path = "../../hookctl/src/output.rs"]
mod output;
#[path = "../../hookctl/src/audit/mod.rs"]
mod audit;
#[path = "../../hookctl/src/cli.rs"]
mod cli;
#[path = "../../hookctl/src/commands/mod.rs"]
mod commands;
#[path = "../../hookctl/src/config.rs"]
mod config;
#[path = "../../hookctl/src/journal.rs"]
mod journal;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once, OnceLock};

use clap::{CommandFactory, FromArgMatches};
use libfuzzer_sys::fuzz_target;

/// The file the input is written to, in a directory of its own.
fn log_file() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("hookctl.jsonl");
        (dir, path)
    });
    path
}

/// The process's real stdout and stderr, kept while they point elsewhere.
fn saved() -> &'static (OwnedFd, OwnedFd) {
    static SAVED: OnceLock<(OwnedFd, OwnedFd)> = OnceLock::new();
    SAVED.get_or_init(|| {
        let out = rustix::io::fcntl_dupfd_cloexec(std::io::stdout(), 3).expect("dup stdout");
        let err = rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), 3).expect("dup stderr");
        (out, err)
    })
}

fn restore() {
    let (out, err) = saved();
    let _ = std::io::stdout().flush();
    let _ = rustix::stdio::dup2_stdout(out.as_fd());
    let _ = rustix::stdio::dup2_stderr(err.as_fd());
}

/// Runs `hookctl log --file LOG EXTRA...`: what it printed on stdout, and its result.
fn hookctl_log(extra: &[&str]) -> (Vec<u8>, Result<bool, String>) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // A panic while stderr is captured is reported on the real one.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
    // Building clap's command costs more than the rest: its matches are kept per use.
    static MATCHES: Mutex<Vec<(Vec<String>, clap::ArgMatches)>> = Mutex::new(Vec::new());
    let key: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let mut kept = MATCHES.lock().unwrap_or_else(|p| p.into_inner());
    let matches = match kept.iter().find(|(k, _)| *k == key) {
        Some((_, m)) => m.clone(),
        None => {
            let mut args = vec![
                "hookctl",
                "log",
                "--file",
                log_file().to_str().expect("a UTF-8 temp path"),
            ];
            args.extend_from_slice(extra);
            let m = cli::Cli::command().try_get_matches_from(args).expect("log's arguments");
            kept.push((key, m.clone()));
            m
        }
    };
    drop(kept);
    let cli::Cli {
        command: cli::Command::Log(log),
        ..
    } = cli::Cli::from_arg_matches(&matches).expect("log's arguments")
    else {
        unreachable!("parsed as `log`");
    };
    let capture =
        |name: &str| File::from(rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC).expect("memfd"));
    let (mut out, err) = (capture("stdout"), capture("stderr"));
    saved();
    let _ = std::io::stdout().flush();
    rustix::stdio::dup2_stdout(out.as_fd()).expect("dup2 stdout");
    rustix::stdio::dup2_stderr(err.as_fd()).expect("dup2 stderr");
    let result = commands::log::exec(Path::new("/etc/libvirt/hooks"), false, log);
    restore();
    let mut printed = Vec::new();
    out.seek(SeekFrom::Start(0))
        .and_then(|_| out.read_to_end(&mut printed))
        .expect("read the captured stdout");
    (printed, result.map_err(|commands::UsageError(e)| e))
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Whether `part`'s lines appear in `whole`'s lines, in order.
fn in_order(part: &[u8], whole: &[&[u8]]) -> bool {
    let mut rest = whole.iter();
    part.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .all(|line| rest.any(|w| *w == line))
}

/// Whether each of `part`'s lines is a line of `whole`, each line of `whole` used at
/// most once. Not in order: `log` sorts events by the time they started, and a file
/// holds them in the order they ended.
fn lines_of(part: &[u8], whole: &[&[u8]]) -> bool {
    let mut unused: Vec<&[u8]> = whole.to_vec();
    part.split(|&b| b == b'\n').filter(|l| !l.is_empty()).all(|line| {
        match unused.iter().position(|w| *w == line) {
            Some(i) => {
                unused.swap_remove(i);
                true
            }
            None => false,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    std::fs::write(log_file(), data).expect("write the log");
    let (table, result) = hookctl_log(&[]);
    assert_eq!(result, Ok(true));
    let text = String::from_utf8(table).expect("the table is UTF-8");
    let bad = text
        .chars()
        .find(|&c| (c.is_control() && c != '\n') || is_bidi_control(c));
    assert!(bad.is_none(), "{bad:?} reaches the terminal: {text:?}");

    let (json, result) = hookctl_log(&["--json"]);
    assert_eq!(result, Ok(true));
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    assert!(lines_of(&json, &lines), "--json printed what is not a line of the log");
    let events = json.iter().filter(|&&b| b == b'\n').count();
    let rows = text.lines().count();
    // A line that is no audit record is a row of its own in the table (UNREADABLE);
    // `--json` prints the records only, each unchanged.
    let written = lines.iter().filter(|l| !l.trim_ascii().is_empty()).count();
    let unreadable = written.saturating_sub(events);
    let shown = events + unreadable;
    assert_eq!(
        rows,
        if shown == 0 { 0 } else { shown + 1 },
        "{events} events, {unreadable} unreadable, table:\n{text}"
    );

    let filters = [
        "--json", "--failed", "--plugin", "10-x.sh", "--op", "prepare", "--driver", "qemu",
    ];
    let (filtered, result) = hookctl_log(&filters);
    assert_eq!(result, Ok(true));
    let json_lines: Vec<&[u8]> = json.split(|&b| b == b'\n').collect();
    assert!(in_order(&filtered, &json_lines), "a filter added a line or reordered them");
});
