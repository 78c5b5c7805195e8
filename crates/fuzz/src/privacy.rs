//! The privacy crate's parsers of untrusted strings: operator template catalogues (JSON lines),
//! operation-log messages against the built-in catalogue, and the identifier grammars and
//! closed catalogues the enforcer applies field by field.
//!
//! Guarantees checked on every input, besides "no panic":
//! - a catalogue that parses holds templates whose examples match them and render back;
//!   adding it to the built-in catalogue succeeds or fails with a typed error;
//! - a message that matches a template renders back (from the template and the typed values
//!   alone) to the message's canonical form, and the rendering matches the same template with
//!   the same values;
//! - a run id splits into a head and a flow cell that is itself a valid flow-cell id; a closed
//!   catalogue maps a value to an entry that maps to itself.

use std::sync::OnceLock;

use seqmon_privacy::pseudonym::{is_pseudonym, PseudonymKey};
use seqmon_privacy::template::{canonical, TemplateCatalogue};
use seqmon_privacy::{catalogue, grammar};

fn builtin() -> &'static TemplateCatalogue {
    static CELL: OnceLock<TemplateCatalogue> = OnceLock::new();
    CELL.get_or_init(TemplateCatalogue::builtin)
}

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// An operator's template catalogue (JSON lines).
pub fn templates(data: &[u8]) {
    let Ok(cat) = TemplateCatalogue::parse(&text(data)) else {
        return;
    };
    for t in cat.templates() {
        if let Some(example) = t.example() {
            let m = cat
                .match_message(example)
                .unwrap_or_else(|| panic!("{}: its example does not match", t.id()));
            assert_eq!(m.template_id, t.id());
            assert_eq!(cat.render(&m).as_deref(), Some(example));
        }
    }
    let mut all = builtin().clone();
    let _ = all.extend(cat);
}

/// An operation-log message against the built-in catalogue.
pub fn log_message(data: &[u8]) {
    let message = text(data);
    let cat = builtin();
    let Some(m) = cat.match_message(&message) else {
        return;
    };
    let rendered = cat
        .render(&m)
        .unwrap_or_else(|| panic!("a match does not render: {m:?}"));
    assert!(
        rendered.eq_ignore_ascii_case(&canonical(&message)),
        "rendered {rendered:?} is not the canonical form of {message:?}"
    );
    let again = cat
        .match_message(&rendered)
        .unwrap_or_else(|| panic!("the rendering {rendered:?} does not match"));
    assert_eq!(again, m, "the rendering matches differently");
}

/// Every grammar and closed catalogue on one string, and a pseudonym key from it.
pub fn grammar(data: &[u8]) {
    let s = text(data);
    let s = s.as_ref();
    if let Some(family) = grammar::instrument_serial(s) {
        assert!(!family.label().is_empty());
    }
    let _ = grammar::flowcell_id(s);
    let is_run = grammar::run_id(s);
    match grammar::run_id_parts(s) {
        Some((head, flowcell)) => {
            assert!(is_run);
            assert_eq!(format!("{head}{flowcell}"), s);
            assert!(
                grammar::flowcell_id(flowcell),
                "the flow-cell part {flowcell:?} of run id {s:?} is not a flow-cell id"
            );
        }
        None => assert!(!is_run, "run id {s:?} parses but does not split"),
    }
    let _ = grammar::lot_number(s);
    let _ = grammar::version(s);
    let _ = grammar::message_id(s);
    let _ = grammar::event_code(s);
    let _ = grammar::region(s);
    type Lookup = fn(&str) -> Option<&'static str>;
    let lookups: [(&str, Lookup); 4] = [
        ("chemistry", catalogue::chemistry),
        ("application_name", catalogue::application_name),
        ("attribute_key", catalogue::attribute_key),
        ("consent_basis", catalogue::consent_basis),
    ];
    for (name, lookup) in lookups {
        if let Some(entry) = lookup(s) {
            assert_eq!(
                lookup(entry),
                Some(entry),
                "{name}: {entry:?} is not canonical"
            );
        }
    }
    let _ = is_pseudonym(s);
    if let Ok(key) = PseudonymKey::from_hex(s) {
        assert!(is_pseudonym(
            &key.pseudonym(seqmon_privacy::pseudonym::Domain::Other, s)
        ));
    }
}
