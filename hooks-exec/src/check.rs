//! `hookctl check` for exec hooks: would this file run, or would libvirt get 126/127?

use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use hooks_core::{LoadError, LoadErrorKind};

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
    let mut head = [0u8; 256];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| fail(LoadErrorKind::Unreadable).with_source(e))?;
    let head = &head[..n];
    if head.starts_with(b"\x7fELF") {
        return Ok(());
    }
    let Some(rest) = head.strip_prefix(b"#!") else {
        return Err(fail(LoadErrorKind::NoInterpreterLine));
    };
    let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
    let interpreter = line
        .split(|b| b.is_ascii_whitespace())
        .find(|w| !w.is_empty())
        .ok_or_else(|| fail(LoadErrorKind::NoInterpreterLine))?;
    let interpreter = Path::new(std::ffi::OsStr::from_bytes(interpreter));
    let missing = !interpreter.exists();
    if missing || !is_executable(interpreter) {
        return Err(fail(LoadErrorKind::BadInterpreter {
            interpreter: interpreter.to_owned(),
            missing,
        }));
    }
    Ok(())
}

/// What a `#!` line names, split as the kernel splits it: the interpreter is the first
/// word after `#!` (leading blanks skipped), and the rest of the line, trimmed, is one
/// optional argument.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Shebang {
    pub(crate) interpreter: std::path::PathBuf,
    pub(crate) argument: Option<std::ffi::OsString>,
}

/// The `#!` line of a file, if it has one.
pub(crate) fn shebang(path: &Path) -> std::io::Result<Option<Shebang>> {
    let mut head = [0u8; 256];
    let n = File::open(path)?.read(&mut head)?;
    let Some(rest) = head[..n].strip_prefix(b"#!") else {
        return Ok(None);
    };
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = &line[line.iter().position(|b| !blank(b)).unwrap_or(line.len())..];
    let end = line.iter().position(blank).unwrap_or(line.len());
    let (interpreter, argument) = line.split_at(end);
    if interpreter.is_empty() {
        return Ok(None);
    }
    let argument = argument.trim_ascii();
    Ok(Some(Shebang {
        interpreter: Path::new(std::ffi::OsStr::from_bytes(interpreter)).to_owned(),
        argument: (!argument.is_empty()).then(|| std::ffi::OsStr::from_bytes(argument).to_owned()),
    }))
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
