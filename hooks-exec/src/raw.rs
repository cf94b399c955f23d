//! System calls for code that runs where nothing may allocate, take a lock or unwind: in
//! a new process between clone and exec (`launch.rs`), and in the per-hook helper, a fork
//! of a possibly multithreaded caller (`helper.rs`). Another thread of the caller may have
//! held the allocator's lock when the process was copied, so each function here uses only
//! its arguments and its own stack, never panics, and returns the errno of a failure as a
//! plain number (reading `errno` is a read of this thread's own slot).
//!
//! A path is always a `&CStr`: building one would allocate.

use std::ffi::CStr;

use libc::{c_int, c_long, pid_t};

/// The errno of the call that just failed.
pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// A raw `syscall(2)`'s result: the value, or the errno.
fn check(ret: c_long) -> Result<c_long, i32> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret)
    }
}

/// The kernel's signal set is 64 bits wide on every architecture this crate supports.
const KERNEL_SIGSET: usize = 8;

/// `rt_sigprocmask(SIG_SETMASK)` to `mask` (bit n-1 for signal n) for the calling thread;
/// the mask it had. Unlike `pthread_sigmask`, it also reaches the C library's internal
/// signals.
pub(crate) fn set_signal_mask(mask: u64) -> u64 {
    let mut old: u64 = 0;
    // SAFETY: the kernel reads 8 bytes from `mask` and writes 8 to `old`, both live
    // locals; it touches nothing else.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &mask as *const u64,
            &mut old as *mut u64,
            KERNEL_SIGSET,
        )
    };
    old
}

/// Every signal back to its default action (`SIG_DFL`, no flags, empty mask), but
/// SIGKILL and SIGSTOP, which cannot be changed.
pub(crate) fn reset_signal_actions() -> Result<(), i32> {
    // All zero is SIG_DFL with no flags, no restorer and an empty mask, whatever the
    // architecture's layout of the kernel's `struct sigaction`.
    let default = [0u64; 4];
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: the kernel reads the zeroed struct (larger than any layout of the
        // kernel's sigaction) and writes nothing (no old action asked for).
        let ret = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                default.as_ptr(),
                std::ptr::null_mut::<u64>(),
                KERNEL_SIGSET,
            )
        };
        check(ret)?;
    }
    Ok(())
}

/// `setpgid(0, 0)`: the caller leads a new process group.
pub(crate) fn new_process_group() -> Result<(), i32> {
    // SAFETY: two integers, no memory.
    if unsafe { libc::setpgid(0, 0) } != 0 {
        return Err(errno());
    }
    Ok(())
}

/// Makes `fd` also `target`, without close-on-exec (`dup2`; if they are the same number,
/// clears the flag instead, as `posix_spawn` does).
pub(crate) fn dup_onto(fd: c_int, target: c_int) -> Result<(), i32> {
    // SAFETY: descriptor numbers only; no memory of ours is involved.
    let ret = unsafe {
        if fd == target {
            libc::fcntl(fd, libc::F_SETFD, 0)
        } else {
            libc::dup2(fd, target)
        }
    };
    if ret < 0 {
        return Err(errno());
    }
    Ok(())
}

/// `open(path, flags)`.
pub(crate) fn open(path: &CStr, flags: c_int) -> Result<c_int, i32> {
    // SAFETY: `path` is NUL-terminated and borrowed for the call.
    let fd = unsafe { libc::open(path.as_ptr(), flags) };
    if fd < 0 {
        return Err(errno());
    }
    Ok(fd)
}

/// `openat(dir, path, flags)`.
pub(crate) fn openat(dir: c_int, path: &CStr, flags: c_int) -> Result<c_int, i32> {
    // SAFETY: `path` is NUL-terminated and borrowed for the call.
    let fd = unsafe { libc::openat(dir, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(errno());
    }
    Ok(fd)
}

/// `close(fd)`; its error is of no use to anyone here.
pub(crate) fn close(fd: c_int) {
    // SAFETY: a number; the caller owns the descriptor and never uses it after this.
    unsafe { libc::close(fd) };
}

/// `read(fd)` into `buf` until it is full or at end of file: how many bytes.
pub(crate) fn read_all(fd: c_int, buf: &mut [u8]) -> Result<usize, i32> {
    let mut len = 0;
    while let Some(rest) = buf.get_mut(len..) {
        if rest.is_empty() {
            break;
        }
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::read(fd, rest.as_mut_ptr().cast(), rest.len()) };
        match n {
            0 => break,
            n if n > 0 => len += n as usize,
            _ if errno() == libc::EINTR => {}
            _ => return Err(errno()),
        }
    }
    Ok(len)
}

/// `write(fd)` of all of `data` (a few bytes: one call writes them whole on a pipe).
pub(crate) fn write_all(fd: c_int, data: &[u8]) -> Result<(), i32> {
    let mut done = 0;
    while let Some(rest) = data.get(done..) {
        if rest.is_empty() {
            break;
        }
        // SAFETY: the kernel reads at most `rest.len()` bytes from `rest`.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        match n {
            n if n > 0 => done += n as usize,
            _ if errno() == libc::EINTR => {}
            _ => return Err(errno()),
        }
    }
    Ok(())
}

/// The contents of a small file (a `/proc` entry) into `buf`: how many bytes.
pub(crate) fn read_file(path: &CStr, buf: &mut [u8]) -> Result<usize, i32> {
    let fd = open(path, libc::O_RDONLY | libc::O_CLOEXEC)?;
    let read = read_all(fd, buf);
    close(fd);
    read
}

/// Closes every descriptor from 3 up but `keep` (`close_range(2)`, or one by one from
/// `/proc/self/fd` on kernels before 5.9).
pub(crate) fn close_from_3_but(keep: &[c_int]) -> Result<(), i32> {
    let mut sorted = [c_int::MAX; 8];
    let mut n = 0;
    for &fd in keep.iter().filter(|&&fd| fd >= 3) {
        if let Some(slot) = sorted.get_mut(n) {
            *slot = fd;
            n += 1;
        }
    }
    sorted.sort_unstable();
    let mut from: c_int = 3;
    for &fd in sorted.get(..n).unwrap_or_default() {
        if fd > from && close_range(from, fd - 1)? == RangeClosed::Unsupported {
            return close_listed_but(keep);
        }
        from = fd.saturating_add(1);
    }
    match close_range(from, c_int::MAX)? {
        RangeClosed::Done => Ok(()),
        RangeClosed::Unsupported => close_listed_but(keep),
    }
}

#[derive(PartialEq, Eq)]
enum RangeClosed {
    Done,
    Unsupported,
}

fn close_range(first: c_int, last: c_int) -> Result<RangeClosed, i32> {
    // SAFETY: numbers only; it closes descriptors the caller owns and no longer uses.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, last as libc::c_uint, 0) };
    match check(ret) {
        Ok(_) => Ok(RangeClosed::Done),
        Err(libc::ENOSYS) => Ok(RangeClosed::Unsupported),
        Err(e) => Err(e),
    }
}

/// The old way: list `/proc/self/fd`, close what it shows, until it shows nothing more.
fn close_listed_but(keep: &[c_int]) -> Result<(), i32> {
    loop {
        let dir = open(c"/proc/self/fd", libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)?;
        let mut batch = [0 as c_int; 128];
        let mut n = 0;
        let listed = for_each_entry(dir, |name| {
            if let Some(fd) = parse_decimal(name).and_then(|v| c_int::try_from(v).ok()) {
                if fd >= 3 && fd != dir && !keep.contains(&fd) {
                    if let Some(slot) = batch.get_mut(n) {
                        *slot = fd;
                        n += 1;
                    }
                }
            }
            true
        });
        close(dir);
        listed?;
        if n == 0 {
            return Ok(());
        }
        for &fd in batch.get(..n).unwrap_or_default() {
            close(fd);
        }
    }
}

/// Room for `getdents64`, aligned as the records it holds.
#[repr(C, align(8))]
struct DirBuf([u8; 4096]);

/// Calls `each` with the name of each entry of the open directory `dir` (`getdents64`),
/// until it returns false.
pub(crate) fn for_each_entry(dir: c_int, mut each: impl FnMut(&[u8]) -> bool) -> Result<(), i32> {
    let mut buf = DirBuf([0; 4096]);
    loop {
        // SAFETY: the kernel writes at most the buffer's length into it.
        let ret = unsafe { libc::syscall(libc::SYS_getdents64, dir, buf.0.as_mut_ptr(), buf.0.len()) };
        let len = check(ret)? as usize;
        if len == 0 {
            return Ok(());
        }
        let mut at = 0;
        // Each record: d_ino (8), d_off (8), d_reclen (2), d_type (1), NUL-terminated name.
        while let Some(record) = buf.0.get(at..len) {
            let Some(&[lo, hi]) = record.get(16..18) else { break };
            let reclen = u16::from_ne_bytes([lo, hi]) as usize;
            if reclen == 0 {
                break;
            }
            let name = record.get(19..reclen.min(record.len())).unwrap_or_default();
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            if !each(name) {
                return Ok(());
            }
            at += reclen;
        }
    }
}

/// A decimal number of at most 18 digits, all of `text`.
pub(crate) fn parse_decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 18 {
        return None;
    }
    text.iter()
        .try_fold(0u64, |n, &b| b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0')))
}

/// Writes `prefix`, the decimal `n`, `suffix` and a NUL into `buf`: a path such as
/// `/proc/42/stat`, without allocating. `None` if it does not fit.
pub(crate) fn proc_path<'b>(buf: &'b mut [u8], prefix: &[u8], n: u64, suffix: &[u8]) -> Option<&'b CStr> {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut rest = n;
    loop {
        i -= 1;
        *digits.get_mut(i)? = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let digits = digits.get(i..)?;
    let len = prefix.len() + digits.len() + suffix.len();
    let out = buf.get_mut(..len + 1)?;
    let (p, rest) = out.split_at_mut(prefix.len());
    p.copy_from_slice(prefix);
    let (d, rest) = rest.split_at_mut(digits.len());
    d.copy_from_slice(digits);
    let (s, nul) = rest.split_at_mut(suffix.len());
    s.copy_from_slice(suffix);
    *nul.first_mut()? = 0;
    CStr::from_bytes_with_nul(out).ok()
}

/// Calls `each` with every pid in the list file open at `fd` (`children`,
/// `cgroup.procs`: decimals separated by white space), however long it is: read a page
/// at a time, a number cut by a page's end carried over to the next.
pub(crate) fn for_each_pid_in(fd: c_int, mut each: impl FnMut(pid_t)) -> Result<(), i32> {
    let mut buf = [0u8; 4096];
    let mut carried = 0;
    loop {
        let Some(room) = buf.get_mut(carried..) else {
            return Ok(());
        };
        // SAFETY: the kernel writes at most `room.len()` bytes into `room`.
        let n = unsafe { libc::read(fd, room.as_mut_ptr().cast(), room.len()) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(errno());
        }
        let len = carried + n as usize;
        let text = buf.get(..len).unwrap_or_default();
        // At the end, the last word is whole; before it, it may go on in the next read.
        let whole = if n == 0 {
            len
        } else {
            text.iter().rposition(|b| b.is_ascii_whitespace()).map_or(0, |i| i + 1)
        };
        for word in text.get(..whole).unwrap_or_default().split(|b| b.is_ascii_whitespace()) {
            if let Some(pid) = parse_decimal(word).and_then(|v| pid_t::try_from(v).ok()) {
                each(pid);
            }
        }
        if n == 0 {
            return Ok(());
        }
        carried = len - whole;
        if carried >= 32 {
            // No pid is that long: not a pid list.
            return Ok(());
        }
        buf.copy_within(whole..len, 0);
    }
}

/// `pidfd_open(2)`: a descriptor that names `pid` for as long as it is open.
pub(crate) fn pidfd_open(pid: pid_t) -> Result<c_int, i32> {
    // SAFETY: numbers only.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    check(ret).map(|fd| fd as c_int)
}

/// `pidfd_send_signal(2)`; ESRCH (gone already) is not an error.
pub(crate) fn pidfd_kill(pidfd: c_int, sig: c_int) -> Result<(), i32> {
    // SAFETY: numbers and a null siginfo.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    match check(ret) {
        Err(libc::ESRCH) | Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `kill(2)`; ESRCH (gone already) is not an error.
pub(crate) fn kill(pid: pid_t, sig: c_int) -> Result<(), i32> {
    // SAFETY: two integers, no memory.
    if unsafe { libc::kill(pid, sig) } != 0 && errno() != libc::ESRCH {
        return Err(errno());
    }
    Ok(())
}

/// `waitpid(pid, WNOHANG)` (pid -1: any child): `Some((pid, status))` for a child that
/// ended and is now reaped, `None` while all run, `Err(ECHILD)` when there is none.
pub(crate) fn reap_one(pid: pid_t) -> Result<Option<(pid_t, c_int)>, i32> {
    let mut status: c_int = 0;
    loop {
        // SAFETY: `status` is a live local, the only memory written.
        let ret = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) };
        match ret {
            0 => return Ok(None),
            r if r > 0 => return Ok(Some((r, status))),
            _ if errno() == libc::EINTR => {}
            _ => return Err(errno()),
        }
    }
}

/// Milliseconds on the monotonic clock.
pub(crate) fn now_millis() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: the kernel (or vDSO) writes `ts`, a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1000) + (ts.tv_nsec as u64) / 1_000_000
}

/// `exit_group(code)` at once: no `atexit` handlers, no destructors, no flushing of the
/// caller's buffers (they are the caller's, copied).
pub(crate) fn exit_now(code: c_int) -> ! {
    // SAFETY: ends this process; nothing of ours runs after it.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_proc_paths_without_allocating() {
        let mut buf = [0u8; 32];
        assert_eq!(
            proc_path(&mut buf, b"/proc/", 4194304, b"/stat").unwrap(),
            c"/proc/4194304/stat"
        );
        assert_eq!(proc_path(&mut buf, b"/proc/", 0, b"").unwrap(), c"/proc/0");
        let mut small = [0u8; 8];
        assert!(proc_path(&mut small, b"/proc/", 123, b"/stat").is_none());
    }

    #[test]
    fn decimal_numbers_only() {
        assert_eq!(parse_decimal(b"4242"), Some(4242));
        for bad in [&b""[..], b"12a", b"-1", b" 1", b"9999999999999999999"] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_pid_lists_longer_than_a_page() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("children");
        let pids: Vec<pid_t> = (1..3000).map(|n| n * 7919 % 4_000_000).collect();
        let text: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        std::fs::write(&path, text.join(" ") + "\n").unwrap();
        let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let fd = open(&path, libc::O_RDONLY | libc::O_CLOEXEC).unwrap();
        let mut seen = Vec::new();
        for_each_pid_in(fd, |p| seen.push(p)).unwrap();
        close(fd);
        assert_eq!(seen, pids);
    }

    #[test]
    fn lists_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["a", "bb", "ccc"] {
            std::fs::write(tmp.path().join(name), "").unwrap();
        }
        let path = std::ffi::CString::new(tmp.path().as_os_str().as_encoded_bytes()).unwrap();
        let dir = open(&path, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC).unwrap();
        let mut names = Vec::new();
        for_each_entry(dir, |n| {
            names.push(String::from_utf8_lossy(n).into_owned());
            true
        })
        .unwrap();
        close(dir);
        names.sort();
        assert_eq!(names, [".", "..", "a", "bb", "ccc"]);
    }
}
