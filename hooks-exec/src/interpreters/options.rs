//! What an interpreter makes of the words a `#!` line gives it: which name files it
//! opens (they must be absolute paths that pass), and which make it load or run code
//! it finds by name, read from standard input, or take the hook's arguments as
//! something to run (refused). Shells, Python, Perl, Ruby and Node are known option
//! by option; for any other program the rules are generic and stricter.

use std::ffi::OsStr;
use std::path::Path;

/// Why a word is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    /// The word, or the option, refused.
    pub(super) word: Vec<u8>,
    pub(super) why: String,
}

impl Refusal {
    fn new(word: &[u8], why: impl Into<String>) -> Self {
        Refusal {
            word: word.to_vec(),
            why: why.into(),
        }
    }
}

/// What the words name that must pass the trust rule.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Reading<'w> {
    /// Absolute paths the interpreter opens or loads from: each must exist and pass.
    pub(super) paths: Vec<&'w [u8]>,
    /// The first operand: the program file the interpreter runs instead of the script.
    pub(super) program_file: Option<&'w [u8]>,
}

/// Where the words come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The `#!` line's argument or env's command line: the script's path follows them,
    /// then the hook's arguments.
    CommandLine,
    /// Switches the interpreter reads from the script's own first line (Perl, Ruby):
    /// only the options count, and nothing follows them.
    FirstLine,
}

/// What an option's value is to the interpreter.
#[derive(Debug, Clone, Copy)]
enum Names {
    /// Nothing that runs or is read as code (`-o pipefail`, `-W error`).
    Nothing,
    /// Files or directories (`:`-separated) it loads code from or runs in.
    Files,
    /// Code, or code found by name: refused for this reason.
    Code(&'static str),
    /// `KEY=VALUE` settings: the values of these keys are [`Names::Files`].
    Settings(&'static [&'static str]),
}

/// How an option is given.
#[derive(Debug, Clone, Copy)]
enum Takes {
    /// A value, glued (`-mfoo`, `--opt=foo`) or the next word.
    Value(Names),
    /// A value only when glued (`-i.bak`): the rest of the word; alone it is a flag.
    Glued(Names),
    /// Glued characters from this set that name nothing (`-0777`, `-l`), after which
    /// the cluster goes on (`-lane` is `-l -a -n -e`).
    Chars(&'static [u8]),
    /// Refused, for this reason, with or without a value.
    Refused(&'static str),
}

/// An interpreter's command-line conventions. Options not listed are flags that name
/// nothing.
#[derive(Debug)]
pub(super) struct Family {
    /// What the interpreter is called in messages.
    pub(super) name: &'static str,
    /// Whether short options cluster and take glued values (`-eu`, `-mfoo`).
    clusters: bool,
    /// Whether `+x` is an option too (shells turn options off with it).
    plus: bool,
    short: &'static [(u8, Takes)],
    long: &'static [(&'static str, Takes)],
    /// Why `-` alone is refused (it reads the program from standard input), or `None`
    /// when it ends the options.
    lone_dash: Option<&'static str>,
    /// The word after which it reads more switches from the script's `#!` line.
    pub(super) first_line_after: Option<&'static [u8]>,
}

const DIGITS: &[u8] = b"0123456789";

const INLINE_CODE: &str =
    "runs code written on the line, which finds what it loads and runs by name: put it in the script instead";
const STDIN: &str = "reads the program from standard input, which is the domain XML";
const LOOPS_OVER_ARGUMENTS: &str = "wraps the script in a loop over the files the hook's arguments name (the object's name, which a guest owner may choose; perl's `<>` runs a name ending in `|` as a command)";
const SWITCHES_FROM_ARGUMENTS: &str =
    "turns the hook's arguments (the object's name, which a guest owner may choose) into the script's variables";
const FINDS_LATER_LINE: &str = "looks further down the file for the `#!` line it reads its switches from";

static SHELL: Family = Family {
    name: "the shell",
    clusters: true,
    plus: true,
    short: &[
        (
            b'c',
            Takes::Refused(
                "runs the command string that follows, which finds what it runs by name: put it in the script instead",
            ),
        ),
        (
            b's',
            Takes::Refused("reads commands from standard input, which is the domain XML"),
        ),
        (b'o', Takes::Value(Names::Nothing)),
        (b'O', Takes::Value(Names::Nothing)),
    ],
    long: &[
        ("rcfile", Takes::Value(Names::Files)),
        ("init-file", Takes::Value(Names::Files)),
    ],
    lone_dash: None,
    first_line_after: None,
};

static PYTHON: Family = Family {
    name: "python",
    clusters: true,
    plus: false,
    short: &[
        (b'c', Takes::Value(Names::Code("runs code written on the line with the working directory first in sys.path, so its imports can come from there"))),
        (b'm', Takes::Value(Names::Code("imports a module found by name, searching the working directory first"))),
        (b'i', Takes::Refused("reads Python from standard input, which is the domain XML, after the script")),
        (b'W', Takes::Value(Names::Nothing)),
        (b'X', Takes::Value(Names::Settings(&["pycache_prefix"]))),
        (b'Q', Takes::Value(Names::Nothing)),
    ],
    long: &[("check-hash-based-pycs", Takes::Value(Names::Nothing))],
    lone_dash: Some(STDIN),
    first_line_after: None,
};

static PERL: Family = Family {
    name: "perl",
    clusters: true,
    plus: false,
    short: &[
        (b'e', Takes::Value(Names::Code(INLINE_CODE))),
        (b'E', Takes::Value(Names::Code(INLINE_CODE))),
        (b'M', Takes::Value(Names::Code("loads a module found by name"))),
        (b'm', Takes::Value(Names::Code("loads a module found by name"))),
        (b'I', Takes::Value(Names::Files)),
        (
            b'd',
            Takes::Refused("starts the debugger, or a `Devel::` module found by name"),
        ),
        (b'x', Takes::Refused(FINDS_LATER_LINE)),
        (b'n', Takes::Refused(LOOPS_OVER_ARGUMENTS)),
        (b'p', Takes::Refused(LOOPS_OVER_ARGUMENTS)),
        (b'a', Takes::Refused(LOOPS_OVER_ARGUMENTS)),
        (b'F', Takes::Refused(LOOPS_OVER_ARGUMENTS)),
        (b's', Takes::Refused(SWITCHES_FROM_ARGUMENTS)),
        (b'C', Takes::Chars(b"0123456789IOEioeSDAL")),
        (b'l', Takes::Chars(DIGITS)),
        (b'0', Takes::Chars(b"0123456789abcdefABCDEFxX")),
        (b'D', Takes::Glued(Names::Nothing)),
        (b'i', Takes::Glued(Names::Nothing)),
        (b'V', Takes::Glued(Names::Nothing)),
    ],
    long: &[],
    lone_dash: Some(STDIN),
    first_line_after: Some(b"perl"),
};

static RUBY: Family = Family {
    name: "ruby",
    clusters: true,
    plus: false,
    short: &[
        (b'e', Takes::Value(Names::Code(INLINE_CODE))),
        (b'r', Takes::Value(Names::Files)),
        (b'I', Takes::Value(Names::Files)),
        (b'C', Takes::Value(Names::Files)),
        (b'x', Takes::Refused(FINDS_LATER_LINE)),
        (b'n', Takes::Refused(LOOPS_OVER_ARGUMENTS)),
        (b'p', Takes::Refused(LOOPS_OVER_ARGUMENTS)),
        (b's', Takes::Refused(SWITCHES_FROM_ARGUMENTS)),
        (b'E', Takes::Value(Names::Nothing)),
        (b'F', Takes::Glued(Names::Nothing)),
        (b'W', Takes::Glued(Names::Nothing)),
        (b'i', Takes::Glued(Names::Nothing)),
        (b'K', Takes::Chars(b"eEsSuUnN")),
        (b'T', Takes::Chars(DIGITS)),
        (b'0', Takes::Chars(DIGITS)),
    ],
    long: &[
        ("require", Takes::Value(Names::Files)),
        (
            "crash-report",
            Takes::Refused("names a file ruby writes, or a command it runs, when it crashes"),
        ),
        ("enable", Takes::Value(Names::Nothing)),
        ("disable", Takes::Value(Names::Nothing)),
        ("encoding", Takes::Value(Names::Nothing)),
        ("external-encoding", Takes::Value(Names::Nothing)),
        ("internal-encoding", Takes::Value(Names::Nothing)),
        ("dump", Takes::Value(Names::Nothing)),
        ("backtrace-limit", Takes::Value(Names::Nothing)),
    ],
    lone_dash: Some(STDIN),
    first_line_after: Some(b"ruby"),
};

const NODE_DEBUGGER: &str = "opens a debugger port through which any local user can run code";

static NODE: Family = Family {
    name: "node",
    clusters: false,
    plus: false,
    short: &[
        (b'e', Takes::Value(Names::Code(INLINE_CODE))),
        (b'p', Takes::Value(Names::Code(INLINE_CODE))),
        (b'r', Takes::Value(Names::Files)),
        (
            b'i',
            Takes::Refused("reads JavaScript from standard input, which is the domain XML"),
        ),
        (b'C', Takes::Value(Names::Nothing)),
    ],
    long: &[
        ("eval", Takes::Value(Names::Code(INLINE_CODE))),
        ("print", Takes::Value(Names::Code(INLINE_CODE))),
        ("require", Takes::Value(Names::Files)),
        ("import", Takes::Value(Names::Files)),
        ("loader", Takes::Value(Names::Files)),
        ("experimental-loader", Takes::Value(Names::Files)),
        ("env-file", Takes::Value(Names::Files)),
        ("env-file-if-exists", Takes::Value(Names::Files)),
        ("openssl-config", Takes::Value(Names::Files)),
        ("icu-data-dir", Takes::Value(Names::Files)),
        ("snapshot-blob", Takes::Value(Names::Files)),
        ("experimental-policy", Takes::Value(Names::Files)),
        (
            "interactive",
            Takes::Refused("reads JavaScript from standard input, which is the domain XML"),
        ),
        ("inspect", Takes::Refused(NODE_DEBUGGER)),
        ("inspect-brk", Takes::Refused(NODE_DEBUGGER)),
        ("inspect-wait", Takes::Refused(NODE_DEBUGGER)),
        ("inspect-port", Takes::Refused(NODE_DEBUGGER)),
        ("debug-port", Takes::Refused(NODE_DEBUGGER)),
        ("conditions", Takes::Value(Names::Nothing)),
        ("title", Takes::Value(Names::Nothing)),
        ("input-type", Takes::Value(Names::Nothing)),
    ],
    lone_dash: Some(STDIN),
    first_line_after: None,
};

/// The family of the program run as `program`, by the name it is run as or else the
/// file it resolves to (`/bin/sh` → `dash`), version suffixes aside (`python3.11`).
pub(super) fn family(program: &Path) -> Option<&'static Family> {
    let by_name = |p: &Path| p.file_name().and_then(OsStr::to_str).and_then(family_named);
    by_name(program).or_else(|| std::fs::canonicalize(program).ok().as_deref().and_then(by_name))
}

fn family_named(name: &str) -> Option<&'static Family> {
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    match base {
        "sh" | "bash" | "dash" | "ash" | "ksh" | "mksh" | "pdksh" | "zsh" | "yash" | "posh" => Some(&SHELL),
        "python" | "pypy" => Some(&PYTHON),
        "perl" => Some(&PERL),
        "ruby" => Some(&RUBY),
        "node" | "nodejs" => Some(&NODE),
        _ => None,
    }
}

/// Reads `words` (already split at blanks) as `family` would (`None`: a program
/// hookctl does not know). Every word that is not an option is a file the interpreter
/// opens by that name (the program to run, or its arguments): an absolute path, never a
/// bare name it would find from the working directory or `PATH`.
///
/// # Errors
/// The first word refused, and why.
pub(super) fn read<'w>(family: Option<&Family>, words: &[&'w [u8]], source: Source) -> Result<Reading<'w>, Refusal> {
    let mut reading = Reading::default();
    let mut words = words.iter().copied().filter(|w| !w.is_empty());
    let mut options_ended = false;
    while let Some(word) = words.next() {
        let is_option = word.len() > 1 && (word[0] == b'-' || (word[0] == b'+' && family.is_some_and(|f| f.plus)));
        if options_ended || !(is_option || word == b"-") {
            if source == Source::CommandLine {
                operand(word, &mut reading)?;
            }
            continue;
        }
        if word == b"--" {
            options_ended = true;
            continue;
        }
        if word == b"-" {
            match family.map_or(Some(STDIN), |f| f.lone_dash) {
                Some(why) => return Err(Refusal::new(word, why)),
                None => {
                    options_ended = true;
                    continue;
                }
            }
        }
        let Some(family) = family else {
            generic_option(word, true, &mut reading)?;
            continue;
        };
        // The option, how it takes a value, and a value glued to it.
        let (option, takes, glued): (&[u8], Option<Takes>, Option<&'w [u8]>) =
            if let Some(long) = word.strip_prefix(b"--") {
                let (name, value) = match long.iter().position(|&b| b == b'=') {
                    Some(eq) => (&long[..eq], Some(&long[eq + 1..])),
                    None => (long, None),
                };
                let found = family.long.iter().find(|(n, _)| n.as_bytes() == name).map(|&(_, t)| t);
                (word, found, value)
            } else if !family.clusters {
                let found = match word {
                    [_, letter] => family.short.iter().find(|(c, _)| c == letter).map(|&(_, t)| t),
                    _ => None,
                };
                (word, found, None)
            } else {
                // A cluster: flags up to the first letter that takes a value or is refused
                // (a `-` in it starts more switches for perl: `-w-Mfoo`). Anything else
                // ends it, and the word is read as unknown.
                let (mut i, mut found) = (1, None);
                while let Some(letter) = word.get(i).filter(|&&b| b.is_ascii_alphanumeric() || b == b'-') {
                    let rest = &word[i + 1..];
                    match family.short.iter().find(|(c, _)| c == letter).map(|&(_, t)| t) {
                        Some(Takes::Chars(set)) => {
                            i += 1 + rest.iter().take_while(|b| set.contains(b)).count();
                        }
                        Some(Takes::Glued(_)) if rest.is_empty() => i += 1,
                        Some(takes) => {
                            found = Some((&word[..=i], takes, (!rest.is_empty()).then_some(rest)));
                            break;
                        }
                        None => i += 1,
                    }
                }
                match found {
                    Some((option, takes, glued)) => (option, Some(takes), glued),
                    None => (word, None, None),
                }
            };
        let Some(takes) = takes else {
            generic_option(word, false, &mut reading)?;
            continue;
        };
        let (names, value) = match (takes, glued) {
            (Takes::Refused(why) | Takes::Value(Names::Code(why)) | Takes::Glued(Names::Code(why)), _) => {
                return Err(Refusal::new(option, why))
            }
            (Takes::Chars(_), _) => continue,
            (Takes::Glued(names), value) => (names, value),
            (Takes::Value(names), Some(value)) => (names, Some(value)),
            (Takes::Value(names), None) => match words.next() {
                Some(next) => (names, Some(next)),
                None if source == Source::FirstLine => (names, None),
                None => {
                    let why = "takes the next argument as its value, which is the script's path: the interpreter would then run the hook's first argument (the object's name, which a guest owner may choose)";
                    return Err(Refusal::new(option, why));
                }
            },
        };
        if let Some(value) = value {
            named(option, names, value, &mut reading)?;
        }
    }
    Ok(reading)
}

/// A word that is not an option: a file the interpreter opens by this name.
fn operand<'w>(word: &'w [u8], reading: &mut Reading<'w>) -> Result<(), Refusal> {
    if !word.starts_with(b"/") {
        let why = "the interpreter would find a file by this name from the working directory or PATH: only an absolute path that passes may be given";
        return Err(Refusal::new(word, why));
    }
    reading.program_file.get_or_insert(word);
    reading.paths.push(word);
    Ok(())
}

/// `option`'s `value`, which `names` what.
fn named<'w>(option: &[u8], names: Names, value: &'w [u8], reading: &mut Reading<'w>) -> Result<(), Refusal> {
    match names {
        // Named nothing, as far as hookctl knows: a path in it is still checked.
        Names::Nothing => paths_in(value, reading),
        Names::Code(why) => Err(Refusal::new(option, why)),
        Names::Files => files(value, reading),
        Names::Settings(keys) => match value.iter().position(|&b| b == b'=') {
            Some(eq) if keys.iter().any(|k| k.as_bytes() == &value[..eq]) => files(&value[eq + 1..], reading),
            _ => Ok(()),
        },
    }
}

/// `:`-separated paths an interpreter loads from: each must be absolute.
fn files<'w>(value: &'w [u8], reading: &mut Reading<'w>) -> Result<(), Refusal> {
    for part in value.split(|&b| b == b':') {
        if !part.starts_with(b"/") {
            let why = "a relative path or a name, which the interpreter finds from the working directory or a search path: only an absolute path that passes may be given";
            return Err(Refusal::new(part, why));
        }
        reading.paths.push(part);
    }
    Ok(())
}

/// An option whose meaning is not known: any path in it (`-I/x`, `--rc=/x`, `-x/a:/b`)
/// is taken as code, and for a program hookctl does not know at all (`unknown`), so is
/// any other value after `=` but a number.
fn generic_option<'w>(word: &'w [u8], unknown: bool, reading: &mut Reading<'w>) -> Result<(), Refusal> {
    if let Some(value) = named_path(word) {
        return paths_in(value, reading);
    }
    if let (true, Some(eq)) = (unknown, word.iter().position(|&b| b == b'=')) {
        let value = &word[eq + 1..];
        if !value.is_empty() && !value.iter().all(u8::is_ascii_digit) {
            let why = "hookctl does not know this program's options, and the value may name a file it finds from the working directory";
            return Err(Refusal::new(word, why));
        }
    }
    Ok(())
}

/// The `:`-separated parts of `value` that have a `/`: each must be an absolute path.
fn paths_in<'w>(value: &'w [u8], reading: &mut Reading<'w>) -> Result<(), Refusal> {
    for part in value.split(|&b| b == b':').filter(|p| p.contains(&b'/')) {
        if !part.starts_with(b"/") {
            let why = "a relative path is found from the working directory";
            return Err(Refusal::new(part, why));
        }
        reading.paths.push(part);
    }
    Ok(())
}

/// The path in an option, if it has a `/`: what follows `=` (`--rcfile=/x`), or what
/// follows a short option's letter (`-I/x`).
fn named_path(word: &[u8]) -> Option<&[u8]> {
    if !word.contains(&b'/') {
        return None;
    }
    if let Some(eq) = word.iter().position(|&b| b == b'=') {
        return Some(&word[eq + 1..]);
    }
    match word {
        [b'-' | b'+', letter, rest @ ..] if *letter != b'-' => Some(rest),
        _ => Some(word),
    }
}

/// Whether `b` separates words where an interpreter splits a line itself: ASCII
/// whitespace and the vertical tab (perl's `isSPACE`, which Rust's `is_ascii_whitespace`
/// leaves out).
pub(super) fn is_blank(b: &u8) -> bool {
    b.is_ascii_whitespace() || *b == 0x0b
}

/// The words of `line` (a script's first line, without `#!`) from which `family`
/// reads switches: everything after the first `after` word (perl reads from the first
/// `perl -`, ruby from the first ` -` after `ruby`; taking all that follows the first
/// occurrence covers both), or `None` when the line does not name it.
pub(super) fn first_line_words<'l>(line: &'l [u8], after: &[u8]) -> Option<Vec<&'l [u8]>> {
    let start = line.windows(after.len()).position(|w| w == after)? + after.len();
    Some(line[start..].split(is_blank).filter(|w| !w.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<&[u8]> {
        line.split_ascii_whitespace().map(str::as_bytes).collect()
    }

    fn read_as(name: &str, line: &str) -> Result<Vec<String>, String> {
        let family = family_named(name);
        read(family, &words(line), Source::CommandLine)
            .map(|r| {
                r.paths
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect()
            })
            .map_err(|r| format!("`{}`: {}", String::from_utf8_lossy(&r.word), r.why))
    }

    #[test]
    fn families_by_name() {
        for (name, family) in [
            ("sh", "the shell"),
            ("bash", "the shell"),
            ("ksh93", "the shell"),
            ("python3", "python"),
            ("python3.11", "python"),
            ("perl5.36.0", "perl"),
            ("ruby3.1", "ruby"),
            ("nodejs", "node"),
        ] {
            assert_eq!(family_named(name).map(|f| f.name), Some(family), "{name}");
        }
        for name in ["awk", "php", "python-config", "shellcheck"] {
            assert!(family_named(name).is_none(), "{name}");
        }
        // A path by its file name (by what it links to: see the ruby case in
        // interpreters.rs, whose fixture can make links).
        assert_eq!(family(Path::new("/usr/bin/python3")).map(|f| f.name), Some("python"));
    }

    #[test]
    fn harmless_lines_pass() {
        for (name, line) in [
            ("sh", "-e"),
            ("bash", "-eu"),
            ("bash", "-e -u"),
            ("bash", "-eo pipefail"),
            ("bash", "+x --login --noprofile"),
            ("sh", "-"),
            ("python3", "-u"),
            ("python3", "-W ignore -X dev -Es"),
            ("python3", "-Wignore -OO"),
            ("perl", "-w"),
            ("perl", "-wT -l -0777 -i.bak"),
            ("ruby", "-w --disable=gems"),
            ("node", "--max-old-space-size=4096"),
            ("awk", "-f"),
        ] {
            assert_eq!(read_as(name, line), Ok(vec![]), "{name} {line}");
        }
        // Absolute paths are returned to be checked.
        assert_eq!(read_as("bash", "--rcfile /etc/rc"), Ok(vec!["/etc/rc".to_owned()]));
        assert_eq!(read_as("perl", "-I/opt/lib -w"), Ok(vec!["/opt/lib".to_owned()]));
        assert_eq!(read_as("ruby", "-r /opt/x.rb"), Ok(vec!["/opt/x.rb".to_owned()]));
        assert_eq!(
            read_as("python3", "-X pycache_prefix=/var/cache/py"),
            Ok(vec!["/var/cache/py".to_owned()])
        );
        assert_eq!(read_as("sh", "-e /opt/x"), Ok(vec!["/opt/x".to_owned()]));
        assert_eq!(
            read_as("tool", "--conf=/a:/b"),
            Ok(vec!["/a".to_owned(), "/b".to_owned()])
        );
    }

    #[test]
    fn what_loads_code_by_name_is_refused() {
        for (name, line, why) in [
            // Bare words are found from the working directory or PATH.
            ("sh", "rt6evil", "`rt6evil`: the interpreter would find a file"),
            ("bash", "-e rt6evil", "`rt6evil`"),
            ("sh", "-- -evil", "`-evil`"),
            ("tool", "PATH=/x", "`PATH=/x`"),
            // Options that load or run code by name.
            ("python3", "-m rt6mod", "`-m`: imports a module"),
            ("python3", "-mrt6mod", "`-m`"),
            ("python3", "-Emrt6mod", "`-Em`"),
            ("python3", "-c pass", "`-c`"),
            ("python3", "-i", "`-i`: reads Python from standard input"),
            ("python3", "-", "`-`: reads the program from standard input"),
            ("python3", "-X pycache_prefix=cache", "`cache`: a relative path"),
            ("perl", "-Mrt6evil", "`-M`: loads a module"),
            ("perl", "-wMrt6evil", "`-wM`"),
            ("perl", "-w-Mrt6evil", "`-w-M`"),
            ("perl", "-mstrict", "`-m`"),
            ("perl", "-I rt6", "`rt6`: a relative path"),
            ("perl", "-d:rt6", "`-d`"),
            ("perl", "-n", "`-n`: wraps the script in a loop"),
            ("perl", "-lane", "`-la`"),
            ("perl", "-s", "`-s`"),
            ("perl", "-x", "`-x`"),
            ("perl", "-e 1", "`-e`: runs code written on the line"),
            ("ruby", "-rrt6lib", "`rt6lib`"),
            ("ruby", "--require=rt6lib", "`rt6lib`"),
            ("ruby", "-C /tmp/x -r ./lib", "`./lib`"),
            ("node", "-r rt6mod", "`rt6mod`"),
            ("node", "--import=rt6mod", "`rt6mod`"),
            ("node", "--inspect", "`--inspect`: opens a debugger port"),
            ("node", "--inspect=0.0.0.0:9229", "`--inspect=0.0.0.0:9229`"),
            ("bash", "--rcfile rt6rc", "`rt6rc`"),
            ("bash", "--init-file ./rc", "`./rc`"),
            ("sh", "-c rt6cmd", "`-c`: runs the command string"),
            ("sh", "-ec 'exit'", "`-ec`"),
            ("sh", "-s", "`-s`: reads commands from standard input"),
            // A value it would take from the script's path, running the guest's name.
            ("bash", "--rcfile", "`--rcfile`: takes the next argument"),
            ("python3", "-W", "`-W`: takes the next argument"),
            // A program hookctl does not know: a value after `=` may name a file.
            (
                "php",
                "-dauto_prepend_file=rt6",
                "`-dauto_prepend_file=rt6`: hookctl does not know",
            ),
            ("php", "-", "`-`"),
        ] {
            let err = read_as(name, line).unwrap_err();
            assert!(err.contains(why), "{name} {line}: wanted `{why}` in {err}");
        }
    }

    #[test]
    fn switches_on_the_first_line() {
        let line = b"/usr/bin/perl                     -w -I/tmp/x";
        let words = first_line_words(line, b"perl").unwrap();
        let reading = read(Some(&PERL), &words, Source::FirstLine).unwrap();
        assert_eq!(reading.paths, [b"/tmp/x"]);
        // Only options count there, and nothing follows the last one.
        let words = first_line_words(b"/usr/bin/env -S perl -w # use strict -I", b"perl").unwrap();
        assert_eq!(read(Some(&PERL), &words, Source::FirstLine), Ok(Reading::default()));
        let words = first_line_words(b"/usr/bin/env -S perl\t#perl -Mrt6", b"perl").unwrap();
        assert!(read(Some(&PERL), &words, Source::FirstLine).is_err());
        let words = first_line_words(b"/usr/bin/perl -w\x0b-Mrt6", b"perl").unwrap();
        assert_eq!(words, [b"-w".as_slice(), b"-Mrt6"]);
        assert_eq!(first_line_words(b"/bin/sh -e", b"perl"), None);
    }
}
