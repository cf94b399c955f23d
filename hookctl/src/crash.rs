//! When a native plugin crashes the dispatcher (it runs in our process), say which one:
//! a handler for the fatal signals writes a line naming it to stderr and a prepared
//! line to the audit log, then lets the signal kill us as before, so libvirt still sees
//! the hook die of it.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, Ordering};
use std::sync::OnceLock;

const FATAL: [libc::c_int; 5] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGABRT];

/// The audit log, opened before the plugins run; -1 when there is none.
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
static PREVIOUS: OnceLock<[libc::sigaction; 5]> = OnceLock::new();

/// Installs the handlers; the audit log `audit` (open until [`disarm`]) gets one line
/// (`prefix` + name + signal) on a crash.
pub(crate) fn arm(audit: Option<RawFd>, prefix: Vec<u8>) {
    if PREFIX.set(prefix).is_err() {
        return;
    }
    AUDIT_FD.store(audit.unwrap_or(-1), Ordering::Relaxed);
    let scratch: &'static mut [u8] = Box::leak(vec![0u8; SCRATCH_LEN].into_boxed_slice());
    SCRATCH.store(scratch.as_mut_ptr(), Ordering::Release);
    // SAFETY: a zeroed sigaction is a valid "default" one; sigaction only reads `new`
    // and writes `old`, both ours; the handler is async-signal-safe (see below).
    unsafe {
        let mut previous: [libc::sigaction; 5] = std::mem::zeroed();
        for (sig, old) in FATAL.iter().zip(previous.iter_mut()) {
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_fatal_signal as *const () as usize;
            new.sa_flags = libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            libc::sigaction(*sig, &new, old);
        }
        let _ = PREVIOUS.set(previous);
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
        self.push(b"\"");
        for &b in bytes {
            match b {
                b'"' | b'\\' => self.push(&[b'\\', b]),
                0..=0x1f => self.push(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]),
                _ => self.push(&[b]),
            }
        }
        self.push(b"\"");
    }

    fn write_to(&self, fd: libc::c_int) {
        // SAFETY: write(2) from a buffer we own; async-signal-safe.
        unsafe {
            libc::write(fd, self.buf.as_ptr().cast(), self.len);
        }
    }
}

extern "C" fn on_fatal_signal(sig: libc::c_int) {
    let scratch = SCRATCH.load(Ordering::Acquire);
    let first = !REPORTING.swap(true, Ordering::AcqRel);
    let named = (first && !scratch.is_null()).then(|| {
        hooks_dylib::with_running_plugin(|plugin| {
            // SAFETY: `arm` leaked SCRATCH_LEN bytes for this; only the first reporting
            // thread gets here (REPORTING), so nothing else touches them.
            let buf = unsafe { std::slice::from_raw_parts_mut(scratch, SCRATCH_LEN) };
            let mut line = Line { buf, len: 0 };
            line.push(b"hookctl: native plugin `");
            line.push(plugin);
            line.push(b"` crashed the dispatcher with signal ");
            line.number(sig as u32);
            line.push(b"; the plugins after it did not run\n");
            line.write_to(2);
            let fd = AUDIT_FD.load(Ordering::Relaxed);
            if let (true, Some(prefix)) = (fd >= 0, PREFIX.get()) {
                line.len = 0;
                line.push(prefix);
                line.json(plugin);
                line.push(b",\"signal\":");
                line.number(sig as u32);
                line.push(b"}\n");
                line.write_to(fd);
            }
        })
    });
    let _ = named;
    // Put back what was there (Rust's own reporter, or the default) and return: the
    // fault happens again, or abort() raises again, and the process dies of it.
    if let (Some(i), Some(previous)) = (FATAL.iter().position(|&s| s == sig), PREVIOUS.get()) {
        // SAFETY: restoring a sigaction saved by `arm`; async-signal-safe.
        unsafe {
            libc::sigaction(sig, &previous[i], std::ptr::null_mut());
        }
    }
}
