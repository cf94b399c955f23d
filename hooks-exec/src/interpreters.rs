//! What a hook file makes run besides itself, checked against the trust rule before it
//! runs: its `#!` interpreter and theirs (the kernel follows four), files named
//! on those lines, and for `env` the command it would run, found as `execvp` finds it.
//!
//! A check races with the exec that follows unless nobody but root and the effective
//! uid can change what it looked at, so a file named on a `#!` line must exist and pass
//! the rule, every directory of the `PATH` a program runs with must pass (and, where a
//! directory is missing, the directory it would be made in), and whatever cannot be
//! worked out before the hook runs is refused: a bare name the interpreter would find
//! from the working directory, an option that loads code by name, a variable that names
//! code (`BASH_ENV`, `LD_PRELOAD`, `HOME`, `PYTHONPATH`...).

mod options;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use virt_hooks_core::backend::{TrustPolicy, Untrusted};
use virt_hooks_core::trust::{CulpritKind, Problem};

use crate::check;
use crate::env_cmd::{self, Arg, Environment, Value};
use options::{Refusal, Source};

/// How many scripts the kernel goes through in one exec, the file and its `#!`
/// interpreters (`fs/exec.c`: a sixth is ELOOP, measured on Linux 6.x).
const KERNEL_NESTING: u32 = 5;

/// The most programs followed from one hook (an interpreter, env's command, env run by
/// env...): a line that leads further is refused rather than followed without end.
const MAX_FOLLOWED: u32 = 32;

/// The longest first line read for the switches Perl and Ruby take from it (they read
/// all of it, past the kernel's 255 bytes).
const MAX_FIRST_LINE: u64 = 1 << 16;

/// Why a program may not run with `PATH` unset.
const UNSET_PATH: &str =
    "runs with PATH unset, so it searches a built-in list of directories (bash's ends with `.`, the working directory)";

/// The locale variables glibc reads: their values name locales, not code.
const LOCALE_VARIABLES: [&str; 15] = [
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_ADDRESS",
    "LC_COLLATE",
    "LC_CTYPE",
    "LC_IDENTIFICATION",
    "LC_MEASUREMENT",
    "LC_MESSAGES",
    "LC_MONETARY",
    "LC_NAME",
    "LC_NUMERIC",
    "LC_PAPER",
    "LC_TELEPHONE",
    "LC_TIME",
];

/// Checks what runs when `hook` (itself already checked) is executed with `search_path`
/// as its `PATH` (`None`: unset, which is refused), starting with that `PATH`: whatever
/// the hook runs by name is found there.
///
/// # Errors
/// [`Untrusted`] about `hook`, naming the chain that leads to what fails:
/// `its interpreter `/usr/bin/env`: its command `evil`: its PATH directory `/home/u/bin`: owned by uid 1000`.
pub(crate) fn check_what_runs(hook: &Path, trust: &TrustPolicy, search_path: Option<&OsStr>) -> Result<(), Untrusted> {
    let environment = Environment::with_path(search_path.map(OsStrExt::as_bytes));
    let mut walk = Walk { trust, followed: 0 };
    walk.runs_with_path(hook, &environment)?;
    walk.script(hook, &environment, 0)
}

struct Walk<'a> {
    trust: &'a TrustPolicy,
    followed: u32,
}

impl Walk<'_> {
    fn follow(&mut self, path: &Path) -> Result<(), Untrusted> {
        self.followed += 1;
        if self.followed > MAX_FOLLOWED {
            let why =
                format!("leads to more than {MAX_FOLLOWED} programs through interpreters and env: too many to follow");
            return Err(Untrusted::unverifiable(path, why));
        }
        Ok(())
    }

    /// `file` is executed at `depth` of the kernel's `#!` nesting, in `environment`:
    /// checks its interpreter, what the line gives it, and what that runs in turn.
    fn script(&mut self, file: &Path, environment: &Environment, depth: u32) -> Result<(), Untrusted> {
        self.follow(file)?;
        let line = match check::shebang(file) {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(()),
            Err(e) => return Err(Untrusted::io(file, file, e)),
        };
        let interpreter = line.interpreter.as_path();
        let refuse = |why: Untrusted| Untrusted::dependency(file, "interpreter", why);
        if depth >= KERNEL_NESTING {
            let why = "interpreters nested deeper than the kernel follows";
            return Err(refuse(Untrusted::unverifiable(interpreter, why)));
        }
        if !interpreter.is_absolute() {
            let why = "a relative interpreter is looked up from the caller's working directory";
            return Err(refuse(Untrusted::unverifiable(interpreter, why)));
        }
        self.trust.check_file(interpreter).map_err(refuse)?;
        if is_env(interpreter) {
            // The kernel passes the rest of the line as one argument, then the script.
            let mut args: Vec<Arg> = line
                .argument
                .iter()
                .map(|a| Arg::Known(a.as_bytes().to_vec()))
                .collect();
            args.extend([Arg::Known(file.as_os_str().as_bytes().to_vec()), Arg::HookArgs]);
            self.env(interpreter, args, environment, file).map_err(refuse)?;
        } else {
            let words: Vec<&[u8]> = line.argument.iter().map(|a| a.as_bytes()).collect();
            let program_file = self
                .arguments(interpreter, &words)
                .map_err(|why| Untrusted::dependency(file, "interpreter's argument", why))?;
            self.first_line(interpreter, program_file.as_deref().unwrap_or(file))
                .map_err(refuse)?;
        }
        self.script(interpreter, environment, depth + 1).map_err(refuse)
    }

    /// What `env` (at `env`) runs given `args`, started in `environment`, for `script`.
    fn env(&mut self, env: &Path, args: Vec<Arg>, environment: &Environment, script: &Path) -> Result<(), Untrusted> {
        self.follow(env)?;
        let run = env_cmd::parse(args, environment).map_err(|why| Untrusted::unverifiable(env, why))?;
        for (name, value) in &run.assignments {
            settable(name, value).map_err(|why| Untrusted::unverifiable(env, why))?;
        }
        let Some(command) = run.command else {
            return Ok(());
        };
        let refuse = |why: Untrusted| Untrusted::dependency(env, "command", why);
        let program = self.program(&command, &run.environment).map_err(refuse)?;
        if run.environment.get(b"PATH") != environment.get(b"PATH") {
            self.runs_with_path(&program, &run.environment).map_err(refuse)?;
        }
        if is_env(&program) {
            let args = run.args.into_iter().map(Arg::Known).chain([Arg::HookArgs]).collect();
            self.env(&program, args, &run.environment, script).map_err(refuse)?;
        } else {
            // The script's path comes last; what comes before is the command's.
            let mut words: Vec<&[u8]> = run.args.iter().map(Vec::as_slice).collect();
            if words.last() == Some(&script.as_os_str().as_bytes()) {
                words.pop();
            }
            let program_file = self
                .arguments(&program, &words)
                .map_err(|why| Untrusted::dependency(env, "command's argument", why))?;
            self.first_line(&program, program_file.as_deref().unwrap_or(script))
                .map_err(refuse)?;
        }
        // A fresh exec: the kernel's count starts over.
        self.script(&program, &run.environment, 0).map_err(refuse)
    }

    /// Every directory of the `PATH` that `program` runs with must pass: whatever it, or
    /// a shell it starts, runs by name is found there, and a user who can write (or
    /// create) any one of them chooses what that is for every name not found before it.
    fn runs_with_path(&self, program: &Path, environment: &Environment) -> Result<(), Untrusted> {
        let search = match environment.get(b"PATH") {
            Value::Set(search) => search,
            Value::Unset => return Err(Untrusted::unverifiable(program, UNSET_PATH)),
            Value::Unknown => {
                let why = "runs with a PATH that is not known before the hook runs";
                return Err(Untrusted::unverifiable(program, why));
            }
        };
        for dir in search.split(|&b| b == b':') {
            // An empty entry is the working directory.
            let dir = Path::new(OsStr::from_bytes(if dir.is_empty() { b"." } else { dir }));
            let in_path = |why: Untrusted| Untrusted::dependency(program, "PATH directory", why);
            if !dir.is_absolute() {
                let why = "a relative PATH directory is found from the caller's working directory";
                return Err(in_path(Untrusted::unverifiable(dir, why)));
            }
            match self.trust.check_dir(dir) {
                Ok(()) => {}
                Err(why) if nothing_there(&why) => self.none_can_create(dir, &why).map_err(in_path)?,
                Err(why) => return Err(in_path(why)),
            }
        }
        Ok(())
    }

    /// Where `execvp` finds `command` in `environment`, after checking it and every
    /// directory searched on the way.
    fn program(&self, command: &[u8], environment: &Environment) -> Result<PathBuf, Untrusted> {
        let name = Path::new(OsStr::from_bytes(command));
        if command.is_empty() {
            return Err(Untrusted::unverifiable(name, "an empty command"));
        }
        if command.contains(&b'/') {
            if !name.is_absolute() {
                let why = "a relative path is looked up from the caller's working directory";
                return Err(Untrusted::unverifiable(name, why));
            }
            self.existing(name)?;
            return Ok(name.to_owned());
        }
        let search = environment
            .search_path()
            .ok_or_else(|| Untrusted::unverifiable(name, "PATH is not known before the hook runs"))?;
        for dir in search.split(|&b| b == b':') {
            // An empty entry is the working directory.
            let dir = Path::new(OsStr::from_bytes(if dir.is_empty() { b"." } else { dir }));
            let in_dir = |why: Untrusted| Untrusted::dependency(name, "PATH directory", why);
            if !dir.is_absolute() {
                let why = "a relative PATH directory is found from the caller's working directory";
                return Err(in_dir(Untrusted::unverifiable(dir, why)));
            }
            match self.trust.check_dir(dir) {
                Ok(()) => {}
                Err(why) if nothing_there(&why) => {
                    self.none_can_create(dir, &why).map_err(in_dir)?;
                    continue;
                }
                Err(why) => return Err(in_dir(why)),
            }
            let candidate = dir.join(name);
            match self.trust.check_file(&candidate) {
                Ok(()) if crate::sys::can_execute(&candidate) => return Ok(candidate),
                // Not executable, a directory, a device: execvp goes on to the next
                // directory, and only trusted users could change that.
                Ok(()) => {}
                Err(why) if matches!(why.problem, Problem::NotRegular) && why.culprit_kind == CulpritKind::Itself => {}
                // Missing from the directory just checked: nobody else can add it.
                Err(why) if nothing_there(&why) && why.culprit.parent() == Some(dir) => {}
                Err(why) if nothing_there(&why) => self.none_can_create(&candidate, &why)?,
                Err(why) => return Err(why),
            }
        }
        let why = format!("not found in PATH={}", String::from_utf8_lossy(search));
        Err(Untrusted::unverifiable(name, why))
    }

    /// `path` (or the end of a symlink from it) is missing: the directory it would be
    /// made in must pass, or whoever may create it chooses what runs.
    fn none_can_create(&self, path: &Path, missing: &Untrusted) -> Result<(), Untrusted> {
        let holder = missing.culprit.parent().unwrap_or(Path::new("/"));
        self.trust
            .check_dir(holder)
            .map_err(|why| Untrusted::unverifiable(path, format!("does not exist, and others could create it: {why}")))
    }

    /// A file or directory a `#!` line names, or that a program is given: it must exist
    /// (whoever creates it first would choose what runs) and pass the rule.
    fn existing(&self, path: &Path) -> Result<(), Untrusted> {
        match self.trust.check_file(path) {
            Err(why) if nothing_there(&why) => Err(Untrusted::unverifiable(
                path,
                "does not exist: whoever creates it first would have it run",
            )),
            Err(why) if matches!(why.problem, Problem::NotRegular) && path.is_dir() => self.trust.check_dir(path),
            other => other,
        }
    }

    /// The words a `#!` line or env gives `program` before the script's path, read as
    /// it reads them (see [`options`]): a word it would resolve by name, or an option
    /// that loads code by name, is refused; a path must exist and pass. Each word is
    /// split at blanks first (the kernel passes the rest of the line as one argument,
    /// which some interpreters split themselves). Returns the program file it would run
    /// instead of the script, if a word names one.
    fn arguments(&self, program: &Path, words: &[&[u8]]) -> Result<Option<PathBuf>, Untrusted> {
        let words: Vec<&[u8]> = words.iter().flat_map(|w| w.split(options::is_blank)).collect();
        let reading = options::read(options::family(program), &words, Source::CommandLine).map_err(refused)?;
        for path in &reading.paths {
            self.existing(Path::new(OsStr::from_bytes(path)))?;
        }
        Ok(reading.program_file.map(|p| PathBuf::from(OsStr::from_bytes(p))))
    }

    /// Perl and Ruby read more switches from the `#!` line of the file they run, all of
    /// it (past the kernel's 255 bytes, and whatever env ignored as a comment): they are
    /// read as on the command line.
    fn first_line(&self, program: &Path, file: &Path) -> Result<(), Untrusted> {
        let Some(family) = options::family(program) else {
            return Ok(());
        };
        let Some(after) = family.first_line_after else {
            return Ok(());
        };
        let role = "switch it reads from the script's first line";
        let line = read_first_line(file).map_err(|e| Untrusted::io(file, file, e))?;
        let Some(line) = line.strip_prefix(b"#!") else {
            return Ok(());
        };
        if line.len() as u64 > MAX_FIRST_LINE {
            let why = format!(
                "its first line is longer than {MAX_FIRST_LINE} bytes: too long to read the switches {} takes from it",
                family.name
            );
            return Err(Untrusted::unverifiable(file, why));
        }
        let Some(words) = options::first_line_words(line, after) else {
            let why = format!(
                "its `#!` line does not name {0}, so {0} would look for another line to take switches from, or run the program it names",
                family.name
            );
            return Err(Untrusted::unverifiable(file, why));
        };
        let reading = options::read(Some(family), &words, Source::FirstLine)
            .map_err(|r| Untrusted::dependency(program, role, refused(r)))?;
        for path in &reading.paths {
            self.existing(Path::new(OsStr::from_bytes(path)))
                .map_err(|why| Untrusted::dependency(program, role, why))?;
        }
        Ok(())
    }
}

/// A word refused by [`options::read`], as the reason a hook is refused.
fn refused(refusal: Refusal) -> Untrusted {
    Untrusted::unverifiable(Path::new(OsStr::from_bytes(&refusal.word)), refusal.why)
}

/// `file`'s first line, without its newline, read up to a little past
/// [`MAX_FIRST_LINE`] so that a longer one can be told apart.
fn read_first_line(file: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{BufRead, Read};
    let mut line = Vec::new();
    let limited = std::fs::File::open(file)?.take(MAX_FIRST_LINE + 3);
    std::io::BufReader::new(limited).read_until(b'\n', &mut line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(line)
}

/// Whether env may set `name` to `value` on a checked line: only variables that name no
/// code. `PATH` is checked where it is used, every directory of it.
///
/// # Errors
/// Which variable, and why it may not be set.
fn settable(name: &[u8], value: &[u8]) -> Result<(), String> {
    let shown = String::from_utf8_lossy(name);
    let locale = name == b"TZ" || LOCALE_VARIABLES.iter().any(|v| v.as_bytes() == name);
    if name == b"PATH" || (locale && !value.contains(&b'/')) {
        return Ok(());
    }
    if locale {
        // glibc reads a locale or time zone name with a `/` as a path.
        return Err(format!(
            "sets `{shown}` to `{}`: a locale or time zone with a `/` is read from that path",
            String::from_utf8_lossy(value)
        ));
    }
    Err(format!(
        "sets `{shown}`, which {}: only PATH (every directory of which must pass), LANG, LANGUAGE, LC_* and TZ (without a `/`) may be set on a checked `#!` line",
        what_it_names(name)
    ))
}

/// What setting the variable `name` can make a program run or load.
fn what_it_names(name: &[u8]) -> &'static str {
    let starts = |prefix: &str| name.starts_with(prefix.as_bytes());
    match name {
        b"BASH_ENV" | b"ENV" => "names a file the shell runs before the script",
        b"HOME" => "is where interpreters find a user's startup files and packages (`~/.bash_profile`, Python's user site-packages)",
        b"GCONV_PATH" | b"LOCPATH" | b"NLSPATH" | b"TZDIR" | b"HOSTALIASES" => "names files the C library loads",
        b"SHELLOPTS" | b"BASHOPTS" | b"IFS" | b"CDPATH" | b"PS4" => "changes how the shell reads and runs the script",
        _ if starts("LD_") => "makes the dynamic linker load or search for libraries where it says",
        _ if starts("PYTHON") => "changes where python loads code from, or what it runs first",
        _ if starts("PERL") => "changes where perl loads code from, or what it runs first",
        _ if starts("RUBY") || starts("GEM_") => "changes where ruby loads code from, or what it runs first",
        _ if starts("NODE_") => "changes where node loads code from, or what it runs first",
        _ => "may name code to load, for all hookctl can tell",
    }
}

/// Whether `path` is a check that failed only because nothing is there.
fn nothing_there(why: &Untrusted) -> bool {
    why.is_not_found() && why.culprit_kind == CulpritKind::Itself
}

/// Whether the program is `env`, by the name it is run as or the file it is.
fn is_env(program: &Path) -> bool {
    let named_env = |p: &Path| p.file_name() == Some(OsStr::new("env"));
    named_env(program) || std::fs::canonicalize(program).is_ok_and(|real| named_env(&real))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn write(path: &Path, body: &str, mode: u32) {
        fs::write(path, body).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn dir(path: &Path, mode: u32) -> PathBuf {
        fs::create_dir_all(path).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        path.to_owned()
    }

    /// A temp dir with `ok/` (trusted, holding `tool`) and `open/` (anyone may write it,
    /// holding `tool` and `evil`).
    struct Fixture {
        tmp: tempfile::TempDir,
        ok: PathBuf,
        open: PathBuf,
    }

    impl Fixture {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let ok = dir(&tmp.path().join("ok"), 0o755);
            let open = dir(&tmp.path().join("open"), 0o755);
            write(&ok.join("tool"), "#!/bin/sh\n", 0o755);
            write(&open.join("tool"), "#!/bin/sh\n", 0o755);
            write(&open.join("evil"), "#!/bin/sh\n", 0o755);
            fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
            Fixture { tmp, ok, open }
        }

        fn check(&self, line: &str, path: &str) -> Result<(), String> {
            let hook = self.tmp.path().join("hook");
            write(&hook, line, 0o755);
            check_what_runs(&hook, &TrustPolicy::current_user(), Some(OsStr::new(path))).map_err(|e| e.to_string())
        }

        fn sub(&self, text: &str) -> String {
            text.replace("{ok}", self.ok.to_str().unwrap())
                .replace("{open}", self.open.to_str().unwrap())
                .replace("{tmp}", self.tmp.path().to_str().unwrap())
        }
    }

    #[test]
    fn what_env_runs_must_pass() {
        let f = Fixture::new();
        let system = "/usr/bin:/bin";
        for line in [
            "#!/usr/bin/env sh\n",
            "#!/usr/bin/env -S sh -e -u\n",
            "#!/usr/bin/env -S sh -eu\n",
            "#!/usr/bin/env python3\n",
            "#!/usr/bin/env -S python3 -u\n",
            "#!/usr/bin/env -S PATH={ok} tool\n",
            "#!/usr/bin/env -S {ok}/tool --flag={ok}/tool\n",
            "#!/usr/bin/env -S env -S 'PATH={ok} tool'\n",
            "#!/usr/bin/env -S -i PATH=/usr/bin:/bin sh\n",
            "#!/usr/bin/env -S -u HOME -u LD_PRELOAD LC_ALL=C LANG=C.UTF-8 LANGUAGE=en:de TZ=UTC sh\n",
        ] {
            let line = f.sub(line);
            assert_eq!(f.check(&line, system), Ok(()), "{line}");
        }
        let open = f.open.display().to_string();
        for (line, why) in [
            (
                "#!/usr/bin/env -S {open}/evil\n",
                format!("its command `{open}/evil`: directory {open} is writable by others"),
            ),
            (
                "#!/usr/bin/env -S PATH={open}:{ok} tool\n",
                format!("its command `tool`: its PATH directory `{open}`"),
            ),
            (
                "#!/usr/bin/env -S PATH={ok}:{open} evil\n",
                format!("its PATH directory `{open}`"),
            ),
            // Found before the user's directory, but run with it in its PATH.
            (
                "#!/usr/bin/env -S PATH={ok}:{open} tool\n",
                format!("its command `{{ok}}/tool`: its PATH directory `{open}`"),
            ),
            (
                "#!/usr/bin/env -S PATH=/usr/bin:/bin:{open} sh\n",
                format!("its command `/usr/bin/sh`: its PATH directory `{open}`"),
            ),
            // With PATH unset, bash searches a list that ends with `.`.
            (
                "#!/usr/bin/env -S -i sh\n",
                "its command `/bin/sh`: runs with PATH unset".to_owned(),
            ),
            (
                "#!/usr/bin/env -S -u PATH sh\n",
                "its command `/bin/sh`: runs with PATH unset".to_owned(),
            ),
            (
                "#!/usr/bin/env -S env -S 'PATH={open} tool'\n",
                format!("its command `/usr/bin/env`: its command `tool`: its PATH directory `{open}`"),
            ),
            (
                "#!/usr/bin/env -S sh {open}/evil\n",
                format!("its command's argument `{open}/evil`"),
            ),
            (
                "#!/usr/bin/env -S sh -c 'exec {ok}/tool'\n",
                "its command's argument `-c`: runs the command string".to_owned(),
            ),
            (
                "#!/usr/bin/env -S sh -I{open}\n",
                format!("its command's argument `{open}`"),
            ),
            (
                "#!/usr/bin/env -S sh -eo{open}\n",
                format!("its command's argument `{open}`"),
            ),
            (
                "#!/usr/bin/env -S PATH={ok} tool PATH={ok}:{open}\n",
                "its command's argument `PATH=".to_owned(),
            ),
            (
                "#!/usr/bin/env -S sh rt6evil\n",
                "its command's argument `rt6evil`: the interpreter would find a file by this name".to_owned(),
            ),
            (
                "#!/usr/bin/env -S python3 -m rt6mod\n",
                "its command's argument `-m`: imports a module found by name".to_owned(),
            ),
            (
                "#!/usr/bin/env -S bash --rcfile\n",
                "its command's argument `--rcfile`: takes the next argument".to_owned(),
            ),
            (
                "#!/usr/bin/env -S PATH=:{ok} tool\n",
                "its PATH directory `.`: a relative PATH directory".to_owned(),
            ),
            (
                "#!/usr/bin/env -S PATH=bin:{ok} tool\n",
                "its PATH directory `bin`".to_owned(),
            ),
            (
                "#!/usr/bin/env -S ./tool\n",
                "its command `./tool`: a relative path".to_owned(),
            ),
            (
                "#!/usr/bin/env -S PATH={ok} nothing\n",
                "its command `nothing`: not found in PATH=".to_owned(),
            ),
            ("#!/usr/bin/env -S ''\n", "its command ``: an empty command".to_owned()),
        ] {
            let line = f.sub(line);
            let err = f.check(&line, system).unwrap_err();
            let wanted = f.sub(&why);
            assert!(err.contains("its interpreter `/usr/bin/env`: "), "{line}: {err}");
            assert!(err.contains(&wanted), "{line}: wanted `{wanted}` in {err}");
        }
    }

    #[test]
    fn env_sets_only_variables_that_name_no_code() {
        let f = Fixture::new();
        for (assignment, why) in [
            // Even to a file only root can change: what it does is not on the line.
            ("BASH_ENV={ok}/tool", "names a file the shell runs before the script"),
            ("ENV={open}/evil", "names a file the shell runs"),
            ("LD_PRELOAD={open}/evil.so", "dynamic linker"),
            ("LD_LIBRARY_PATH={ok}", "dynamic linker"),
            ("HOME={open}", "startup files and packages"),
            ("PYTHONPATH={open}", "where python loads code from"),
            ("PYTHONSTARTUP={ok}/tool", "python"),
            ("PERL5LIB={open}", "perl"),
            ("PERL5OPT=-Mrt6evil", "perl"),
            ("RUBYOPT=-rrt6", "ruby"),
            ("NODE_OPTIONS=--require=rt6", "node"),
            ("GCONV_PATH={open}", "C library"),
            ("LOCPATH={open}", "C library"),
            ("SHELLOPTS=xtrace", "how the shell reads"),
            ("LC_TERMINAL=x", "may name code to load"),
            ("X=1", "may name code to load"),
        ] {
            let name = assignment.split('=').next().unwrap();
            let line = f.sub(&format!("#!/usr/bin/env -S {assignment} sh\n"));
            let err = f.check(&line, "/usr/bin:/bin").unwrap_err();
            let wanted = format!("its interpreter `/usr/bin/env`: sets `{name}`, which ");
            assert!(err.contains(&wanted) && err.contains(why), "{line}: {err}");
        }
        for assignment in [
            "LANG={open}/C",
            "LC_ALL=/tmp",
            "TZ=:/etc/localtime",
            "LANGUAGE=de:../../x/y",
        ] {
            let line = f.sub(&format!("#!/usr/bin/env -S {assignment} sh\n"));
            let err = f.check(&line, "/usr/bin:/bin").unwrap_err();
            assert!(err.contains("a locale or time zone with a `/`"), "{line}: {err}");
        }
        // The same through env running env.
        let line = f.sub("#!/usr/bin/env -S env -S 'HOME={open} bash'\n");
        let err = f.check(&line, "/usr/bin:/bin").unwrap_err();
        assert!(err.contains("its command `/usr/bin/env`: sets `HOME`"), "{line}: {err}");
    }

    #[test]
    fn every_directory_of_the_hooks_own_path_must_pass() {
        let f = Fixture::new();
        let open = f.open.display().to_string();
        // Whatever the hook runs by name, a `#!/bin/sh` script or a program, is found there.
        for body in [
            "#!/bin/sh\nsysctl -q x\n",
            "#!/usr/bin/env tool\n",
            "\x7fELF not a script\n",
        ] {
            for (path, why) in [
                (
                    f.sub("{open}:/usr/bin"),
                    format!("its PATH directory `{open}`: writable by others"),
                ),
                (f.sub("/usr/bin:/bin:{open}"), format!("its PATH directory `{open}`")),
                (f.sub("{ok}:{open}"), format!("its PATH directory `{open}`")),
                (
                    "/usr/bin:".to_owned(),
                    "its PATH directory `.`: a relative PATH directory".to_owned(),
                ),
                ("bin:/usr/bin".to_owned(), "its PATH directory `bin`".to_owned()),
            ] {
                let err = f.check(body, &path).unwrap_err();
                assert!(err.contains(&format!("hook`: {why}")), "{body} with PATH={path}: {err}");
            }
            assert_eq!(f.check(body, &f.sub("{ok}:/usr/bin:/bin")), Ok(()), "{body}");
            let hook = f.tmp.path().join("hook");
            let err = check_what_runs(&hook, &TrustPolicy::current_user(), None).unwrap_err();
            assert!(err.to_string().contains("runs with PATH unset"), "{body}: {err}");
        }
    }

    #[test]
    fn perl_and_ruby_switches_on_the_first_line_must_pass() {
        let f = Fixture::new();
        let open = f.open.display().to_string();
        let system = "/usr/bin:/bin";
        let role = "its switch it reads from the script's first line";
        // perl reads the whole line, past the 255 bytes the kernel passes on.
        let padded = format!("#!/usr/bin/perl {} -I{open}\n", " ".repeat(300));
        let err = f.check(&padded, system).unwrap_err();
        assert!(
            err.contains(&format!("its interpreter `/usr/bin/perl`: {role} `{open}`")),
            "{err}"
        );
        // ...and from the first `perl -` on it, even in what env took as a comment.
        let err = f
            .check(&f.sub("#!/usr/bin/env -S perl\t#perl -Mrt6evil\n"), system)
            .unwrap_err();
        assert!(
            err.contains(&format!("its command `/usr/bin/perl`: {role} `-M`: loads a module")),
            "{err}"
        );
        // A program file given on the line is the one whose first line counts.
        write(&f.ok.join("prog"), &f.sub("#!/usr/bin/perl -I{open}\n"), 0o755);
        let err = f.check(&f.sub("#!/usr/bin/perl {ok}/prog\n"), system).unwrap_err();
        assert!(err.contains(&format!("{role} `{open}`")), "{err}");
        let long = format!("#!/usr/bin/perl -w{}-w\n", " ".repeat(70_000));
        let err = f.check(&long, system).unwrap_err();
        assert!(err.contains("longer than 65536 bytes"), "{err}");
        for line in [
            "#!/usr/bin/perl -w\n",
            "#!/usr/bin/env perl\n",
            "#!/usr/bin/perl -w -I/usr/share/perl5\n",
        ] {
            assert_eq!(f.check(line, system), Ok(()), "{line}");
        }
        // Ruby, known by what the program is called or links to: a `#!` line that does
        // not name it makes it look further down the file for one.
        write(&f.ok.join("ruby"), "#!/bin/sh\n", 0o755);
        symlink(f.ok.join("ruby"), f.ok.join("rb")).unwrap();
        assert_eq!(f.check(&f.sub("#!{ok}/ruby -w\n"), system), Ok(()));
        let err = f.check(&f.sub("#!{ok}/ruby -w\n#!ruby -r{open}/x\n"), system);
        assert_eq!(err, Ok(()), "only the first line counts when it names ruby");
        let err = f.check(&f.sub("#!{ok}/rb\n"), system).unwrap_err();
        assert!(err.contains("does not name ruby"), "{err}");
        let err = f.check(&f.sub("#!{ok}/ruby -w -rrt6lib\n"), system).unwrap_err();
        assert!(err.contains("`rt6lib`"), "{err}");
    }

    #[test]
    fn missing_names_and_directories_must_stay_missing() {
        let f = Fixture::new();
        // Under /tmp (root's, sticky: anyone may create entries), a name nobody made yet.
        assert_eq!(fs::metadata("/tmp").unwrap().permissions().mode() & 0o1777, 0o1777);
        let unmade = Path::new("/tmp").join(format!("{}-later", f.tmp.path().file_name().unwrap().to_str().unwrap()));
        let unmade = unmade.display();
        // A PATH directory that does not exist yet, where others could create it.
        let line = f.sub(&format!("#!/usr/bin/env -S PATH={unmade}:{{ok}} tool\n"));
        let err = f.check(&line, "/usr/bin").unwrap_err();
        assert!(
            err.contains(&format!(
                "its PATH directory `{unmade}`: does not exist, and others could create it"
            )),
            "{err}"
        );
        // Where others cannot even reach it, that fails first.
        let line = f.sub("#!/usr/bin/env -S PATH={open}/later:{ok} tool\n");
        let err = f.check(&line, "/usr/bin").unwrap_err();
        assert!(err.contains(&f.sub("directory {open} is writable by others")), "{err}");
        let line = f.sub("#!/usr/bin/env -S PATH={ok}/later:{ok} tool\n");
        assert_eq!(f.check(&line, "/usr/bin"), Ok(()));
        // A dangling link in a trusted PATH directory, into a directory others may write.
        symlink(format!("{unmade}/x"), f.ok.join("linked")).unwrap();
        let line = f.sub("#!/usr/bin/env -S PATH={ok}:/usr/bin:/bin linked\n");
        let err = f.check(&line, "/usr/bin").unwrap_err();
        assert!(err.contains("does not exist, and others could create it"), "{err}");
        // A directory or a non-executable file of that name is passed over, as execvp does.
        fs::create_dir(f.ok.join("sh")).unwrap();
        write(&f.ok.join("true"), "", 0o644);
        for line in [
            "#!/usr/bin/env -S PATH={ok}:/usr/bin:/bin sh\n",
            "#!/usr/bin/env -S PATH={ok}:/usr/bin:/bin true\n",
        ] {
            assert_eq!(f.check(&f.sub(line), "/usr/bin"), Ok(()), "{line}");
        }
        // An absolute path on the line must exist, even where only root could create it.
        for (line, role) in [
            ("#!/bin/sh {tmp}/later\n", "its interpreter's argument"),
            (
                "#!/usr/bin/env {tmp}/later\n",
                "its interpreter `/usr/bin/env`: its command",
            ),
            ("#!/usr/bin/env -S sh {tmp}/later\n", "its command's argument"),
        ] {
            let err = f.check(&f.sub(line), "/usr/bin").unwrap_err();
            assert!(err.contains(role) && err.contains("does not exist"), "{line}: {err}");
        }
    }

    #[test]
    fn interpreter_lines_and_nesting() {
        let f = Fixture::new();
        let open = f.open.display();
        for (line, why) in [
            ("#!{open}/tool\n".to_owned(), format!("its interpreter `{open}/tool`")),
            (
                "#!/bin/sh tmp/evil\n".to_owned(),
                "its interpreter's argument `tmp/evil`: the interpreter would find a file".to_owned(),
            ),
            (
                "#!/bin/sh rt6evil\n".to_owned(),
                "its interpreter's argument `rt6evil`".to_owned(),
            ),
            (
                "#!/bin/bash -e rt6evil\n".to_owned(),
                "its interpreter's argument `rt6evil`".to_owned(),
            ),
            (
                "#!/usr/bin/perl -n\n".to_owned(),
                "its interpreter's argument `-n`: wraps the script in a loop".to_owned(),
            ),
            (
                "#!/usr/bin/python3 -m\n".to_owned(),
                "its interpreter's argument `-m`".to_owned(),
            ),
            (
                "#!/bin/sh -e {open}/evil\n".to_owned(),
                format!("its interpreter's argument `{open}/evil`"),
            ),
            (
                "#!tmp/evil\n".to_owned(),
                "its interpreter `tmp/evil`: a relative interpreter".to_owned(),
            ),
        ] {
            let err = f.check(&f.sub(&line), "/usr/bin").unwrap_err();
            assert!(err.contains(&why), "{line}: {err}");
        }
        for line in [
            "#!/bin/sh -eu\n",
            "#!/bin/sh -e\n",
            "#!/bin/sh -\n",
            "#!/bin/bash -eu\n",
            "#!/usr/bin/perl -w\n",
            "#!/usr/bin/python3 -u\n",
        ] {
            assert_eq!(f.check(line, "/usr/bin"), Ok(()), "{line}");
        }
        // A chain of interpreter scripts: the kernel runs five (the hook and four
        // interpreters), a sixth is ELOOP.
        let mut previous = PathBuf::from("/bin/sh");
        for level in 0..5 {
            let next = f.ok.join(format!("level{level}"));
            write(&next, &format!("#!{}\n", previous.display()), 0o755);
            previous = next;
        }
        let line = format!("#!{}\n", previous.display());
        let err = f.check(&line, "/usr/bin").unwrap_err();
        assert!(err.contains("nested deeper than the kernel follows"), "{err}");
        let line = format!("#!{}\n", f.ok.join("level3").display());
        assert_eq!(f.check(&line, "/usr/bin"), Ok(()));
        // A script env finds, whose own interpreter is the user's: the chain is named.
        write(&f.ok.join("wrapped"), &f.sub("#!{open}/evil\n"), 0o755);
        let err = f
            .check(&f.sub("#!/usr/bin/env -S PATH={ok} wrapped\n"), "/usr/bin")
            .unwrap_err();
        let want = f.sub("its command `{ok}/wrapped`: its interpreter `{open}/evil`");
        assert!(err.contains(&want), "{err}");
        // env running itself in a loop ends.
        write(
            &f.ok.join("again"),
            &f.sub("#!/usr/bin/env -S PATH={ok} again\n"),
            0o755,
        );
        let err = f.check(&f.sub("#!{ok}/again\n"), "/usr/bin").unwrap_err();
        assert!(err.contains("too many to follow"), "{err}");
    }

    #[test]
    fn an_env_found_by_any_name_is_parsed_as_env() {
        let f = Fixture::new();
        symlink("/usr/bin/env", f.ok.join("launcher")).unwrap();
        let err = f
            .check(&f.sub("#!{ok}/launcher -S PATH={open} evil\n"), "/usr/bin")
            .unwrap_err();
        assert!(err.contains(&f.sub("its PATH directory `{open}`")), "{err}");
    }
}
