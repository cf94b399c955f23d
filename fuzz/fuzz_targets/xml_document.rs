//! A guest's document (hostile: its owner writes `<metadata>`) through the guarded
//! parser, `[match] xpath` with the expressions hooks use, and the filter-output check.
//!
//! Properties: nothing panics; a document that parses is within the limits the prescan
//! promises (depth, attributes, nodes), and written back it parses again to the same
//! tree; input that is not evaluated makes every expression agree (all hold: failing
//! closed, or none: no document); a document passes the output check against itself.
#![no_main]

use std::sync::OnceLock;

use virt_hooks_core::backend::{EventDocument, XPath};
use virt_hooks_core::fuzzing::{check_filter_output, document_change, parse_document, prescan_document, NotParsed};
use virt_hooks_core::report::MAX_DIFF;
use libfuzzer_sys::fuzz_target;
use virt_hooks_fuzz::{serialize, shape, MAX_ATTRIBUTES_PER_ELEMENT, MAX_DEPTH, MAX_NODES};

/// Expressions of the kind sidecars carry (the tests' and examples'), some costly ones
/// (`preceding::`, `//`) included: a hostile document must not make them slow.
const EXPRESSIONS: &[&str] = &[
    "/domain/devices/hostdev",
    "/domain/devices/hostdev[@type='pci']",
    "count(/domain/devices/disk) > 1",
    "/domain/name[starts-with(., 'gpu-')]",
    "/domain/metadata/*[local-name() = 'gpu']",
    "/domain/metadata/app:gpu[@model = 'a100']",
    "//target[@dev='vda']",
    "//disk[1]/following-sibling::hostdev",
    "//hostdev/preceding::disk[2]/@device = 'disk'",
    "string-length(/domain/name) = 12",
    "/domain/description[@xml:lang = 'en']",
    "(//node() | //@*)[last()]",
    "/hookData/network[name='default']/bridge[@name='virbr0']",
    "sum(//memory) > 1048576 or contains(normalize-space(//description), 'x')",
];

/// [`EXPRESSIONS`] compiled with their namespaces, and `true()` and `false()`.
struct Compiled {
    expressions: Vec<XPath>,
    namespaces: Vec<(String, String)>,
    yes: XPath,
    no: XPath,
}

fn compiled() -> &'static Compiled {
    static COMPILED: OnceLock<Compiled> = OnceLock::new();
    COMPILED.get_or_init(|| {
        let namespaces = vec![("app".to_owned(), "http://example.org/app/1.0".to_owned())];
        Compiled {
            expressions: EXPRESSIONS
                .iter()
                .map(|e| XPath::compile(e, &namespaces).expect(e))
                .collect(),
            yes: XPath::compile("true()", &[]).expect("true()"),
            no: XPath::compile("false()", &[]).expect("false()"),
            namespaces,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Compiled {
        expressions,
        namespaces: ns,
        yes,
        no,
    } = compiled();
    let doc = EventDocument::new(Some(data));
    let results: Vec<bool> = expressions.iter().map(|x| x.holds(&doc, ns)).collect();
    let (always, never) = (yes.holds(&doc, ns), no.holds(&doc, ns));
    if doc.is_xml() {
        assert!(always && !never, "true() and false() on a document");
    } else {
        // Not evaluated: all hold (refused, failing closed) or none (no document).
        assert_eq!(always, never, "unevaluated input: true() {always}, false() {never}");
        assert!(
            results.iter().all(|&r| r == always),
            "unevaluated input, yet {results:?}"
        );
    }

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = match parse_document(text) {
        Ok(parsed) => parsed,
        Err(NotParsed::Refused(_)) | Err(NotParsed::NotXml(_)) => return,
    };
    assert!(prescan_document(data).is_ok(), "parsed although the prescan refuses it");
    let (depth, attributes) = shape(&parsed);
    assert!(depth <= MAX_DEPTH, "parsed with elements nested {depth} deep");
    assert!(
        attributes <= MAX_ATTRIBUTES_PER_ELEMENT,
        "parsed with {attributes} attributes on one element"
    );
    assert!(
        parsed.descendants().count() <= MAX_NODES + 1,
        "parsed with more nodes than the limit"
    );

    let written = serialize(&parsed);
    let again = match parse_document(&written) {
        Ok(again) => again,
        Err(NotParsed::Refused(why)) => panic!("written back, refused: {why}\n{written}"),
        Err(NotParsed::NotXml(e)) => panic!("written back, not XML: {e}\n{written}"),
    };
    assert_eq!(serialize(&again), written, "written back, it parses to another tree");

    match check_filter_output(Some(data), data) {
        Ok(()) => {}
        Err(why) => assert!(
            why.contains("declares encoding"),
            "a document refused as its own rewrite: {why}"
        ),
    }
    let change = document_change(data, written.as_bytes());
    assert_eq!(change.changed, data != written.as_bytes());
    assert!(change.diff.len() <= MAX_DIFF);
});
