//! Filter events (`migrate`, `restore`): what a stage hands on must be a document
//! libvirt can take, and the report says what each stage changed.
//!
//! libvirt passes a filter hook's output to the next one, and finally to its XML parser,
//! unchecked: a stage that prints half a document or another kind of document fails
//! the migration much later, with a message that names neither the hook nor the line.
//! Here the stage itself fails, named, with the parser's line and column.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::xml::{parse_guarded, Unparsed};

/// How much of a stage's unified diff a report keeps.
pub const MAX_DIFF: usize = 4 << 10;

/// A diff of large documents stops looking for the smallest one after this long.
const DIFF_DEADLINE: Duration = Duration::from_millis(200);

/// What one stage of a filter event did to the document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentChange {
    /// Whether its output differs from its input (an empty output keeps the input).
    pub changed: bool,
    /// Lines in its output that were not in its input.
    pub lines_added: usize,
    /// Lines of its input that are not in its output.
    pub lines_removed: usize,
    /// A unified diff from its input to its output, cut at [`MAX_DIFF`] bytes (at a
    /// line end).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub diff: String,
    /// Whether `diff` was cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub diff_truncated: bool,
}

impl DocumentChange {
    /// A stage that handed its input on unchanged.
    pub fn unchanged() -> Self {
        DocumentChange {
            changed: false,
            lines_added: 0,
            lines_removed: 0,
            diff: String::new(),
            diff_truncated: false,
        }
    }

    /// What changed from `before` to `after`.
    pub(crate) fn between(before: &[u8], after: &[u8]) -> Self {
        if before == after {
            return Self::unchanged();
        }
        let (old, new) = (String::from_utf8_lossy(before), String::from_utf8_lossy(after));
        let diff = similar::TextDiff::configure()
            .timeout(DIFF_DEADLINE)
            .diff_lines(old.as_ref(), new.as_ref());
        let (mut added, mut removed) = (0, 0);
        for change in diff.iter_all_changes() {
            match change.tag() {
                similar::ChangeTag::Insert => added += 1,
                similar::ChangeTag::Delete => removed += 1,
                similar::ChangeTag::Equal => {}
            }
        }
        let mut text = diff.unified_diff().header("input", "output").to_string();
        let diff_truncated = text.len() > MAX_DIFF;
        if diff_truncated {
            let mut cap = MAX_DIFF;
            while !text.is_char_boundary(cap) {
                cap -= 1;
            }
            let end = text[..cap].rfind('\n').map_or(0, |i| i + 1);
            text.truncate(end);
        }
        DocumentChange {
            changed: true,
            lines_added: added,
            lines_removed: removed,
            diff: text,
            diff_truncated,
        }
    }
}

/// Why a stage's output cannot be handed on. The output is never held to more than its
/// input: when the input itself is not a document this crate parses (past its limits,
/// or XML libvirt keeps but a strict parser refuses), the output is not checked.
pub(crate) fn check_output(input: Option<&[u8]>, output: &[u8]) -> Result<(), String> {
    check_output_unquoted(input, output).map_err(|why| format!("{why}; it began `{}`", quoted(output)))
}

/// How many bytes of a refused output its message quotes.
pub(crate) const QUOTED_BYTES: usize = 80;

/// The first [`QUOTED_BYTES`] of a hook's output as one escaped line (a cut character
/// and bytes that are not UTF-8 show as U+FFFD; `…` when there was more).
fn quoted(output: &[u8]) -> String {
    let head = &output[..output.len().min(QUOTED_BYTES)];
    let more = if output.len() > QUOTED_BYTES { "…" } else { "" };
    let text = String::from_utf8_lossy(head);
    // A backtick would end the quote early: shown as its escape.
    let text = crate::text::escape(&text).replace('`', "\\x60");
    format!("{text}{more}")
}

fn check_output_unquoted(input: Option<&[u8]>, output: &[u8]) -> Result<(), String> {
    let input = match input {
        None => None,
        Some(bytes) => match std::str::from_utf8(bytes).ok().map(parse_guarded) {
            Some(Ok(doc)) => Some(doc),
            _ => return Ok(()),
        },
    };
    let text = std::str::from_utf8(output).map_err(|e| {
        let (line, column) = position_of(output, e.valid_up_to());
        format!("its output is not UTF-8 at line {line}, column {column}, so not the XML libvirt expects")
    })?;
    if let Some(encoding) = declared_encoding(text) {
        if !encoding.eq_ignore_ascii_case("utf-8") && !encoding.eq_ignore_ascii_case("us-ascii") {
            return Err(format!(
                "its output declares encoding=\"{encoding}\", which libvirt would honour, but it is UTF-8"
            ));
        }
    }
    let doc = parse_guarded(text).map_err(|e| match e {
        Unparsed::Refused(why) => format!("its output is refused unparsed: {why}"),
        Unparsed::NotXml(e) => {
            let pos = e.pos();
            format!(
                "its output is not well-formed XML: line {}, column {}: {}",
                pos.row,
                pos.col,
                describe(&e)
            )
        }
    })?;
    let Some(input) = input else { return Ok(()) };
    let (was, is) = (input.root_element().tag_name(), doc.root_element().tag_name());
    if (was.namespace(), was.name()) != (is.namespace(), is.name()) {
        let name = |n: roxmltree::ExpandedName<'_, '_>| match n.namespace() {
            Some(uri) => format!("<{}> in namespace {uri}", n.name()),
            None => format!("<{}> in no namespace", n.name()),
        };
        return Err(format!(
            "its output's root element is {}, where its input's is {}",
            name(is),
            name(was)
        ));
    }
    Ok(())
}

/// The `encoding` of an XML declaration at the start of `text` (after a BOM), if any.
fn declared_encoding(text: &str) -> Option<&str> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let decl = text.strip_prefix("<?xml")?;
    let decl = &decl[..decl.find("?>")?];
    let rest = decl
        .split_once("encoding")?
        .1
        .trim_start()
        .strip_prefix('=')?
        .trim_start();
    let quote = rest.chars().next().filter(|q| *q == '"' || *q == '\'')?;
    let value = &rest[1..];
    value.find(quote).map(|end| &value[..end])
}

/// The parser's message without its own " at row:col" (the caller says where).
fn describe(e: &roxmltree::Error) -> String {
    let text = e.to_string();
    let pos = e.pos();
    text.strip_suffix(&format!(" at {}:{}", pos.row, pos.col))
        .map_or_else(|| text.clone(), str::to_owned)
}

/// The 1-based line and column of byte `offset`.
fn position_of(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &[u8] = b"<domain type='kvm'>\n  <name>vm</name>\n</domain>\n";

    #[test]
    fn a_document_with_the_same_root_passes() {
        assert_eq!(
            check_output(Some(DOMAIN), b"<domain><name>other</name></domain>"),
            Ok(())
        );
        // With no input (or input that is not XML) only well-formedness is asked.
        assert_eq!(check_output(None, b"<anything/>"), Ok(()));
        assert_eq!(check_output(Some(b"not xml"), b"<anything/>"), Ok(()));
    }

    #[test]
    fn half_a_document_is_named_with_line_and_column() {
        let err = check_output(Some(DOMAIN), b"<domain>\n  <name>vm</name>\n").unwrap_err();
        // The parser points at the element left open.
        assert_eq!(
            err,
            "its output is not well-formed XML: line 1, column 1: the root node was opened but never closed; it began `<domain>\\n  <name>vm</name>\\n`"
        );
        let err = check_output(Some(DOMAIN), b"<domain>\n  <name>vm</nam>\n</domain>").unwrap_err();
        assert!(err.contains("line 2, column"), "{err}");
    }

    #[test]
    fn another_root_element_is_refused() {
        let err = check_output(Some(DOMAIN), b"<network/>").unwrap_err();
        assert_eq!(
            err,
            "its output's root element is <network> in no namespace, where its input's is <domain> in no namespace; it began `<network/>`"
        );
        // The namespace is part of the name.
        let err = check_output(Some(b"<domain/>"), b"<domain xmlns='urn:x'/>").unwrap_err();
        assert!(err.contains("root element"), "{err}");
    }

    #[test]
    fn hostile_output_is_refused_not_expanded() {
        let bomb = b"<?xml version='1.0'?><!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'>]><domain>&b;</domain>";
        assert!(check_output(Some(DOMAIN), bomb).is_err());
        let err = check_output(Some(DOMAIN), b"<domain>\xff</domain>").unwrap_err();
        assert_eq!(
            err,
            "its output is not UTF-8 at line 1, column 9, so not the XML libvirt expects; it began `<domain>\u{fffd}</domain>`"
        );
        let deep = format!("<domain>{}{}</domain>", "<a>".repeat(100_000), "</a>".repeat(100_000));
        let err = check_output(Some(DOMAIN), deep.as_bytes()).unwrap_err();
        assert!(err.contains("deeper than 256 levels"), "{err}");
        // Half a deep document is refused the same way, before the parser recurses.
        assert!(check_output(Some(DOMAIN), "<a x='>'>".repeat(300).as_bytes()).is_err());
        // The parser's slow path (duplicate-attribute checks) is never reached.
        let wide = format!(
            "<domain {}/>",
            (0..5000).map(|i| format!("a{i}='x'")).collect::<Vec<_>>().join(" ")
        );
        let err = check_output(Some(DOMAIN), wide.as_bytes()).unwrap_err();
        assert!(err.contains("more than 64 attributes"), "{err}");
    }

    /// What a filter printed instead of XML is quoted, so the operator sees it, but
    /// never more than 80 bytes, and nothing in it reaches a terminal raw.
    #[test]
    fn refused_output_is_quoted_short_and_escaped() {
        // A log line a plugin printed on stdout by mistake, with a terminal escape, a
        // bidi override, a backtick that would end the quote, and a megabyte more.
        let mut output = b"error: \x1b[2J`rm -rf`\xe2\x80\xae cannot find vm\n".to_vec();
        output.extend(std::iter::repeat_n(b'x', 1 << 20));
        let err = check_output(Some(DOMAIN), &output).unwrap_err();
        let quote = err.split_once("; it began `").map(|(_, q)| q).expect(&err);
        assert!(
            quote.starts_with(r"error: \x1b[2J\x60rm -rf\x60\u{202e} cannot find vm\n"),
            "{err}"
        );
        assert!(quote.ends_with("…`"), "{err}");
        assert!(!err.chars().any(crate::text::is_escaped), "{err:?}");
        // 80 bytes of output at most, escapes and note aside.
        // 38 bytes of text, then 42 `x`; the three `\x` escapes hold one more each.
        assert_eq!(quote.matches('x').count(), 42 + 3, "{err}");
        assert!(err.len() < 400, "{} bytes: {err}", err.len());
        // A character cut at byte 80 shows as U+FFFD, never as half a character.
        let mut multi = b"n".to_vec();
        multi.extend("é".repeat(100).as_bytes());
        let err = check_output(Some(DOMAIN), &multi).unwrap_err();
        assert!(err.ends_with("é\u{fffd}…`"), "{err}");
    }

    #[test]
    fn an_input_this_crate_cannot_parse_leaves_the_output_unchecked() {
        // XML libvirt keeps (an undeclared prefix in <metadata>): a rewrite must pass.
        let input = b"<domain><metadata><foo:bar/></metadata></domain>";
        assert_eq!(
            check_output(Some(input), b"<domain><metadata><foo:bar/></metadata><x/></domain>"),
            Ok(())
        );
        let wide = format!("<domain>{}</domain>", "<b/>".repeat(300_000));
        assert_eq!(check_output(Some(wide.as_bytes()), b"<other/>"), Ok(()));
    }

    #[test]
    fn an_encoding_other_than_utf8_is_refused() {
        let latin = "<?xml version='1.0' encoding='ISO-8859-1'?><domain>café</domain>";
        let err = check_output(Some(DOMAIN), latin.as_bytes()).unwrap_err();
        assert!(err.contains("encoding=\"ISO-8859-1\""), "{err}");
        for ok in [
            "<?xml version='1.0' encoding='UTF-8'?><domain/>",
            "\u{feff}<?xml version=\"1.0\"?><domain/>",
        ] {
            assert_eq!(check_output(Some(DOMAIN), ok.as_bytes()), Ok(()), "{ok}");
        }
    }

    #[test]
    fn the_diff_cap_never_splits_a_character() {
        let before = format!(
            "<domain>\n<description>x{}</description>\n</domain>\n",
            "漢字".repeat(3000)
        );
        let after = before.replace("<domain>", "<domain id='1'>");
        let change = DocumentChange::between(before.as_bytes(), after.as_bytes());
        assert!(change.diff_truncated && change.diff.len() <= MAX_DIFF);
    }

    #[test]
    fn a_change_is_counted_and_its_diff_kept_within_the_cap() {
        let after = b"<domain type='kvm'>\n  <name>renamed</name>\n  <memory>1</memory>\n</domain>\n";
        let change = DocumentChange::between(DOMAIN, after);
        assert!(change.changed);
        assert_eq!((change.lines_added, change.lines_removed), (2, 1));
        assert!(
            change.diff.contains("-  <name>vm</name>\n+  <name>renamed</name>\n"),
            "{}",
            change.diff
        );
        assert_eq!(DocumentChange::between(DOMAIN, DOMAIN), DocumentChange::unchanged());
        let big: String = (0..5000).map(|i| format!("<x>{i}</x>\n")).collect();
        let change = DocumentChange::between(b"", big.as_bytes());
        assert!(change.diff_truncated && change.diff.len() <= MAX_DIFF && change.diff.ends_with('\n'));
        assert_eq!(change.lines_added, 5000);
    }
}
