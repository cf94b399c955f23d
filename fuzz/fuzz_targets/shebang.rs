//! `#!` lines: a hook file's first 256 bytes split as the kernel splits them, and the
//! `env` command line on them (`-S` strings split as GNU env splits them).
//!
//! Properties: nothing panics; the split is the kernel's: `load_script` of
//! `fs/binfmt_script.c` (Linux 5.1+) is ported below line by line, and both must agree on
//! every input; a `-S` string that splits, re-quoted word by word, splits to the same
//! words; what env runs is worked out or refused, never guessed.
#![no_main]

use virt_hooks_exec::fuzzing::{env_runs, parse_shebang, split_string, Shebang, BINPRM_BUF_SIZE};
use libfuzzer_sys::fuzz_target;

/// The kernel's `load_script` up to the strings it passes on: `(i_name, i_arg)` as C
/// strings, or `None` for `-ENOEXEC`.
fn kernel_load_script(buf: &[u8; BINPRM_BUF_SIZE]) -> Option<Shebang> {
    let spacetab = |c: u8| c == b' ' || c == b'\t';
    // Both helpers take an inclusive range, as in C (`first <= last`).
    let next_non_spacetab = |first: usize, last: usize| (first..=last).find(|&i| !spacetab(buf[i]));
    let next_terminator = |first: usize, last: usize| (first..=last).find(|&i| spacetab(buf[i]) || buf[i] == 0);
    if buf[0] != b'#' || buf[1] != b'!' {
        return None;
    }
    let buf_end = BINPRM_BUF_SIZE - 1;
    // strnchr(bprm->buf, sizeof(bprm->buf), '\n'): stops at a NUL.
    let mut i_end = buf.iter().take_while(|&&c| c != 0).position(|&c| c == b'\n');
    if i_end.is_none() {
        let first = next_non_spacetab(2, buf_end)?;
        next_terminator(first, buf_end)?;
        i_end = Some(buf_end);
    }
    let mut i_end = i_end?;
    while spacetab(buf[i_end - 1]) {
        i_end -= 1;
    }
    let i_name = next_non_spacetab(2, i_end)?;
    if i_name == i_end {
        return None;
    }
    let i_sep = next_terminator(i_name, i_end);
    let i_arg = match i_sep {
        Some(sep) if buf[sep] != 0 => next_non_spacetab(sep, i_end),
        _ => None,
    };
    // `*i_end = '\0'`, and `*i_sep = '\0'` when there is an argument: the strings are
    // C strings within those bounds.
    let c_string = |from: usize, to: usize| {
        let s = &buf[from..to];
        s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())].to_vec()
    };
    // With an argument the name ends at i_sep; without, at i_end or a NUL/blank (which
    // ends the C string: a blank cannot be there without a separator found).
    let name_end = match (i_arg, i_sep) {
        (Some(_), Some(sep)) => sep,
        _ => i_end,
    };
    let interpreter = c_string(i_name, name_end);
    let argument = i_arg.map(|arg| c_string(arg, i_end));
    Some(Shebang { interpreter, argument })
}

/// `words` written as one `-S` string: each single-quoted, `\` and `'` escaped.
fn quoted(words: &[Vec<u8>]) -> Vec<u8> {
    let mut text = Vec::new();
    for word in words {
        text.push(b'\'');
        for &b in word {
            if b == b'\\' || b == b'\'' {
                text.push(b'\\');
            }
            text.push(b);
        }
        text.extend_from_slice(b"' ");
    }
    text
}

fn split_round_trip(text: &[u8]) {
    let path = Some(&b"/usr/local/bin:/usr/bin:/bin"[..]);
    if let Ok(words) = split_string(text, path) {
        let again = split_string(&quoted(&words), path);
        assert_eq!(again.as_ref(), Ok(&words), "{:?}", String::from_utf8_lossy(text));
    }
}

fuzz_target!(|data: &[u8]| {
    let mut head = [0u8; BINPRM_BUF_SIZE];
    let n = data.len().min(BINPRM_BUF_SIZE);
    head[..n].copy_from_slice(&data[..n]);
    let ours = parse_shebang(&head);
    let kernel = kernel_load_script(&head);
    assert_eq!(
        ours,
        kernel,
        "the kernel splits {:?} otherwise",
        String::from_utf8_lossy(&head)
    );
    let Some(line) = ours else { return };
    // Possibly empty (`#!\0`: the kernel then fails with ENOENT), never with a blank.
    assert!(
        !line.interpreter.iter().any(|&b| matches!(b, b' ' | b'\t' | 0)),
        "{line:?}"
    );
    if line.interpreter.rsplit(|&b| b == b'/').next() == Some(b"env") {
        let run = env_runs(
            line.argument.as_deref(),
            b"/etc/libvirt/hooks/qemu",
            Some(b"/usr/bin:/bin"),
        );
        if let Ok(run) = run {
            assert!(run.command.is_some(), "env would run the script itself, at least");
        }
    }
    if let Some(argument) = &line.argument {
        split_round_trip(argument);
    }
    if data.len() > BINPRM_BUF_SIZE {
        split_round_trip(&data[BINPRM_BUF_SIZE..]);
    }
});
