//! Parsing untrusted XML (a guest's document for `[match] xpath`, a filter hook's output):
//! a linear scan refuses what would make the parser slow or large, then the parser runs
//! with no DTD and a node limit. The limits are public in
//! [`xpath_limits`](crate::backend::xpath_limits), beside the expressions' own.

/// The largest document that is parsed, in bytes (libvirt's own limit on an XML
/// string).
pub const MAX_DOCUMENT_BYTES: usize = 4 << 20;
/// The deepest element nesting accepted (libxml2's default, which libvirt keeps).
pub const MAX_DEPTH: usize = 256;
/// Attributes on one element (the parser's duplicate check is quadratic in it).
pub const MAX_ATTRIBUTES_PER_ELEMENT: usize = 64;
/// Attributes in the whole document.
pub const MAX_ATTRIBUTES: usize = 50_000;
/// Namespace declarations in the whole document (each one copies the namespaces in
/// scope).
pub const MAX_NAMESPACE_DECLARATIONS: usize = 256;
/// Nodes (elements, text, comments, processing instructions) in the whole document:
/// a large guest's definition has a few thousand. It also bounds what an expression
/// that is quadratic in the document (`//a[preceding::b]`) costs, since nothing else
/// does.
pub const MAX_NODES: u32 = 10_000;

/// Why [`parse_guarded`] gave no document.
pub(crate) enum Unparsed {
    /// Past the limits (size, depth, attributes, a DTD): not parsed at all.
    Refused(String),
    /// The parser's error.
    NotXml(roxmltree::Error),
}

/// Parses `text` as this crate parses untrusted XML: after [`prescan`]'s limits, with
/// no DTD and at most `MAX_NODES` nodes. Linear in the input; the parser's recursion
/// is bounded by the depth limit.
pub(crate) fn parse_guarded(text: &str) -> Result<roxmltree::Document<'_>, Unparsed> {
    prescan(text.as_bytes()).map_err(Unparsed::Refused)?;
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, options).map_err(|e| match e {
        roxmltree::Error::NodesLimitReached => Unparsed::Refused(format!("more than {MAX_NODES} nodes")),
        e => Unparsed::NotXml(e),
    })?;
    strict_processing_instructions(&doc, text).map_err(Unparsed::Refused)?;
    Ok(doc)
}

/// Refuses the processing instructions roxmltree lets through and libxml2 (libvirt's
/// parser) does not: a target `xml` in any case (reserved), but for a declaration at the
/// start written with another blank than a space (`<?xml\tversion=…?>`, which libxml2
/// reads as one), and a target not followed by a blank or `?>` (`<?xml@ …?>`, `<?a@b?>`).
fn strict_processing_instructions(doc: &roxmltree::Document<'_>, text: &str) -> Result<(), String> {
    for node in doc.descendants().filter(roxmltree::Node::is_pi) {
        let Some(pi) = node.pi() else { continue };
        let start = node.range().start;
        let after_target = text.as_bytes().get(start + 2 + pi.target.len()).copied();
        let blank = |b: Option<u8>| matches!(b, Some(b' ' | b'\t' | b'\r' | b'\n'));
        let declaration =
            pi.target == "xml" && blank(after_target) && text[..start].trim_start_matches('\u{feff}').is_empty();
        let why = if pi.target.eq_ignore_ascii_case("xml") && !declaration {
            "its target `xml` is reserved"
        } else if !blank(after_target) && after_target != Some(b'?') {
            "no blank follows its target"
        } else {
            continue;
        };
        let pos = doc.text_pos_at(start);
        return Err(format!(
            "not well-formed: the processing instruction at line {}, column {}: {why}",
            pos.row, pos.col
        ));
    }
    Ok(())
}

/// A linear scan that refuses what would make the parser slow or large: see the
/// module's limits. Text that is not XML passes when the scan cannot tell; the parser
/// refuses it then.
pub(crate) fn prescan(b: &[u8]) -> Result<(), String> {
    if b.len() > MAX_DOCUMENT_BYTES {
        return Err(format!(
            "{} bytes, more than the {} MiB allowed",
            b.len(),
            MAX_DOCUMENT_BYTES >> 20
        ));
    }
    let skip_past = |from: usize, end: &[u8]| {
        b.get(from..)?
            .windows(end.len())
            .position(|w| w == end)
            .map(|i| from + i + end.len())
    };
    let unterminated = || "it ends inside markup".to_owned();
    let (mut i, mut depth, mut attributes, mut declarations) = (0usize, 0usize, 0usize, 0usize);
    while let Some(lt) = b[i..].iter().position(|&c| c == b'<') {
        let at = i + lt;
        let rest = &b[at..];
        i = if rest.starts_with(b"<!--") {
            skip_past(at + 4, b"-->").ok_or_else(unterminated)?
        } else if rest.starts_with(b"<![CDATA[") {
            skip_past(at + 9, b"]]>").ok_or_else(unterminated)?
        } else if rest.starts_with(b"<?") {
            skip_past(at + 2, b"?>").ok_or_else(unterminated)?
        } else if rest.starts_with(b"<!") {
            return Err("it has a DTD (<!DOCTYPE …>), which is never expanded".into());
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            skip_past(at + 2, b">").ok_or_else(unterminated)?
        } else {
            // A start or empty-element tag: to its `>`, outside quoted values.
            let (mut k, mut quote, mut here) = (at + 1, 0u8, 0usize);
            loop {
                let c = *b.get(k).ok_or_else(unterminated)?;
                if quote != 0 {
                    if c == quote {
                        quote = 0;
                    }
                } else {
                    match c {
                        b'"' | b'\'' => quote = c,
                        b'=' => {
                            here += 1;
                            let name = name_before(&b[at + 1..k]);
                            if name == b"xmlns" || name.starts_with(b"xmlns:") {
                                declarations += 1;
                            }
                        }
                        b'>' => break,
                        _ => {}
                    }
                }
                k += 1;
            }
            if here > MAX_ATTRIBUTES_PER_ELEMENT {
                return Err(format!(
                    "an element has more than {MAX_ATTRIBUTES_PER_ELEMENT} attributes"
                ));
            }
            attributes += here;
            if attributes > MAX_ATTRIBUTES {
                return Err(format!("more than {MAX_ATTRIBUTES} attributes"));
            }
            if declarations > MAX_NAMESPACE_DECLARATIONS {
                return Err(format!("more than {MAX_NAMESPACE_DECLARATIONS} namespace declarations"));
            }
            if b[k - 1] != b'/' {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!("elements nest deeper than {MAX_DEPTH} levels"));
                }
            }
            k + 1
        };
    }
    Ok(())
}

/// The attribute name that ends `tag` (before an `=`, spaces allowed between).
fn name_before(tag: &[u8]) -> &[u8] {
    let end = tag.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(0, |e| e + 1);
    let start = tag[..end]
        .iter()
        .rposition(|&c| c.is_ascii_whitespace() || c == b'"' || c == b'\'')
        .map_or(0, |s| s + 1);
    &tag[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xpath::tests::holds;

    #[test]
    fn an_entity_bomb_is_refused_not_expanded() {
        let bomb = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
]>
<domain><name>&lol9;</name></domain>"#;
        // Refused unparsed, and so failing closed: every expression holds (the hook
        // is called, and sees the document as it is).
        assert!(holds("/nothing", bomb));
        assert!(prescan(bomb.as_bytes()).unwrap_err().contains("DTD"));
        // Also an external entity.
        let xxe = "<!DOCTYPE d [<!ENTITY x SYSTEM \"file:///etc/shadow\">]><domain>&x;</domain>";
        assert!(holds("/nothing", xxe));
        // Undeclared entities are errors, not empty text: not evaluated, failing closed.
        assert!(holds("/nothing", "<domain>&x;</domain>"));
    }

    /// Found by the `xml_document` fuzz target: roxmltree reads `<?xml@ …?>` as a
    /// processing instruction with the reserved target `xml`, and wants no blank after a
    /// target; libxml2, which libvirt parses with, refuses both.
    #[test]
    fn processing_instructions_libxml2_refuses_are_refused() {
        for bad in [
            "<?xml@ version='1.0' encoding='ISO-8859-1'?><domain/>",
            "<domain><?XML x?></domain>",
            "<domain>\n<?xml\tversion='1.0'?></domain>",
            "<domain><?a@b?></domain>",
        ] {
            match parse_guarded(bad) {
                Err(Unparsed::Refused(why)) => assert!(why.contains("processing instruction at line"), "{bad}: {why}"),
                _ => panic!("{bad:?} parsed"),
            }
            assert!(holds("/nothing", bad), "not evaluated, failing closed: {bad:?}");
        }
        for good in [
            "<?xml version='1.0'?><domain><?a b?><?a?><?xml-stylesheet href='x'?></domain>",
            "\u{feff}<?xml\tversion='1.0'?><domain><?a\nb?></domain>",
        ] {
            assert!(parse_guarded(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn huge_and_deep_documents_are_refused_quickly() {
        let start = std::time::Instant::now();
        let deep = format!("{}{}", "<a>".repeat(200_000), "</a>".repeat(200_000));
        assert!(prescan(deep.as_bytes()).unwrap_err().contains("nest deeper"));
        // Past a limit: not parsed, and failing closed (a guest's <metadata> takes any
        // XML; padding it must not slip past a vetting hook).
        assert!(holds("/nothing", &deep));
        // Just within the depth limit: parsed and matched.
        let ok = format!("{}{}", "<a>".repeat(MAX_DEPTH), "</a>".repeat(MAX_DEPTH));
        assert!(holds("count(//a) = 256", &ok));
        let unclosed = "<a>".repeat(2_000_000);
        assert!(holds("/nothing", &unclosed));
        let huge = format!("<domain>{}</domain>", " ".repeat(MAX_DOCUMENT_BYTES));
        assert!(prescan(huge.as_bytes()).unwrap_err().contains("MiB"));
        assert!(holds("/nothing", &huge));
        let wide = format!("<domain>{}</domain>", "<b/>".repeat(300_000));
        assert!(holds("/nothing", &wide), "more nodes than the parser's limit");
        let attrs: String = (0..100).map(|i| format!(" a{i}='x'")).collect();
        let many = format!("<domain{attrs}/>");
        assert!(prescan(many.as_bytes()).unwrap_err().contains("attributes"));
        let decls: String = (0..300).map(|i| format!("<n{i} xmlns:p{i}='urn:{i}'/>")).collect();
        let ns = format!("<domain>{decls}</domain>");
        assert!(prescan(ns.as_bytes()).unwrap_err().contains("namespace declarations"));
        // Text made of many entity references (quadratic in older parsers).
        let amps = format!("<domain>{}</domain>", "a&amp;".repeat(500_000));
        assert!(holds("/domain", &amps));
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn the_prescan_skips_what_is_not_a_tag() {
        let tricky = "<?xml version='1.0'?><!-- <a><a><a> --><d x='>' y=\"a>b\"><![CDATA[<a><a>]]><e/></d>";
        prescan(tricky.as_bytes()).unwrap();
        assert!(holds("/d/e", tricky));
        assert!(holds("/d/@x = '>'", tricky));
        assert_eq!(name_before(b"a xmlns:p "), b"xmlns:p");
        assert_eq!(name_before(b"a b='1' xmlns"), b"xmlns");
    }
}
