//! Helpers shared by the fuzz targets.

use std::fmt::Write as _;

/// The namespace of the `xml` prefix, bound without being declared.
const XML_NAMESPACE: &str = "http://www.w3.org/XML/1998/namespace";

/// The deepest nesting, most attributes on one element, and most nodes that the guarded
/// parser lets through (`hooks-core/src/xml.rs`).
pub const MAX_DEPTH: usize = 256;
pub const MAX_ATTRIBUTES_PER_ELEMENT: usize = 64;
pub const MAX_NODES: usize = 10_000;

/// A parsed document written back as XML: the same elements (expanded names), attributes,
/// text, comments and processing instructions, with each namespace declared where its
/// binding first differs from the parent's, and every character that parsing would
/// change (`&`, `<`, `>`, a CR, a tab or newline in an attribute) escaped. Parsing the
/// result gives the same tree, which [`serialize`] writes the same again.
pub fn serialize(doc: &roxmltree::Document<'_>) -> String {
    let mut out = String::new();
    for (i, child) in doc.root().children().enumerate() {
        // A declaration written with a tab (`<?xml\tversion=…?>`) is a node here; it is
        // left out as one written with a space is.
        if i == 0 && child.pi().is_some_and(|pi| pi.target == "xml") {
            continue;
        }
        node(child, &mut out);
    }
    out
}

fn node(n: roxmltree::Node<'_, '_>, out: &mut String) {
    match n.node_type() {
        roxmltree::NodeType::Element => element(n, out),
        roxmltree::NodeType::Text => escape(n.text().unwrap_or_default(), false, out),
        roxmltree::NodeType::Comment => {
            let _ = write!(out, "<!--{}-->", n.text().unwrap_or_default());
        }
        roxmltree::NodeType::PI => {
            if let Some(pi) = n.pi() {
                match pi.value {
                    Some(value) => {
                        let _ = write!(out, "<?{} {value}?>", pi.target);
                    }
                    None => {
                        let _ = write!(out, "<?{}?>", pi.target);
                    }
                }
            }
        }
        roxmltree::NodeType::Root => {}
    }
}

fn element(n: roxmltree::Node<'_, '_>, out: &mut String) {
    let in_scope: Vec<(Option<&str>, &str)> = n.namespaces().map(|ns| (ns.name(), ns.uri())).collect();
    let parents: Vec<(Option<&str>, &str)> = n
        .parent_element()
        .map(|p| p.namespaces().map(|ns| (ns.name(), ns.uri())).collect())
        .unwrap_or_default();
    let tag = n.tag_name();
    let name = qualified(tag.namespace(), tag.name(), &in_scope, true);
    out.push('<');
    out.push_str(&name);
    for &(prefix, uri) in &in_scope {
        if parents.contains(&(prefix, uri)) || uri == XML_NAMESPACE {
            continue;
        }
        match prefix {
            Some(p) => {
                let _ = write!(out, " xmlns:{p}=\"");
            }
            None => out.push_str(" xmlns=\""),
        }
        escape(uri, true, out);
        out.push('"');
    }
    // A default namespace that ends here.
    if parents.iter().any(|(p, _)| p.is_none()) && !in_scope.iter().any(|(p, _)| p.is_none()) {
        out.push_str(" xmlns=\"\"");
    }
    for a in n.attributes() {
        let _ = write!(out, " {}=\"", qualified(a.namespace(), a.name(), &in_scope, false));
        escape(a.value(), true, out);
        out.push('"');
    }
    if !n.has_children() {
        out.push_str("/>");
        return;
    }
    out.push('>');
    for child in n.children() {
        node(child, out);
    }
    let _ = write!(out, "</{name}>");
}

/// `prefix:local` for a name in `namespace`, with a prefix bound to it here (an
/// element may use the default namespace; an attribute never does).
fn qualified(namespace: Option<&str>, local: &str, in_scope: &[(Option<&str>, &str)], element: bool) -> String {
    let Some(uri) = namespace else {
        return local.to_owned();
    };
    if uri == XML_NAMESPACE {
        return format!("xml:{local}");
    }
    if element && in_scope.contains(&(None, uri)) {
        return local.to_owned();
    }
    match in_scope.iter().find(|(p, u)| p.is_some() && *u == uri) {
        Some((Some(p), _)) => format!("{p}:{local}"),
        // The parser bound it, so a prefix is in scope; say so if not.
        _ => panic!("no prefix in scope for namespace {uri:?} of {local:?}"),
    }
}

fn escape(text: &str, attribute: bool, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if attribute => out.push_str("&quot;"),
            '\r' => out.push_str("&#13;"),
            '\t' if attribute => out.push_str("&#9;"),
            '\n' if attribute => out.push_str("&#10;"),
            c => out.push(c),
        }
    }
}

/// How deep elements nest below the root node, and the most attributes on one element.
pub fn shape(doc: &roxmltree::Document<'_>) -> (usize, usize) {
    let (mut depth, mut attributes) = (0, 0);
    for n in doc.descendants().filter(roxmltree::Node::is_element) {
        depth = depth.max(n.ancestors().filter(roxmltree::Node::is_element).count());
        attributes = attributes.max(n.attributes().len());
    }
    (depth, attributes)
}
