//! What `env` (GNU coreutils; uutils accepts the same) would run, worked out from its
//! arguments without running it: its options, the `-S` string split as env splits it
//! (quotes, escapes, `${NAME}`, `#` comments, `\c`), `NAME=VALUE` assignments, and the
//! command with its arguments. Whatever cannot be known before it runs is an error
//! saying why, never a guess.

use std::collections::{BTreeMap, VecDeque};

/// One argument env receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Arg {
    /// Known now: the `#!` line's argument, the script's path.
    Known(Vec<u8>),
    /// The rest of the command line: libvirt's arguments to the hook (the object's name,
    /// which a guest owner may choose, the operation...). Unknown until it runs.
    HookArgs,
}

/// What is known of a program's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Environment {
    /// Variables whose value is known; `None` when known to be unset.
    known: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Whether every variable not in `known` is unset (after `env -i`), rather than
    /// unknown.
    only_known: bool,
}

/// A variable's value, as far as it is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    Set(&'a [u8]),
    Unset,
    Unknown,
}

/// `execvp`'s search path when `PATH` is unset (glibc's `_CS_PATH`).
pub(crate) const DEFAULT_PATH: &[u8] = b"/bin:/usr/bin";

impl Environment {
    /// A hook's environment: only `PATH` is known (the value libvirt passes on, or
    /// unset); the rest (`HOME`, the state directory...) is taken as unknown.
    pub(crate) fn with_path(path: Option<&[u8]>) -> Self {
        let known = BTreeMap::from([(b"PATH".to_vec(), path.map(<[u8]>::to_vec))]);
        Environment {
            known,
            only_known: false,
        }
    }

    pub(crate) fn get(&self, name: &[u8]) -> Value<'_> {
        match self.known.get(name) {
            Some(Some(value)) => Value::Set(value),
            Some(None) => Value::Unset,
            None if self.only_known => Value::Unset,
            None => Value::Unknown,
        }
    }

    /// The directories `execvp` searches.
    pub(crate) fn search_path(&self) -> Option<&[u8]> {
        match self.get(b"PATH") {
            Value::Set(path) => Some(path),
            Value::Unset => Some(DEFAULT_PATH),
            Value::Unknown => None,
        }
    }

    fn clear(&mut self) {
        self.known.clear();
        self.only_known = true;
    }

    fn set(&mut self, name: &[u8], value: Option<&[u8]>) {
        self.known.insert(name.to_vec(), value.map(<[u8]>::to_vec));
    }
}

/// What env ends up doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvRun {
    /// The environment the command starts with.
    pub(crate) environment: Environment,
    /// The command as env passes it to `execvp`, or `None` when env only prints its
    /// environment.
    pub(crate) command: Option<Vec<u8>>,
    /// The command's arguments that are known now (the hook's own follow them).
    pub(crate) args: Vec<Vec<u8>>,
    /// The `NAME=VALUE` assignments env makes, in order.
    pub(crate) assignments: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The most `-S` strings env is followed through (one can expand to another).
const MAX_SPLITS: usize = 64;

/// How env's long options take an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takes {
    Nothing,
    Required,
    Optional,
}

/// env's long options (coreutils 9.5; an older env rejects `--argv0` and runs nothing).
const LONG_OPTIONS: [(&str, Takes); 13] = [
    ("argv0", Takes::Required),
    ("ignore-environment", Takes::Nothing),
    ("null", Takes::Nothing),
    ("unset", Takes::Required),
    ("chdir", Takes::Required),
    ("default-signal", Takes::Optional),
    ("ignore-signal", Takes::Optional),
    ("block-signal", Takes::Optional),
    ("list-signal-handling", Takes::Nothing),
    ("debug", Takes::Nothing),
    ("split-string", Takes::Required),
    ("help", Takes::Nothing),
    ("version", Takes::Nothing),
];

/// The most bytes one `-S` string may split into (`${NAME}` can make it grow).
const MAX_SPLIT_BYTES: usize = 1 << 16;

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Works out what env does with `args` (everything after `argv[0]`), started with
/// `environment`, the way GNU env's `main` does: options (a `+` getopt: they stop at
/// the first operand) where `-S` splits its argument and starts over on the result,
/// then `-`, then `NAME=VALUE` assignments, then the command.
///
/// # Errors
/// Why what it runs cannot be known now: the hook's arguments would be read as options,
/// assignments or the command; `${NAME}` of a variable whose value is not known;
/// `-C`/`--chdir` (a relative command would be found from the new directory);
/// `-a`/`--argv0` (the name a program runs under can change what it is); an option env
/// itself rejects or that makes it run nothing useful (`-0`, `--help`).
pub(crate) fn parse(args: Vec<Arg>, environment: &Environment) -> Result<EnvRun, String> {
    let mut args: VecDeque<Arg> = args.into();
    let (mut ignore_environment, mut unset) = (false, Vec::new());
    let mut splits = 0;
    let from_hook = "env would take the hook's arguments (the object's name, which a guest owner may choose) as its options or command";
    'options: while let Some(front) = args.front() {
        let word = match front {
            Arg::HookArgs => return Err(from_hook.to_owned()),
            Arg::Known(word) if word == b"--" => {
                args.pop_front();
                break;
            }
            Arg::Known(word) if word.len() < 2 || word[0] != b'-' => break,
            Arg::Known(word) => word.clone(),
        };
        args.pop_front();
        // The option, its argument when glued to it, and how it takes one.
        let mut short = 1;
        loop {
            let (option, glued, takes) = if let Some(long) = word.strip_prefix(b"--") {
                let (name, value) = match long.iter().position(|&b| b == b'=') {
                    Some(eq) => (&long[..eq], Some(long[eq + 1..].to_vec())),
                    None => (long, None),
                };
                let (full, takes) = long_option(name)?;
                if takes == Takes::Nothing && value.is_some() {
                    return Err(format!("env rejects `--{full}` with an argument"));
                }
                (format!("--{full}"), value, takes)
            } else {
                let c = word[short];
                short += 1;
                let rest = (short < word.len()).then(|| word[short..].to_vec());
                match c {
                    b'i' | b'v' | b'0' => (format!("-{}", c as char), None, Takes::Nothing),
                    b'a' | b'u' | b'S' | b'C' => {
                        short = word.len();
                        (format!("-{}", c as char), rest, Takes::Required)
                    }
                    b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' => {
                        return Err(format!(
                            "env rejects `{}`: a `#!` line passes everything after the interpreter as one argument (use -S)",
                            show(&word)
                        ))
                    }
                    _ => return Err(format!("`{}`: env has no option `-{}`", show(&word), show(&[c]))),
                }
            };
            let value = match (takes, glued) {
                (Takes::Required, None) => match args.pop_front() {
                    Some(Arg::Known(next)) => Some(next),
                    Some(Arg::HookArgs) => return Err(from_hook.to_owned()),
                    None => return Err(format!("env rejects `{option}` without an argument")),
                },
                (_, value) => value,
            };
            match (option.as_str(), value) {
                ("-i" | "--ignore-environment", _) => ignore_environment = true,
                ("-u" | "--unset", Some(name)) => unset.push(name),
                ("-S" | "--split-string", Some(text)) => {
                    splits += 1;
                    if splits > MAX_SPLITS {
                        return Err(format!("more than {MAX_SPLITS} `-S` strings: too deep to follow"));
                    }
                    let words = split_string(&text, environment)?;
                    for word in words.into_iter().rev() {
                        args.push_front(Arg::Known(word));
                    }
                    // env starts its option scan over on the split words.
                    continue 'options;
                }
                ("-C" | "--chdir", _) => {
                    return Err(format!(
                        "`{option}` changes the working directory before the command is found: not allowed on a checked `#!` line"
                    ))
                }
                ("-0" | "--null" | "--help" | "--version", _) => {
                    return Err(format!("`{option}` makes env print instead of running the hook"))
                }
                ("-a" | "--argv0", _) => {
                    return Err(format!(
                        "`{option}` runs the command under another name, which changes what some programs are (busybox picks its applet by it, perl whether to run another interpreter): not allowed on a checked `#!` line"
                    ))
                }
                // Debug output, signal dispositions: nothing that changes what runs.
                _ => {}
            }
            if word.starts_with(b"--") || short >= word.len() {
                break;
            }
        }
    }
    if matches!(args.front(), Some(Arg::Known(word)) if word == b"-") {
        args.pop_front();
        ignore_environment = true;
    }
    let mut after = environment.clone();
    let mut assignments = Vec::new();
    if ignore_environment {
        after.clear();
    } else {
        for name in &unset {
            if name.is_empty() || name.contains(&b'=') {
                return Err(format!("env cannot unset `{}`", show(name)));
            }
            after.set(name, None);
        }
    }
    loop {
        match args.front() {
            Some(Arg::Known(word)) => match word.iter().position(|&b| b == b'=') {
                Some(0) => return Err(format!("env cannot set `{}`", show(word))),
                Some(eq) => {
                    after.set(&word[..eq], Some(&word[eq + 1..]));
                    assignments.push((word[..eq].to_vec(), word[eq + 1..].to_vec()));
                    args.pop_front();
                }
                None => break,
            },
            Some(Arg::HookArgs) => return Err(from_hook.to_owned()),
            None => break,
        }
    }
    let command = match args.pop_front() {
        Some(Arg::Known(command)) => Some(command),
        Some(Arg::HookArgs) => return Err(from_hook.to_owned()),
        None => None,
    };
    let args = args
        .into_iter()
        .map_while(|a| match a {
            Arg::Known(word) => Some(word),
            Arg::HookArgs => None,
        })
        .collect();
    Ok(EnvRun {
        environment: after,
        command,
        args,
        assignments,
    })
}

/// The long option `name` stands for: an exact name, or the one name it begins
/// (getopt's abbreviations).
fn long_option(name: &[u8]) -> Result<(&'static str, Takes), String> {
    if let Some(&(full, takes)) = LONG_OPTIONS.iter().find(|(full, _)| full.as_bytes() == name) {
        return Ok((full, takes));
    }
    let mut matching = LONG_OPTIONS
        .iter()
        .filter(|(full, _)| full.as_bytes().starts_with(name));
    match (matching.next(), matching.next()) {
        (Some(&(full, takes)), None) if !name.is_empty() => Ok((full, takes)),
        (Some(_), Some(_)) => Err(format!("env rejects the ambiguous option `--{}`", show(name))),
        _ => Err(format!("env has no option `--{}`", show(name))),
    }
}

/// Splits a `-S` string as GNU env's `build_argv` does: blanks separate words outside
/// quotes; `'...'` keeps everything but `\\` and `\'`; `"..."` keeps blanks and
/// expands `${NAME}` and escapes; `\_` separates words (a blank inside double quotes);
/// `\c` and a word starting with `#` end the string; `\f \n \r \t \v \" \# \$ \' \\`
/// are escapes; anything else after a backslash, `$` not followed by `${NAME}`, and an
/// open quote are errors, as env makes them. `${NAME}` takes its value from the
/// environment env was started with.
///
/// # Errors
/// Why env would reject the string, or that a `${NAME}` it expands has a value not known
/// before the hook runs.
pub(crate) fn split_string(text: &[u8], environment: &Environment) -> Result<Vec<Vec<u8>>, String> {
    let text = &text[..text.iter().position(|&b| b == 0).unwrap_or(text.len())];
    let mut words: Vec<Vec<u8>> = Vec::new();
    // Whether the last character seen separates words: the next one starts a new word.
    let mut separated = true;
    let (mut single, mut double) = (false, false);
    let mut i = 0;
    while let Some(&c) = text.get(i) {
        let mut byte = c;
        match c {
            b'\'' if !double => {
                single = !single;
                start_word(&mut words, &mut separated);
                i += 1;
                continue;
            }
            b'"' if !single => {
                double = !double;
                start_word(&mut words, &mut separated);
                i += 1;
                continue;
            }
            b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' if !single && !double => {
                separated = true;
                i += 1;
                continue;
            }
            b'#' if separated => return Ok(words),
            b'\\' if !single || matches!(text.get(i + 1), Some(b'\\' | b'\'')) => {
                i += 1;
                byte = match text.get(i) {
                    Some(&e @ (b'"' | b'#' | b'$' | b'\'' | b'\\')) => e,
                    Some(b'_') if !double => {
                        separated = true;
                        i += 1;
                        continue;
                    }
                    Some(b'_') => b' ',
                    Some(b'c') if double => {
                        return Err("env rejects `\\c` inside double quotes in a -S string".to_owned())
                    }
                    Some(b'c') => return Ok(words),
                    Some(b'f') => 0x0c,
                    Some(b'n') => b'\n',
                    Some(b'r') => b'\r',
                    Some(b't') => b'\t',
                    Some(b'v') => 0x0b,
                    Some(&other) => return Err(format!("env rejects `\\{}` in a -S string", show(&[other]))),
                    None => return Err("env rejects a backslash at the end of a -S string".to_owned()),
                };
            }
            b'$' if !single => {
                let (name, end) = variable(&text[i..]).ok_or_else(|| {
                    format!(
                        "env rejects `{}` in a -S string: only `${{NAME}}` is expanded",
                        show(&text[i..])
                    )
                })?;
                match environment.get(name) {
                    Value::Set(value) => {
                        start_word(&mut words, &mut separated);
                        if let Some(word) = words.last_mut() {
                            word.extend_from_slice(value);
                        }
                        if words.iter().map(Vec::len).sum::<usize>() > MAX_SPLIT_BYTES {
                            return Err(format!("a -S string expands to more than {MAX_SPLIT_BYTES} bytes"));
                        }
                    }
                    Value::Unset => {}
                    Value::Unknown => {
                        return Err(format!(
                            "`${{{}}}` in a -S string is expanded from the hook's environment when it runs, so what it names cannot be checked",
                            show(name)
                        ))
                    }
                }
                i += end;
                continue;
            }
            _ => {}
        }
        start_word(&mut words, &mut separated);
        if let Some(word) = words.last_mut() {
            word.push(byte);
        }
        i += 1;
    }
    if single || double {
        return Err("env rejects a -S string with no closing quote".to_owned());
    }
    Ok(words)
}

/// After a separator, the next character (or an empty pair of quotes) starts a word.
fn start_word(words: &mut Vec<Vec<u8>>, separated: &mut bool) {
    if *separated {
        words.push(Vec::new());
        *separated = false;
    }
}

/// The `NAME` of a `${NAME}` at the start of `text` (a letter or `_`, then letters,
/// digits and `_`), and the length of the whole `${NAME}`.
fn variable(text: &[u8]) -> Option<(&[u8], usize)> {
    let rest = text.strip_prefix(b"${")?;
    let len = rest.iter().position(|&b| !(b.is_ascii_alphanumeric() || b == b'_'))?;
    let name = &rest[..len];
    let first = *name.first()?;
    (rest[len] == b'}' && (first.is_ascii_alphabetic() || first == b'_')).then_some((name, len + 3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook_env() -> Environment {
        Environment::with_path(Some(b"/usr/bin:/bin"))
    }

    fn split(text: &str) -> Result<Vec<String>, String> {
        split_string(text.as_bytes(), &hook_env()).map(|w| w.iter().map(|w| show(w)).collect())
    }

    #[test]
    fn splits_as_gnu_env_does() {
        assert_eq!(split("  python3   -u ").unwrap(), ["python3", "-u"]);
        assert_eq!(split("").unwrap(), Vec::<String>::new());
        assert_eq!(split("a'b c'\"d e\"f").unwrap(), ["ab cd ef"]);
        // Empty quotes are an empty word; an unset variable alone is none.
        assert_eq!(split("'' x \"\"").unwrap(), ["", "x", ""]);
        assert_eq!(split(r"a\_b\_\_c").unwrap(), ["a", "b", "c"]);
        assert_eq!(split(r#""a\_b""#).unwrap(), ["a b"]);
        assert_eq!(split(r#"\"\'\#\$\\ \t"#).unwrap(), ["\"'#$\\", "\t"]);
        assert_eq!(split(r"'a\b\\c\'d'").unwrap(), [r"a\b\c'd"]);
        assert_eq!(split(r#"'"' "'""#).unwrap(), ["\"", "'"]);
        assert_eq!(split("a #b c").unwrap(), ["a"]);
        assert_eq!(split("a#b '#c'").unwrap(), ["a#b", "#c"]);
        assert_eq!(split(r"a\cb c").unwrap(), ["a"]);
        assert_eq!(split("x\0 /evil").unwrap(), ["x"]);
    }

    #[test]
    fn rejects_what_env_rejects() {
        for (text, why) in [
            (r"a\q", r"`\q`"),
            ("a\\", "backslash at the end"),
            ("'a", "no closing quote"),
            ("\"a", "no closing quote"),
            (r#""\c""#, r"`\c`"),
            ("$HOME", "only `${NAME}`"),
            ("${1X}", "only `${NAME}`"),
            ("${X", "only `${NAME}`"),
        ] {
            let err = split(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn variables_expand_only_when_their_value_is_known() {
        assert_eq!(split("${PATH}/x").unwrap(), ["/usr/bin:/bin/x"]);
        assert_eq!(split("'${PATH}'").unwrap(), ["${PATH}"]);
        let err = split("${HOME}/evil").unwrap_err();
        assert!(err.contains("`${HOME}`"), "{err}");
        let mut cleared = hook_env();
        cleared.clear();
        assert_eq!(
            split_string(b"a ${HOME} b", &cleared).unwrap(),
            [b"a".to_vec(), b"b".to_vec()]
        );
    }

    fn run(argument: &str) -> Result<EnvRun, String> {
        let args = vec![
            Arg::Known(argument.as_bytes().to_vec()),
            Arg::Known(b"/hooks/10-x".to_vec()),
            Arg::HookArgs,
        ];
        parse(args, &hook_env())
    }

    fn command(argument: &str) -> (String, Vec<String>, Option<String>) {
        let run = run(argument).unwrap();
        let path = match run.environment.get(b"PATH") {
            Value::Set(p) => Some(show(p)),
            Value::Unset => None,
            Value::Unknown => Some("?".to_owned()),
        };
        (
            show(&run.command.unwrap()),
            run.args.iter().map(|a| show(a)).collect(),
            path,
        )
    }

    #[test]
    fn finds_the_command_options_and_assignments() {
        let system = Some("/usr/bin:/bin".to_owned());
        // Without -S the whole argument is one command name.
        assert_eq!(
            command("python3"),
            ("python3".into(), vec!["/hooks/10-x".into()], system.clone())
        );
        assert_eq!(command("python3 -u").0, "python3 -u");
        assert_eq!(
            command("-S python3 -u"),
            (
                "python3".into(),
                vec!["-u".into(), "/hooks/10-x".into()],
                system.clone()
            )
        );
        let evil = (
            "evil".to_owned(),
            vec!["/hooks/10-x".to_owned()],
            Some("/home/u".to_owned()),
        );
        for line in [
            "-S PATH=/home/u evil",
            "-vS PATH=/home/u evil",
            "-S\"PATH=/home/u\" evil",
            "--split-string=PATH=/home/u\\_evil",
            "--split=PATH=/home/u\\_evil",
            "-S -i -- PATH=/home/u evil",
            "-S -u HOME -uLANG - PATH=/home/u evil",
            "-S -S -S\\_PATH=/home/u\\_evil",
            "-S --unset=X --debug --default-signal=PIPE --block-signal PATH=/home/u evil",
        ] {
            assert_eq!(command(line), evil, "{line}");
        }
        // Every assignment is recorded in order, also one overridden later.
        let assigned = run("-S -i A=1 PATH=/a B= PATH=/b sh").unwrap().assignments;
        let pairs: Vec<(String, String)> = assigned.iter().map(|(n, v)| (show(n), show(v))).collect();
        let want = [("A", "1"), ("PATH", "/a"), ("B", ""), ("PATH", "/b")].map(|(n, v)| (n.to_owned(), v.to_owned()));
        assert_eq!(pairs, want);
        assert!(run("-S -u HOME sh").unwrap().assignments.is_empty());
        // No command in the line: env runs the script's own path.
        assert_eq!(command("PATH=/x").0, "/hooks/10-x");
        assert_eq!(command("-S -i").2, None);
        assert_eq!(command("-S -uPATH").2, None);
    }

    #[test]
    fn refuses_what_cannot_be_known_before_it_runs() {
        for (line, why) in [
            ("-S -C /tmp ./evil", "`-C`"),
            ("-S --chdir=/tmp ./evil", "`--chdir`"),
            ("-S --ch /tmp ./evil", "`--chdir`"),
            ("-S -a sh /usr/bin/busybox", "`-a` runs the command under another name"),
            ("-S -aperl /usr/bin/tool", "`-a`"),
            ("-S --argv0=sh busybox", "`--argv0`"),
            ("-S -0", "`-0`"),
            ("-S --help", "`--help`"),
            ("-S ${HOME}/evil", "`${HOME}`"),
            ("-i python3", "use -S"),
            ("-S -x evil", "no option `-x`"),
            ("-S --frobnicate", "no option `--frobnicate`"),
            ("-S --d", "ambiguous"),
            ("-S --debug=1 evil", "with an argument"),
            // An option that takes the script's path as its argument leaves the hook's
            // arguments to be the command.
            ("-S -u", "hook's arguments"),
            ("-S --unset", "hook's arguments"),
            ("-S =x evil", "cannot set"),
        ] {
            let err = run(line).unwrap_err();
            assert!(err.contains(why), "{line}: {err}");
        }
        // A script path that is an assignment makes the hook's first argument the command.
        let args = vec![
            Arg::Known(b"-S -i".to_vec()),
            Arg::Known(b"/hooks/10-a=b".to_vec()),
            Arg::HookArgs,
        ];
        assert!(parse(args, &hook_env()).unwrap_err().contains("hook's arguments"));
        // `-S` strings that keep expanding to `-S` strings end.
        let mut env = hook_env();
        env.set(b"A", Some(b"-S${A}"));
        let args = vec![Arg::Known(b"-S${A}".to_vec()), Arg::HookArgs];
        assert!(parse(args, &env).unwrap_err().contains("too deep"));
        // ...and so do those that double at each step.
        env.set(b"A", Some(b"-S${A}${A}"));
        let args = vec![Arg::Known(b"-S${A}".to_vec()), Arg::HookArgs];
        assert!(parse(args, &env).unwrap_err().contains("more than 65536 bytes"));
    }
}
