//! The child's environment exactly as libvirt sets it up: env whitelist, closed fds,
//! reset signals, unchanged cwd, no new session.

use std::fs;
use std::os::fd::AsRawFd;

use conformance::HooksTree;
use virt_hooks_core::events::QemuEvent;
use virt_hooks_exec::ENV_WHITELIST;

fn prepare() -> QemuEvent {
    QemuEvent::Prepare {
        name: "vm1".into(),
        xml: "<domain/>\n".into(),
    }
}

#[test]
fn environment_is_lc_all_c_plus_the_whitelist_in_order() {
    let t = HooksTree::new();
    let out = t.path().join("env");
    // The environment exactly as execve received it (a shell reorders what it passes on).
    t.script(
        "qemu",
        &format!(
            "#!/bin/sh\ncat >/dev/null\ntr '\\0' '\\n' < /proc/$$/environ > '{}'\n",
            out.display()
        ),
    );
    t.registry().fire_blocking(&prepare()).unwrap();
    let seen = fs::read_to_string(out).unwrap();
    let mut expected = vec!["LC_ALL=C".to_owned()];
    for name in ENV_WHITELIST {
        if let Some(v) = std::env::var_os(name) {
            expected.push(format!("{name}={}", v.to_string_lossy()));
        }
    }
    let lines: Vec<_> = seen.lines().collect();
    assert_eq!(lines, expected);
}

#[test]
fn inherited_descriptors_are_closed_even_without_cloexec() {
    let t = HooksTree::new();
    let leak = fs::File::open("/dev/null").unwrap();
    // A high descriptor without FD_CLOEXEC, as C code in an embedding process might leave.
    // SAFETY: F_DUPFD makes a new descriptor, the lowest free one from 77 up, so no
    // descriptor another test (thread) owns is replaced; `leak` is open for the call.
    // F_SETFD then only clears FD_CLOEXEC on that new descriptor, which is this test's.
    let high = unsafe {
        let high = libc::fcntl(leak.as_raw_fd(), libc::F_DUPFD, 77);
        assert!(high >= 77, "F_DUPFD: {}", std::io::Error::last_os_error());
        libc::fcntl(high, libc::F_SETFD, 0);
        high
    };
    let out = t.path().join("fd");
    t.script(
        "qemu",
        &format!(
            "#!/bin/sh\ncat >/dev/null\nif [ -e /proc/$$/fd/{high} ]; then echo leaked; else echo closed; fi > '{}'\n",
            out.display()
        ),
    );
    t.registry().fire_blocking(&prepare()).unwrap();
    // SAFETY: `high` is the descriptor this test made above, owned by nothing else,
    // and closed once, here.
    unsafe { libc::close(high) };
    assert_eq!(fs::read_to_string(out).unwrap(), "closed\n");
}

#[test]
fn signal_dispositions_and_mask_are_reset() {
    let t = HooksTree::new();
    let out = t.path().join("sig");
    // `exec` so that the reader is the hook process itself: dash blocks every signal
    // around its own vfork, so a child reading /proc/$$ can catch that moment.
    t.script(
        "qemu",
        &format!(
            "#!/bin/sh\ncat >/dev/null\nexec cat /proc/self/status > '{}'\n",
            out.display()
        ),
    );
    // Ignore SIGUSR1 process-wide and block SIGUSR2 in this thread, as a daemon might;
    // the spawn must undo both in the child.
    // SAFETY: SIG_IGN installs no handler code, so no signal can run anything unsound;
    // `set` is a live local (all zeroes is a valid sigset_t, then emptied and filled by
    // sigemptyset/sigaddset), read by pthread_sigmask, which changes only this thread's
    // mask and is not asked for the old one (null).
    unsafe {
        libc::signal(libc::SIGUSR1, libc::SIG_IGN);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    t.registry().fire_blocking(&prepare()).unwrap();
    let text = fs::read_to_string(out).unwrap();
    let mask = |name: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {text}"));
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0, "{text}");
    assert_eq!(
        mask("SigIgn:") & (1 << (libc::SIGUSR1 - 1)),
        0,
        "SIGUSR1 still ignored: {text}"
    );
}

#[test]
fn cwd_session_and_uid_are_the_callers() {
    let t = HooksTree::new();
    let out = t.path().join("proc");
    t.script(
        "qemu",
        &format!(
            "#!/bin/sh\ncat >/dev/null\n{{ pwd; id -u; ps -o sid= -p $$; }} > '{}'\n",
            out.display()
        ),
    );
    t.registry().fire_blocking(&prepare()).unwrap();
    let text = fs::read_to_string(out).unwrap();
    let lines: Vec<_> = text.lines().map(str::trim).collect();
    assert_eq!(lines[0], std::env::current_dir().unwrap().to_str().unwrap());
    // SAFETY: getuid and getsid(0) take no pointers and touch no memory of ours.
    let (uid, sid) = unsafe { (libc::getuid(), libc::getsid(0)) };
    assert_eq!(lines[1], uid.to_string());
    if lines.len() > 2 {
        assert_eq!(lines[2], sid.to_string(), "no setsid");
    }
}
