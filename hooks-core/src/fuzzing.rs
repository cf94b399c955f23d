//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): the crate's own
//! functions that read untrusted input, reached without widening their visibility.
//! Not an API: it changes with them.

use crate::document::{check_output, DocumentChange};
use crate::xml::{parse_guarded, prescan, Unparsed};

/// Why [`parse_document`] gave no document.
#[derive(Debug)]
pub enum NotParsed {
    /// Refused before parsing, or past the node limit: the reason.
    Refused(String),
    /// The parser's error.
    NotXml(roxmltree::Error),
}

/// A guest's document parsed as `[match] xpath` and the filter-output check parse it.
pub fn parse_document(text: &str) -> Result<roxmltree::Document<'_>, NotParsed> {
    parse_guarded(text).map_err(|e| match e {
        Unparsed::Refused(why) => NotParsed::Refused(why),
        Unparsed::NotXml(e) => NotParsed::NotXml(e),
    })
}

/// The linear scan that runs before the parser.
pub fn prescan_document(bytes: &[u8]) -> Result<(), String> {
    prescan(bytes)
}

/// Whether a filter stage's `output` can be handed on, given its `input`.
pub fn check_filter_output(input: Option<&[u8]>, output: &[u8]) -> Result<(), String> {
    check_output(input, output)
}

/// What a filter stage changed.
pub fn document_change(before: &[u8], after: &[u8]) -> DocumentChange {
    DocumentChange::between(before, after)
}
