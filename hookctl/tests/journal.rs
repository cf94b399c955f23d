//! The dispatcher's journald entry, read from a datagram socket bound at journald's path
//! inside a private mount namespace (an empty tmpfs on /run), so the real journald is
//! never touched. Needs root and util-linux `unshare`; skipped loudly otherwise.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use predicates::prelude::*;

mod common;
use common::*;

const SOCKET: &str = "/run/systemd/journal/socket";
/// Runs `body` as root in a private mount namespace with empty tmpfs mounts on /run and
/// /var/log ([`with_default_paths_private`]), with journald's socket directory made, so
/// the real journald is never touched.
fn in_private_namespace(body: impl FnOnce()) {
    with_default_paths_private(|| {
        fs::create_dir_all("/run/systemd/journal").unwrap();
        body();
    });
}

/// One entry's fields in order, keys and raw values.
type Entry = Vec<(String, Vec<u8>)>;

/// journald's end of the socket.
struct Journal(UnixDatagram);

impl Journal {
    fn bind() -> Self {
        let socket = UnixDatagram::bind(SOCKET).unwrap();
        socket.set_nonblocking(true).unwrap();
        Journal(socket)
    }

    /// Every entry received since the last call.
    fn entries(&self) -> Vec<Entry> {
        let mut buf = vec![0; 1 << 20];
        let mut entries = Vec::new();
        loop {
            match self.0.recv(&mut buf) {
                Ok(n) => entries.push(parse(&buf[..n])),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return entries,
                Err(e) => panic!("recv: {e}"),
            }
        }
    }

    fn one(&self) -> Entry {
        let mut entries = self.entries();
        assert_eq!(entries.len(), 1, "{entries:?}");
        entries.pop().unwrap()
    }
}

/// Parses a datagram as journald does: `KEY=value\n`, or `KEY\n` + u64 LE length +
/// value + `\n`. Panics on anything journald would not read as intended.
fn parse(mut d: &[u8]) -> Entry {
    let mut fields = Vec::new();
    while !d.is_empty() {
        let nl = d.iter().position(|&b| b == b'\n').expect("a field ends with a newline");
        let line = &d[..nl];
        let (key, value, rest) = match line.iter().position(|&b| b == b'=') {
            Some(eq) => (&line[..eq], line[eq + 1..].to_vec(), &d[nl + 1..]),
            None => {
                let len = u64::from_le_bytes(d[nl + 1..nl + 9].try_into().unwrap()) as usize;
                let value = &d[nl + 9..nl + 9 + len];
                assert_eq!(d[nl + 9 + len], b'\n', "a binary value ends with a newline");
                (line, value.to_vec(), &d[nl + 10 + len..])
            }
        };
        let key = String::from_utf8(key.to_vec()).unwrap();
        assert!(
            !key.is_empty()
                && !key.starts_with(['_', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9'])
                && key
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
            "invalid key {key:?}"
        );
        fields.push((key, value));
        d = rest;
    }
    fields
}

fn keys(entry: &Entry) -> Vec<&str> {
    entry.iter().map(|(k, _)| k.as_str()).collect()
}

/// The one value of `key`; panics when it is missing or repeated.
fn get<'a>(entry: &'a Entry, key: &str) -> &'a str {
    let mut values = entry.iter().filter(|(k, _)| k == key);
    let (_, value) = values.next().unwrap_or_else(|| panic!("no {key} in {entry:?}"));
    assert!(values.next().is_none(), "{key} twice in {entry:?}");
    std::str::from_utf8(value).unwrap()
}

const ALWAYS: [&str; 10] = [
    "MESSAGE",
    "PRIORITY",
    "SYSLOG_IDENTIFIER",
    "HOOK_DRIVER",
    "HOOK_OBJECT",
    "HOOK_OP",
    "HOOK_SUBOP",
    "HOOK_EXTRA",
    "HOOK_RESULT",
    "HOOK_DURATION_USEC",
];

fn with_failure() -> Vec<&'static str> {
    [&ALWAYS[..], &["HOOK_FAILED_PLUGIN", "HOOK_STDERR"]].concat()
}

#[test]
fn a_succeeding_event_sends_one_entry_at_priority_6() {
    in_private_namespace(|| {
        let (_tmp, hooks, plugins) = installed();
        script(&plugins.join("10-ok"), "#!/bin/sh\ncat >/dev/null\n");
        let journal = Journal::bind();
        as_libvirt_xml(&hooks, ["web1", "start", "begin", "-"])
            .assert()
            .success()
            .stderr("");
        let e = journal.one();
        assert_eq!(keys(&e), ALWAYS);
        assert_eq!(get(&e, "PRIORITY"), "6");
        assert_eq!(get(&e, "SYSLOG_IDENTIFIER"), "hookctl");
        assert_eq!(get(&e, "HOOK_DRIVER"), "qemu");
        assert_eq!(get(&e, "HOOK_OBJECT"), "web1");
        assert_eq!(get(&e, "HOOK_OP"), "start");
        assert_eq!(get(&e, "HOOK_SUBOP"), "begin");
        assert_eq!(get(&e, "HOOK_EXTRA"), "-");
        assert_eq!(get(&e, "HOOK_RESULT"), "ok");
        let message = get(&e, "MESSAGE");
        assert!(
            message.starts_with("qemu web1 start begin -: ok (1 plugin, "),
            "{message}"
        );
        assert!(get(&e, "HOOK_DURATION_USEC").parse::<u64>().unwrap() > 0);
    });
}

#[test]
fn a_refused_start_is_priority_3_with_the_plugin_and_its_stderr() {
    in_private_namespace(|| {
        let (_tmp, hooks, plugins) = installed();
        script(&plugins.join("10-ok"), "#!/bin/sh\ncat >/dev/null\n");
        let refuse = plugins.join("20-refuse");
        script(&refuse, "#!/bin/sh\necho 'no capacity for web1' >&2\nexit 3\n");
        let journal = Journal::bind();
        as_libvirt_xml(&hooks, ["web1", "start", "begin", "-"])
            .assert()
            .code(1)
            .stderr(format!("{}: exit status 3: no capacity for web1\n", refuse.display()));
        let e = journal.one();
        assert_eq!(keys(&e), with_failure());
        assert_eq!(get(&e, "PRIORITY"), "3");
        assert_eq!(get(&e, "HOOK_RESULT"), "failed");
        assert_eq!(get(&e, "HOOK_FAILED_PLUGIN"), refuse.to_str().unwrap());
        assert_eq!(get(&e, "HOOK_STDERR"), "no capacity for web1");
        assert_eq!(
            get(&e, "MESSAGE"),
            format!(
                "qemu web1 start begin -: refused by {}: exit status 3: no capacity for web1",
                refuse.display()
            )
        );
    });
}

#[test]
fn ignored_failures_are_priority_4() {
    in_private_namespace(|| {
        let (_tmp, hooks, plugins) = installed();
        let fail = plugins.join("20-fail");
        script(&fail, "#!/bin/sh\necho 'umount failed' >&2\nexit 1\n");
        let journal = Journal::bind();
        // `stopped`: libvirt ignores the failure (the dispatcher still exits 1, as a
        // hook script would).
        as_libvirt_xml(&hooks, ["web1", "stopped", "end", "-"]).assert().code(1);
        let e = journal.one();
        assert_eq!(keys(&e), with_failure());
        assert_eq!(get(&e, "PRIORITY"), "4");
        assert_eq!(get(&e, "HOOK_RESULT"), "failed");
        assert_eq!(get(&e, "HOOK_FAILED_PLUGIN"), fail.to_str().unwrap());
        assert_eq!(get(&e, "HOOK_STDERR"), "umount failed");
        let message = get(&e, "MESSAGE");
        assert!(
            message.starts_with("qemu web1 stopped end -: failure ignored: "),
            "{message}"
        );
        // An optional plugin's failure at `start`: the start goes on.
        fs::write(plugins.join("20-fail.toml"), "policy = \"optional\"\n").unwrap();
        as_libvirt_xml(&hooks, ["web1", "start", "begin", "-"])
            .assert()
            .success();
        let e = journal.one();
        assert_eq!(keys(&e), with_failure());
        assert_eq!(get(&e, "PRIORITY"), "4");
        assert_eq!(get(&e, "HOOK_RESULT"), "ok");
        assert_eq!(get(&e, "HOOK_FAILED_PLUGIN"), fail.to_str().unwrap());
    });
}

#[test]
fn hostile_names_and_stderr_cannot_forge_fields() {
    in_private_namespace(|| {
        let (tmp, hooks, plugins) = installed();
        let stderr = format!(
            "boom\nPRIORITY=0\nSYSLOG_IDENTIFIER=sshd\nHOOK_RESULT=ok\n{}\n\n",
            "é".repeat(600)
        );
        let stderr_file = tmp.path().join("stderr");
        fs::write(&stderr_file, &stderr).unwrap();
        script(
            &plugins.join("20-refuse"),
            &format!("#!/bin/sh\ncat '{}' >&2\nexit 1\n", stderr_file.display()),
        );
        let journal = Journal::bind();
        let object = "web1\nPRIORITY=0\nHOOK_RESULT=ok\nMESSAGE=all fine";
        as_libvirt_xml(&hooks, [object, "start", "begin", "-"]).assert().code(1);
        let e = journal.one();
        assert_eq!(keys(&e), with_failure());
        assert_eq!(get(&e, "PRIORITY"), "3");
        assert_eq!(get(&e, "SYSLOG_IDENTIFIER"), "hookctl");
        assert_eq!(get(&e, "HOOK_RESULT"), "failed");
        assert_eq!(get(&e, "HOOK_OBJECT"), object);
        // The first 500 characters (not bytes) of the stderr, trailing newlines trimmed,
        // and how much was cut (154 of the `é`s).
        let expected: String = stderr.trim_end().chars().take(500).collect();
        assert_eq!(get(&e, "HOOK_STDERR"), format!("{expected}… (308 bytes cut)"));
        let message = get(&e, "MESSAGE");
        assert!(!message.contains('\n'), "{message:?}");
        assert!(
            message
                .starts_with("qemu web1\\nPRIORITY=0\\nHOOK_RESULT=ok\\nMESSAGE=all fine start begin -: refused by "),
            "{message}"
        );
        assert!(message.ends_with(": exit status 1: boom"), "{message}");

        // A huge name is cut (at a character boundary), says so, and is still sent.
        let huge = "ü\n".repeat(10_000);
        as_libvirt_xml(&hooks, [&huge, "start", "begin", "-"]).assert().code(1);
        let e = journal.one();
        let sent = get(&e, "HOOK_OBJECT");
        assert!(sent.len() <= 4096 && sent.len() > 4000, "{}", sent.len());
        let (kept, note) = sent.rsplit_once('…').unwrap();
        assert!(huge.starts_with(kept));
        assert_eq!(
            note,
            format!(" ({:.1} KiB cut)", (huge.len() - kept.len()) as f64 / 1024.0)
        );
        assert!(get(&e, "MESSAGE").len() <= 4096);
    });
}

#[test]
fn journal_false_sends_nothing() {
    in_private_namespace(|| {
        let (tmp, hooks, plugins) = installed();
        let toml = plugins.join("hookctl.toml");
        let settings = fs::read_to_string(&toml).unwrap();
        fs::write(&toml, format!("{settings}journal = false\n")).unwrap();
        script(&plugins.join("10-ok"), "#!/bin/sh\ncat >/dev/null\n");
        let journal = Journal::bind();
        as_libvirt_xml(&hooks, ["web1", "start", "begin", "-"])
            .assert()
            .success()
            .stderr("");
        script(&plugins.join("20-refuse"), "#!/bin/sh\nexit 1\n");
        as_libvirt_xml(&hooks, ["web1", "start", "begin", "-"]).assert().code(1);
        assert_eq!(journal.entries(), Vec::<Entry>::new());
        // The audit log still has both.
        let audit = fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap();
        assert_eq!(audit.lines().count(), 2);
        // A mistyped value is reported and the defaults apply: the entry is sent.
        fs::write(&toml, format!("{settings}journal = \"no\"\n")).unwrap();
        as_libvirt_xml(&hooks, ["web1", "start", "begin", "-"])
            .assert()
            .code(1)
            .stderr(predicates::str::contains("hookctl: ignoring").and(predicates::str::contains("hookctl.toml:2")));
        assert_eq!(journal.entries().len(), 1);
    });
}

#[test]
fn without_a_listening_journal_dispatch_is_unaffected() {
    in_private_namespace(|| {
        let (_tmp, hooks, plugins) = installed();
        script(&plugins.join("10-ok"), "#!/bin/sh\ncat >/dev/null\n");
        let refuse = plugins.join("20-refuse");
        let refused_stderr = format!("{}: exit status 3: no\n", refuse.display());
        let both = |why: &str| {
            fs::remove_file(&refuse).ok();
            let t = Instant::now();
            as_libvirt_xml(&hooks, ["web1", "start", "begin", "-"])
                .timeout(Duration::from_secs(30))
                .assert()
                .success()
                .stderr("");
            script(&refuse, "#!/bin/sh\necho no >&2\nexit 3\n");
            as_libvirt_xml(&hooks, ["web1", "start", "begin", "-"])
                .timeout(Duration::from_secs(30))
                .assert()
                .code(1)
                .stderr(refused_stderr.clone());
            eprintln!("{why}: two dispatches in {:?}", t.elapsed());
        };
        // No socket at all.
        both("no socket");
        // A socket file nobody listens on any more (ECONNREFUSED).
        drop(Journal::bind());
        assert!(std::path::Path::new(SOCKET).exists());
        both("a stale socket");
        fs::remove_file(SOCKET).unwrap();
        // A stalled journald whose queue is full: the entry is dropped, never waited for.
        let journal = Journal::bind();
        let filler = UnixDatagram::unbound().unwrap();
        filler.set_nonblocking(true).unwrap();
        let mut queued = 0;
        while filler.send_to(b"MESSAGE=filler\n", SOCKET).is_ok() {
            queued += 1;
            assert!(queued < 100_000, "the queue never filled");
        }
        both("a full queue");
        let entries = journal.entries();
        assert_eq!(entries.len(), queued, "only the filler was queued");
    });
}

/// Strips terminal colours from tracing's output.
fn plain(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// What one send costs the dispatcher (building the entry, the socket, `sendto`),
/// as its own debug trace reports it. Run with `--nocapture` to see the numbers.
#[test]
fn the_cost_of_one_send() {
    in_private_namespace(|| {
        let (_tmp, hooks, plugins) = installed();
        script(&plugins.join("10-ok"), "#!/bin/sh\ncat >/dev/null\n");
        let journal = Journal::bind();
        let mut micros = Vec::new();
        for _ in 0..30 {
            let out = as_libvirt_xml(&hooks, ["web1", "start", "begin", "-"])
                .env("HOOKCTL_LOG", "hookctl::journal=debug")
                .assert()
                .success()
                .get_output()
                .clone();
            let stderr = plain(&String::from_utf8_lossy(&out.stderr));
            let line = stderr
                .lines()
                .find(|l| l.contains("journal entry sent"))
                .unwrap_or_else(|| panic!("no trace in {stderr}"));
            let us = line.split("micros=").nth(1).unwrap().split_whitespace().next().unwrap();
            micros.push(us.parse::<u64>().unwrap());
            assert_eq!(journal.entries().len(), 1);
        }
        micros.sort_unstable();
        eprintln!(
            "one journal send: min {} µs, median {} µs, max {} µs (30 dispatches)",
            micros[0],
            micros[micros.len() / 2],
            micros[micros.len() - 1]
        );
        // Never anywhere near a wait: a blocking send would take forever, not 50 ms.
        assert!(micros[micros.len() / 2] < 50_000);
    });
}
