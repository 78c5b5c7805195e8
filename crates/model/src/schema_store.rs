//! Every released schema version, compiled into the binary from `schemas/<name>/v<N>.avsc`.
//!
//! Readers look up the writer's schema by the fingerprint in the single-object header and resolve
//! it to the newest version of the same record type, so an old instrument's v1 telemetry is read
//! as v2 with defaults filled in.

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::rabin::Rabin;
use apache_avro::Schema;

/// Source text of every schema file, with its record-type name and version.
pub const SCHEMA_FILES: &[(&str, u32, &str)] = &[
    (
        "telemetry",
        1,
        include_str!("../../../schemas/telemetry/v1.avsc"),
    ),
    (
        "telemetry",
        2,
        include_str!("../../../schemas/telemetry/v2.avsc"),
    ),
    (
        "telemetry",
        3,
        include_str!("../../../schemas/telemetry/v3.avsc"),
    ),
    (
        "telemetry",
        4,
        include_str!("../../../schemas/telemetry/v4.avsc"),
    ),
    (
        "telemetry",
        5,
        include_str!("../../../schemas/telemetry/v5.avsc"),
    ),
    (
        "sanitized_telemetry",
        1,
        include_str!("../../../schemas/sanitized_telemetry/v1.avsc"),
    ),
    (
        "sanitized_telemetry",
        2,
        include_str!("../../../schemas/sanitized_telemetry/v2.avsc"),
    ),
    (
        "sanitized_telemetry",
        3,
        include_str!("../../../schemas/sanitized_telemetry/v3.avsc"),
    ),
    (
        "sanitized_telemetry",
        4,
        include_str!("../../../schemas/sanitized_telemetry/v4.avsc"),
    ),
    (
        "sanitized_telemetry",
        5,
        include_str!("../../../schemas/sanitized_telemetry/v5.avsc"),
    ),
    (
        "feature",
        1,
        include_str!("../../../schemas/feature/v1.avsc"),
    ),
    (
        "feature",
        2,
        include_str!("../../../schemas/feature/v2.avsc"),
    ),
    (
        "feature",
        3,
        include_str!("../../../schemas/feature/v3.avsc"),
    ),
    (
        "feature",
        4,
        include_str!("../../../schemas/feature/v4.avsc"),
    ),
    (
        "anomaly",
        1,
        include_str!("../../../schemas/anomaly/v1.avsc"),
    ),
    (
        "anomaly",
        2,
        include_str!("../../../schemas/anomaly/v2.avsc"),
    ),
    (
        "anomaly",
        3,
        include_str!("../../../schemas/anomaly/v3.avsc"),
    ),
    (
        "anomaly",
        4,
        include_str!("../../../schemas/anomaly/v4.avsc"),
    ),
    (
        "anomaly",
        5,
        include_str!("../../../schemas/anomaly/v5.avsc"),
    ),
    ("alert", 1, include_str!("../../../schemas/alert/v1.avsc")),
    ("alert", 2, include_str!("../../../schemas/alert/v2.avsc")),
    ("alert", 3, include_str!("../../../schemas/alert/v3.avsc")),
    ("alert", 4, include_str!("../../../schemas/alert/v4.avsc")),
    (
        "alert_command",
        1,
        include_str!("../../../schemas/alert_command/v1.avsc"),
    ),
    (
        "alert_command",
        2,
        include_str!("../../../schemas/alert_command/v2.avsc"),
    ),
    (
        "cohort_signal",
        1,
        include_str!("../../../schemas/cohort_signal/v1.avsc"),
    ),
    (
        "cohort_signal",
        2,
        include_str!("../../../schemas/cohort_signal/v2.avsc"),
    ),
    (
        "cohort_signal",
        3,
        include_str!("../../../schemas/cohort_signal/v3.avsc"),
    ),
    (
        "maintenance_entry",
        1,
        include_str!("../../../schemas/maintenance_entry/v1.avsc"),
    ),
    (
        "maintenance_entry",
        2,
        include_str!("../../../schemas/maintenance_entry/v2.avsc"),
    ),
    (
        "maintenance_entry",
        3,
        include_str!("../../../schemas/maintenance_entry/v3.avsc"),
    ),
    (
        "maintenance_entry",
        4,
        include_str!("../../../schemas/maintenance_entry/v4.avsc"),
    ),
    (
        "dead_letter",
        1,
        include_str!("../../../schemas/dead_letter/v1.avsc"),
    ),
    (
        "dead_letter",
        2,
        include_str!("../../../schemas/dead_letter/v2.avsc"),
    ),
    (
        "dead_letter",
        3,
        include_str!("../../../schemas/dead_letter/v3.avsc"),
    ),
    (
        "privacy_audit",
        1,
        include_str!("../../../schemas/privacy_audit/v1.avsc"),
    ),
    (
        "privacy_audit",
        2,
        include_str!("../../../schemas/privacy_audit/v2.avsc"),
    ),
    (
        "state_snapshot",
        1,
        include_str!("../../../schemas/state_snapshot/v1.avsc"),
    ),
    (
        "feature_extractor_state",
        1,
        include_str!("../../../schemas/feature_extractor_state/v1.avsc"),
    ),
    (
        "feature_extractor_state",
        2,
        include_str!("../../../schemas/feature_extractor_state/v2.avsc"),
    ),
    (
        "anomaly_detector_state",
        1,
        include_str!("../../../schemas/anomaly_detector_state/v1.avsc"),
    ),
];

/// One parsed schema version.
#[derive(Debug)]
pub struct SchemaEntry {
    /// Record-type name, the folder under `schemas/` (e.g. `telemetry`).
    pub name: &'static str,
    /// Version, the file name `v<N>.avsc`.
    pub version: u32,
    /// Parsed schema.
    pub schema: Schema,
    /// CRC-64-AVRO fingerprint of the canonical form, little-endian as in the wire header.
    pub fingerprint: [u8; 8],
    /// The schema compiled for the direct decoder ([`crate::fast`]), when it supports it.
    pub plan: Option<crate::fast::Plan>,
    /// Whether the direct writer ([`crate::fast_write`]) may write this version with `plan`:
    /// not when the schema refers to a named type (apache-avro's writer, handed no names,
    /// refuses those, and the direct writer must not write what apache-avro refuses).
    pub writes_directly: bool,
    /// The plan that reads this version straight into the newest version's shape, when no
    /// value needs converting (see [`crate::fast::Plan::resolving`]).
    pub to_latest: Option<crate::fast::Plan>,
}

/// Whether `schema` refers to a named type anywhere (a `Schema::Ref`).
fn names_a_type(schema: &Schema) -> bool {
    match schema {
        Schema::Ref { .. } => true,
        Schema::Record(r) => r.fields.iter().any(|f| names_a_type(&f.schema)),
        Schema::Array(a) => names_a_type(&a.items),
        Schema::Map(m) => names_a_type(&m.types),
        Schema::Union(u) => u.variants().iter().any(names_a_type),
        _ => false,
    }
}

/// All schema versions, by fingerprint and by name.
#[derive(Debug)]
pub struct SchemaStore {
    entries: Vec<SchemaEntry>,
    by_fingerprint: HashMap<[u8; 8], usize>,
    latest: HashMap<&'static str, usize>,
}

/// Most bytes (or items of one array or map block) apache-avro may allocate for one value while
/// decoding: twice the largest record the pipeline carries (Kafka's default 1 MB message limit,
/// file mode's default 1 MiB line). Its own default, 512 MiB, let a 20-byte record claim a map
/// block of 500 million entries, and apache-avro sizes the map before reading one: gigabytes, or
/// an abort when the allocation fails.
pub const MAX_DECODE_ALLOCATION: usize = 2 * 1024 * 1024;

impl SchemaStore {
    /// Parses every schema in [`SCHEMA_FILES`]. Panics only on a schema file that does not parse,
    /// which the unit tests rule out before anything ships.
    fn load() -> Self {
        // Every decode looks the writer schema up here first, so this runs before apache-avro
        // allocates anything (its limit is set once per process).
        apache_avro::util::max_allocation_bytes(MAX_DECODE_ALLOCATION);
        let mut entries = Vec::new();
        for (name, version, text) in SCHEMA_FILES {
            let schema = Schema::parse_str(text)
                .unwrap_or_else(|e| panic!("schemas/{name}/v{version}.avsc does not parse: {e}"));
            entries.push(SchemaEntry {
                name,
                version: *version,
                fingerprint: fingerprint(&schema),
                plan: crate::fast::Plan::compile(&schema),
                writes_directly: !names_a_type(&schema),
                to_latest: None,
                schema,
            });
        }
        let mut by_fingerprint = HashMap::new();
        let mut latest: HashMap<&'static str, usize> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            by_fingerprint.insert(e.fingerprint, i);
            by_fingerprint
                .entry(legacy_fingerprint(&e.schema))
                .or_insert(i);
            let newer = latest
                .get(e.name)
                .is_none_or(|&j| entries[j].version < e.version);
            if newer {
                latest.insert(e.name, i);
            }
        }
        for i in 0..entries.len() {
            let newest = &entries[latest[entries[i].name]];
            let plan = if newest.version == entries[i].version {
                entries[i].plan.clone()
            } else {
                crate::fast::Plan::resolving(&entries[i].schema, &newest.schema)
            };
            entries[i].to_latest = plan;
        }
        SchemaStore {
            entries,
            by_fingerprint,
            latest,
        }
    }

    /// The schema version whose fingerprint is `fp`, if it is one of ours.
    pub fn by_fingerprint(&self, fp: &[u8; 8]) -> Option<&SchemaEntry> {
        self.by_fingerprint.get(fp).map(|&i| &self.entries[i])
    }

    /// The newest version of record type `name`. Panics on a name that is not in the store: names
    /// are compile-time constants of [`crate::records::AvroRecord`] implementations.
    pub fn latest(&self, name: &str) -> &SchemaEntry {
        let i = self
            .latest
            .get(name)
            .unwrap_or_else(|| panic!("no schema named {name}"));
        &self.entries[*i]
    }

    /// A specific version of record type `name`.
    pub fn version(&self, name: &str, version: u32) -> Option<&SchemaEntry> {
        self.entries
            .iter()
            .find(|e| e.name == name && e.version == version)
    }

    /// Every entry, in file order.
    pub fn entries(&self) -> &[SchemaEntry] {
        &self.entries
    }
}

/// CRC-64-AVRO (Rabin) fingerprint of a schema's parsing canonical form, little-endian.
pub fn fingerprint(schema: &Schema) -> [u8; 8] {
    crc64_avro(canonical_form(schema).as_bytes()).to_le_bytes()
}

/// The fingerprint apache-avro 0.21 computes: over its canonical form, which keeps a primitive
/// that carried a logical type as an object (`{"type":"long"}`). Records written before
/// 2026-11-29 carry it; the store still accepts it when reading.
pub fn legacy_fingerprint(schema: &Schema) -> [u8; 8] {
    let fp = schema.fingerprint::<Rabin>();
    let mut out = [0u8; 8];
    out.copy_from_slice(&fp.bytes[..8]);
    out
}

/// The Parsing Canonical Form of the specification. apache-avro's `canonical_form` strips
/// `logicalType` but leaves the primitive as `{"type":"long"}`, where the specification's
/// [PRIMITIVES] rule (and fastavro, and the Java implementation) write `"long"`, so its
/// fingerprints differ from every other implementation's for schemas with logical types.
/// Names and symbols in the canonical form are bare identifiers, so the replacement below can
/// only meet such objects.
pub fn canonical_form(schema: &Schema) -> String {
    let mut text = schema.canonical_form();
    for primitive in [
        "null", "boolean", "int", "long", "float", "double", "bytes", "string",
    ] {
        text = text.replace(
            &format!(r#"{{"type":"{primitive}"}}"#),
            &format!(r#""{primitive}""#),
        );
    }
    text
}

/// CRC-64-AVRO (the specification's "Rabin" fingerprint) of `data`.
pub fn crc64_avro(data: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    static TABLE: OnceLock<[u64; 256]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u64; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut fp = i as u64;
            for _ in 0..8 {
                fp = (fp >> 1) ^ (EMPTY & 0u64.wrapping_sub(fp & 1));
            }
            *slot = fp;
        }
        t
    });
    data.iter().fold(EMPTY, |fp, b| {
        (fp >> 8) ^ table[((fp ^ u64::from(*b)) & 0xff) as usize]
    })
}

/// Schema-registry ids of our schema versions: the id → version map a reader needs for records
/// in the Confluent framing (magic byte 0, 4-byte big-endian schema id, Avro binary body).
///
/// Built from the schemas a registry holds (see `seqmon_runtime::schema_registry`), matched to
/// the store by fingerprint, so an id resolves only to a version compiled into this binary; a
/// registry schema that is none of ours gets no entry, and its records fail to decode as
/// `UNKNOWN_SCHEMA`. Installed once per process at start-up ([`install_registry_ids`]);
/// decoding itself never does I/O.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RegistryIds {
    /// Registry id → index into [`SchemaStore::entries`].
    by_id: HashMap<u32, usize>,
}

/// Why a registry schema could not be added to [`RegistryIds`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryIdError {
    /// The registry's schema text does not parse as Avro.
    #[error("registry schema id {id} does not parse as Avro: {message}")]
    Unparsable { id: u32, message: String },
    /// The schema parses but is no version compiled into this binary.
    #[error("registry schema id {id} (fingerprint {fingerprint}) is not in the schema store")]
    NotOurs { id: u32, fingerprint: String },
    /// One id was given two different schemas (a registry answering inconsistently).
    #[error("registry schema id {id} names both {first} and {second}")]
    Conflict {
        id: u32,
        first: String,
        second: String,
    },
}

impl RegistryIds {
    /// Adds the schema a registry holds under `id`; returns the store entry it is.
    pub fn add(
        &mut self,
        id: u32,
        schema_text: &str,
    ) -> Result<&'static SchemaEntry, RegistryIdError> {
        let schema = Schema::parse_str(schema_text).map_err(|e| RegistryIdError::Unparsable {
            id,
            message: e.to_string(),
        })?;
        let fp = fingerprint(&schema);
        let index =
            store()
                .by_fingerprint
                .get(&fp)
                .copied()
                .ok_or_else(|| RegistryIdError::NotOurs {
                    id,
                    fingerprint: crate::json::to_hex(&fp),
                })?;
        let entry = &store().entries[index];
        if let Some(&previous) = self.by_id.get(&id) {
            if previous != index {
                let other = &store().entries[previous];
                return Err(RegistryIdError::Conflict {
                    id,
                    first: format!("{} v{}", other.name, other.version),
                    second: format!("{} v{}", entry.name, entry.version),
                });
            }
        }
        self.by_id.insert(id, index);
        Ok(entry)
    }

    /// The schema version registered under `id`, if it is one of ours.
    #[inline]
    pub fn get(&self, id: u32) -> Option<&'static SchemaEntry> {
        self.by_id.get(&id).map(|&i| &store().entries[i])
    }

    /// How many ids are known.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no id is known.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

static REGISTRY_IDS: OnceLock<RegistryIds> = OnceLock::new();

/// Installs the process's registry ids (once, at start-up, before records are decoded).
/// Installing the same map again is a no-op; a different one is refused (returned), since
/// decoders may already have resolved ids against the first.
pub fn install_registry_ids(ids: RegistryIds) -> Result<(), RegistryIds> {
    match REGISTRY_IDS.set(ids) {
        Ok(()) => Ok(()),
        Err(ids) if REGISTRY_IDS.get() == Some(&ids) => Ok(()),
        Err(ids) => Err(ids),
    }
}

/// The installed registry ids, if a registry was configured.
#[inline]
pub fn registry_ids() -> Option<&'static RegistryIds> {
    REGISTRY_IDS.get()
}

/// The process-wide schema store.
pub fn store() -> &'static SchemaStore {
    static STORE: OnceLock<SchemaStore> = OnceLock::new();
    STORE.get_or_init(SchemaStore::load)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::schema_compatibility::SchemaCompatibility;

    #[test]
    fn every_schema_parses_and_has_docs_on_every_field() {
        let store = store();
        assert_eq!(store.entries().len(), SCHEMA_FILES.len());
        for (name, version, text) in SCHEMA_FILES {
            let json: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
            assert!(
                json["namespace"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("io.seqmon.")),
                "{name} v{version} namespaced"
            );
            assert!(
                json["doc"]
                    .as_str()
                    .is_some_and(|d| d.contains(&format!("version {version}"))),
                "{name} v{version} doc names its version"
            );
            let mut missing = Vec::new();
            collect_undocumented(&json, &mut missing);
            assert!(
                missing.is_empty(),
                "{name} v{version}: fields without doc: {missing:?}"
            );
        }
    }

    fn collect_undocumented(v: &serde_json::Value, missing: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(o) => {
                if let Some(fields) = o.get("fields").and_then(|f| f.as_array()) {
                    for f in fields {
                        if f.get("doc")
                            .and_then(|d| d.as_str())
                            .is_none_or(str::is_empty)
                        {
                            missing.push(f["name"].to_string());
                        }
                    }
                }
                o.values().for_each(|c| collect_undocumented(c, missing));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|c| collect_undocumented(c, missing)),
            _ => {}
        }
    }

    #[test]
    fn fingerprints_match_the_specification_and_are_unique() {
        let store = store();
        for e in store.entries() {
            let canonical = canonical_form(&e.schema);
            assert_eq!(
                e.fingerprint,
                crc64_avro(canonical.as_bytes()).to_le_bytes(),
                "{} v{}",
                e.name,
                e.version
            );
            assert!(!canonical.contains(r#"{"type":"long"}"#), "{canonical}");
            // Both fingerprints find the entry: the legacy one for records already written.
            assert_eq!(
                store
                    .by_fingerprint(&legacy_fingerprint(&e.schema))
                    .map(|f| f.fingerprint),
                Some(e.fingerprint)
            );
        }
        let mut fps: Vec<_> = store.entries().iter().map(|e| e.fingerprint).collect();
        fps.sort();
        fps.dedup();
        assert_eq!(fps.len(), store.entries().len());
        // Specification test vector: the fingerprint of the schema "int".
        assert_eq!(crc64_avro(br#""int""#), 0x7275_d51a_3f39_5c8f);
    }

    #[test]
    fn canonical_form_writes_a_logical_types_primitive_as_a_name() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"r","namespace":"n","doc":"d","fields":[
                {"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"u","type":["null",{"type":"string","logicalType":"uuid"}]}]}"#,
        )
        .expect("parses");
        assert_eq!(
            canonical_form(&schema),
            r#"{"name":"n.r","type":"record","fields":[{"name":"t","type":"long"},{"name":"u","type":["null","string"]}]}"#
        );
    }

    /// Every version of a record type must be readable by every later version (backward
    /// compatibility). This test refuses a schema change that breaks it; released versions are
    /// never edited, only new `v<N+1>.avsc` files added.
    #[test]
    fn every_version_is_readable_by_every_later_version() {
        let store = store();
        let mut checked = 0;
        for old in store.entries() {
            for new in store
                .entries()
                .iter()
                .filter(|e| e.name == old.name && e.version > old.version)
            {
                SchemaCompatibility::can_read(&old.schema, &new.schema).unwrap_or_else(|e| {
                    panic!(
                        "{} v{} cannot read data written with v{}: {e}",
                        new.name, new.version, old.version
                    )
                });
                checked += 1;
            }
        }
        assert!(checked >= 1, "at least telemetry v1 -> v2 is checked");
    }

    #[test]
    fn compatibility_check_refuses_a_breaking_change() {
        // A new required field without a default cannot read old data: the check must say so.
        let old = &store().latest("alert").schema;
        let mut json: serde_json::Value = serde_json::from_str(
            SCHEMA_FILES
                .iter()
                .find(|f| f.0 == "alert")
                .map(|f| f.2)
                .expect("alert"),
        )
        .expect("json");
        json["fields"]
            .as_array_mut()
            .expect("fields")
            .push(serde_json::json!({"name": "ticket", "type": "string", "doc": "x"}));
        let broken = Schema::parse_str(&json.to_string()).expect("parses");
        assert!(SchemaCompatibility::can_read(old, &broken).is_err());
    }
}

#[cfg(test)]
mod released {
    use super::*;
    use apache_avro::schema_compatibility::SchemaCompatibility;

    /// `schemas/RELEASED`: one line per released version, `name version fingerprint-hex`.
    const RELEASED: &str = include_str!("../../../schemas/RELEASED");

    /// A released schema is immutable (same fingerprint as when released), and the newest
    /// version of each record type reads every released version. Editing a released file in
    /// place, or adding a version that cannot read the last release, fails here.
    #[test]
    fn released_versions_are_unchanged_and_readable_by_the_newest() {
        let mut seen = 0;
        for line in RELEASED
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [name, version, fp] = parts[..] else {
                panic!("bad RELEASED line {line:?}")
            };
            let version: u32 = version.parse().expect("version");
            let entry = store()
                .version(name, version)
                .unwrap_or_else(|| panic!("released {name} v{version} was removed"));
            assert_eq!(
                crate::json::to_hex(&entry.fingerprint),
                fp,
                "released {name} v{version} was edited in place; add v{} instead",
                version + 1
            );
            let newest = store().latest(name);
            SchemaCompatibility::can_read(&entry.schema, &newest.schema).unwrap_or_else(|e| {
                panic!(
                    "{name} v{} cannot read released v{version}: {e}",
                    newest.version
                )
            });
            seen += 1;
        }
        assert!(
            seen >= store().entries().len() - 1,
            "every schema version but at most one draft is released"
        );
    }
}
