//! The journal: when journald listens at `/run/systemd/journal/socket`, each dispatch
//! also sends it one structured entry in journald's native protocol
//! (<https://systemd.io/JOURNAL_NATIVE_PROTOCOL/>), so that
//! `journalctl -t hookctl HOOK_OBJECT=web1` finds a guest's hook decisions.
//!
//! One datagram of fields, each `KEY=value\n`, or, when the value holds a newline,
//! `KEY\n` + its length as a little-endian `u64` + the value + `\n`: object names and
//! plugins' stderr come from others, and a newline in them must never start a field of
//! their own (`\nPRIORITY=0`). Values are capped (4096 bytes, stderr 500 characters; a
//! cut value ends saying how much was cut), so an entry stays far below a datagram's
//! limit; should a tiny socket buffer still refuse it (`EMSGSIZE`), the entry is sent
//! once more with every value cut to 256 bytes, instead of passing a memfd as journald
//! also accepts. `MESSAGE` is escaped ([`virt_hooks_core::text::escape`]): journalctl prints
//! it to terminals.
//!
//! Sending never delays or fails the dispatch: the socket is non-blocking (a stalled
//! journald with a full queue means the entry is dropped, where a blocking sender would
//! wait), errors are only traced at debug level, and nothing is retried but that one
//! smaller entry.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Instant;

use virt_hooks_core::text::Limit;
use virt_hooks_core::{HookEvent, HookRecord, RawEvent, Report};

use crate::output;

/// Where journald receives native-protocol datagrams.
pub(crate) const SOCKET: &str = "/run/systemd/journal/socket";

/// How much of each value is sent, in bytes (a plugin's path is at most `PATH_MAX`).
const MAX_VALUE: usize = 4096;
/// How much of the failed plugin's stderr is sent, in characters (as in the audit log).
const STDERR_CHARS: usize = 500;
/// Every value's cap in the entry sent again after `EMSGSIZE`.
const SHRUNK_VALUE: usize = 256;
/// How much of the failed plugin's first stderr line `MESSAGE` shows, in characters.
const MESSAGE_STDERR_CHARS: usize = 200;

/// Sends one entry for a finished dispatch, when `enabled` (`journal` in `hookctl.toml`);
/// whether journald took it.
pub(crate) fn send(enabled: bool, event: &RawEvent, report: &Report, start: Instant) -> bool {
    if !enabled {
        return false;
    }
    let began = Instant::now();
    let duration_us = start.elapsed().as_micros() as u64;
    let mut datagram = entry(event, report, duration_us, MAX_VALUE);
    let socket = unbound_socket();
    let send = |datagram: &[u8]| match &socket {
        Ok(socket) => socket.send_to(datagram, SOCKET).map(drop),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    };
    let mut sent = send(&datagram);
    if matches!(&sent, Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE)) {
        datagram = entry(event, report, duration_us, SHRUNK_VALUE);
        sent = send(&datagram);
    }
    if sent.is_ok() {
        send_log_lines(event, report, &send);
    }
    let micros = began.elapsed().as_micros() as u64;
    match sent {
        Ok(()) => {
            tracing::debug!(bytes = datagram.len(), micros, "journal entry sent");
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, micros, "journal entry not sent");
            false
        }
    }
}

/// The kernel's log (`dmesg`), the one record every Linux host keeps.
const KMSG: &str = "/dev/kmsg";

/// The most of a line the kernel's log takes whole (its records are about 1 KiB).
const KMSG_LINE: usize = 900;

/// Writes one error line (escaped, at most [`KMSG_LINE`] bytes) to the kernel's log:
/// the last resort for a record nothing else keeps. Tests of debug builds may point it
/// elsewhere with `HOOKCTL_TEST_KMSG`.
pub(crate) fn kernel_log(line: &str) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    #[cfg(debug_assertions)]
    let path = std::env::var_os("HOOKCTL_TEST_KMSG").unwrap_or_else(|| KMSG.into());
    #[cfg(not(debug_assertions))]
    let path = KMSG;
    let text = Limit::bytes(KMSG_LINE).escaped().apply(line);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    // `<3>`: an error, as the kernel's log reads priorities.
    io::Write::write_all(
        &mut file,
        format!("<3>hookctl[{}]: {text}\n", std::process::id()).as_bytes(),
    )
}

/// The most log lines of one plugin sent to the journal per event (the last ones).
const LOG_LINES_SENT: usize = crate::audit::line::LOG_LINES_KEPT;

/// Each plugin's last log lines, one entry each, at journald's priority for its level
/// (`journalctl -t hookctl HOOK_PLUGIN=…`). Best effort, as the event's entry.
fn send_log_lines(event: &RawEvent, report: &Report, send: &dyn Fn(&[u8]) -> io::Result<()>) {
    for rec in &report.hooks {
        let from = rec.log.len().saturating_sub(LOG_LINES_SENT);
        for line in &rec.log[from..] {
            if send(&log_entry(event, rec, line)).is_err() {
                return;
            }
        }
    }
}

fn log_entry(event: &RawEvent, rec: &HookRecord, line: &virt_hooks_core::outcome::LogLine) -> Vec<u8> {
    use virt_hooks_core::outcome::LogLevel;
    let priority = match line.level {
        LogLevel::Debug => "7",
        LogLevel::Info => "6",
        LogLevel::Warn => "4",
        LogLevel::Error => "3",
    };
    let mut buf = Vec::with_capacity(256);
    let message = format!(
        "{} {}: {}",
        one_line(event.object(), 1024),
        one_line(&rec.name, 1024),
        one_line(&line.message, MAX_VALUE)
    );
    field(&mut buf, "MESSAGE", &cut(&message, MAX_VALUE));
    field(&mut buf, "PRIORITY", priority);
    field(&mut buf, "SYSLOG_IDENTIFIER", "hookctl");
    field(&mut buf, "HOOK_DRIVER", event.driver().as_str());
    field(&mut buf, "HOOK_OBJECT", &cut(event.object(), MAX_VALUE));
    field(&mut buf, "HOOK_OP", &cut(event.op(), MAX_VALUE));
    field(&mut buf, "HOOK_PLUGIN", &cut(&rec.name, MAX_VALUE));
    field(&mut buf, "HOOK_LOG_LEVEL", line.level.as_str());
    buf
}

/// One socket for all of a dispatch's entries (the event's and its plugins' log lines).
fn unbound_socket() -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// The entry's fields, encoded; every value is cut to `cap` bytes.
fn entry(event: &RawEvent, report: &Report, duration_us: u64, cap: usize) -> Vec<u8> {
    // The failure libvirt reports (the last required one), else one that would have
    // killed the running guest at `reconnect`, else an optional one's.
    let failed = (report.failed_hook())
        .or_else(|| report.hooks.iter().rev().find(|r| r.spared))
        .or_else(|| report.hooks.iter().rev().find(|r| !r.success));
    let refused = report.failed_hook().is_some() && report.policy.fails_operation();
    let priority = match failed {
        // A spared failure is an error all the same: the plugin did not do its work.
        Some(rec) if refused || rec.spared => "3",
        Some(_) => "4",
        None => "6",
    };
    let args = [event.object(), event.op(), event.subop(), event.extra()];
    let mut buf = Vec::with_capacity(1024);
    field(
        &mut buf,
        "MESSAGE",
        &cut(&message(event, report, failed, refused, duration_us), cap),
    );
    field(&mut buf, "PRIORITY", priority);
    field(&mut buf, "SYSLOG_IDENTIFIER", "hookctl");
    field(&mut buf, "HOOK_DRIVER", event.driver().as_str());
    for (key, value) in ["HOOK_OBJECT", "HOOK_OP", "HOOK_SUBOP", "HOOK_EXTRA"]
        .into_iter()
        .zip(args)
    {
        field(&mut buf, key, &cut(value, cap));
    }
    field(
        &mut buf,
        "HOOK_RESULT",
        if report.succeeded() { "ok" } else { "failed" },
    );
    field(&mut buf, "HOOK_DURATION_USEC", &duration_us.to_string());
    if let Some(rec) = failed {
        field(&mut buf, "HOOK_FAILED_PLUGIN", &cut(&rec.name, cap));
        let stderr = Limit::bytes(cap).chars(STDERR_CHARS).apply(rec.stderr.trim_end());
        field(&mut buf, "HOOK_STDERR", &stderr);
    }
    buf
}

/// One human line: `qemu web1 start begin -: refused by <plugin>: exit status 3: <stderr>`.
fn message(event: &RawEvent, report: &Report, failed: Option<&HookRecord>, refused: bool, duration_us: u64) -> String {
    let what = format!(
        "{} {} {} {} {}",
        event.driver().as_str(),
        one_line(event.object(), 1024),
        one_line(event.op(), 256),
        one_line(event.subop(), 256),
        one_line(event.extra(), 256),
    );
    let Some(rec) = failed else {
        let n = report.hooks.len();
        let plural = if n == 1 { "" } else { "s" };
        let ms = duration_us as f64 / 1000.0;
        return format!("{what}: ok ({n} plugin{plural}, {ms:.1} ms)");
    };
    let verdict = match rec.spared {
        _ if refused => "refused by",
        true => "error, the running guest is spared:",
        false => "failure ignored:",
    };
    let explaining = virt_hooks_core::outcome::explaining_line(&rec.log, rec.stderr.as_bytes()).unwrap_or_default();
    let first = explaining.as_str();
    let sep = if first.is_empty() { "" } else { ": " };
    format!(
        "{what}: {verdict} {}: {}{sep}{}",
        one_line(&rec.name, 1024),
        one_line(&output::status(rec), 1024),
        Limit::bytes(1024).chars(MESSAGE_STDERR_CHARS).escaped().apply(first)
    )
}

/// `s` escaped ([`virt_hooks_core::text::escape`]) and cut to `max` bytes.
fn one_line(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    Limit::bytes(max).escaped().apply(s)
}

/// At most `cap` bytes of `s` (a cut says how much went).
fn cut(s: &str, cap: usize) -> std::borrow::Cow<'_, str> {
    Limit::bytes(cap).apply(s)
}

/// Appends one field. Keys are ours (uppercase, digits, `_`); a value with a newline
/// takes the binary form, so nothing in it can end the field early.
fn field(buf: &mut Vec<u8>, key: &str, value: &str) {
    debug_assert!(
        !key.is_empty()
            && !key.starts_with('_')
            && key
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    );
    buf.extend_from_slice(key.as_bytes());
    if value.contains('\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value.as_bytes());
    buf.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(entry: &[u8]) -> String {
        String::from_utf8_lossy(entry).into_owned()
    }

    /// A plugin that failed at `reconnect` and was spared is an error (priority 3) in the
    /// journal, not the warning an optional plugin's failure is.
    #[test]
    fn a_spared_failure_at_reconnect_is_an_error() {
        let event = RawEvent::new(virt_hooks_core::Driver::Qemu, ["db1", "reconnect", "begin", "-"]);
        let record = serde_json::json!({
            "name": "/etc/libvirt/hooks/qemu.plugins/10-hugepages", "backend": "exec",
            "success": false, "optional": true, "spared": true,
            "status": {"kind": "exited", "code": 1}, "duration_us": 1,
            "stdout": "", "stderr": "unknown operation reconnect\n", "input": "original",
        });
        let report = |rec: serde_json::Value| -> Report {
            serde_json::from_value(serde_json::json!({
                "driver": "qemu", "object": "db1", "op": "reconnect", "subop": "begin", "extra": "-",
                "policy": "kill-object", "filters": false, "hooks": [rec],
            }))
            .unwrap()
        };
        let spared = fields(&entry(&event, &report(record.clone()), 1, MAX_VALUE));
        assert!(spared.contains("\nPRIORITY=3\n"), "{spared}");
        assert!(
            spared.contains("error, the running guest is spared: /etc/libvirt/hooks/qemu.plugins/10-hugepages: exit status 1: unknown operation reconnect"),
            "{spared}"
        );
        assert!(spared.contains("HOOK_RESULT=ok"), "{spared}");
        let mut optional = record;
        optional["spared"] = false.into();
        let optional = fields(&entry(&event, &report(optional), 1, MAX_VALUE));
        assert!(
            optional.contains("\nPRIORITY=4\n") && optional.contains("failure ignored:"),
            "{optional}"
        );
    }

    /// A plugin's log line is an entry of its own, at its level's priority; a newline in
    /// it cannot start a field, and a failure's message is its last error line.
    #[test]
    fn log_lines_are_entries_at_their_priority_and_explain_a_failure() {
        let event = RawEvent::new(virt_hooks_core::Driver::Qemu, ["web1", "prepare", "begin", "-"]);
        let report: Report = serde_json::from_value(serde_json::json!({
            "driver": "qemu", "object": "web1", "op": "prepare", "subop": "begin", "extra": "-",
            "policy": "abort", "filters": false, "hooks": [{
                "name": "/h/qemu.plugins/vcpu.so", "backend": "dylib", "success": false,
                "status": {"kind": "exited", "code": 1}, "duration_us": 1,
                "stdout": "", "stderr": "", "input": "original",
                "log": [
                    {"level": "debug", "message": "counted 12"},
                    {"level": "error", "message": "web1 asks for 12 vCPUs\nPRIORITY=0"},
                    {"level": "info", "message": "refusing"},
                ],
            }],
        }))
        .unwrap();
        let event_entry = fields(&entry(&event, &report, 1, MAX_VALUE));
        assert!(
            event_entry
                .contains("refused by /h/qemu.plugins/vcpu.so: exit status 1: web1 asks for 12 vCPUs\\nPRIORITY=0"),
            "{event_entry}"
        );
        let rec = &report.hooks[0];
        let entries: Vec<String> = rec.log.iter().map(|l| fields(&log_entry(&event, rec, l))).collect();
        let priorities: Vec<bool> = ["7", "3", "6"]
            .iter()
            .zip(&entries)
            .map(|(p, e)| e.contains(&format!("\nPRIORITY={p}\n")))
            .collect();
        assert_eq!(priorities, [true, true, true], "{entries:?}");
        assert!(
            entries[1].contains("HOOK_PLUGIN=/h/qemu.plugins/vcpu.so\n"),
            "{}",
            entries[1]
        );
        assert!(!entries[1].contains("\nPRIORITY=0\n"), "{}", entries[1]);
    }
}
