//! Kills the hooks of a process that died in the middle of calling them. A hook in a
//! cgroup of its own is this process's child and nobody else's: when this process is
//! SIGKILLed (the OOM killer, an operator), nothing would time the hook out, and it would
//! run on untimed (the per-hook helper, its parent in the other containment, kills on
//! hang-up instead). So each hook cgroup's directory is handed, for the length of its
//! call, to a watchdog: a process that does nothing but hold them and, when this
//! process's end of their socket hangs up (it exited or died), kills every one it still
//! holds (`cgroup.kill`, then SIGKILL to each process `cgroup.procs` lists, which
//! `cgroup.kill` can pass by). A call that ends hands its cgroup back first, so a daemon
//! left by a hook that succeeded lives on after this process, as in libvirt.
//!
//! One watchdog per process, forked at the first cgroup call, restarted if it dies. Like
//! the helper it is a fork that never execs (`raw.rs` rules: no allocation, no lock): it
//! closes every descriptor but its socket, keeps every signal blocked and moves to `/`.
//! Being a fork, it keeps the pages this process had then: each one this process writes
//! later is copied once (a few megabytes for `hookctl`'s dispatcher, which forks it
//! early; an embedder that calls hooks after growing large pays up to its size then).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use libc::{c_int, pid_t};

use crate::{raw, sys};

const WATCH: u8 = b'+';
const FORGET: u8 = b'-';
/// A message: its kind, then the call's id.
type Msg = [u8; 9];
/// How many calls one watchdog holds at once; more go unwatched.
const MAX_WATCHED: usize = 512;

struct Watchdog {
    /// The process that started it: a fork of that process must start its own.
    owner: pid_t,
    sock: OwnedFd,
    /// Pins it, to reap it (it is our child) once it is found dead.
    pidfd: Option<OwnedFd>,
}

static WATCHDOG: Mutex<Option<Watchdog>> = Mutex::new(None);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A hook cgroup the watchdog kills if this process dies; dropping it hands it back.
#[derive(Debug)]
pub(crate) struct Watched {
    id: u64,
}

/// Hands `cgroup` (a hook cgroup's directory) to the watchdog, starting it if need be.
/// `Err` says why it could not be.
pub(crate) fn watch(cgroup: BorrowedFd<'_>) -> io::Result<Watched> {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut guard = WATCHDOG.lock().unwrap_or_else(PoisonError::into_inner);
    let me = sys::getpid();
    let mut last = None;
    for _ in 0..2 {
        if guard.as_ref().is_none_or(|w| w.owner != me) {
            *guard = Some(start(me)?);
        }
        let Some(dog) = guard.as_ref() else { break };
        match send(dog.sock.as_fd(), &message(WATCH, id), Some(cgroup)) {
            Ok(()) => return Ok(Watched { id }),
            Err(e) => {
                // It died (killed from outside, or a stray `waitpid(-1)` reaped it): reap
                // it if it is still ours, then one more.
                if let Some(fd) = &dog.pidfd {
                    let _ = sys::waitid(sys::WaitId::PidFd(fd.as_fd()), libc::WEXITED | libc::WNOHANG);
                }
                *guard = None;
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no watchdog")))
}

impl Drop for Watched {
    fn drop(&mut self) {
        let guard = WATCHDOG.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(dog) = guard.as_ref().filter(|w| w.owner == sys::getpid()) {
            // Never waits: a watchdog stopped from outside must not hang a call.
            let _ = send(dog.sock.as_fd(), &message(FORGET, self.id), None);
        }
    }
}

fn message(kind: u8, id: u64) -> Msg {
    let mut m = [0u8; 9];
    m[0] = kind;
    m[1..].copy_from_slice(&id.to_ne_bytes());
    m
}

/// Room for one descriptor's control message, aligned as `cmsghdr`.
#[repr(C, align(8))]
struct ControlBuf([u8; 64]);

/// One message, with `fd` attached if given, without waiting.
fn send(sock: BorrowedFd<'_>, msg: &Msg, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: msg.as_ptr() as *mut libc::c_void,
        iov_len: msg.len(),
    };
    let mut control = ControlBuf([0; 64]);
    // SAFETY: an all-zero msghdr is valid (no name, no control); fields are set below.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if let Some(fd) = fd {
        let raw_fd: c_int = fd.as_raw_fd();
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
        let (space, len) = unsafe {
            (
                libc::CMSG_SPACE(std::mem::size_of::<c_int>() as u32) as usize,
                libc::CMSG_LEN(std::mem::size_of::<c_int>() as u32) as usize,
            )
        };
        hdr.msg_control = control.0.as_mut_ptr().cast();
        hdr.msg_controllen = space as _;
        // SAFETY: `control` is aligned for cmsghdr and `space` (<= 64) bytes long, so the
        // first header and its data fit in it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&hdr);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = len as _;
            std::ptr::copy_nonoverlapping(
                (&raw_fd as *const c_int).cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                std::mem::size_of::<c_int>(),
            );
        }
    }
    loop {
        // SAFETY: `hdr` points at live locals (`iov`, `msg`, `control`) for the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &hdr, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn start(owner: pid_t) -> io::Result<Watchdog> {
    let (mine, theirs) = sys::seqpacket_pair()?;
    // It starts with every signal blocked: none of our handlers runs in it, and a Ctrl-C
    // meant for this process leaves it to do its work.
    let mask = raw::set_signal_mask(!0);
    // SAFETY: the child runs `watchdog_main` only, which allocates nothing, takes no lock
    // and exits without returning (see `raw.rs`).
    let forked = unsafe { sys::fork() };
    if let Ok(0) = forked {
        watchdog_main(theirs.as_raw_fd());
    }
    raw::set_signal_mask(mask);
    let pid = forked?;
    drop(theirs);
    Ok(Watchdog {
        owner,
        sock: mine,
        // Our child, not reaped: its pid is its own.
        pidfd: sys::pidfd_open(pid).ok(),
    })
}

/// The watchdog's whole life. Never returns.
fn watchdog_main(sock: c_int) -> ! {
    if raw::close_from_3_but(&[sock]).is_err() || raw::reset_signal_actions().is_err() {
        raw::exit_now(1);
    }
    // SAFETY: NUL-terminated literals; chdir and prctl read them only.
    unsafe {
        libc::chdir(c"/".as_ptr());
        libc::prctl(libc::PR_SET_NAME, c"hooks-watchdog".as_ptr(), 0, 0, 0);
    }
    let mut held = [(0u64, -1 as c_int); MAX_WATCHED];
    loop {
        let mut msg: Msg = [0; 9];
        let mut fd = -1;
        let n = receive(sock, &mut msg, &mut fd);
        if n <= 0 {
            // This process's end hung up: it exited or died. Every call still held was
            // cut off in the middle.
            for &(_, cgroup) in held.iter().filter(|(_, f)| *f >= 0) {
                kill_cgroup(cgroup);
            }
            raw::exit_now(0);
        }
        let id = u64::from_ne_bytes([msg[1], msg[2], msg[3], msg[4], msg[5], msg[6], msg[7], msg[8]]);
        match msg[0] {
            WATCH if fd >= 0 => match held.iter_mut().find(|(_, f)| *f < 0) {
                Some(slot) => *slot = (id, fd),
                None => raw::close(fd),
            },
            FORGET => {
                if let Some(slot) = held.iter_mut().find(|(i, f)| *i == id && *f >= 0) {
                    raw::close(slot.1);
                    *slot = (0, -1);
                }
            }
            _ if fd >= 0 => raw::close(fd),
            _ => {}
        }
    }
}

/// Kills everything in the cgroup whose directory is open at `cgroup`: `cgroup.kill`,
/// then each process it lists, for up to a second, until it lists none.
fn kill_cgroup(cgroup: c_int) {
    if let Ok(kill_file) = raw::openat(cgroup, c"cgroup.kill", libc::O_WRONLY | libc::O_CLOEXEC) {
        let _ = raw::write_all(kill_file, b"1");
        raw::close(kill_file);
    }
    let until = raw::now_millis() + 1000;
    while raw::now_millis() < until {
        // Pinned a batch at a time, then checked against one more reading of the list:
        // a pid that ended and was handed out again meanwhile is in another cgroup, and
        // is never signalled.
        let mut pinned = [(0 as pid_t, -1 as c_int); 256];
        let mut listed = 0;
        for_each_member(cgroup, |pid| {
            listed += 1;
            if let Some(slot) = pinned.get_mut(listed - 1) {
                *slot = (pid, raw::pidfd_open(pid).unwrap_or(-1));
            }
        });
        if listed == 0 {
            return;
        }
        for_each_member(cgroup, |pid| {
            if let Some(&(_, fd)) = pinned.iter().find(|&&(p, fd)| p == pid && fd >= 0) {
                let _ = raw::pidfd_kill(fd, libc::SIGKILL);
            }
        });
        for &(_, fd) in pinned.iter().filter(|(_, fd)| *fd >= 0) {
            raw::close(fd);
        }
        // SAFETY: a plain sleep of 1 ms.
        unsafe { libc::usleep(1000) };
    }
}

/// Calls `each` with every pid in the cgroup's `cgroup.procs`.
fn for_each_member(cgroup: c_int, each: impl FnMut(pid_t)) {
    if let Ok(procs) = raw::openat(cgroup, c"cgroup.procs", libc::O_RDONLY | libc::O_CLOEXEC) {
        let _ = raw::for_each_pid_in(procs, each);
        raw::close(procs);
    }
}

/// One message into `msg`, and the descriptor it carried into `fd`: its length, 0 at
/// the end, -1 on an error that is not an interruption.
fn receive(sock: c_int, msg: &mut Msg, fd: &mut c_int) -> isize {
    let mut iov = libc::iovec {
        iov_base: msg.as_mut_ptr().cast(),
        iov_len: msg.len(),
    };
    let mut control = ControlBuf([0; 64]);
    loop {
        // SAFETY: an all-zero msghdr is valid; fields are set below.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = control.0.as_mut_ptr().cast();
        hdr.msg_controllen = control.0.len() as _;
        // SAFETY: `hdr` points at live locals for the call; the kernel writes at most
        // their lengths. MSG_CMSG_CLOEXEC: nothing it might exec inherits them.
        let n = unsafe { libc::recvmsg(sock, &mut hdr, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            if raw::errno() == libc::EINTR {
                continue;
            }
            return -1;
        }
        // SAFETY: the kernel filled `control` with whole headers up to msg_controllen;
        // CMSG_FIRSTHDR/NXTHDR stay inside it.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let mut got: c_int = -1;
                    std::ptr::copy_nonoverlapping(
                        libc::CMSG_DATA(cmsg),
                        (&mut got as *mut c_int).cast::<u8>(),
                        std::mem::size_of::<c_int>(),
                    );
                    if *fd >= 0 {
                        raw::close(*fd);
                    }
                    *fd = got;
                }
                cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
            }
        }
        return n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_kind_and_id() {
        let m = message(FORGET, 0x0102_0304_0506_0708);
        assert_eq!(m[0], FORGET);
        assert_eq!(u64::from_ne_bytes(m[1..].try_into().unwrap()), 0x0102_0304_0506_0708);
    }

    /// Each watch carries its descriptor across; a forget carries none; the end is seen.
    #[test]
    fn descriptors_travel_with_their_messages() {
        let (mine, theirs) = sys::seqpacket_pair().unwrap();
        let (kept_r, kept_w) = sys::pipe().unwrap();
        let (back_r, back_w) = sys::pipe().unwrap();
        let handle = std::thread::spawn(move || {
            let mut msg: Msg = [0; 9];
            let mut fds = Vec::new();
            loop {
                let mut fd = -1;
                let n = receive(theirs.as_raw_fd(), &mut msg, &mut fd);
                if n <= 0 {
                    break;
                }
                fds.push((msg[0], fd));
            }
            fds
        });
        send(mine.as_fd(), &message(WATCH, 1), Some(kept_w.as_fd())).unwrap();
        send(mine.as_fd(), &message(WATCH, 2), Some(back_w.as_fd())).unwrap();
        send(mine.as_fd(), &message(FORGET, 2), None).unwrap();
        drop(mine);
        let got = handle.join().unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!((got[0].0, got[1].0, got[2].0), (WATCH, WATCH, FORGET));
        assert!(got[0].1 >= 0 && got[1].1 >= 0 && got[2].1 < 0);
        for (_, fd) in got.into_iter().filter(|(_, fd)| *fd >= 0) {
            raw::close(fd);
        }
        drop((kept_w, back_w));
        let mut buf = [0u8; 1];
        assert_eq!(sys::read(kept_r.as_fd(), &mut buf).unwrap(), 0);
        assert_eq!(sys::read(back_r.as_fd(), &mut buf).unwrap(), 0);
    }
}
