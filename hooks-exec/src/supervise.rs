//! Feeds a spawned hook its stdin, drains stdout and stderr concurrently, and enforces
//! the timeout, the kill grace, the drain limit and the output caps, all from one
//! thread with `poll` (as libvirt's own event loop does), so no helper threads are
//! started per call.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::spawn::{set_nonblocking, Spawned};

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signal(i32),
}

/// Limits for one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) timeout: Option<Duration>,
    pub(crate) kill_grace: Duration,
    pub(crate) drain_limit: Duration,
    pub(crate) max_output: usize,
}

/// What a supervised run produced.
#[derive(Debug)]
pub(crate) struct Captured {
    pub(crate) exit: Exit,
    pub(crate) stdout: Stream,
    pub(crate) stderr: Stream,
    /// The timeout fired and the process (group) was killed.
    pub(crate) timed_out: bool,
    /// The pipes were still open when the drain limit ran out (a background process).
    pub(crate) pipes_abandoned: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Stream {
    pub(crate) data: Vec<u8>,
    pub(crate) truncated: bool,
}

struct Reader {
    fd: Option<OwnedFd>,
    out: Stream,
}

impl Reader {
    /// Reads all that is available; closes the fd at EOF. Bytes past the cap are read
    /// and dropped, so a flooding hook never blocks on a full pipe.
    fn drain(&mut self, buf: &mut [u8], cap: usize) -> io::Result<()> {
        let Some(fd) = &self.fd else { return Ok(()) };
        loop {
            // SAFETY: reading into a buffer we own, from a descriptor we own.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                let n = n as usize;
                let room = cap.saturating_sub(self.out.data.len());
                self.out.data.extend_from_slice(&buf[..n.min(room)]);
                self.out.truncated |= n > room;
                continue;
            }
            if n == 0 {
                self.fd = None;
                return Ok(());
            }
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock => Ok(()),
                io::ErrorKind::Interrupted => continue,
                _ => {
                    self.fd = None;
                    Err(err)
                }
            };
        }
    }
}

struct Writer<'a> {
    fd: Option<OwnedFd>,
    data: &'a [u8],
    broke: bool,
}

impl Writer<'_> {
    fn pump(&mut self) {
        let Some(fd) = &self.fd else { return };
        while !self.data.is_empty() {
            // SAFETY: writing from a slice we borrow, to a descriptor we own.
            let n = unsafe { libc::write(fd.as_raw_fd(), self.data.as_ptr().cast(), self.data.len()) };
            if n >= 0 {
                self.data = &self.data[n as usize..];
                continue;
            }
            match io::Error::last_os_error().kind() {
                io::ErrorKind::WouldBlock => return,
                io::ErrorKind::Interrupted => continue,
                // EPIPE (the hook does not read its stdin) is ignored, as in libvirt.
                _ => {
                    self.broke = true;
                    break;
                }
            }
        }
        self.fd = None;
    }
}

/// Blocks SIGPIPE in this thread while we write, so a hook that closes its stdin
/// cannot kill a host that has not ignored SIGPIPE; a pending one is consumed.
struct SigpipeGuard {
    old: libc::sigset_t,
}

impl SigpipeGuard {
    fn new() -> Self {
        // SAFETY: both sets are initialised before use; pthread_sigmask only affects
        // this thread and is restored in Drop.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGPIPE);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            SigpipeGuard { old }
        }
    }

    fn consume_pending(&self) {
        // SAFETY: a zero timeout makes sigtimedwait a non-blocking poll of SIGPIPE.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGPIPE);
            let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            while libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) == libc::SIGPIPE {}
        }
    }
}

impl Drop for SigpipeGuard {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}

fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a non-negative result is a fresh descriptor that we now own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn decode(status: libc::c_int) -> Exit {
    if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Code(libc::WEXITSTATUS(status))
    }
}

/// `waitpid`, blocking or not; `None` while the child runs.
fn reap(pid: libc::pid_t, block: bool) -> io::Result<Option<Exit>> {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, if block { 0 } else { libc::WNOHANG }) };
        if r == pid {
            return Ok(Some(decode(status)));
        }
        if r == 0 {
            return Ok(None);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<()> {
    let ms = timeout.map_or(-1, |t| t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32);
    // SAFETY: `fds` is a valid slice of pollfd.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

fn signal(pid: libc::pid_t, group: bool, sig: libc::c_int) {
    // SAFETY: kill only sends a signal; a negative pid addresses the process group that
    // the child leads (it was spawned with setpgid(0, 0)).
    unsafe {
        libc::kill(if group { -pid } else { pid }, sig);
    }
}

/// Supervises a spawned hook until it has exited and its pipes are drained (or the drain
/// limit ran out). `group` says whether the child leads its own process group.
pub(crate) fn supervise(child: Spawned, input: &[u8], limits: Limits, group: bool) -> io::Result<Captured> {
    let start = Instant::now();
    let deadline = limits.timeout.map(|t| start + t);
    let pidfd = pidfd_open(child.pid);
    let _sigpipe = child.stdin.is_some().then(SigpipeGuard::new);

    let mut writer = Writer {
        fd: child.stdin,
        data: input,
        broke: false,
    };
    if let Some(fd) = &writer.fd {
        set_nonblocking(fd)?;
    }
    if writer.data.is_empty() {
        writer.fd = None;
    }
    let mut readers = [
        Reader {
            fd: Some(child.stdout),
            out: Stream::default(),
        },
        Reader {
            fd: Some(child.stderr),
            out: Stream::default(),
        },
    ];
    for r in &readers {
        if let Some(fd) = &r.fd {
            set_nonblocking(fd)?;
        }
    }

    let mut buf = vec![0u8; 64 * 1024];
    let mut exit: Option<Exit> = None;
    let mut timed_out = false;
    let mut drain_until: Option<Instant> = None;
    let mut pipes_abandoned = false;

    loop {
        if exit.is_some() && readers.iter().all(|r| r.fd.is_none()) {
            break;
        }
        let mut fds: [libc::pollfd; 4] = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; 4];
        if let Some(fd) = &writer.fd {
            fds[0] = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
        }
        for (slot, r) in fds[1..3].iter_mut().zip(&readers) {
            if let Some(fd) = &r.fd {
                *slot = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
            }
        }
        if let (None, Some(fd)) = (exit, &pidfd) {
            fds[3] = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
        }
        let now = Instant::now();
        let wake = match exit {
            None => deadline,
            Some(_) => drain_until,
        };
        let mut wait = wake.map(|w| w.saturating_duration_since(now));
        if exit.is_none() && pidfd.is_none() {
            // No pidfd (old kernel): look for the exit every few milliseconds.
            wait = Some(wait.map_or(Duration::from_millis(5), |w| w.min(Duration::from_millis(5))));
        }
        poll(&mut fds, wait)?;

        if fds[0].revents != 0 {
            writer.pump();
        }
        for (r, pfd) in readers.iter_mut().zip(&fds[1..3]) {
            if pfd.revents != 0 {
                r.drain(&mut buf, limits.max_output)?;
            }
        }
        if exit.is_none() && (pidfd.is_none() || fds[3].revents != 0) {
            if let Some(e) = reap(child.pid, false)? {
                exit = Some(e);
                drain_until = Some(Instant::now() + limits.drain_limit);
                writer.fd = None;
            }
        }
        let now = Instant::now();
        if exit.is_none() && deadline.is_some_and(|d| now >= d) {
            exit = Some(kill(child.pid, group, pidfd.as_ref(), limits.kill_grace)?);
            timed_out = true;
            writer.fd = None;
            // The group is gone; only an escaped process can still hold the pipes.
            drain_until = Some(Instant::now() + limits.drain_limit.min(Duration::from_millis(100)));
        } else if exit.is_some() && drain_until.is_some_and(|d| now >= d) && readers.iter().any(|r| r.fd.is_some()) {
            for r in &mut readers {
                // Take what is already buffered before giving up on the pipe.
                let _ = r.drain(&mut buf, limits.max_output);
            }
            pipes_abandoned = readers.iter().any(|r| r.fd.is_some());
            break;
        }
    }
    if writer.broke {
        if let Some(guard) = &_sigpipe {
            guard.consume_pending();
        }
    }
    let [stdout, stderr] = readers.map(|r| r.out);
    let exit = exit.expect("loop ends only after the exit was seen");
    Ok(Captured {
        exit,
        stdout,
        stderr,
        timed_out,
        pipes_abandoned,
    })
}

/// TERM to the group, up to `grace` for it to go, then KILL; reaps the child.
fn kill(pid: libc::pid_t, group: bool, pidfd: Option<&OwnedFd>, grace: Duration) -> io::Result<Exit> {
    signal(pid, group, libc::SIGTERM);
    let until = Instant::now() + grace;
    loop {
        if has_exited(pid)? {
            break;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match pidfd {
            Some(fd) => {
                let mut pfd = [libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                poll(&mut pfd, Some(left))?;
            }
            None => std::thread::sleep(left.min(Duration::from_millis(1))),
        }
    }
    // The leader is not reaped yet, so its group id cannot have been reused: the rest
    // of the group (children that ignored TERM) goes too.
    signal(pid, group, libc::SIGKILL);
    Ok(reap(pid, true)?.unwrap_or(Exit::Signal(libc::SIGKILL)))
}

/// Whether the child has exited, without reaping it.
fn has_exited(pid: libc::pid_t) -> io::Result<bool> {
    loop {
        // SAFETY: `info` is zeroed and written by waitid; WNOWAIT leaves the child
        // waitable.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if r == 0 {
            // SAFETY: waitid filled `info`; si_pid is 0 when no child has changed state.
            return Ok(unsafe { info.si_pid() } == pid);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
