//! Feeds a spawned hook its stdin, drains stdout and stderr concurrently, and enforces
//! the timeout, the kill grace, the drain limit and the output caps, all from one
//! thread with `poll` (as libvirt's own event loop does), so no helper threads are
//! started per call. It also watches for the call being dropped.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use virt_hooks_core::outcome::Containment;

use crate::cgroup::Usage;
pub(crate) use crate::child::Exit;
use crate::spawn::Spawned;
use crate::sys;

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
    /// The call was dropped and the hook killed; nobody wants this result.
    pub(crate) cancelled: bool,
    /// Processes killed, on a timeout or a drop, that had left the hook's process group.
    pub(crate) escaped: usize,
    /// The pipes were still open when the drain limit ran out (a background process).
    pub(crate) pipes_abandoned: bool,
    /// How the hook was contained, and what that measured.
    pub(crate) containment: Containment,
    pub(crate) usage: Usage,
    /// What the report should say about the containment (a fallback, a limit not
    /// enforced).
    pub(crate) notes: Vec<String>,
    /// What a kill could not reach or make sure of.
    pub(crate) not_killed: Vec<String>,
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
            let err = match sys::read(fd.as_fd(), buf) {
                Ok(0) => {
                    self.fd = None;
                    return Ok(());
                }
                Ok(n) => {
                    let room = cap.saturating_sub(self.out.data.len());
                    self.out.data.extend_from_slice(&buf[..n.min(room)]);
                    self.out.truncated |= n > room;
                    continue;
                }
                Err(err) => err,
            };
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
            let err = match sys::write(fd.as_fd(), self.data) {
                Ok(n) => {
                    self.data = &self.data[n..];
                    continue;
                }
                Err(err) => err,
            };
            match err.kind() {
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
    old: sys::SigMask,
}

impl SigpipeGuard {
    fn new() -> Self {
        SigpipeGuard {
            old: sys::block_sigpipe(),
        }
    }

    fn consume_pending(&self) {
        sys::take_pending_sigpipe();
    }
}

impl Drop for SigpipeGuard {
    fn drop(&mut self) {
        sys::set_thread_sigmask(&self.old);
    }
}

fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<()> {
    let ms = timeout.map_or(-1, |t| t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32);
    match sys::poll(fds, ms) {
        Err(err) if err.kind() != io::ErrorKind::Interrupted => Err(err),
        _ => Ok(()),
    }
}

/// Supervises a spawned hook until it has exited and its pipes are drained (or the drain
/// limit ran out). When one of `cancel` (read ends of pipes whose write ends the caller's
/// future, or a `Cancel`, holds) hangs up, the hook and everything it started are killed
/// and reaped and the run ends at once. On an error return (or a panic), dropping the
/// child does that.
pub(crate) fn supervise(spawned: Spawned, input: &[u8], limits: Limits, cancel: &[OwnedFd]) -> io::Result<Captured> {
    let Spawned {
        mut child,
        stdin,
        stdout,
        stderr,
        notes,
    } = spawned;
    let start = Instant::now();
    let deadline = limits.timeout.map(|t| start + t);
    let _sigpipe = stdin.is_some().then(SigpipeGuard::new);

    let mut writer = Writer {
        fd: stdin,
        data: input,
        broke: false,
    };
    if let Some(fd) = &writer.fd {
        sys::set_nonblocking(fd.as_fd())?;
    }
    if writer.data.is_empty() {
        writer.fd = None;
    }
    let mut readers = [
        Reader {
            fd: Some(stdout),
            out: Stream::default(),
        },
        Reader {
            fd: Some(stderr),
            out: Stream::default(),
        },
    ];
    for r in &readers {
        if let Some(fd) = &r.fd {
            sys::set_nonblocking(fd.as_fd())?;
        }
    }

    let mut buf = vec![0u8; 64 * 1024];
    let mut exit: Option<Exit> = None;
    let mut timed_out = false;
    let mut cancelled = false;
    let mut escaped = 0;
    let mut not_killed = Vec::new();
    let mut drain_until: Option<Instant> = None;
    let mut pipes_abandoned = false;

    loop {
        if exit.is_some() && readers.iter().all(|r| r.fd.is_none()) {
            break;
        }
        let mut fds: [libc::pollfd; 7] = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; 7];
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
        if let (None, Some(fd)) = (exit, child.exit_fd()) {
            fds[3] = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
        }
        for (slot, fd) in fds[4..].iter_mut().zip(cancel) {
            // Nobody writes to them: any event is the hang-up of a dropped or cancelled call.
            *slot = libc::pollfd {
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
        if exit.is_none() && child.exit_fd().is_none() {
            // No pidfd (old kernel): look for the exit every few milliseconds.
            wait = Some(wait.map_or(Duration::from_millis(5), |w| w.min(Duration::from_millis(5))));
        }
        poll(&mut fds, wait)?;

        if fds[4..].iter().any(|fd| fd.revents != 0) {
            cancelled = true;
            if exit.is_none() {
                let killed = child.terminate(limits.kill_grace)?;
                exit = Some(killed.exit);
                escaped = killed.escaped;
                not_killed.extend(killed.not_killed);
            }
            // A hook that already exited keeps its background processes, as after any
            // successful run; only the reading stops.
            break;
        }
        if fds[0].revents != 0 {
            writer.pump();
        }
        for (r, pfd) in readers.iter_mut().zip(&fds[1..3]) {
            if pfd.revents != 0 {
                r.drain(&mut buf, limits.max_output)?;
            }
        }
        if exit.is_none() && (child.exit_fd().is_none() || fds[3].revents != 0) {
            if let Some(e) = child.wait(false)? {
                exit = Some(e);
                // A hook that exited in time is not timed out by its background
                // processes: the drain ends at the deadline at the latest.
                let now = Instant::now();
                let until = now + limits.drain_limit;
                drain_until = Some(deadline.map_or(until, |d| until.min(d.max(now + Duration::from_millis(10)))));
                writer.fd = None;
            }
        }
        let now = Instant::now();
        if exit.is_none() && deadline.is_some_and(|d| now >= d) {
            let killed = child.terminate(limits.kill_grace)?;
            exit = Some(killed.exit);
            escaped = killed.escaped;
            not_killed.extend(killed.not_killed);
            writer.fd = None;
            if killed.finished_first {
                // It ended just as its time ran out, before anything was killed: not a
                // timeout; its background processes live on, as after any run.
                let now = Instant::now();
                drain_until = Some(now + limits.drain_limit.min(Duration::from_millis(10)));
            } else {
                timed_out = true;
                // Everything it started is gone; only the pipes' buffers are left to read.
                drain_until = Some(Instant::now() + limits.drain_limit.min(Duration::from_millis(100)));
            }
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
    let containment = child.containment();
    let usage = child.finish();
    Ok(Captured {
        exit,
        stdout,
        stderr,
        timed_out,
        cancelled,
        escaped,
        pipes_abandoned,
        containment,
        usage,
        notes,
        not_killed,
    })
}
