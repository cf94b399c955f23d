//! Sidecars read whole: the settings, matching, and each error with its file and line.

use super::sidecar::MAX_MEMORY;
use super::*;
use crate::RawEvent;

fn parse(text: &str) -> Result<HookSettings, SettingsError> {
    HookSettings::parse(Path::new("h.toml"), text)
}

#[test]
fn full_file() {
    let s = parse(
        "timeout = 2\nmemory = \"32MiB\"\nmax_output = 1024\npolicy = \"optional\"\n[match]\nobjects = [\"win*\", \"db-?\"]\nops = [\"prepare\", \"release\"]\nsubops = [\"begin\"]\n",
    )
    .unwrap();
    assert_eq!(s.timeout, TimeoutSetting::After(Duration::from_secs(2)));
    assert_eq!(s.memory, Some(32 << 20));
    assert_eq!(s.max_output, Some(1024));
    let ev = |o: &str, op: &str| RawEvent::new(crate::Driver::Qemu, [o, op, "begin", "-"]);
    assert!(s.matcher.matches(&ev("win10", "prepare")));
    assert!(s.matcher.matches(&ev("db-1", "prepare")));
    assert!(!s.matcher.matches(&ev("db-12", "prepare")));
    assert!(!s.matcher.matches(&ev("win10", "start")));
    assert_eq!(s.summary(), "timeout=2s memory=32MiB max_output=1024 policy=optional match: objects=win*,db-? ops=prepare,release subops=begin");
}

#[test]
fn state_and_its_cap() {
    let s = parse("state = true\nstate_max = \"2MiB\"\n").unwrap();
    assert!(s.state);
    assert_eq!(s.state_max, Some(2 << 20));
    assert_eq!(s.summary(), "state(max=2097152)");
    assert!(!parse("").unwrap().state);
    let e = parse("\nstate_max = 4096\n").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.message.contains("without `state = true`"), "{e}");
    let e = parse("state = true\nstate_max = \"2GiB\"\n").unwrap_err();
    assert!(e.message.contains("too large"), "{e}");
    let e = parse("state = \"yes\"\n").unwrap_err();
    assert_eq!(e.line, Some(1), "{e}");
}

#[test]
fn config_is_the_plugins_own_table_of_plain_values() {
    let s = parse("timeout = 2\n[config]\nmax_vcpus = 8\nbridge = \"br0\"\nratio = 0.5\ndry-run = false\n").unwrap();
    let text: Vec<(&str, String)> = s.config.iter().map(|(k, v)| (k, v.to_string())).collect();
    assert_eq!(
        text,
        [
            ("bridge", "br0"),
            ("dry-run", "false"),
            ("max_vcpus", "8"),
            ("ratio", "0.5")
        ]
        .map(|(k, v)| (k, v.to_owned()))
    );
    assert_eq!(s.summary(), "timeout=2s config: bridge,dry-run,max_vcpus,ratio");
    assert!(parse("").unwrap().config.is_empty());
}

#[test]
fn config_that_no_backend_could_pass_is_refused_with_its_line() {
    let many: String = (0..=crate::backend::MAX_CONFIG_KEYS)
        .map(|i| format!("k{i} = 1\n"))
        .collect();
    let huge = format!("k = \"{}\"\n", "x".repeat(crate::backend::MAX_CONFIG_BYTES));
    // A long key of three-byte characters panicked where its message was cut.
    let wide = format!("\"{}\" = 1\n", "\u{fffd}".repeat(22));
    for (body, want) in [
        ("list = [1, 2]\n", "`list` is an array"),
        ("[config.nested]\nk = 1\n", "`nested` is a table"),
        ("when = 1979-05-27\n", "`when` is a datetime"),
        ("\"a b\" = 1\n", "key `a b`"),
        ("\"VIRT;rm\" = 1\n", "key `VIRT;rm`"),
        ("\"\" = 1\n", "key ``"),
        ("k = \"a\\u0000b\"\n", "NUL"),
        ("max-vcpus = 1\nmax_vcpus = 2\n", "VIRT_HOOK_CONFIG_MAX_VCPUS"),
        (many.as_str(), "keys, at most"),
        (huge.as_str(), "bytes of keys and values"),
        (wide.as_str(), "is longer than 64 bytes"),
    ] {
        let e = parse(&format!("policy = \"required\"\n[config]\n{body}")).unwrap_err();
        assert!(
            e.message.starts_with("[config]: ") && e.message.contains(want),
            "{body:.60}: {e}"
        );
        assert!(e.line.is_some_and(|l| l >= 2), "{body:.60}: {e}");
    }
    // The line is the key's, not the table's header.
    let e = parse("[config]\na = 1\nb = \"x\"\nlist = [1]\n").unwrap_err();
    assert_eq!(e.line, Some(4), "{e}");
    let e = parse("[config]\nmax-vcpus = 1\nmax_vcpus = 2\n").unwrap_err();
    assert!(e.message.contains("`max-vcpus` and `max_vcpus` would both be"), "{e}");
    assert_eq!(e.line, Some(2), "{e}");
    // A value is never taken for a setting of hookctl's own.
    let e = parse("[config]\nk = 1\n[other]\n").unwrap_err();
    assert!(e.message.contains("unknown field `other`"), "{e}");
}

#[test]
fn on_reconnect_failure_is_kill_or_log_and_never_with_optional() {
    let s = parse("on_reconnect_failure = \"kill\"\n").unwrap();
    assert_eq!(s.on_reconnect_failure, Some(OnReconnectFailure::Kill));
    assert_eq!(s.summary(), "on_reconnect_failure=kill");
    let s = parse("on_reconnect_failure = \"log\"\n").unwrap();
    assert_eq!(s.on_reconnect_failure, Some(OnReconnectFailure::Log));
    assert_eq!(parse("").unwrap().on_reconnect_failure, None);
    // A typo must not silently mean either.
    let e = parse("timeout = 1\non_reconnect_failure = \"kil\"\n").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.message.contains("kill") && e.message.contains("log"), "{e}");
    let e = parse("on_reconnect_failure = true\n").unwrap_err();
    assert_eq!(e.line, Some(1), "{e}");
    // An optional hook never fails an event: asking it to kill is a contradiction.
    let e = parse("policy = \"optional\"\non_reconnect_failure = \"kill\"\n").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.message.contains("optional"), "{e}");
    assert!(parse("policy = \"optional\"\non_reconnect_failure = \"log\"\n").is_ok());
}

#[test]
fn errors_name_file_and_line() {
    let e = parse("timeout = 1\n\n[match]\nobject = [\"x\"]\n").unwrap_err();
    assert_eq!(e.line, Some(4), "{e}");
    assert!(e.to_string().starts_with("h.toml:4: unknown field `object`"), "{e}");
    let e = parse("memory = \"lots\"\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "h.toml:1: memory must be a positive size like \"64MiB\" or a number of bytes"
    );
    let e = parse("policy = \"maybe\"\n").unwrap_err();
    assert_eq!(e.line, Some(1));
    let e = parse("timeout = -1.0\n").unwrap_err();
    assert_eq!(e.line, Some(1));
    let e = parse("[match]\nops = [\"[\"]\n").unwrap_err();
    assert!(e.to_string().starts_with("h.toml:2: bad pattern `[`"), "{e}");
}

#[test]
fn a_bad_xpath_is_an_error_with_file_line_and_column() {
    let text = "timeout = 1\n[match]\nxpath = [\n  \"/domain/devices/hostdev\",\n  \"/domain/devices/[x]\",\n]\n";
    let e = parse(text).unwrap_err();
    assert_eq!((e.line, e.column), (Some(5), Some(20)), "{e}");
    assert!(
        e.to_string().starts_with("h.toml:5:20: xpath `/domain/devices/[x]`: "),
        "{e}"
    );
    assert!(e.to_string().ends_with("(column 17 of the expression)"), "{e}");
    // A literal string, on the `xpath` line itself.
    let e = parse("[match]\nxpath = ['count(/domain/devices/disk) >']\n").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.column.unwrap() >= 10 + 29, "{e}");
    // With escapes the file column is the string's start; the message has the rest.
    let e = parse("[match]\nxpath = [\"/domain[name=\\\"a\\\"][frob()]\"]\n").unwrap_err();
    assert_eq!((e.line, e.column), (Some(2), Some(10)), "{e}");
    assert!(e.message.contains("unknown function `frob()`"), "{e}");
    assert!(e.message.contains("(column 19 of the expression)"), "{e}");
    let e = parse("[match]\nxpath = [\"/domain/metadata/app:gpu\"]\n").unwrap_err();
    assert!(e.message.contains("prefix `app` is not bound"), "{e}");
    // Unknown keys beside it keep their line.
    let e = parse("[match]\nxpath = [\"/domain\"]\nxpaths = [\"/domain\"]\n").unwrap_err();
    assert_eq!((e.line, e.column), (Some(3), None), "{e}");
    assert!(e.to_string().starts_with("h.toml:3: unknown field `xpaths`"), "{e}");
    let e = parse("[match]\nxpath = \"/domain\"\n").unwrap_err();
    assert_eq!(e.line, Some(2), "a string where a list is needed: {e}");
}

#[test]
fn xpath_and_xmlns_are_compiled_and_shown() {
    let s = parse(
        "[match]\nobjects = [\"gpu-*\"]\nxpath = [\"/domain/devices/hostdev\", \"count(/domain/devices/disk) > 1\", \"/domain/metadata/app:gpu\"]\nxmlns = { app = \"http://example.org/app/1.0\" }\n",
    )
    .unwrap();
    assert!(s.matcher.needs_document());
    assert_eq!(s.matcher.xpath().count(), 3);
    assert_eq!(
        s.matcher.xmlns().collect::<Vec<_>>(),
        [("app", "http://example.org/app/1.0")]
    );
    assert_eq!(
        s.summary(),
        "match: objects=gpu-* xpath=[\"/domain/devices/hostdev\", \"count(/domain/devices/disk) > 1\", \"/domain/metadata/app:gpu\"] xmlns=app=http://example.org/app/1.0"
    );
    let xml = |doc: &str| {
        RawEvent::new(crate::Driver::Qemu, ["gpu-1", "prepare", "begin", "-"]).with_input(Some(doc.as_bytes().to_vec()))
    };
    let all = "<domain><metadata><a:gpu xmlns:a='http://example.org/app/1.0'/></metadata><devices><disk/><disk/><hostdev/></devices></domain>";
    assert!(s.matcher.matches(&xml(all)));
    assert!(
        !s.matcher.matches(&xml(&all.replace("<hostdev/>", ""))),
        "every expression must hold"
    );
    assert!(
        !s.matcher.matches(&xml(&all.replace("app/1.0", "app/2.0"))),
        "the URI counts, not the prefix"
    );
    // Input that is there but not evaluated fails closed.
    assert!(s.matcher.matches(&xml("not xml")));
    assert!(!s
        .matcher
        .matches(&RawEvent::new(crate::Driver::Qemu, ["gpu-1", "prepare", "begin", "-"])));
    let other =
        RawEvent::new(crate::Driver::Qemu, ["db-1", "prepare", "begin", "-"]).with_input(Some(all.as_bytes().to_vec()));
    assert!(!s.matcher.matches(&other), "the globs still apply");
    for bad in [
        "xmlns = { \"a:b\" = \"urn:x\" }",
        "xmlns = { xmlns = \"urn:x\" }",
        "xmlns = { xml = \"urn:x\" }",
        "xmlns = { a = \"\" }",
    ] {
        let e = parse(&format!("[match]\n{bad}\n")).unwrap_err();
        assert_eq!(e.line, Some(2), "{bad}: {e}");
        assert!(e.message.starts_with("xmlns: "), "{bad}: {e}");
    }
}

#[test]
fn xpath_on_a_daemon_hook_is_refused_by_the_driver_check() {
    let s = parse("[match]\nxpath = [\"/domain\"]\n").unwrap();
    let (key, message) = s.matcher.check_for(crate::Driver::Daemon).unwrap_err();
    assert_eq!(key, "xpath");
    assert!(message.contains("daemon events carry no document"), "{message}");
    s.matcher.check_for(crate::Driver::Qemu).unwrap();
    s.matcher.check_for(crate::Driver::Network).unwrap();
}

/// What humantime reads (`--since 1d`) a sidecar reads too, within a timeout's
/// bounds: a day, hours and minutes together, with or without blanks.
#[test]
fn a_sidecar_takes_the_grammar_of_the_command_line() {
    for (text, secs) in [
        ("1d", 86_400),
        ("2h 30m", 9_000),
        ("1h30m", 5_400),
        ("1 hour 30 min", 5_400),
        ("1.5d", 129_600),
        ("1w", 604_800),
        ("7d", 604_800),
        ("6d 23h 59m 59s", 604_799),
    ] {
        assert_eq!(parse_duration(text), Ok(Duration::from_secs(secs)), "{text}");
        let s = parse(&format!("timeout = \"{text}\"\n")).unwrap();
        assert_eq!(s.timeout, TimeoutSetting::After(Duration::from_secs(secs)), "{text}");
    }
    assert_eq!(parse_duration("1500ms 2us"), Ok(Duration::from_micros(1_500_002)));
}

/// Past the 7-day cap however it is written, too large for any integer, negative,
/// not a number, zero, or not a duration at all: each an error naming the file and
/// line and saying which.
#[test]
fn hostile_durations_are_refused_with_the_file_and_line() {
    for (text, want) in [
        ("8d", "too long"),
        ("7d 1ms", "too long"),
        ("1w 1d", "too long"),
        ("2 weeks", "too long"),
        ("1y", "too long"),
        ("1e400d", "too long"),
        ("99999999999999999999d", "too long"),
        ("18446744073709551615s 1s", "too long"),
        ("9999999999999999999h", "too long"),
        ("-1d", "not a positive"),
        ("-1h30m", "not a positive"),
        ("0d", "0 would fail every call"),
        ("0h 0m", "0 would fail every call"),
        ("1ns", "too short"),
        ("NaN", "not a duration"),
        ("nand", "not a duration"),
        ("inf", "not a duration"),
        ("infd", "not a duration"),
        ("1d garbage", "not a duration"),
        ("1 parsec", "not a duration"),
        ("d", "not a duration"),
        ("1h30", "not a duration"),
    ] {
        let e = parse(&format!("\ntimeout = \"{text}\"\n")).unwrap_err();
        assert_eq!(e.line, Some(2), "{text}: {e}");
        let message = e.to_string();
        assert!(message.starts_with("h.toml:2:"), "{text}: {message}");
        assert!(message.contains(want), "{text}: {message}");
        assert!(message.contains(&format!("`{text}`")), "{text}: {message}");
    }
}

/// No input makes the parsers panic, and what they accept is within the limits.
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn settings_files_never_panic(
            timeout in prop_oneof![any::<i64>().prop_map(|n| n.to_string()), any::<f64>().prop_map(|f| format!("{f:?}")), ".{0,12}".prop_map(|s| format!("{s:?}"))],
            memory in prop_oneof![any::<i64>().prop_map(|n| n.to_string()), "[0-9]{0,25}[A-Za-z]{0,3}".prop_map(|s| format!("{s:?}"))],
        ) {
            let text = format!("timeout = {timeout}\nmemory = {memory}\n");
            match HookSettings::parse(Path::new("p.toml"), &text) {
                Ok(s) => {
                    prop_assert!(s.timeout.or(None).is_none_or(|t| t >= MIN_TIMEOUT && t <= MAX_TIMEOUT));
                    prop_assert!(s.memory.is_none_or(|m| m > 0 && m <= MAX_MEMORY));
                }
                Err(e) => prop_assert!(e.line.is_some(), "{e}"),
            }
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = HookSettings::parse(Path::new("p.toml"), &text);
        }
    }

    #[test]
    fn the_reported_panics_are_errors_with_lines() {
        for (text, want) in [
            ("timeout = 1e20\n", "too long"),
            ("timeout = 9223372036854775807\n", "too long"),
            ("timeout = nan\n", "not a positive"),
            ("timeout = -1\n", "not a positive"),
            ("timeout = 0\n", "0 would fail every call"),
            ("timeout = \"0s\"\n", "0 would fail every call"),
            ("timeout = \"2 weeks\"\n", "too long"),
            ("timeout = 5e-324\n", "too short"),
            ("memory = \"99999999999999999999GiB\"\n", "positive size"),
            ("memory = \"5GiB\"\n", "too large"),
            ("memory = 0\n", "positive size"),
            ("memory = -5\n", "positive size"),
            ("max_output = 1e3\n", "positive size"),
        ] {
            let e = HookSettings::parse(Path::new("p.toml"), &format!("\n{text}")).unwrap_err();
            assert_eq!(e.line, Some(2), "{text}: {e}");
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
        let ok = HookSettings::parse(Path::new("p.toml"), "timeout = \"500ms\"\n").unwrap();
        assert_eq!(ok.timeout, TimeoutSetting::After(Duration::from_millis(500)));
        let ok = HookSettings::parse(Path::new("p.toml"), "timeout = \"1m\"\nmemory = 1048576\n").unwrap();
        assert_eq!(ok.timeout, TimeoutSetting::After(Duration::from_secs(60)));
        let never = HookSettings::parse(Path::new("p.toml"), "timeout = \"none\"\n").unwrap();
        assert_eq!(never.timeout, TimeoutSetting::Never);
        assert_eq!(ok.memory, Some(1 << 20));
    }
}
