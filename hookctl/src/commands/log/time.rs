//! Times: `--since`/`--until`, the audit lines' RFC 3339 and the table's local time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use virt_hooks_core::backend::parse_span;

/// `--since`: a duration back from now in the sidecars' grammar without its 7-day cap
/// (`10m`, `2h 30m`, `1.5d`: [`parse_span`]) or a time (RFC 3339, or the local
/// `2024-05-01 12:00[:00]` the table shows, or a date). A number needs its unit: `2024`
/// is not taken for seconds.
pub(crate) fn parse_since(s: &str) -> Result<SystemTime, String> {
    let t = s.trim();
    if !t.is_empty() && t.parse::<f64>().is_ok() {
        return Err(format!(
            "`{s}` needs a unit to be a duration (`{t}s`, `{t}m`, `{t}h`, `{t}d`), or a date to be a time"
        ));
    }
    let span = match parse_span(t) {
        Ok(ago) => {
            return SystemTime::now()
                .checked_sub(ago)
                .ok_or_else(|| format!("`{s}` is too long ago"))
        }
        Err(e) => e,
    };
    if let Some(time) = parse_time(s, true) {
        return Ok(time);
    }
    // Digits and units (`-1d`, `99999999999999999999d`), not a date or a clock time:
    // meant as a duration, so say what is wrong with it.
    let unsigned = t.strip_prefix('-').unwrap_or(t);
    if unsigned.starts_with(|c: char| c.is_ascii_digit()) && !unsigned.contains(['-', ':']) {
        return Err(span.to_string());
    }
    Err(format!(
        "`{s}` is neither a duration (10m, 2h, 1d) nor a time (2024-05-01T12:00:00Z, \
2024-05-01T12:00:00+02:00, or local \"2024-05-01 12:00\")"
    ))
}

/// `2024-05-01 12:00:03` in local time (`TZ`, else `/etc/localtime`, read by jiff), or
/// UTC with a `Z` past the last time jiff gives every offset a date for.
pub(super) fn local_time(t: SystemTime) -> String {
    match jiff::Timestamp::from_second(unix_seconds(t)) {
        Ok(at) => {
            let local = jiff::tz::TimeZone::system().to_datetime(at);
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                local.year(),
                local.month(),
                local.day(),
                local.hour(),
                local.minute(),
                local.second()
            )
        }
        // The last hours of year 9999, which humantime still writes.
        Err(_) => humantime::format_rfc3339_seconds(t).to_string(),
    }
}

/// Whole seconds since the epoch, truncated toward it (as the table shows a time).
fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// `wall`, a time read as if it were UTC, as the local time it is: with the offset in
/// effect then; at a clock change, the later of a repeated hour, and a skipped one
/// moved past the gap (`2:30` is `3:30`), as hookctl has always read them.
fn from_local(wall: SystemTime) -> Option<SystemTime> {
    let civil = jiff::tz::TimeZone::UTC.to_datetime(jiff::Timestamp::try_from(wall).ok()?);
    let at = jiff::tz::TimeZone::system()
        .to_ambiguous_timestamp(civil)
        .later()
        .ok()?;
    SystemTime::try_from(at).ok()
}

/// RFC 3339 (`Z` or `±HH:MM`; `T` or a space; fractions of a second), a time to the
/// minute, or a date. Without an offset it is local time if `bare_is_local`, else refused.
pub(super) fn parse_time(s: &str, bare_is_local: bool) -> Option<SystemTime> {
    let s = s.trim();
    let b = s.as_bytes();
    let (body, offset) = if b.last().is_some_and(|&c| c == b'Z' || c == b'z') {
        (&b[..b.len() - 1], Some(0))
    } else if b.len() > 16 && matches!(b[b.len() - 6], b'+' | b'-') && b[b.len() - 3] == b':' {
        let digits = |x: &[u8]| -> Option<i64> {
            x.iter()
                .try_fold(0i64, |n, &d| d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0')))
        };
        let hours = digits(&b[b.len() - 5..b.len() - 3])?;
        let minutes = digits(&b[b.len() - 2..])?;
        let sign = if b[b.len() - 6] == b'-' { -1 } else { 1 };
        (&b[..b.len() - 6], Some(sign * (hours * 3600 + minutes * 60)))
    } else {
        (b, None)
    };
    let mut body = std::str::from_utf8(body).ok()?.to_owned();
    match body.len() {
        10 => body.push_str(" 00:00:00"),
        16 => body.push_str(":00"),
        _ => {}
    }
    // humantime reads the time as UTC; the offset is applied below.
    let as_utc = humantime::parse_rfc3339_weak(&body).ok()?;
    let shift = |t: SystemTime, by: i64| -> Option<SystemTime> {
        if by >= 0 {
            t.checked_sub(Duration::from_secs(by.unsigned_abs()))
        } else {
            t.checked_add(Duration::from_secs(by.unsigned_abs()))
        }
    };
    match offset {
        Some(offset) => shift(as_utc, offset),
        None if bare_is_local => from_local(as_utc),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--since` reads what a sidecar's `timeout` reads, without its 7-day cap: the
    /// log goes back further than any timeout.
    #[test]
    fn since_reads_the_duration_grammar_of_the_sidecars() {
        for (text, secs) in [
            ("1.5h", 5_400),
            ("2h 30m", 9_000),
            ("1h30m", 5_400),
            ("30d", 30 * 86_400),
            ("0s", 0),
        ] {
            let before = SystemTime::now();
            let since = parse_since(text).unwrap();
            let after = SystemTime::now();
            let ago = Duration::from_secs(secs);
            assert!(before - ago <= since && since <= after - ago, "{text}");
        }
    }

    /// A number without a unit is not taken for seconds (`--since 2024` is no year), and
    /// what cannot be a time back from now says why.
    #[test]
    fn since_refuses_bare_numbers_and_hostile_durations() {
        for (text, want) in [
            ("2024", "needs a unit"),
            ("90", "needs a unit"),
            ("1e9", "needs a unit"),
            ("99999999999999999999d", "too long"),
            ("18446744073709551615s 1s", "too long"),
            ("1e400d", "too long"),
            ("-1d", "not a positive"),
            ("NaNd", "neither a duration"),
            ("last tuesday", "neither a duration"),
        ] {
            let e = parse_since(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
            assert!(e.contains(&format!("`{text}`")), "{text}: {e}");
        }
    }
}
