//! An adversarial corpus for testing the boundary: personal, health and genomic data in many
//! locales and formats, and ways to hide it in a real value (glued with `_ - . : /`, upper and
//! lower case). Used by the enforcer's and the pipeline's property tests and by the collector's;
//! nothing here runs in a service.

/// Personal (PII), health (PHI) and genomic data, each a string that must never reach an
/// analysis-side topic. Several locales and formats per kind.
pub const PII: &[&str] = &[
    // Names, several locales.
    "Jane Doe",
    "jane.doe",
    "Smith",
    "Müller",
    "Schröder-Lindqvist",
    "María José García",
    "Nguyễn Văn An",
    "Olumide Adeyemi",
    "Dr. Alice Keller",
    "Wang Xiaoming",
    "Søren Kierkegaard",
    "O'Brien",
    // E-mail addresses, plain and disguised.
    "jane.doe@clinic.org",
    "alice.keller@charite.de",
    "jane.doe_at_clinic.org",
    "j.doe(at)uni-hospital.example",
    // Phone numbers.
    "555-867-5309",
    "(555) 867-5309",
    "+1 555 867 5309",
    "+44 20 7946 0958",
    "+49 30 12345678",
    "030/12345678",
    "06 12 34 56 78",
    "5558675309",
    // National ids.
    "123-45-6789",
    "QQ123456C",
    "1 84 03 75 116 005 42",
    "12345678901",
    "756.1234.5678.97",
    // Medical record, patient, subject and case ids.
    "MRN12345678",
    "MRN-448812",
    "patient_7",
    "PT-2024-0042",
    "subject 0815",
    "case_19-4411",
    // Dates of birth.
    "1984-03-12",
    "12/03/1984",
    "03/12/84",
    "12.03.1984",
    "1984.03.12",
    "19840312",
    "DOB 1984-03-12",
    "born 12 March 1984",
    // Sample and library ids.
    "Sample_1",
    "NA12878",
    "HG002",
    "S12-0456",
    "LIB-0042-TUMOR",
    "tumour_exome_batch3",
    "Oncology_panel_Smith",
    // Genomic data.
    "ACGTACGTACGTAC",
    "acgttgcaggtcaacgtagg",
    "ACGUACGUACGUACGU",
    "NNNNACGTNNNNACGT",
    // Paths that carry user, host or project names.
    "C:\\Users\\jane\\runs",
    "\\\\seqserver\\share\\Smith",
    "/home/jane/runs",
    "/Users/alice.keller/Desktop",
    "D:\\Illumina\\MiSeqOutput\\Patient42",
    // Experiment names and free text.
    "Experiment Keller BRCA1 cohort",
    "Run for patient Doe",
    "HIV positive donor",
    "192.168.1.10",
    "https://lims.clinic.org/patient/42",
];

/// Words of the corpus that are not personal on their own and may appear in sanitized output
/// (template words, field paths): a leak check ignores them as parts.
pub const HARMLESS_WORDS: &[&str] = &[
    "runs",
    "users",
    "home",
    "desktop",
    "share",
    "illumina",
    "experiment",
    "cohort",
    "positive",
    "patient",
    "subject",
    "case",
    "sample",
    "born",
    "march",
    "panel",
    "exome",
    "tumour",
    "https",
    "clinic",
    "lims",
    "donor",
    "batch3",
    "miseqoutput",
    "seqserver",
    "org",
];

/// Separators a value can be glued to personal data with.
pub const SEPARATORS: &[char] = &['_', '-', '.', ':', '/'];

/// Every way `pii` is injected into a field whose real value is `real`: as is, bare upper and
/// lower case, and glued before and after `real` with each separator (as is, upper, lower).
pub fn injections(real: &str, pii: &str) -> Vec<String> {
    let mut out = vec![pii.to_string(), pii.to_uppercase(), pii.to_lowercase()];
    for sep in SEPARATORS {
        for glued in [format!("{real}{sep}{pii}"), format!("{pii}{sep}{real}")] {
            out.push(glued.to_uppercase());
            out.push(glued.to_lowercase());
            out.push(glued);
        }
    }
    out
}

/// Whether `haystack` holds any tell-tale part of `pii`: the whole value, or any of its parts
/// (split at spaces and separators) that could identify on its own: at least four characters
/// with a letter, or at least six digits (a lone `0042` or `1984` is not a tell-tale; a date,
/// phone number or record number is checked whole). Compared case-insensitively, after keyed
/// pseudonyms (`ps-` + hex) are taken out of the haystack, since their hex digits are random.
/// A part that is a word of `allowed` (benign vocabulary such as template words) is not a
/// tell-tale.
pub fn leaks(haystack: &[u8], pii: &str, allowed: &[&str]) -> bool {
    let hay = without_pseudonyms(&String::from_utf8_lossy(haystack).to_lowercase());
    let whole = pii.to_lowercase();
    if whole.trim().len() >= 4 && hay.contains(whole.trim()) {
        return true;
    }
    whole
        .split(|c: char| c.is_whitespace() || "_-.:/\\()@,+'".contains(c))
        .filter(|p| {
            let n = p.chars().count();
            if p.chars().all(|c| c.is_ascii_digit()) {
                n >= 6
            } else {
                n >= 4
            }
        })
        .filter(|p| !allowed.iter().any(|a| a.eq_ignore_ascii_case(p)))
        .any(|p| hay.contains(p))
}

/// `text` with every keyed pseudonym (`ps-` and its hex digits) replaced by `ps-*`.
fn without_pseudonyms(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("ps-") {
        out.push_str(&rest[..i + 3]);
        out.push('*');
        let after = &rest[i + 3..];
        let hex = after.bytes().take_while(|b| b.is_ascii_hexdigit()).count();
        rest = &after[hex..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injections_cover_case_and_every_separator() {
        let v = injections("A00123", "MRN12345678");
        assert!(v.contains(&"A00123_MRN12345678".to_string()));
        assert!(v.contains(&"mrn12345678/a00123".to_string()));
        assert_eq!(v.len(), 3 + SEPARATORS.len() * 6);
    }

    #[test]
    fn leaks_finds_parts_but_not_allowed_words() {
        assert!(leaks(b"xx smith yy", "Oncology_panel_Smith", &[]));
        assert!(leaks(b"...12345678...", "MRN-12345678", &[]));
        assert!(!leaks(b"Run started", "Run for patient Doe", &["run"]));
        assert!(!leaks(b"ps-0a1b2c3d4e5f60718293", "Jane Doe", &[]));
        assert!(
            !leaks(b"ps-0a1b2c19840312abcd", "DOB 19840312", &[]),
            "hex of a pseudonym"
        );
        assert!(
            !leaks(b"run 0042", "PT-2024-0042", &[]),
            "a lone short number"
        );
        assert!(leaks(b"x 12345678901 y", "12345678901", &[]));
    }
}
