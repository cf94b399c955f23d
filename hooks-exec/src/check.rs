//! `hookctl check` for exec hooks: would this file run, or would libvirt get 126/127?

use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use virt_hooks_core::error::LoadErrorKind;
use virt_hooks_core::LoadError;

/// Checks that an exec hook would start: it is executable by us, and it is an ELF
/// binary or a `#!` script whose interpreter exists and is executable.
///
/// # Errors
/// A [`LoadError`] saying what is wrong and which exit status libvirt would see.
pub fn check_executable(path: &Path) -> Result<(), LoadError> {
    let fail = |kind: LoadErrorKind| LoadError::new(path, "exec", kind);
    if !is_executable(path) {
        return Err(fail(LoadErrorKind::NotExecutable));
    }
    let head = read_head(path).map_err(|e| fail(LoadErrorKind::Unreadable).with_source(e))?;
    if head.starts_with(b"\x7fELF") {
        return Ok(());
    }
    let line = parse_shebang(&head).ok_or_else(|| fail(LoadErrorKind::NoInterpreterLine))?;
    let interpreter = line.interpreter;
    let missing = !interpreter.exists();
    if missing || !is_executable(&interpreter) {
        return Err(fail(LoadErrorKind::BadInterpreter { interpreter, missing }));
    }
    Ok(())
}

/// How much of a file the kernel reads to find its `#!` line (`BINPRM_BUF_SIZE`).
pub(crate) const BINPRM_BUF_SIZE: usize = 256;

/// What a `#!` line names, split as the kernel splits it (`binfmt_script`): the
/// interpreter is the first word after `#!` (leading blanks skipped), and the rest of
/// the line, without its leading and trailing spaces and tabs, is one optional argument.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Shebang {
    pub(crate) interpreter: std::path::PathBuf,
    pub(crate) argument: Option<std::ffi::OsString>,
}

/// The `#!` line of a file, if the kernel would find one.
pub(crate) fn shebang(path: &Path) -> std::io::Result<Option<Shebang>> {
    Ok(parse_shebang(&read_head(path)?))
}

/// The file's first [`BINPRM_BUF_SIZE`] bytes, zero-filled past its end, as the kernel
/// reads them.
fn read_head(path: &Path) -> std::io::Result<[u8; BINPRM_BUF_SIZE]> {
    let mut head = [0u8; BINPRM_BUF_SIZE];
    let mut file = File::open(path)?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(head)
}

/// `load_script` in the kernel's `fs/binfmt_script.c`, byte for byte: the line ends at
/// the first newline before any NUL, or else at the end of the buffer when the
/// interpreter's name ends before it; only spaces and tabs are blanks (a `\r` is part
/// of the line); the interpreter ends at a blank or NUL, and the argument, a C string,
/// at the first NUL.
pub(crate) fn parse_shebang(head: &[u8; BINPRM_BUF_SIZE]) -> Option<Shebang> {
    if !head.starts_with(b"#!") {
        return None;
    }
    let blank = |b: u8| b == b' ' || b == b'\t';
    let ends_name = |b: u8| blank(b) || b == 0;
    let first = |from: usize, to: usize, what: &dyn Fn(u8) -> bool| (from..to).find(|&i| what(head[i]));
    let buf_end = BINPRM_BUF_SIZE - 1;
    let text_end = head.iter().position(|&b| b == 0).unwrap_or(head.len());
    let mut end = match head[..text_end].iter().position(|&b| b == b'\n') {
        Some(newline) => newline,
        None => {
            // Up to the buffer's last byte included, as the kernel looks (`first <= last`).
            let name = first(2, BINPRM_BUF_SIZE, &|b| !blank(b))?;
            // No blank or NUL after the name: it may be cut off, and the kernel refuses.
            first(name, BINPRM_BUF_SIZE, &ends_name)?;
            buf_end
        }
    };
    while blank(head[end - 1]) {
        end -= 1;
    }
    let name = first(2, end, &|b| !blank(b))?;
    let separator = first(name, end, &ends_name);
    let argument = match separator {
        Some(sep) if head[sep] != 0 => first(sep, end, &|b| !blank(b)).map(|arg| {
            let arg = &head[arg..end];
            &arg[..arg.iter().position(|&b| b == 0).unwrap_or(arg.len())]
        }),
        _ => None,
    };
    let interpreter = &head[name..separator.unwrap_or(end)];
    Some(Shebang {
        interpreter: Path::new(std::ffi::OsStr::from_bytes(interpreter)).to_owned(),
        argument: argument.map(|a| std::ffi::OsStr::from_bytes(a).to_owned()),
    })
}

fn is_executable(path: &Path) -> bool {
    crate::sys::can_execute(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        fs::write(&p, body).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn shebangs_split_as_the_kernel_does() {
        let tmp = tempfile::tempdir().unwrap();
        let parse = |body: &str| shebang(&script(tmp.path(), "s", body)).unwrap();
        assert_eq!(parse("echo\n"), None);
        let s = parse("#!  /bin/sh\t-e -u \nexit\n").unwrap();
        assert_eq!(s.interpreter, Path::new("/bin/sh"));
        assert_eq!(s.argument.as_deref(), Some(std::ffi::OsStr::new("-e -u")));
        let s = parse("#!/usr/bin/env /tmp/x\n").unwrap();
        assert_eq!(s.argument.as_deref(), Some(std::ffi::OsStr::new("/tmp/x")));
        assert_eq!(parse("#!tmp/evil\n").unwrap().interpreter, Path::new("tmp/evil"));
        assert_eq!(parse("#!\n"), None);
        assert_eq!(parse("#!  \t \n"), None);
        // Only spaces and tabs are blanks: a CR is part of the argument env looks up.
        let s = parse("#!/usr/bin/env python3\r\n").unwrap();
        assert_eq!(s.argument.as_deref(), Some(std::ffi::OsStr::new("python3\r")));
        // No newline: the line is the buffer, the argument a C string ending at a NUL.
        let s = parse("#!/bin/sh").unwrap();
        assert_eq!((s.interpreter.as_path(), s.argument), (Path::new("/bin/sh"), None));
        let s = parse("#!/usr/bin/env python3 \0/home/u/evil\n").unwrap();
        assert_eq!(s.argument.as_deref(), Some(std::ffi::OsStr::new("python3 ")));
        let s = parse("#!/bin/sh\0 /home/u/evil\n").unwrap();
        assert_eq!((s.interpreter.as_path(), s.argument), (Path::new("/bin/sh"), None));
        // Only the first 255 bytes count; an interpreter name cut off there is refused.
        let long = format!("#!/bin/sh -{}\n", "e".repeat(300));
        assert_eq!(parse(&long).unwrap().argument.unwrap().len(), 255 - "#!/bin/sh ".len());
        assert_eq!(parse(&format!("#!/{}\n", "x".repeat(300))), None);
    }

    /// Found by the `shebang` fuzz target: the kernel looks for the blank or NUL that
    /// ends an interpreter's name up to the buffer's last byte (`buf[255]`) included, so a
    /// line that fills the buffer is run, and its interpreter must be checked.
    #[test]
    fn a_line_that_fills_the_buffer_is_run_by_the_kernel() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("ran");
        let prefix = format!("{}/", tmp.path().display());
        // "#!" and the name fill bytes 0..255; byte 255 is the NUL past a 255-byte file.
        let name = format!("{prefix}{}", "i".repeat(BINPRM_BUF_SIZE - 3 - prefix.len()));
        script(
            tmp.path(),
            &name[prefix.len()..],
            &format!("#!/bin/sh\necho \"$0\" > {}\n", marker.display()),
        );
        let hook = script(tmp.path(), "hook", &format!("#!{name}"));
        assert_eq!(fs::metadata(&hook).unwrap().len(), BINPRM_BUF_SIZE as u64 - 1);
        let status = std::process::Command::new(&hook).status().unwrap();
        assert!(status.success() && marker.exists(), "the kernel ran {name}: {status}");
        let line = shebang(&hook).unwrap().expect("the kernel's #! line");
        assert_eq!((line.interpreter, line.argument), (Path::new(&name).to_owned(), None));
        check_executable(&hook).unwrap();
        // The same with a blank in the last byte, the line going on past the buffer.
        let hook = script(tmp.path(), "hook2", &format!("#!{name} more\n"));
        let line = shebang(&hook).unwrap().expect("the kernel's #! line");
        assert_eq!((line.interpreter, line.argument), (Path::new(&name).to_owned(), None));
        // One byte longer, the name may be cut off: refused, as the kernel refuses it.
        let hook = script(tmp.path(), "hook3", &format!("#!{name}i"));
        assert_eq!(shebang(&hook).unwrap(), None);
    }

    #[test]
    fn explains_each_broken_kind() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(check_executable(&script(tmp.path(), "ok", "#!/bin/sh\nexit 0\n")).is_ok());
        assert!(check_executable(&script(tmp.path(), "ok-env", "#! /usr/bin/env bash\n")).is_ok());
        let err = check_executable(&script(tmp.path(), "noshebang", "echo hi\n")).unwrap_err();
        assert!(err.to_string().contains("exit status 126"), "{err}");
        let err = check_executable(&script(tmp.path(), "missing", "#!/no/such/interp\n")).unwrap_err();
        assert!(err.to_string().contains("`/no/such/interp` does not exist"), "{err}");
        assert!(err.to_string().contains("127"));
    }
}
