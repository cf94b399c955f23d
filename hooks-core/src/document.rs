//! Filter events (`migrate`, `restore`): what a stage hands on must be a document
//! libvirt can take, and the report says what each stage changed.
//!
//! libvirt passes a filter hook's output to the next one, and finally to its XML parser,
//! unchecked: a stage that prints half a document, another kind of document or a
//! renamed guest fails the migration much later, with a message that names neither the
//! hook nor the line.
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
    if was.namespace().is_none() && was.name() == "domain" {
        keeps_domain_identity(input.root_element(), doc.root_element())?;
    }
    Ok(())
}

/// Why libvirt would refuse the output later: the end of each identity message.
const IDENTITY_REFUSED: &str = "libvirt refuses a migrate or restore document whose name or UUID changed";

/// libvirt refuses a `migrate`/`restore` rewrite whose name or UUID differs from its
/// input's (`virDomainDefCheckABIStability`, after the hook, in a message that names no
/// hook): the name compared exactly, the UUID as the 16 bytes `virUUIDParse` reads. Both
/// are the string value of the first top-level `<name>`/`<uuid>` in no namespace, as
/// libvirt's `string(./name[1])`. An output must have exactly one of each the input has
/// (a second one is what another reader may take instead); what the input lacks, or has
/// in a form libvirt would not read, is not asked of the output.
fn keeps_domain_identity(input: roxmltree::Node<'_, '_>, output: roxmltree::Node<'_, '_>) -> Result<(), String> {
    for tag in ["name", "uuid"] {
        let mut in_input = top_level(input, tag);
        let Some(was) = in_input.next().map(string_value) else {
            continue;
        };
        let input_has_one = in_input.next().is_none();
        let mut in_output = top_level(output, tag);
        let Some(is) = in_output.next().map(string_value) else {
            return Err(format!(
                "its output has no <{tag}> (the input's is `{}`): {IDENTITY_REFUSED}",
                quoted(was.as_bytes())
            ));
        };
        let more = in_output.count();
        if more > 0 && input_has_one {
            return Err(format!(
                "its output has {} top-level <{tag}> elements, where the input has one (`{}`)",
                more + 1,
                quoted(was.as_bytes())
            ));
        }
        if tag == "name" {
            if is != was {
                return Err(format!(
                    "its output renames the domain `{}` to `{}`: {IDENTITY_REFUSED}",
                    quoted(was.as_bytes()),
                    quoted(is.as_bytes())
                ));
            }
        } else if let Some(was_uuid) = libvirt_uuid(&was) {
            match libvirt_uuid(&is) {
                Some(is_uuid) if is_uuid == was_uuid => {}
                Some(_) => {
                    return Err(format!(
                        "its output changes the domain's UUID from `{}` to `{}`: {IDENTITY_REFUSED}",
                        quoted(was.as_bytes()),
                        quoted(is.as_bytes())
                    ))
                }
                None => {
                    return Err(format!(
                        "its output's <uuid> `{}` is not a UUID libvirt reads (the input's is `{}`)",
                        quoted(is.as_bytes()),
                        quoted(was.as_bytes())
                    ))
                }
            }
        }
    }
    Ok(())
}

/// The children of `root` named `tag` in no namespace (libvirt's `./tag`).
fn top_level<'a, 'input>(
    root: roxmltree::Node<'a, 'input>,
    tag: &'static str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'input>> {
    root.children().filter(move |child| {
        let name = child.tag_name();
        child.is_element() && name.namespace().is_none() && name.name() == tag
    })
}

/// An element's XPath string value: its descendant text (comments left out, CDATA and
/// references as the text they are).
fn string_value(element: roxmltree::Node<'_, '_>) -> String {
    element
        .descendants()
        .filter(roxmltree::Node::is_text)
        .filter_map(|text| text.text())
        .collect()
}

/// A UUID as libvirt's `virUUIDParse` reads it: blanks around, 32 hex digits in either
/// case in pairs, `-` or ` ` anywhere between pairs. Written out because the forms
/// differ from the `uuid` crate's (not in the tree): it reads braces and `urn:uuid:`,
/// which libvirt refuses, and refuses `c7-a5-…` or spaces, which libvirt reads.
fn libvirt_uuid(text: &str) -> Option<[u8; 16]> {
    // C's isspace: \v and \f too.
    let blank = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let mut rest = text.as_bytes();
    while let [first, tail @ ..] = rest {
        if !blank(first) {
            break;
        }
        rest = tail;
    }
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut uuid = [0u8; 16];
    for byte in &mut uuid {
        loop {
            match rest {
                [b'-' | b' ', tail @ ..] => rest = tail,
                [high, low, tail @ ..] => {
                    *byte = u8::try_from(hex(*high)? << 4 | hex(*low)?).ok()?;
                    rest = tail;
                    break;
                }
                _ => return None,
            }
        }
    }
    rest.iter().all(blank).then_some(uuid)
}

/// The warning for a hook that printed a document (its first byte past blanks and a
/// BOM is `<`) at event `op`, where libvirt ignores a hook's stdout: an author who
/// meant to rewrite the XML learns it went nowhere. Plain text (progress lines) and
/// blank output get none.
pub(crate) fn ignored_document(op: &str, stdout: &[u8], truncated: bool) -> Option<String> {
    let start = stdout.iter().position(|b| !b.is_ascii_whitespace())?;
    let text = &stdout[start..];
    let text = text.strip_prefix("\u{feff}".as_bytes()).unwrap_or(text);
    if !text.starts_with(b"<") {
        return None;
    }
    let more = if truncated { "more than " } else { "" };
    Some(format!(
        "it printed a document ({more}{} bytes) at `{op}`, where libvirt ignores a hook's output: only `migrate` and `restore` take a new document",
        stdout.len()
    ))
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
            check_output(Some(DOMAIN), b"<domain><name>vm</name><memory>1</memory></domain>"),
            Ok(())
        );
        // With no input (or input that is not XML) only well-formedness is asked.
        assert_eq!(check_output(None, b"<anything/>"), Ok(()));
        assert_eq!(check_output(Some(b"not xml"), b"<anything/>"), Ok(()));
    }

    /// A domain as libvirt hands it to a `migrate` or `restore` hook.
    const GUEST: &str = "<domain type='kvm'>\n  <name>vm1</name>\n  <uuid>c7a5fdbd-cdaf-9455-926a-d65c16db1809</uuid>\n  <memory unit='KiB'>65536</memory>\n  <devices>\n    <disk type='file'><target dev='vda'/></disk>\n  </devices>\n</domain>\n";

    fn guest_with(from: &str, to: &str) -> String {
        assert!(GUEST.contains(from), "{from}");
        GUEST.replace(from, to)
    }

    /// The refusal of an output that is `GUEST` with `from` replaced by `to`.
    fn refusal(from: &str, to: &str) -> String {
        check_output(Some(GUEST.as_bytes()), guest_with(from, to).as_bytes()).unwrap_err()
    }

    fn the_reason(err: &str) -> &str {
        err.split_once("; it began `").map_or(err, |(why, _)| why)
    }

    #[test]
    fn a_renamed_domain_is_refused_naming_both_names() {
        let err = refusal("<name>vm1</name>", "<name>vm2</name>");
        assert_eq!(
            the_reason(&err),
            "its output renames the domain `vm1` to `vm2`: libvirt refuses a migrate or restore document whose name or UUID changed"
        );
        // libvirt compares names exactly: no trimming, no case folding.
        for renamed in ["<name> vm1</name>", "<name>VM1</name>", "<name></name>", "<name/>"] {
            let err = refusal("<name>vm1</name>", renamed);
            assert!(
                the_reason(&err).starts_with("its output renames the domain `vm1` to `"),
                "{err}"
            );
        }
        // The name is the element's text, however it is written.
        for same in [
            "<name>v<!-- split -->m1</name>",
            "<name><![CDATA[vm1]]></name>",
            "<name>&#118;m1</name>",
        ] {
            assert_eq!(
                check_output(Some(GUEST.as_bytes()), guest_with("<name>vm1</name>", same).as_bytes()),
                Ok(()),
                "{same}"
            );
        }
    }

    #[test]
    fn a_changed_uuid_is_refused_naming_both() {
        let err = refusal(
            "c7a5fdbd-cdaf-9455-926a-d65c16db1809",
            "00000000-cdaf-9455-926a-d65c16db1809",
        );
        assert_eq!(
            the_reason(&err),
            "its output changes the domain's UUID from `c7a5fdbd-cdaf-9455-926a-d65c16db1809` to `00000000-cdaf-9455-926a-d65c16db1809`: libvirt refuses a migrate or restore document whose name or UUID changed"
        );
        // Not a UUID libvirt reads: one digit short, a digit that is not hex, braces.
        for unreadable in [
            "c7a5fdbd-cdaf-9455-926a-d65c16db180",
            "g7a5fdbd-cdaf-9455-926a-d65c16db1809",
            "{c7a5fdbd-cdaf-9455-926a-d65c16db1809}",
            "c7a5fdbd-cdaf-9455-926a-d65c16db1809-00",
        ] {
            let err = refusal("c7a5fdbd-cdaf-9455-926a-d65c16db1809", unreadable);
            assert_eq!(
                the_reason(&err),
                format!("its output's <uuid> `{unreadable}` is not a UUID libvirt reads (the input's is `c7a5fdbd-cdaf-9455-926a-d65c16db1809`)"),
            );
        }
    }

    #[test]
    fn a_uuid_written_in_another_form_libvirt_reads_is_the_same_uuid() {
        // virUUIDParse: hex digits in either case, `-` and ` ` anywhere between pairs,
        // blanks around.
        for same in [
            "C7A5FDBD-CDAF-9455-926A-D65C16DB1809",
            "c7a5fdbdcdaf9455926ad65c16db1809",
            "c7-a5-fd-bd-cd-af-94-55-92-6a-d6-5c-16-db-18-09",
            "c7a5 fdbd cdaf 9455 926a d65c 16db 1809",
            "\n    c7a5fdbd-cdaf-9455-926a-d65c16db1809\n  ",
        ] {
            let output = guest_with("c7a5fdbd-cdaf-9455-926a-d65c16db1809", same);
            assert_eq!(
                check_output(Some(GUEST.as_bytes()), output.as_bytes()),
                Ok(()),
                "{same:?}"
            );
        }
        // A pair split by a dash is not a pair.
        let err = refusal(
            "c7a5fdbd-cdaf-9455-926a-d65c16db1809",
            "c-7a5fdbdcdaf9455926ad65c16db1809",
        );
        assert!(the_reason(&err).contains("is not a UUID libvirt reads"), "{err}");
    }

    #[test]
    fn a_dropped_name_or_uuid_is_refused() {
        let err = refusal("  <name>vm1</name>\n", "");
        assert_eq!(
            the_reason(&err),
            "its output has no <name> (the input's is `vm1`): libvirt refuses a migrate or restore document whose name or UUID changed"
        );
        let err = refusal("  <uuid>c7a5fdbd-cdaf-9455-926a-d65c16db1809</uuid>\n", "");
        assert_eq!(
            the_reason(&err),
            "its output has no <uuid> (the input's is `c7a5fdbd-cdaf-9455-926a-d65c16db1809`): libvirt refuses a migrate or restore document whose name or UUID changed"
        );
    }

    #[test]
    fn a_duplicated_name_or_uuid_is_refused() {
        // libvirt reads the first; a second one that another tool may read instead is
        // not left to chance.
        let err = refusal("<name>vm1</name>", "<name>vm1</name><name>vm2</name>");
        assert_eq!(
            the_reason(&err),
            "its output has 2 top-level <name> elements, where the input has one (`vm1`)"
        );
        let uuid = "<uuid>c7a5fdbd-cdaf-9455-926a-d65c16db1809</uuid>";
        let err = refusal(uuid, &uuid.repeat(3));
        assert!(
            the_reason(&err).starts_with("its output has 3 top-level <uuid> elements"),
            "{err}"
        );
        // 4,000 of them (near the node limit): counted, and the message stays one line.
        let err = refusal("<name>vm1</name>", &"<name>vm1</name>".repeat(4000));
        assert!(
            the_reason(&err).starts_with("its output has 4000 top-level <name> elements"),
            "{err}"
        );
        assert!(err.len() < 400, "{err}");
    }

    #[test]
    fn a_name_or_uuid_below_the_top_level_or_in_a_namespace_does_not_count() {
        // Dropped from the top, kept inside a device and in <metadata>: still dropped.
        for hidden in [
            "<devices><disk><name>vm1</name></disk></devices>",
            "<metadata><app:name xmlns:app='urn:app'>vm1</app:name></metadata>",
            "<name xmlns='urn:app'>vm1</name>",
        ] {
            let err = refusal("<name>vm1</name>", hidden);
            assert!(
                the_reason(&err).starts_with("its output has no <name> (the input's is `vm1`)"),
                "{hidden}: {err}"
            );
        }
        // A device's own <name>, a <metadata> <name> of another value: the domain's is
        // kept, so the output passes.
        let output = guest_with(
            "<devices>",
            "<metadata><app:name xmlns:app='urn:app'>other</app:name></metadata><devices><hostdev><name>other</name></hostdev>",
        );
        assert_eq!(check_output(Some(GUEST.as_bytes()), output.as_bytes()), Ok(()));
    }

    #[test]
    fn a_huge_or_hostile_name_is_shown_short_and_escaped() {
        // A megabyte name with a bidi override, a backtick and a line break.
        let huge = format!("\u{202e}`\n{}", "x".repeat(1 << 20));
        let err = refusal("<name>vm1</name>", &format!("<name>{huge}</name>"));
        assert!(
            the_reason(&err).starts_with("its output renames the domain `vm1` to `\\u{202e}\\x60\\nxxx"),
            "{err}"
        );
        assert!(err.len() < 500, "{} bytes", err.len());
        assert!(!err.chars().any(crate::text::is_escaped), "{err:?}");
        // Past the document limit the output is refused before anything is compared.
        let past = format!("<name>{}</name>", "x".repeat(crate::xml::MAX_DOCUMENT_BYTES));
        let err = refusal("<name>vm1</name>", &past);
        assert!(err.contains("more than the 4 MiB allowed"), "{err}");
    }

    #[test]
    fn only_a_libvirt_domain_is_held_to_its_name_and_uuid() {
        // A namespaced root or another document: no identity to keep.
        let input = "<domain xmlns='urn:x'><name>vm1</name></domain>";
        assert_eq!(
            check_output(
                Some(input.as_bytes()),
                b"<domain xmlns='urn:x'><name>vm2</name></domain>"
            ),
            Ok(())
        );
        assert_eq!(
            check_output(Some(b"<other><name>a</name></other>"), b"<other><name>b</name></other>"),
            Ok(())
        );
        // What the input lacks, the output need not have.
        assert_eq!(
            check_output(
                Some(b"<domain><name>vm1</name></domain>"),
                b"<domain><name>vm1</name><uuid>x</uuid></domain>"
            ),
            Ok(())
        );
        // An input libvirt would not have sent (two names, an unreadable UUID) is never
        // held against its own rewrite: the first name counts, an unreadable UUID does not.
        let odd = "<domain><name>a</name><name>b</name><uuid>nope</uuid></domain>";
        assert_eq!(check_output(Some(odd.as_bytes()), odd.as_bytes()), Ok(()));
        assert_eq!(
            check_output(
                Some(odd.as_bytes()),
                b"<domain><name>a</name><uuid>other</uuid></domain>"
            ),
            Ok(())
        );
        assert!(check_output(Some(odd.as_bytes()), b"<domain><name>b</name></domain>").is_err());
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
            "<?xml version='1.0' encoding='UTF-8'?><domain><name>vm</name></domain>",
            "\u{feff}<?xml version=\"1.0\"?><domain><name>vm</name></domain>",
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
