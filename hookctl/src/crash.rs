//! When a native plugin crashes the dispatcher (it runs in our process), say which one:
//! a handler for the fatal signals writes a line naming it to stderr and a prepared
//! line to the audit log, then lets the signal kill us as before, so libvirt still sees
//! the hook die of it.

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, Ordering};
use std::sync::OnceLock;

use crate::sys;

const FATAL: [libc::c_int; 5] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGABRT];

/// The audit log, opened before the plugins run and open until [`disarm`]; -1 when
/// there is none.
static AUDIT_FD: AtomicI32 = AtomicI32::new(-1);
/// The audit line up to the crashed plugin's name: `{..., "crashed_plugin":`.
static PREFIX: OnceLock<Vec<u8>> = OnceLock::new();
/// Room for the lines, made before anything runs: the handler runs on a small
/// alternate stack and must not allocate.
static SCRATCH: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
const SCRATCH_LEN: usize = 16 << 10;
/// Taken by the first thread that reports a crash.
static REPORTING: AtomicBool = AtomicBool::new(false);
/// The handlers that were there before (Rust's stack-overflow reporter), per signal.
static PREVIOUS: OnceLock<[sys::SavedAction; 5]> = OnceLock::new();

/// Installs the handlers; the audit log `audit` (open until [`disarm`]) gets one line
/// (`prefix` + name + signal) on a crash.
pub(crate) fn arm(audit: Option<RawFd>, prefix: Vec<u8>) {
    if PREFIX.set(prefix).is_err() {
        return;
    }
    AUDIT_FD.store(audit.unwrap_or(-1), Ordering::Relaxed);
    let scratch: &'static mut [u8] = Box::leak(vec![0u8; SCRATCH_LEN].into_boxed_slice());
    SCRATCH.store(scratch.as_mut_ptr(), Ordering::Release);
    // What to put back is saved before the handler can run: a handler that found nothing
    // to restore would return into the same fault forever.
    let _ = PREVIOUS.set(FATAL.map(sys::current_action));
    for sig in FATAL {
        // SAFETY: `on_fatal_signal` is async-signal-safe: it does atomic loads and swaps,
        // reads a thread-local `Cell` (`with_running_plugin`) and `OnceLock`s that are
        // set before it is installed or never, fills SCRATCH (allocated above, before it
        // can run) without allocating, and calls only write(2) and sigaction(2). It takes
        // the signal number alone, and SA_ONSTACK is the only flag.
        unsafe { sys::set_handler(sig, on_fatal_signal, libc::SA_ONSTACK) };
    }
}

/// The plugins have run: the audit log's descriptor is about to be used, then closed.
pub(crate) fn disarm() {
    AUDIT_FD.store(-1, Ordering::Relaxed);
}

/// A fixed buffer filled without allocating (allocation is not async-signal-safe).
struct Line<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Line<'_> {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    /// Ends the line with `bytes` even when the buffer is full (the line is then cut,
    /// but the next one starts on its own line).
    fn end(&mut self, bytes: &[u8]) {
        self.len = self.len.min(self.buf.len().saturating_sub(bytes.len()));
        self.push(bytes);
    }

    fn number(&mut self, mut n: u32) {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    /// A JSON string of `bytes`.
    fn json(&mut self, bytes: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        // A path that is not UTF-8 would make the line invalid JSON: its high bytes are
        // then written as \u00XX (checked without allocating).
        let utf8 = std::str::from_utf8(bytes).is_ok();
        self.push(b"\"");
        for &b in bytes {
            match b {
                b'"' | b'\\' => self.push(&[b'\\', b]),
                0..=0x1f | 0x7f => {
                    self.push(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]])
                }
                0x80.. if !utf8 => {
                    self.push(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]])
                }
                _ => self.push(&[b]),
            }
        }
        self.push(b"\"");
    }

    fn write_to(&self, fd: BorrowedFd<'_>) {
        sys::write_once(fd, &self.buf[..self.len]);
    }
}

extern "C" fn on_fatal_signal(sig: libc::c_int) {
    let scratch = SCRATCH.load(Ordering::Acquire);
    let first = !REPORTING.swap(true, Ordering::AcqRel);
    let named = (first && !scratch.is_null()).then(|| {
        hooks_dylib::with_running_plugin(|plugin| {
            // SAFETY: a non-null SCRATCH points to the SCRATCH_LEN bytes that `arm` leaked
            // (never freed), published with Release and loaded with Acquire above. Only
            // the first thread to report gets here (REPORTING), and once only, so this is
            // the one reference to them.
            let buf = unsafe { std::slice::from_raw_parts_mut(scratch, SCRATCH_LEN) };
            let mut line = Line { buf, len: 0 };
            line.push(b"hookctl: native plugin `");
            line.push(plugin);
            line.push(b"` crashed the dispatcher with signal ");
            line.number(sig as u32);
            line.push(b"; the plugins after it did not run\n");
            line.write_to(sys::stderr());
            let fd = AUDIT_FD.load(Ordering::Relaxed);
            if let (true, Some(prefix)) = (fd >= 0, PREFIX.get()) {
                line.len = 0;
                line.push(prefix);
                line.json(plugin);
                line.push(b",\"signal\":");
                line.number(sig as u32);
                line.end(b"}\n");
                // SAFETY: a descriptor in AUDIT_FD is the audit log, open until `disarm`
                // takes it out, which the dispatcher does before it closes it; the borrow
                // ends with this one write. (A crash on another thread just as the
                // dispatcher finishes can still race with that close.)
                line.write_to(unsafe { BorrowedFd::borrow_raw(fd) });
            }
        })
    });
    let _ = named;
    // Put back what was there (Rust's own reporter, or the default) and return: the
    // fault happens again, or abort() raises again, and the process dies of it.
    if let (Some(i), Some(previous)) = (FATAL.iter().position(|&s| s == sig), PREVIOUS.get()) {
        previous[i].restore();
    }
}
