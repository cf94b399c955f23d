//! What a hook file makes run besides itself, checked against the trust rule before it
//! runs: its `#!` interpreter and theirs (the kernel follows four), files named
//! on those lines, and for `env` the command it would run, found as `execvp` finds it.
//!
//! A check races with the exec that follows unless nobody but root and the effective
//! uid can change what it looked at, so a file named on a `#!` line must exist and pass
//! the rule, a name looked up in `PATH` needs every directory searched up to the match
//! to pass (and, where a directory or the name is missing, the directory it would be
//! made in), and whatever cannot be worked out before the hook runs is refused.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use hooks_core::backend::{TrustPolicy, Untrusted};
use hooks_core::trust::{CulpritKind, Problem};

use crate::check;
use crate::env_cmd::{self, Arg, Environment};

/// How many scripts the kernel goes through in one exec, the file and its `#!`
/// interpreters (`fs/exec.c`: a sixth is ELOOP, measured on Linux 6.x).
const KERNEL_NESTING: u32 = 5;

/// The most programs followed from one hook (an interpreter, env's command, env run by
/// env...): a line that leads further is refused rather than followed without end.
const MAX_FOLLOWED: u32 = 32;

/// Checks what runs when `hook` (itself already checked) is executed with `search_path`
/// as its `PATH` (`None`: unset, so `execvp` uses `/bin:/usr/bin`).
///
/// # Errors
/// [`Untrusted`] about `hook`, naming the chain that leads to what fails:
/// `its interpreter `/usr/bin/env`: its command `evil`: its PATH directory `/home/u/bin`: owned by uid 1000`.
pub(crate) fn check_what_runs(hook: &Path, trust: &TrustPolicy, search_path: Option<&OsStr>) -> Result<(), Untrusted> {
    let environment = Environment::with_path(search_path.map(OsStrExt::as_bytes));
    Walk { trust, followed: 0 }.script(hook, &environment, 0)
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
            self.env(interpreter, args, environment).map_err(refuse)?;
        } else if let Some(argument) = &line.argument {
            self.arguments(std::iter::once(argument.as_bytes()))
                .map_err(|why| Untrusted::dependency(file, "interpreter's argument", why))?;
        }
        self.script(interpreter, environment, depth + 1).map_err(refuse)
    }

    /// What `env` (at `env`) runs given `args`, started in `environment`.
    fn env(&mut self, env: &Path, args: Vec<Arg>, environment: &Environment) -> Result<(), Untrusted> {
        self.follow(env)?;
        let run = env_cmd::parse(args, environment).map_err(|why| Untrusted::unverifiable(env, why))?;
        let Some(command) = run.command else {
            return Ok(());
        };
        let refuse = |why: Untrusted| Untrusted::dependency(env, "command", why);
        let program = self.program(&command, &run.environment).map_err(refuse)?;
        if is_env(&program) {
            let args = run.args.into_iter().map(Arg::Known).chain([Arg::HookArgs]).collect();
            self.env(&program, args, &run.environment).map_err(refuse)?;
        } else {
            self.arguments(run.args.iter().map(Vec::as_slice))
                .map_err(|why| Untrusted::dependency(env, "command's argument", why))?;
        }
        // A fresh exec: the kernel's count starts over.
        self.script(&program, &run.environment, 0).map_err(refuse)
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

    /// Arguments given to an interpreter or a command: any path they name is taken as
    /// code that runs (`/bin/sh /x` runs `/x`; `-I/lib` loads from it). Each blank- and
    /// `:`-separated part with a `/` is a path (after `=`, or after a short option's
    /// letter): an absolute one must exist and pass, a relative one is refused.
    fn arguments<'w>(&self, words: impl Iterator<Item = &'w [u8]>) -> Result<(), Untrusted> {
        let parts = words.flat_map(|w| w.split(u8::is_ascii_whitespace));
        for named in parts.filter_map(named_path).flat_map(|p| p.split(|&b| b == b':')) {
            if !named.contains(&b'/') {
                continue;
            }
            let path = Path::new(OsStr::from_bytes(named));
            if !path.is_absolute() {
                let why = "a relative path is found from the caller's working directory";
                return Err(Untrusted::unverifiable(path, why));
            }
            self.existing(path)?;
        }
        Ok(())
    }
}

/// The path in one argument, if it has a `/`: the word itself, what follows `=`
/// (`--rcfile=/x`, `VAR=/x`), or what follows a short option's letter (`-I/x`).
fn named_path(word: &[u8]) -> Option<&[u8]> {
    if !word.contains(&b'/') {
        return None;
    }
    if word.starts_with(b"/") {
        return Some(word);
    }
    if let Some(eq) = word.iter().position(|&b| b == b'=') {
        return Some(&word[eq + 1..]);
    }
    match word {
        [b'-', letter, rest @ ..] if *letter != b'-' => Some(rest),
        _ => Some(word),
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
            "#!/usr/bin/env -S PATH={ok} tool\n",
            "#!/usr/bin/env -S PATH={ok}:{open} tool\n",
            "#!/usr/bin/env -S {ok}/tool --flag={ok}/tool\n",
            "#!/usr/bin/env -S env -S 'PATH={ok} tool'\n",
            "#!/usr/bin/env -S -i sh\n",
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
            (
                "#!/usr/bin/env -S env -S 'PATH={open} tool'\n",
                format!("its command `/usr/bin/env`: its command `tool`: its PATH directory `{open}`"),
            ),
            (
                "#!/usr/bin/env -S sh {open}/evil\n",
                format!("its command's argument `{open}/evil`"),
            ),
            (
                "#!/usr/bin/env -S sh -c 'exec {open}/evil'\n",
                format!("its command's argument `{open}/evil`"),
            ),
            (
                "#!/usr/bin/env -S sh -I{open}\n",
                format!("its command's argument `{open}`"),
            ),
            (
                "#!/usr/bin/env -S PATH={ok} tool PATH={ok}:{open}\n",
                format!("its command's argument `{open}`"),
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
        // The hook's own PATH counts for a plain `env NAME` too.
        let err = f.check("#!/usr/bin/env tool\n", &f.sub("{open}:/usr/bin")).unwrap_err();
        assert!(err.contains(&format!("its PATH directory `{open}`")), "{err}");
        assert_eq!(f.check("#!/usr/bin/env tool\n", &f.sub("{ok}:{open}")), Ok(()));
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
                "its interpreter's argument `tmp/evil`: a relative path".to_owned(),
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
        assert_eq!(f.check("#!/bin/sh -eu\n", "/usr/bin"), Ok(()));
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
