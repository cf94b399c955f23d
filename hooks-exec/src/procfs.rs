//! What `/proc` says about a process: its parent, process group, start time and whether
//! it is a zombie. The parsing allocates nothing, so the per-hook helper uses it too.

use std::ffi::CStr;

use crate::raw;

/// One line of `/proc/<pid>/stat`, the fields we need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proc {
    pub(crate) pid: libc::pid_t,
    pub(crate) ppid: libc::pid_t,
    pub(crate) pgid: libc::pid_t,
    /// Start time in clock ticks after boot: with the pid, who it is.
    pub(crate) start: u64,
    /// Its leader thread is dead (not reaped yet); see [`Proc::alive`].
    pub(crate) zombie: bool,
    /// Its threads, the dead leader included until the last one goes.
    pub(crate) threads: u64,
}

impl Proc {
    /// Whether any of its threads still runs: a leader thread that called `exit` (not
    /// `exit_group`) shows `Z` while the others go on, and it is alive for every purpose
    /// here (it forks, and a kill of the whole cgroup can pass it by).
    pub(crate) fn alive(&self) -> bool {
        !self.zombie || self.threads > 1
    }
}

pub(crate) fn parse_stat(pid: libc::pid_t, stat: &[u8]) -> Option<Proc> {
    // The command name is in parentheses and may itself contain any byte but NUL.
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let zombie = matches!(fields.next()?, "Z" | "X");
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    // Fields 6 to 19, num_threads (20), 21, then starttime (22).
    let threads = fields.nth(14)?.parse().ok()?;
    let start = fields.nth(1)?.parse().ok()?;
    Some(Proc {
        pid,
        ppid,
        pgid,
        start,
        zombie,
        threads,
    })
}

/// `/proc/<pid>/stat`, without allocating.
pub(crate) fn read_stat(pid: libc::pid_t) -> Option<Proc> {
    let mut path = [0u8; 32];
    let path = raw::proc_path(&mut path, b"/proc/", u64::try_from(pid).ok()?, b"/stat")?;
    read_stat_at(pid, path)
}

fn read_stat_at(pid: libc::pid_t, path: &CStr) -> Option<Proc> {
    let mut buf = [0u8; 1024];
    let len = raw::read_file(path, &mut buf).ok()?;
    parse_stat(pid, buf.get(..len)?)
}

/// The pids in a `children` file or `cgroup.procs`: whitespace-separated decimals. A
/// number cut off at the end of a full buffer is skipped.
pub(crate) fn for_each_pid(text: &[u8], full: bool, mut each: impl FnMut(libc::pid_t)) {
    let mut words = text.split(|b| b.is_ascii_whitespace()).peekable();
    while let Some(word) = words.next() {
        if full && words.peek().is_none() {
            break;
        }
        if let Some(pid) = raw::parse_decimal(word).and_then(|n| libc::pid_t::try_from(n).ok()) {
            each(pid);
        }
    }
}

/// Whether a `/proc/<pid>/status` text says the process ignores `signal` (its `SigIgn`
/// mask, in hex). Unreadable: no.
pub(crate) fn ignores_signal(status: &str, signal: libc::c_int) -> bool {
    let Some(mask) = status.lines().find_map(|l| l.strip_prefix("SigIgn:")) else {
        return false;
    };
    let bit = u32::try_from(signal - 1).ok().and_then(|b| 1u64.checked_shl(b));
    u64::from_str_radix(mask.trim(), 16)
        .ok()
        .zip(bit)
        .is_some_and(|(mask, bit)| mask & bit != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_which_signals_are_ignored() {
        let status = "Name:\tx\nSigBlk:\t0000000000010000\nSigIgn:\t0000000000011000\n";
        assert!(ignores_signal(status, libc::SIGCHLD));
        assert!(ignores_signal(status, libc::SIGPIPE));
        assert!(!ignores_signal(status, libc::SIGTERM));
        assert!(!ignores_signal("SigIgn:\tnot hex\n", libc::SIGCHLD));
        assert!(!ignores_signal("", libc::SIGCHLD));
    }

    #[test]
    fn stat_with_a_hostile_command_name() {
        let line = b"4242 (a) S 1 2 (b) R 77 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1234 56\n";
        assert_eq!(
            parse_stat(4242, line),
            Some(Proc {
                pid: 4242,
                ppid: 77,
                pgid: 4242,
                start: 987654,
                zombie: false,
                threads: 1,
            })
        );
        assert_eq!(parse_stat(1, b"1 (init) S 0"), None);
    }

    #[test]
    fn a_dead_leader_with_live_threads_is_alive() {
        let line =
            |state: &str, threads: u32| format!("9 (x) {state} 1 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 {threads} 0 5 0 0\n");
        assert!(parse_stat(9, line("Z", 3).as_bytes()).unwrap().alive());
        assert!(!parse_stat(9, line("Z", 1).as_bytes()).unwrap().alive());
        assert!(parse_stat(9, line("S", 1).as_bytes()).unwrap().alive());
    }

    #[test]
    fn reads_this_process() {
        let (me, parent) = (
            std::process::id() as libc::pid_t,
            std::os::unix::process::parent_id() as libc::pid_t,
        );
        let p = read_stat(me).unwrap();
        assert_eq!(p.ppid, parent);
        assert!(!p.zombie);
    }

    #[test]
    fn pid_lists_skip_a_number_cut_off() {
        let mut seen = Vec::new();
        for_each_pid(b"12 345 6", false, |p| seen.push(p));
        assert_eq!(seen, [12, 345, 6]);
        seen.clear();
        for_each_pid(b"12 345 6", true, |p| seen.push(p));
        assert_eq!(seen, [12, 345]);
        seen.clear();
        for_each_pid(b"\n7 x 99999999999 8\n", false, |p| seen.push(p));
        assert_eq!(seen, [7, 8]);
    }
}
