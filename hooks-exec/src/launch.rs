//! Starts the hook's process with libvirt's child setup: every signal back to its default
//! action and an empty signal mask, optionally a new process group, stdin on a pipe or
//! `/dev/null`, stdout and stderr on pipes, every other descriptor closed; then `execve`.
//!
//! The child is made as `posix_spawn` makes it, `clone(CLONE_VM | CLONE_VFORK)` on a
//! stack of its own: no copy of the caller's page tables, and the caller's thread waits
//! until the child has exec'd (or failed to). Into a cgroup, `clone3` with
//! `CLONE_INTO_CGROUP` puts it there as it is created, so it never runs a single
//! instruction elsewhere and no fork can slip out before a move. (Moving a running child
//! by writing `cgroup.procs` would also cost an RCU grace period, ~10 ms, per hook.) The
//! C library has no wrapper for `clone3` with a stack, so on x86-64 a few lines of
//! assembly make the call; elsewhere the child is a plain copy (`clone3` without
//! `CLONE_VM`), which costs a copy of the page tables.
//!
//! The child shares the caller's memory until it execs. It runs [`child_entry`] only,
//! which reads the [`Plan`] and writes nothing but its own stack and a pipe: see
//! `raw.rs` for the rules it keeps. A failure is sent on that pipe (close-on-exec, so an
//! exec that succeeds closes it) as the step and the errno, and the child exits 127.
//!
//! Nothing here allocates either: the per-hook helper calls [`launch`] after a fork.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use libc::{c_int, c_void, pid_t};

use crate::raw;
use crate::sys::CStrArray;

/// What the child is to be.
#[derive(Clone, Copy)]
pub(crate) struct Plan<'a> {
    pub(crate) program: &'a CStr,
    pub(crate) argv: &'a CStrArray<'a>,
    pub(crate) envp: &'a CStrArray<'a>,
    /// Its stdin: this pipe's read end, or `/dev/null`.
    pub(crate) stdin: Option<RawFd>,
    pub(crate) stdout: RawFd,
    pub(crate) stderr: RawFd,
    /// Leads a process group of its own.
    pub(crate) new_group: bool,
    /// A `SOCK_SEQPACKET` socket on which the child, set up and about to exec, sends
    /// `announce.1` with its pid in the second word: before any of the hook's code runs.
    pub(crate) announce: Option<(RawFd, [u8; 16])>,
}

/// The steps of the child's setup, as sent back with a failure's errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Step {
    Signals = 1,
    Group = 2,
    Stdio = 3,
    Descriptors = 4,
    Exec = 5,
}

impl Step {
    fn from_u32(n: u32) -> Option<Step> {
        [Step::Signals, Step::Group, Step::Stdio, Step::Descriptors, Step::Exec]
            .into_iter()
            .find(|s| *s as u32 == n)
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Step::Signals => "resetting its signal actions",
            Step::Group => "making its process group",
            Step::Stdio => "setting up its stdin, stdout and stderr",
            Step::Descriptors => "closing the caller's descriptors",
            Step::Exec => "exec",
        }
    }
}

/// Why no hook process is running.
#[derive(Debug)]
pub(crate) enum LaunchError {
    /// The child failed at this step with this errno (and was reaped). At [`Step::Exec`]
    /// libvirt's exit status is 127 for ENOENT and 126 otherwise.
    Child(Step, i32),
    /// The process could not be made (the errno of clone, pipe or mmap). Into a cgroup,
    /// this is also how a cgroup that refuses it answers: the caller may try without.
    Clone(i32),
}

/// A started child, not reaped yet.
#[derive(Debug)]
pub(crate) struct Launched {
    pub(crate) pid: pid_t,
    /// From `CLONE_PIDFD` (into a cgroup only).
    pub(crate) pidfd: Option<OwnedFd>,
}

/// Starts `plan` as a new process, in the cgroup `cgroup` (a descriptor of its directory)
/// if given. Allocates nothing.
pub(crate) fn launch(plan: &Plan<'_>, cgroup: Option<BorrowedFd<'_>>) -> Result<Launched, LaunchError> {
    let (report_r, report_w) = match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) {
        Ok(ends) => ends,
        Err(e) => return Err(LaunchError::Clone(e.raw_os_error())),
    };
    let ctx = Ctx {
        plan,
        report: report_w.as_raw_fd(),
    };
    let arg = &ctx as *const Ctx<'_> as *mut c_void;
    // The child starts with every signal blocked, so that no handler of the caller's
    // runs in it (on the caller's memory) before it has reset them all.
    let mask = raw::set_signal_mask(!0);
    let started = match cgroup {
        None => ChildStack::new().and_then(|stack| {
            // SAFETY: `child_entry` keeps the rules of a CLONE_VM child (see `raw.rs`);
            // `ctx` and `stack` outlive the call, which with CLONE_VFORK returns only once
            // the child has exec'd or exited; the stack is the child's alone.
            unsafe { clone_vfork(&stack, arg) }.map(|pid| Launched { pid, pidfd: None })
        }),
        Some(dir) => clone_into(dir, arg),
    };
    raw::set_signal_mask(mask);
    let launched = started.map_err(LaunchError::Clone)?;
    drop(report_w);
    let mut msg = [0u8; 8];
    match raw::read_all(report_r.as_raw_fd(), &mut msg) {
        // End of file: the exec closed the child's end.
        Ok(0) => Ok(launched),
        Ok(8) => {
            // It has exited already (CLONE_VFORK): reap it.
            let mut status = 0;
            // SAFETY: our own child, not reaped yet; `status` is a live local.
            while unsafe { libc::waitpid(launched.pid, &mut status, libc::__WALL) } < 0 && raw::errno() == libc::EINTR {
            }
            let [a, b, c, d, e, f, g, h] = msg;
            let step = Step::from_u32(u32::from_ne_bytes([a, b, c, d])).unwrap_or(Step::Exec);
            Err(LaunchError::Child(step, i32::from_ne_bytes([e, f, g, h])))
        }
        // A short report cannot happen (8 bytes are written at once on a pipe).
        Ok(_) => Err(LaunchError::Clone(libc::EIO)),
        Err(e) => Err(LaunchError::Clone(e)),
    }
}

/// What the child reads: the plan, and where to report a failure.
struct Ctx<'a> {
    plan: &'a Plan<'a>,
    report: RawFd,
}

/// The child's whole life: set up, exec, or report the step that failed and exit.
extern "C" fn child_entry(arg: *mut c_void) -> c_int {
    // SAFETY: `launch` passes a pointer to its `Ctx`, alive until the clone returns in the
    // parent, which is after this process has exec'd or exited.
    let ctx = unsafe { &*(arg as *const Ctx<'_>) };
    let (step, errno) = match set_up_and_exec(ctx) {
        Ok(never) => match never {},
        Err(failed) => failed,
    };
    let mut msg = [0u8; 8];
    let (a, b) = msg.split_at_mut(4);
    a.copy_from_slice(&(step as u32).to_ne_bytes());
    b.copy_from_slice(&errno.to_ne_bytes());
    let _ = raw::write_all(ctx.report, &msg);
    raw::exit_now(127)
}

enum Never {}

fn set_up_and_exec(ctx: &Ctx<'_>) -> Result<Never, (Step, i32)> {
    let plan = ctx.plan;
    // Descriptors first: until they are closed, this process holds copies of every file
    // the caller has open, and one that another thread is writing (a hook script being
    // installed) cannot be executed by anyone (ETXTBSY).
    match plan.stdin {
        Some(fd) => raw::dup_onto(fd, 0),
        None => raw::open(c"/dev/null", libc::O_RDONLY).and_then(|fd| {
            if fd == 0 {
                return Ok(());
            }
            let moved = raw::dup_onto(fd, 0);
            raw::close(fd);
            moved
        }),
    }
    .map_err(|e| (Step::Stdio, e))?;
    raw::dup_onto(plan.stdout, 1).map_err(|e| (Step::Stdio, e))?;
    raw::dup_onto(plan.stderr, 2).map_err(|e| (Step::Stdio, e))?;
    // Whatever the caller left open without O_CLOEXEC; the report pipe and the announce
    // socket close at exec.
    let announce = plan.announce.map_or(-1, |(fd, _)| fd);
    raw::close_from_3_but(&[ctx.report, announce]).map_err(|e| (Step::Descriptors, e))?;
    raw::reset_signal_actions().map_err(|e| (Step::Signals, e))?;
    if plan.new_group {
        raw::new_process_group().map_err(|e| (Step::Group, e))?;
    }
    if let Some((fd, mut msg)) = plan.announce {
        // SAFETY: getpid takes nothing and cannot fail.
        let me = unsafe { libc::getpid() };
        if let Some(word) = msg.get_mut(4..8) {
            word.copy_from_slice(&me.to_ne_bytes());
        }
        // SAFETY: the kernel reads the 16 bytes of `msg`.
        unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL) };
    }
    raw::set_signal_mask(0);
    // SAFETY: `program` is NUL-terminated; `argv` and `envp` are null-terminated arrays of
    // NUL-terminated strings, all alive until the parent resumes (after this exec).
    unsafe { libc::execve(plan.program.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr()) };
    Err((Step::Exec, raw::errno()))
}

/// A stack for a `CLONE_VM` child: an anonymous mapping, its lowest page a guard.
struct ChildStack {
    base: *mut c_void,
    len: usize,
}

/// Plenty for `child_entry`, which calls nothing deep; only touched pages cost memory.
const STACK_SIZE: usize = 256 << 10;

impl ChildStack {
    fn new() -> Result<ChildStack, i32> {
        // SAFETY: sysconf reads a constant.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .unwrap_or(4096)
            .max(4096);
        let len = STACK_SIZE + page;
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(raw::errno());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the first page of the mapping just made, which nothing uses.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(raw::errno());
        }
        Ok(stack)
    }

    /// The top: stacks grow down. Page-aligned, so 16-byte aligned as every ABI wants.
    fn top(&self) -> *mut c_void {
        self.base.wrapping_byte_add(self.len)
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; the child that used it has
        // exec'd or exited (CLONE_VFORK), so nothing runs on it.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// `clone(CLONE_VM | CLONE_VFORK)` through the C library, the child running
/// [`child_entry`]`(arg)` on `stack`: its pid once it has exec'd or exited.
///
/// # Safety
/// `arg` must point to a `Ctx` alive until this returns.
unsafe fn clone_vfork(stack: &ChildStack, arg: *mut c_void) -> Result<pid_t, i32> {
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    // SAFETY: glibc's clone switches the child to `stack` and calls `child_entry(arg)`,
    // which never returns; the caller keeps `arg` alive (see above).
    let pid = unsafe { libc::clone(child_entry, stack.top(), flags, arg) };
    if pid < 0 {
        return Err(raw::errno());
    }
    Ok(pid)
}

/// The kernel's `struct clone_args` up to `cgroup` (version 2, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Into the cgroup whose directory is `dir`: `clone3` with `CLONE_INTO_CGROUP` (and
/// `CLONE_PIDFD`), the child running `child_entry(arg)`.
fn clone_into(dir: BorrowedFd<'_>, arg: *mut c_void) -> Result<Launched, i32> {
    let mut pidfd: c_int = -1;
    let mut args = CloneArgs {
        flags: libc::CLONE_VFORK as u64 | CLONE_PIDFD | CLONE_INTO_CGROUP,
        pidfd: &mut pidfd as *mut c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    #[cfg(target_arch = "x86_64")]
    let pid = {
        let stack = ChildStack::new()?;
        args.flags |= libc::CLONE_VM as u64;
        args.stack = stack.base as u64;
        args.stack_size = stack.len as u64;
        // SAFETY: a CLONE_VM | CLONE_VFORK child on a stack of its own, running
        // `child_entry(arg)` (see `clone_vfork`); `args`, `pidfd`, `stack` and what `arg`
        // points to outlive the call, which returns once the child has exec'd or exited.
        unsafe { clone3_on_stack(&mut args, arg) }
    };
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: as `clone3_copy` requires: `args` is a valid clone_args.
    let pid = unsafe { clone3_copy(&mut args, arg) };
    let pid = pid?;
    // SAFETY: the kernel stored a new descriptor it made for us (CLONE_PIDFD).
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
    Ok(Launched { pid, pidfd })
}

/// `clone3` as a plain copy of this process (no `CLONE_VM`), the child calling
/// `child_entry(arg)` on its copy of this stack, as after `fork`. Used where there is no
/// assembly for [`clone3_on_stack`], and by the tests everywhere.
///
/// # Safety
/// `args` must be a valid `clone_args` without `CLONE_VM` and without a stack, and `arg`
/// must point to a `Ctx`.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
unsafe fn clone3_copy(args: &mut CloneArgs, arg: *mut c_void) -> Result<pid_t, i32> {
    // SAFETY: the kernel reads `args` (and writes the pidfd where it points); the child
    // has a copy of all of this process's memory, so `arg` is valid there too.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, args as *mut CloneArgs, size_of::<CloneArgs>()) };
    if ret == 0 {
        child_entry(arg);
        raw::exit_now(127);
    }
    if ret < 0 {
        return Err(raw::errno());
    }
    Ok(ret as pid_t)
}

/// `clone3(args)` where the child gets a stack of its own (`args.stack`): on it, the
/// child calls `child_entry(arg)`, which never returns. The parent gets the child's pid.
///
/// # Safety
/// `args` must be a valid `clone_args` with a stack; with `CLONE_VM`, `arg` and what it
/// points to must stay alive until the child has exec'd (`CLONE_VFORK` ensures it).
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_on_stack(args: &mut CloneArgs, arg: *mut c_void) -> Result<pid_t, i32> {
    let ret: i64;
    let entry: extern "C" fn(*mut c_void) -> c_int = child_entry;
    // SAFETY: the syscall clobbers rax (its result), rcx and r11 only; r12 and r13 keep
    // `entry` and `arg` across it. In the parent (rax != 0) the block falls through. In
    // the child (rax == 0) the kernel has set rsp to the top of the new stack (16-byte
    // aligned, so the call leaves it as the ABI wants): it clears the frame pointer,
    // calls `entry(arg)`, which never returns (ud2 otherwise), and so never runs the
    // code after this block. This is glibc's own clone3.S, minus the error path.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r13",
            "call r12",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *mut CloneArgs,
            in("rsi") size_of::<CloneArgs>(),
            in("r12") entry,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        return Err(-ret as i32);
    }
    Ok(ret as pid_t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn strings(v: &[&str]) -> Vec<CString> {
        v.iter().map(|s| CString::new(*s).unwrap()).collect()
    }

    /// Runs `sh -c script` through `start` and returns its stdout and exit status.
    fn run(script: &str, start: impl FnOnce(&Plan<'_>) -> Result<pid_t, LaunchError>) -> (String, i32) {
        let argv = strings(&["/bin/sh", "-c", script]);
        let envp = strings(&["LC_ALL=C"]);
        let (argv, envp) = (CStrArray::new(&argv), CStrArray::new(&envp));
        let (out_r, out_w) = crate::sys::pipe_above_stdio().unwrap();
        let plan = Plan {
            program: c"/bin/sh",
            argv: &argv,
            envp: &envp,
            stdin: None,
            stdout: out_w.as_raw_fd(),
            stderr: out_w.as_raw_fd(),
            new_group: true,
            announce: None,
        };
        let pid = start(&plan).unwrap_or_else(|e| panic!("{e:?}"));
        drop(out_w);
        let mut out = Vec::new();
        let mut file = std::fs::File::from(out_r);
        std::io::Read::read_to_end(&mut file, &mut out).unwrap();
        let status = crate::sys::waitpid(pid, 0).unwrap().unwrap();
        (String::from_utf8(out).unwrap(), libc::WEXITSTATUS(status))
    }

    const SETUP: &str = "echo fds $(ls /proc/self/fd | tr '\\n' ' ')\n\
        echo mask $(grep SigBlk /proc/self/status | cut -f2)\n\
        echo ign $(grep SigIgn /proc/self/status | cut -f2)\n\
        readlink /proc/self/fd/0\n";

    #[test]
    fn the_child_is_set_up_as_libvirt_sets_it_up() {
        // The caller ignores SIGPIPE, as many do: the hook must not inherit that.
        // SAFETY: sets a signal to be ignored; no handler code is involved.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        // A descriptor left open without O_CLOEXEC must not reach the hook.
        let leak = std::fs::File::open("/dev/null").unwrap();
        let leak = rustix::io::dup(&leak).unwrap();
        let (out, code) = run(SETUP, |plan| launch(plan, None).map(|l| l.pid));
        drop(leak);
        assert_eq!(code, 0, "{out}");
        let lines: Vec<&str> = out.lines().collect();
        // 0, 1, 2 and the one `ls` opens.
        assert_eq!(lines[0], "fds 0 1 2 3", "{out}");
        assert_eq!(lines[1], "mask 0000000000000000", "{out}");
        assert_eq!(lines[2], "ign 0000000000000000", "{out}");
        assert_eq!(lines[3], "/dev/null", "{out}");
    }

    #[test]
    fn a_failed_exec_reports_its_errno() {
        let argv = strings(&["/nonexistent"]);
        let argv = CStrArray::new(&argv);
        let (_r, w) = crate::sys::pipe_above_stdio().unwrap();
        let plan = Plan {
            program: c"/nonexistent/hook",
            argv: &argv,
            envp: &argv,
            stdin: None,
            stdout: w.as_raw_fd(),
            stderr: w.as_raw_fd(),
            new_group: false,
            announce: None,
        };
        match launch(&plan, None) {
            Err(LaunchError::Child(Step::Exec, libc::ENOENT)) => {}
            other => panic!("{other:?}"),
        }
    }

    /// The copying `clone3` (what other architectures use) sets the child up the same way.
    #[test]
    fn the_copying_clone3_sets_the_child_up_the_same_way() {
        let (out, code) = run(SETUP, |plan| {
            let (report_r, report_w) = crate::sys::pipe().unwrap();
            let ctx = Ctx {
                plan,
                report: report_w.as_raw_fd(),
            };
            let mut args = CloneArgs {
                flags: libc::CLONE_VFORK as u64,
                exit_signal: libc::SIGCHLD as u64,
                ..CloneArgs::default()
            };
            // SAFETY: a valid clone_args without CLONE_VM or a stack; `ctx` is a Ctx.
            let pid = unsafe { clone3_copy(&mut args, &ctx as *const Ctx<'_> as *mut c_void) };
            drop(report_w);
            let mut msg = [0u8; 8];
            assert_eq!(raw::read_all(report_r.as_raw_fd(), &mut msg), Ok(0));
            pid.map_err(LaunchError::Clone)
        });
        assert_eq!(code, 0, "{out}");
        assert!(
            out.starts_with("fds 0 1 2 3\nmask 0000000000000000\nign 0000000000000000\n/dev/null\n"),
            "{out}"
        );
    }
}
