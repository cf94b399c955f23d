//! Durations and sizes as sidecars and the command line write them, and a timeout's bounds.

use super::*;

/// The longest timeout accepted anywhere (settings, command line, embedders' limits are
/// clamped to it): one week. Longer is a mistake, and deadlines stay far from overflow.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The shortest timeout accepted: one millisecond (shorter only ever fails).
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// A duration or size that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(String);

/// A timeout: a plain number of seconds (`"2"`, `"0.25"`), a number and a unit
/// (`"500ms"`, `"1.5s"`, `"1m"`, `"1h"`, `"1d"`), or what [`humantime`] reads
/// (`"2h 30m"`, `"1h30m"`, `"1 hour 30 min"`): the grammar of `hookctl log --since`.
/// Zero, negative, not-a-number, less than [`MIN_TIMEOUT`] and more than
/// [`MAX_TIMEOUT`] are refused.
///
/// ```
/// use std::time::Duration;
/// use virt_hooks_core::backend::parse_duration;
/// assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
/// assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
/// assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
/// assert_eq!(parse_duration("2h 30m"), Ok(Duration::from_secs(9000)));
/// assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
/// assert!(parse_duration("8d").unwrap_err().to_string().contains("too long"));
/// assert!(parse_duration("0").unwrap_err().to_string().contains("0 would"));
/// assert!(parse_duration("1e20").is_err());
/// ```
///
/// # Errors
/// [`InvalidValue`] saying what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidValue> {
    match written(text)? {
        Written::Seconds(secs) => seconds(secs, text),
        Written::Exact(d) => within_bounds(d, text),
    }
}

/// A length of time in [`parse_duration`]'s grammar without a timeout's bounds: zero
/// and any length a [`Duration`] holds (`hookctl log --since 30d`).
///
/// # Errors
/// [`InvalidValue`] for what is not a length of time, a negative one, or one past what a
/// [`Duration`] holds.
pub fn parse_span(text: &str) -> Result<Duration, InvalidValue> {
    match written(text)? {
        Written::Seconds(secs) if secs.is_nan() || secs < 0.0 => {
            Err(InvalidValue(format!("`{text}` is not a positive duration")))
        }
        Written::Seconds(secs) => Duration::try_from_secs_f64(secs).map_err(|_| too_long(text)),
        Written::Exact(d) => Ok(d),
    }
}

/// A length of time as written, before any bounds.
enum Written {
    /// A number of seconds (a number and one unit), which may be negative or infinite.
    Seconds(f64),
    /// What humantime read: units added up exactly.
    Exact(Duration),
}

/// Reads a number with at most one unit as a float (`2.5`, `1.5h`, `1e3ms`, `-1d`), so
/// that fractions and exponents work; anything else as humantime does.
fn written(text: &str) -> Result<Written, InvalidValue> {
    let t = text.trim();
    let split = t
        .find(|c: char| c.is_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(t.len());
    let (num, unit) = (t[..split].trim(), t[split..].trim());
    if let Ok(n) = num.parse::<f64>() {
        if let Some(scale) = unit_seconds(unit) {
            return Ok(Written::Seconds(n * scale));
        }
    }
    match humantime::parse_duration(t) {
        Ok(d) => Ok(Written::Exact(d)),
        Err(humantime::DurationError::NumberOverflow) => Err(too_long(text)),
        Err(_) if t.starts_with('-') => Err(InvalidValue(format!("`{text}` is not a positive duration"))),
        Err(_) => Err(InvalidValue(format!(
            "`{text}` is not a duration: use a number of seconds, or \"500ms\", \"2s\", \"1m\", \"1h\", \"1d\", \"2h 30m\""
        ))),
    }
}

/// Seconds in one `unit` (no unit: seconds), for the units humantime knows (`ms`, `s`,
/// `min`, `h`, `d`, `w`, their long names, ...); `None` for what is not one unit.
fn unit_seconds(unit: &str) -> Option<f64> {
    if unit.is_empty() {
        return Some(1.0);
    }
    if !unit.chars().all(char::is_alphabetic) {
        return None;
    }
    humantime::parse_duration(&format!("1{unit}"))
        .ok()
        .map(|d| d.as_secs_f64())
}

fn too_long(shown: &str) -> InvalidValue {
    InvalidValue(format!(
        "`{shown}` is too long: at most {} seconds (7 days)",
        MAX_TIMEOUT.as_secs()
    ))
}

/// Checks an exact length against a timeout's bounds, as [`seconds`] checks a number.
fn within_bounds(d: Duration, shown: &str) -> Result<Duration, InvalidValue> {
    if d.is_zero() {
        return seconds(0.0, shown);
    }
    if d > MAX_TIMEOUT {
        return Err(too_long(shown));
    }
    if d < MIN_TIMEOUT {
        return Err(InvalidValue(format!("`{shown}` is too short: at least 1ms")));
    }
    Ok(d)
}

/// Checks a number of seconds: positive, finite, at most [`MAX_TIMEOUT`].
pub(super) fn seconds(secs: f64, shown: &str) -> Result<Duration, InvalidValue> {
    if secs.is_nan() || secs < 0.0 {
        return Err(InvalidValue(format!("`{shown}` is not a positive duration")));
    }
    if secs == 0.0 {
        return Err(InvalidValue(format!(
            "`{shown}`: a timeout of 0 would fail every call; leave it out for the default, or give e.g. \"500ms\""
        )));
    }
    if secs > MAX_TIMEOUT.as_secs_f64() {
        return Err(too_long(shown));
    }
    if secs < MIN_TIMEOUT.as_secs_f64() {
        return Err(InvalidValue(format!("`{shown}` is too short: at least 1ms")));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `"64MiB"`, `"512KiB"`, `"1GiB"`, `"100kB"`, `"4096"` (bytes); `None` when it is not
/// a size or does not fit in 64 bits.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "kB" | "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `parse_span` reads the same grammar without a timeout's bounds (`hookctl log
    /// --since 30d`), and still refuses what is not a length of time.
    #[test]
    fn spans_take_the_grammar_without_the_bounds() {
        assert_eq!(parse_span("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_span("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_span("1h30m"), Ok(Duration::from_secs(5_400)));
        for (text, want) in [
            ("-1d", "not a positive"),
            ("1e400d", "too long"),
            ("99999999999999999999d", "too long"),
            ("NaN", "not a duration"),
            ("1 parsec", "not a duration"),
        ] {
            let e = parse_span(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("100kB"), Some(100_000));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_size("5 parsecs"), None);
    }
}

/// No input makes the grammar panic, and what it accepts is within the limits.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn durations_never_panic_and_stay_in_range(text in ".{0,24}") {
            if let Ok(d) = parse_duration(&text) {
                prop_assert!(d >= MIN_TIMEOUT && d <= MAX_TIMEOUT);
            }
        }

        #[test]
        fn numeric_durations_of_any_magnitude(n in any::<f64>(), unit in prop::sample::select(vec!["", "ms", "s", "m", "h"])) {
            let text = format!("{n}{unit}");
            if let Ok(d) = parse_duration(&text) {
                prop_assert!(d >= MIN_TIMEOUT && d <= MAX_TIMEOUT, "{text} -> {d:?}");
            }
        }

        #[test]
        fn millisecond_durations_read_back(ms in 1u64..=MAX_TIMEOUT.as_millis() as u64) {
            prop_assert_eq!(parse_duration(&format!("{ms}ms")), Ok(Duration::from_millis(ms)));
        }

        #[test]
        fn hours_and_minutes_read_as_humantime_writes_them(h in 0u64..=168, m in 0u64..60) {
            let secs = h * 3600 + m * 60;
            for text in [format!("{h}h {m}m"), format!("{h}h{m}m"), format!("{h} hours {m} min")] {
                match parse_duration(&text) {
                    Ok(d) => prop_assert_eq!(d, Duration::from_secs(secs), "{}", text),
                    Err(e) => prop_assert!(secs == 0 || secs > MAX_TIMEOUT.as_secs(), "{}: {}", text, e),
                }
            }
        }

        #[test]
        fn sizes_never_panic(text in "[0-9]{0,30} ?[KMGkiB]{0,3}") {
            let _ = parse_size(&text);
        }
    }
}
