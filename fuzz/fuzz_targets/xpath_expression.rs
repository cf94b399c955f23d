//! `[match] xpath` expressions as a sidecar gives them: compiled, then evaluated on a
//! document. The first line is the expression; the rest, if any, the document (cut to
//! 4 KiB: what an expression costs on a large document is bounded by the node limit,
//! and only a hostile *document* is the `xml_document` target's business).
//!
//! Properties: nothing panics; an error's column and offset point into the expression
//! (a character boundary, the column counting characters up to it); a compiled
//! expression is the text it was given; no input never matches, and input that is
//! refused unparsed always does.
#![no_main]

use virt_hooks_core::backend::{EventDocument, XPath};
use libfuzzer_sys::fuzz_target;

const DOMAIN: &[u8] = b"<domain type='kvm' xmlns:app='http://example.org/app/1.0'><name>gpu-1</name>\
<metadata><app:gpu model='a100'/></metadata><description xml:lang='en'>d</description>\
<devices><disk device='disk'><target dev='vda'/></disk><!--c--><?pi x?><hostdev type='pci'/></devices></domain>";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (expression, document) = match text.split_once('\n') {
        Some((e, d)) => (e, d.as_bytes()),
        None => (text.as_ref(), DOMAIN),
    };
    let document = &document[..document.len().min(4096)];
    let ns = [
        ("app".to_owned(), "http://example.org/app/1.0".to_owned()),
        ("p".to_owned(), "urn:p".to_owned()),
    ];
    match XPath::compile(expression, &ns) {
        Err(e) => {
            assert!(
                e.offset <= expression.len() && expression.is_char_boundary(e.offset),
                "{e:?}"
            );
            assert_eq!(e.column, expression[..e.offset].chars().count() + 1, "{e:?}");
        }
        Ok(x) => {
            assert_eq!(x.as_str(), expression);
            x.holds(&EventDocument::new(Some(document)), &ns);
            assert!(
                !x.holds(&EventDocument::new(None), &ns),
                "matched an event without input"
            );
            let refused = EventDocument::new(Some(b"<!DOCTYPE d><domain/>"));
            assert!(x.holds(&refused, &ns), "a refused document must fail closed");
        }
    }
});
