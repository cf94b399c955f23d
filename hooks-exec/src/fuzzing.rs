//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): how a `#!` line
//! is split and what `env` on it runs, reached without widening their visibility.
//! Not an API: it changes with them.

use crate::env_cmd::{self, Arg, Environment, Value};

/// How many bytes of a file the kernel reads for its `#!` line.
pub const BINPRM_BUF_SIZE: usize = crate::check::BINPRM_BUF_SIZE;

/// A `#!` line as [`parse_shebang`] splits it.
#[derive(Debug, PartialEq, Eq)]
pub struct Shebang {
    /// The interpreter's path.
    pub interpreter: Vec<u8>,
    /// The one optional argument.
    pub argument: Option<Vec<u8>>,
}

/// The `#!` line in a file's first [`BINPRM_BUF_SIZE`] bytes (zero-filled past its end).
pub fn parse_shebang(head: &[u8; BINPRM_BUF_SIZE]) -> Option<Shebang> {
    use std::os::unix::ffi::OsStrExt;
    crate::check::parse_shebang(head).map(|line| Shebang {
        interpreter: line.interpreter.as_os_str().as_bytes().to_vec(),
        argument: line.argument.map(|a| a.as_bytes().to_vec()),
    })
}

/// A `-S` string split as env splits it, in a hook's environment whose `PATH` is `path`
/// (`None`: unset); every other variable is unknown.
pub fn split_string(text: &[u8], path: Option<&[u8]>) -> Result<Vec<Vec<u8>>, String> {
    env_cmd::split_string(text, &Environment::with_path(path))
}

/// What env runs.
#[derive(Debug)]
pub struct EnvCommand {
    /// The command env passes to `execvp`; `None` when it only prints its environment.
    pub command: Option<Vec<u8>>,
    /// Its arguments known before the hook runs.
    pub args: Vec<Vec<u8>>,
    /// The `PATH` it is started with: `Some(None)` unset, `None` not known.
    pub path: Option<Option<Vec<u8>>>,
}

/// What `env` as a `#!` interpreter runs: given the line's `argument`, then the script's
/// path, then the hook's own arguments, in a hook's environment whose `PATH` is `path`.
pub fn env_runs(argument: Option<&[u8]>, script: &[u8], path: Option<&[u8]>) -> Result<EnvCommand, String> {
    let mut args: Vec<Arg> = argument.map(|a| Arg::Known(a.to_vec())).into_iter().collect();
    args.extend([Arg::Known(script.to_vec()), Arg::HookArgs]);
    let run = env_cmd::parse(args, &Environment::with_path(path))?;
    let path = match run.environment.get(b"PATH") {
        Value::Set(p) => Some(Some(p.to_vec())),
        Value::Unset => Some(None),
        Value::Unknown => None,
    };
    Ok(EnvCommand {
        command: run.command,
        args: run.args,
        path,
    })
}
