//! Text that others control (hooks' output and messages, guests' names, file names),
//! made safe to show and bounded in size.
//!
//! - **Escaping.** A character that could drive a terminal or make a line read other
//!   than it is ([`is_escaped`]: C0 and C1 controls, DEL, the bidirectional controls,
//!   the line and paragraph separators, characters a renderer may draw as nothing) is
//!   written as an escape: `\n`, `\r`, `\t`, `\x1b` for the other ASCII controls,
//!   `\u{9b}` for the rest. A backslash is left as it is, so escaping escaped text changes nothing.
//! - **Cutting.** A [`Limit`] keeps at most so many bytes (characters, lines) of a text,
//!   cut at a character boundary, and ends a cut text with a note saying how much went:
//!   `… (1.2 MiB cut)`. The note counts against the limit.
//!
//! ```
//! use virt_hooks_core::text::{self, Limit};
//!
//! let name = "web1\u{1b}]0;owned\u{7}\u{202e}gnp.exe";
//! assert_eq!(text::escape(name), r"web1\x1b]0;owned\x07\u{202e}gnp.exe");
//!
//! let stderr = "e".repeat(2_000_000);
//! let shown = Limit::bytes(4096).apply(&stderr);
//! assert!(shown.len() <= 4096);
//! assert!(shown.ends_with("e… (1.9 MiB cut)"), "{shown}");
//! ```

use std::borrow::Cow;
use std::fmt::Write as _;

use icu_properties::props::DefaultIgnorableCodePoint;
use icu_properties::{CodePointSetData, CodePointSetDataBorrowed};

/// Whether `c` is shown escaped: the C0 and C1 controls and DEL (`\u{1b}` starts a
/// terminal's escape sequence, `\u{9b}` is a one-character CSI, `\u{85}` a new line),
/// the bidirectional controls that reorder what follows (U+202A–U+202E,
/// U+2066–U+2069, U+200E, U+200F, U+061C), the line and paragraph separators, the
/// interlinear annotation controls, and every character Unicode makes
/// `Default_Ignorable_Code_Point` (zero-width space and joiners, word joiner, BOM, soft
/// hyphen, variation selectors, Hangul fillers, musical formatting, tags, ...): a
/// renderer may draw those as nothing, so two names that differ would look the same.
/// Emoji sequences and scripts that need a joiner show it escaped (`👩\u{200d}👧`):
/// still legible, and never mistaken for another name.
///
/// The ignorable set is [ICU4X](https://docs.rs/icu_properties)'s data for the Unicode
/// version it carries, so new ones are escaped when it is updated.
///
/// ```
/// use virt_hooks_core::text::is_escaped;
/// assert!(is_escaped('\u{9b}') && is_escaped('\u{202e}') && is_escaped('\n'));
/// assert!(is_escaped('\u{3164}') && is_escaped('\u{1d173}') && is_escaped('\u{e0100}'));
/// assert!(!is_escaped('é') && !is_escaped('\\') && !is_escaped('한'));
/// ```
pub fn is_escaped(c: char) -> bool {
    /// Unicode's `Default_Ignorable_Code_Point`: compiled in, looked up in a few steps.
    const DEFAULT_IGNORABLE: CodePointSetDataBorrowed<'static> = CodePointSetData::new::<DefaultIgnorableCodePoint>();
    // Printable ASCII, nearly all that is ever checked, needs no look-up.
    if (' '..='~').contains(&c) {
        return false;
    }
    c.is_control()
        || matches!(
            c,
            // Bidirectional controls (also default ignorable, but named here as the core).
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
            // Line and paragraph separators.
            | '\u{2028}' | '\u{2029}'
            // Interlinear annotation controls: invisible, not default ignorable.
            | '\u{fff9}'..='\u{fffb}'
        )
        || DEFAULT_IGNORABLE.contains(c)
}

/// `text` with every [escaped](is_escaped) character escaped, newlines included: one
/// line, safe for a terminal. Borrowed when nothing needed escaping.
///
/// ```
/// assert_eq!(virt_hooks_core::text::escape("a\nb\u{85}c"), r"a\nb\u{85}c");
/// ```
pub fn escape(text: &str) -> Cow<'_, str> {
    Limit::NONE.escaped().apply(text)
}

/// [`escape`], but newlines and tabs are kept: several lines, none of which another
/// character can rewrite.
///
/// ```
/// assert_eq!(virt_hooks_core::text::escape_lines("a\n\tb\rc"), "a\n\tb\\rc");
/// ```
pub fn escape_lines(text: &str) -> Cow<'_, str> {
    Limit::NONE.escaped_lines().apply(text)
}

/// Valid JSON with every [escaped](is_escaped) character in its strings written as a
/// `\u` escape (serde_json writes C1 controls and bidirectional overrides raw): the
/// same value, safe to print. A carriage return between tokens becomes a space; tabs
/// and newlines between tokens stay.
///
/// ```
/// let json = serde_json::to_string("web\u{9b}1\u{202e}").unwrap();
/// let safe = virt_hooks_core::text::escape_json(&json);
/// assert_eq!(safe, r#""web\u009b1\u202e""#);
/// assert_eq!(serde_json::from_str::<String>(&safe).unwrap(), "web\u{9b}1\u{202e}");
/// ```
pub fn escape_json(json: &str) -> Cow<'_, str> {
    if !json.chars().any(|c| is_escaped(c) && c != '\n' && c != '\t') {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            '\r' => out.push(' '),
            c if is_escaped(c) => {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// How much of a text to keep, and in which form: a size in bytes (always), and
/// optionally in characters and lines. A text within the limits comes back whole;
/// a longer one is cut at a character boundary and ends with a note, `… (1.2 MiB cut)`
/// (`\n… (12 more lines, 3.4 KiB cut)` when the line count cut it), and the result,
/// note included, is within the limits (the note's own characters are not counted
/// against `chars`).
///
/// The size is measured as the text will be written: raw UTF-8 by default, as a JSON
/// string with [`Limit::json`], escaped with [`Limit::escaped`] or
/// [`Limit::escaped_lines`].
///
/// ```
/// use virt_hooks_core::text::Limit;
/// const STDERR: Limit = Limit::bytes(2048).lines(3).escaped_lines();
/// let shown = STDERR.apply("one\ntwo\u{1b}[2J\nthree\nfour\nfive\n");
/// assert_eq!(shown, "one\ntwo\\x1b[2J\nthree\n… (2 more lines, 11 bytes cut)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    bytes: usize,
    chars: usize,
    lines: usize,
    form: Form,
}

/// How a text is written, which is how its size is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// As it is.
    Raw,
    /// As it is, measured as serde_json and [`escape_json`] write it.
    Json,
    /// Escaped, on one line.
    Line,
    /// Escaped, newlines and tabs kept.
    Lines,
}

/// Room kept for the note: `\n… (`, 20 digits, ` more lines, `, a size, ` cut)`.
const NOTE_ROOM: usize = 64;

impl Limit {
    /// No limit at all: for escaping alone.
    const NONE: Limit = Limit {
        bytes: usize::MAX,
        chars: usize::MAX,
        lines: usize::MAX,
        form: Form::Raw,
    };

    /// The smallest size in bytes a limit takes: room for the note and some text. A
    /// smaller one is raised to it.
    pub const MIN_BYTES: usize = 2 * NOTE_ROOM;

    /// At most `max` bytes (at least [`Limit::MIN_BYTES`]), note included; raw UTF-8
    /// unless another form is chosen. No limit on characters or lines by default.
    pub const fn bytes(max: usize) -> Self {
        Limit {
            bytes: if max < Self::MIN_BYTES { Self::MIN_BYTES } else { max },
            ..Self::NONE
        }
    }

    /// At most `max` characters of the text (at least one). By default, any number.
    pub const fn chars(self, max: usize) -> Self {
        Limit {
            chars: if max == 0 { 1 } else { max },
            ..self
        }
    }

    /// At most `max` lines (at least one). By default, any number.
    pub const fn lines(self, max: usize) -> Self {
        Limit {
            lines: if max == 0 { 1 } else { max },
            ..self
        }
    }

    /// The size is that of the text as a JSON string (quotes aside), as serde_json
    /// writes it and [`escape_json`] leaves it; the text itself is not changed.
    pub const fn json(self) -> Self {
        Limit {
            form: Form::Json,
            ..self
        }
    }

    /// The text is [escaped](escape), on one line.
    pub const fn escaped(self) -> Self {
        Limit {
            form: Form::Line,
            ..self
        }
    }

    /// The text is escaped with newlines and tabs kept ([`escape_lines`]).
    pub const fn escaped_lines(self) -> Self {
        Limit {
            form: Form::Lines,
            ..self
        }
    }

    /// The text within the limits, in its form; borrowed when it needs neither cutting
    /// nor escaping.
    pub fn apply<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let form = self.form;
        let keep = self.bytes.saturating_sub(NOTE_ROOM);
        let mut used = 0usize;
        let mut lines = 1usize;
        let mut escapes = false;
        // Where a cut would be, should the text not fit: the end of the longest prefix
        // that leaves room for the note.
        let mut cut_at = 0usize;
        let mut by_lines = false;
        let mut fits = true;
        for (n, (i, c)) in text.char_indices().enumerate() {
            if used <= keep && n <= self.chars {
                cut_at = i;
            }
            if n == self.chars {
                fits = false;
                break;
            }
            // A newline after the last line allowed, unless it ends the text.
            if c == '\n' && lines == self.lines && i + 1 < text.len() {
                fits = false;
                by_lines = used <= keep;
                break;
            }
            lines += usize::from(c == '\n');
            let (cost, escaped) = form.cost(c);
            escapes |= escaped;
            used += cost;
            if used > self.bytes {
                fits = false;
                break;
            }
        }
        if fits {
            if !escapes {
                return Cow::Borrowed(text);
            }
            return Cow::Owned(form.render(text, String::with_capacity(used)));
        }
        let (kept, rest) = text.split_at(cut_at);
        let mut out = form.render(kept, String::with_capacity(keep.min(used) + NOTE_ROOM));
        let cut = self::size(rest.len() as u64);
        if by_lines {
            // The rest starts with the newline that ended the last line kept.
            let more = rest[1..].lines().count();
            let plural = if more == 1 { "" } else { "s" };
            let newline = if form == Form::Line { " " } else { "\n" };
            let _ = write!(out, "{newline}… ({more} more line{plural}, {cut} cut)");
        } else {
            let _ = write!(out, "… ({cut} cut)");
        }
        Cow::Owned(out)
    }
}

impl Form {
    /// How many bytes `c` takes in this form, and whether it is escaped.
    fn cost(self, c: char) -> (usize, bool) {
        match self {
            Form::Raw => (c.len_utf8(), false),
            Form::Json => match c {
                '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => (2, false),
                c if (c as u32) < 0x20 => (6, false),
                c if is_escaped(c) => (6 * c.len_utf16(), false),
                c => (c.len_utf8(), false),
            },
            Form::Lines if c == '\n' || c == '\t' => (1, false),
            Form::Line | Form::Lines if is_escaped(c) => (escaped_len(c), true),
            Form::Line | Form::Lines => (c.len_utf8(), false),
        }
    }

    /// `text` appended to `out` in this form.
    fn render(self, text: &str, mut out: String) -> String {
        for c in text.chars() {
            match self {
                Form::Lines if c == '\n' || c == '\t' => out.push(c),
                Form::Line | Form::Lines if is_escaped(c) => push_escaped(&mut out, c),
                _ => out.push(c),
            }
        }
        out
    }
}

fn push_escaped(out: &mut String, c: char) {
    let _ = match c {
        '\n' => write!(out, "\\n"),
        '\r' => write!(out, "\\r"),
        '\t' => write!(out, "\\t"),
        c if c.is_ascii() => write!(out, "\\x{:02x}", c as u32),
        c => write!(out, "\\u{{{:x}}}", c as u32),
    };
}

fn escaped_len(c: char) -> usize {
    match c {
        '\n' | '\r' | '\t' => 2,
        c if c.is_ascii() => 4,
        // `\u{` + hex digits + `}`
        c => 4 + (32 - (c as u32).leading_zeros()).div_ceil(4) as usize,
    }
}

/// A size for people: `512 bytes`, `1.2 KiB`, `3.0 MiB`.
///
/// ```
/// assert_eq!(virt_hooks_core::text::size(1_258_291), "1.2 MiB");
/// ```
pub fn size(bytes: u64) -> String {
    if bytes == 1 {
        return "1 byte".to_owned();
    }
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    for unit in ["KiB", "MiB", "GiB", "TiB", "PiB"] {
        // Rounded as shown: 1023.96 KiB reads `1.0 MiB`, not `1024.0 KiB`.
        if value < 1023.95 {
            return format!("{value:.1} {unit}");
        }
        value /= 1024.0;
    }
    format!("{value:.1} EiB")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn controls_bidi_and_invisible_characters_are_escaped() {
        let evil = "\u{1b}[31m\u{9b}1m\u{85}NEL\u{202e}txt\u{2066}\u{7f}\u{0}\r\t\n\u{200b}\u{feff}\u{2028}\u{e0041}";
        assert_eq!(
            escape(evil),
            r"\x1b[31m\u{9b}1m\u{85}NEL\u{202e}txt\u{2066}\x7f\x00\r\t\n\u{200b}\u{feff}\u{2028}\u{e0041}"
        );
        assert_eq!(
            escape_lines(evil),
            "\\x1b[31m\\u{9b}1m\\u{85}NEL\\u{202e}txt\\u{2066}\\x7f\\x00\\r\t\n\\u{200b}\\u{feff}\\u{2028}\\u{e0041}"
        );
        // Text that needs nothing is not copied; scripts and emoji stay.
        let plain = "web-1 é 中文 한글 👩👧 \\x1b";
        assert!(matches!(escape(plain), Cow::Borrowed(s) if s == plain));
    }

    /// Every character of each range a renderer may draw as nothing: a guest
    /// named `web\u{3164}1` must not pass for `web1` in `hookctl list` or `log`.
    #[test]
    fn invisible_characters_cannot_forge_a_name() {
        let ranges = [
            ('\u{00ad}', '\u{00ad}', "soft hyphen"),
            ('\u{034f}', '\u{034f}', "combining grapheme joiner"),
            ('\u{061c}', '\u{061c}', "Arabic letter mark"),
            ('\u{115f}', '\u{1160}', "Hangul choseong and jungseong fillers"),
            ('\u{17b4}', '\u{17b5}', "Khmer inherent vowels"),
            (
                '\u{180b}',
                '\u{180f}',
                "Mongolian variation selectors and vowel separator",
            ),
            ('\u{200b}', '\u{200f}', "zero-width space, joiners, directional marks"),
            ('\u{202a}', '\u{202e}', "bidirectional embeddings and overrides"),
            (
                '\u{2060}',
                '\u{206f}',
                "word joiner, invisible operators, isolates, deprecated formats",
            ),
            ('\u{3164}', '\u{3164}', "Hangul filler"),
            ('\u{fe00}', '\u{fe0f}', "variation selectors"),
            ('\u{feff}', '\u{feff}', "zero-width no-break space (BOM)"),
            ('\u{ffa0}', '\u{ffa0}', "halfwidth Hangul filler"),
            ('\u{fff0}', '\u{fff8}', "unassigned specials"),
            ('\u{1bca0}', '\u{1bca3}', "shorthand format controls"),
            ('\u{1d173}', '\u{1d17a}', "musical symbol formatting"),
            (
                '\u{e0000}',
                '\u{e0fff}',
                "tags, variation selectors supplement, reserved",
            ),
        ];
        for (first, last, what) in ranges {
            for c in first..=last {
                let name = format!("web{c}1");
                let shown = escape(&name);
                assert_eq!(
                    shown,
                    format!("web\\u{{{:x}}}1", c as u32),
                    "{what}: U+{:04X}",
                    c as u32
                );
                // The same in every form that reaches a terminal.
                assert!(!Limit::bytes(4096).escaped_lines().apply(&name).contains(c), "{what}");
                assert!(
                    !escape_json(&serde_json::to_string(&name).unwrap()).contains(c),
                    "{what}"
                );
            }
        }
        // Their neighbours are visible, and stay.
        for c in [
            '\u{115e}',
            '\u{1161}',
            '\u{3165}',
            '\u{ffa1}',
            '\u{1d172}',
            '\u{1d17b}',
            '\u{fe10}',
        ] {
            assert!(!is_escaped(c), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn a_cut_says_how_much_went() {
        let text = "x".repeat(100_000);
        let cut = Limit::bytes(200).apply(&text);
        // 200 bytes, less room for the note: 136 kept, 99 864 cut.
        assert_eq!(cut, format!("{}… (97.5 KiB cut)", "x".repeat(136)));
        assert_eq!(Limit::bytes(200).apply("short"), "short");
        // Exactly at the limit is no cut.
        let exact = "y".repeat(200);
        assert_eq!(Limit::bytes(200).apply(&exact), exact);
        assert_eq!(size(1), "1 byte");
        assert_eq!(size(1023), "1023 bytes");
        assert_eq!(size(1_258_291), "1.2 MiB");
        assert_eq!(size(1024 * 1024 - 1), "1.0 MiB");
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        let text = "é".repeat(1000);
        let cut = Limit::bytes(301).apply(&text);
        assert!(cut.len() <= 301);
        let (kept, note) = cut.split_once('…').unwrap();
        // 237 bytes of room hold 118 characters of two bytes.
        assert_eq!(kept, "é".repeat(118));
        assert_eq!(note, " (1.7 KiB cut)");
    }

    #[test]
    fn characters_and_lines_are_limits_too() {
        let text = "é".repeat(600);
        let cut = Limit::bytes(4096).chars(500).apply(&text);
        assert_eq!(cut, format!("{}… (200 bytes cut)", "é".repeat(500)));
        assert_eq!(Limit::bytes(4096).chars(500).apply(&text[..1000]), &text[..1000]);
        let lines = "a\nb\nc\n";
        assert_eq!(Limit::bytes(4096).lines(3).apply(lines), lines);
        assert_eq!(
            Limit::bytes(4096).lines(2).apply(lines),
            "a\nb\n… (1 more line, 3 bytes cut)"
        );
        assert_eq!(
            Limit::bytes(4096).lines(1).escaped().apply(lines),
            "a … (2 more lines, 5 bytes cut)"
        );
    }

    #[test]
    fn escapes_are_never_split_by_a_cut() {
        let text = "\u{1b}".repeat(1000);
        let cut = Limit::bytes(200).escaped().apply(&text);
        assert!(cut.len() <= 200);
        let (kept, note) = cut.split_once('…').unwrap();
        assert_eq!(kept.len() % 4, 0, "{kept}");
        assert!(kept.len() >= 200 - NOTE_ROOM - 4, "{kept}");
        assert_eq!(note, format!(" ({} bytes cut)", 1000 - kept.len() / 4));
    }

    #[test]
    fn json_sizes_are_measured_as_written() {
        let text = "\u{1}\u{9b}\"é\u{e0041}".repeat(100);
        let limit = Limit::bytes(300).json();
        let cut = limit.apply(&text);
        let written = escape_json(&serde_json::to_string(&*cut).unwrap()).into_owned();
        assert!(written.len() - 2 <= 300, "{}", written.len());
        assert!(written.len() - 2 > 300 - NOTE_ROOM - 12, "{}", written.len());
    }

    #[test]
    fn json_for_a_terminal_is_the_same_value() {
        let value = serde_json::json!({"object": "a\u{9b}b\u{7f}\u{202e}\u{e0041}\u{1b}\n", "n": 1});
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        let safe = escape_json(&pretty);
        assert!(!safe.chars().any(|c| is_escaped(c) && c != '\n'), "{safe}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&safe).unwrap(), value);
        assert_eq!(escape_json("{\"a\":\r1}"), "{\"a\": 1}");
    }

    proptest! {
        #[test]
        fn limits_hold_for_any_text(text in "\\PC*|[\\x00-\\x{a0}\\x{2028}\\x{202e}\\x{200d}\\x{3164}\\x{1d173}\\x{e0100}é\n]{0,400}", max in 0usize..600, chars in 1usize..300, lines in 1usize..20) {
            for limit in [
                Limit::bytes(max),
                Limit::bytes(max).json(),
                Limit::bytes(max).chars(chars).escaped(),
                Limit::bytes(max).lines(lines).escaped_lines(),
            ] {
                let out = limit.apply(&text);
                let size = match limit.form {
                    Form::Json => serde_json::to_string(&*out).map(|s| escape_json(&s).len() - 2).unwrap(),
                    _ => out.len(),
                };
                prop_assert!(size <= limit.bytes, "{} > {}: {:?}", size, limit.bytes, out);
                if matches!(limit.form, Form::Line | Form::Lines) {
                    // Nothing a terminal acts on is left, and escaping again changes nothing.
                    let kept = |c: char| limit.form == Form::Lines && (c == '\n' || c == '\t');
                    prop_assert!(!out.chars().any(|c| is_escaped(c) && !kept(c)), "{:?}", out);
                    prop_assert_eq!(&*Limit::NONE.escaped_lines().apply(&out), &*out);
                }
                if out.len() < text.len() && !out.contains('…') {
                    prop_assert!(false, "cut without a note: {:?}", out);
                }
            }
        }
    }
}
