//! Plain-words reasons why a new schema cannot read data written with an old one.
//!
//! Apicurio's Confluent-compatible API answers a compatibility check with a bare
//! `{"is_compatible": false}`, and apache-avro's checker stops at the first problem. This
//! walks the two schemas the way Avro resolution does and names every field at fault, so
//! `order-saga schemas check` can say what to fix.

use apache_avro::schema::{Name, Names, ResolvedSchema};
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::Schema;

/// Every reason why data written with `writer` cannot be read with `reader`; empty if
/// it always can. Field paths are dotted from the top record, with `[]` for array items
/// and `{}` for map values, e.g. `items[].quantity`.
pub fn backward_problems(writer: &Schema, reader: &Schema) -> Vec<String> {
    let mut walk = Walk {
        writer_names: owned_names(writer),
        reader_names: owned_names(reader),
        problems: Vec::new(),
    };
    walk.compare(writer, reader, "");
    if walk.problems.is_empty() {
        // A gap in the walk must not pass silently: fall back on apache-avro's verdict.
        // Not on `Partial`: it also flags an enum that lost a symbol but has a default,
        // which Avro resolution reads fine.
        if let Err(e) = SchemaCompatibility::can_read(writer, reader) {
            walk.problems.push(strip(&e.to_string()));
        }
    }
    walk.problems
}

fn owned_names(schema: &Schema) -> Names {
    ResolvedSchema::new(schema)
        .map(|r| {
            r.get_names()
                .iter()
                .map(|(name, s)| (name.clone(), (*s).clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn strip(message: &str) -> String {
    message
        .strip_prefix("Incompatible schemata! ")
        .unwrap_or(message)
        .to_owned()
}

/// A short name of a schema's type for messages, e.g. `long`, `record OrderItem`.
fn describe(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => format!("record {}", r.name.name()),
        Schema::Enum(e) => format!("enum {}", e.name.name()),
        Schema::Fixed(f) => format!("fixed {}", f.name.name()),
        Schema::Array(a) => format!("array of {}", describe(&a.items)),
        Schema::Map(m) => format!("map of {}", describe(&m.types)),
        Schema::Union(u) => format!(
            "union [{}]",
            u.variants()
                .iter()
                .map(describe)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Schema::Ref { name } => name.name().to_owned(),
        Schema::TimestampMillis => "long (timestamp-millis)".to_owned(),
        other => {
            let canonical = other.canonical_form();
            canonical.trim_matches('"').to_owned()
        }
    }
}

struct Walk {
    writer_names: Names,
    reader_names: Names,
    problems: Vec<String>,
}

fn deref<'a>(schema: &'a Schema, names: &'a Names) -> &'a Schema {
    match schema {
        Schema::Ref { name } => names.get(name).unwrap_or(schema),
        other => other,
    }
}

fn what(path: &str) -> String {
    if path.is_empty() {
        "the record".to_owned()
    } else {
        format!("field `{path}`")
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

impl Walk {
    fn compare(&mut self, writer: &Schema, reader: &Schema, path: &str) {
        // Owned copies keep the borrow of `self` short; schemas are small.
        let writer = deref(writer, &self.writer_names).clone();
        let reader = deref(reader, &self.reader_names).clone();
        match (&writer, &reader) {
            (Schema::Record(w), Schema::Record(r)) => {
                if !same_name(&w.name, &r.name, r.aliases.as_deref()) {
                    self.problems.push(format!(
                        "{} is record {} in the new version but {} in the old; rename only with an alias",
                        what(path),
                        r.name.name(),
                        w.name.name()
                    ));
                    return;
                }
                for field in &r.fields {
                    let old = w
                        .fields
                        .iter()
                        .find(|f| f.name == field.name || field.aliases.contains(&f.name));
                    let field_path = join(path, &field.name);
                    match old {
                        Some(old) => self.compare(&old.schema, &field.schema, &field_path),
                        None if field.default.is_none() => self.problems.push(format!(
                            "field `{field_path}` is new and has no default, so data written \
                             without it cannot be read; give it a default"
                        )),
                        None => {}
                    }
                }
            }
            (Schema::Array(w), Schema::Array(r)) => {
                self.compare(&w.items, &r.items, &format!("{path}[]"));
            }
            (Schema::Map(w), Schema::Map(r)) => {
                self.compare(&w.types, &r.types, &format!("{path}{{}}"));
            }
            (Schema::Enum(w), Schema::Enum(r)) => {
                let missing: Vec<&str> = w
                    .symbols
                    .iter()
                    .filter(|s| !r.symbols.contains(s))
                    .map(String::as_str)
                    .collect();
                if !missing.is_empty() && r.default.is_none() {
                    self.problems.push(format!(
                        "{} (enum {}) no longer has symbol(s) {} and has no default symbol to read them as",
                        what(path),
                        r.name.name(),
                        missing.join(", ")
                    ));
                }
            }
            _ => match SchemaCompatibility::can_read(&writer, &reader) {
                Ok(Compatibility::Full) => {}
                Ok(Compatibility::Partial) => self.problems.push(format!(
                    "{} changed from {} to {}, which cannot read every old value",
                    what(path),
                    describe(&writer),
                    describe(&reader)
                )),
                Err(e) => {
                    let (old, new) = (describe(&writer), describe(&reader));
                    self.problems.push(if old == new {
                        format!("{}: {}", what(path), strip(&e.to_string()))
                    } else {
                        format!(
                            "{} changed type from {old} to {new}, which cannot read the old data",
                            what(path)
                        )
                    });
                }
            },
        }
    }
}

fn same_name(
    writer: &Name,
    reader: &Name,
    reader_aliases: Option<&[apache_avro::schema::Alias]>,
) -> bool {
    writer.name() == reader.name()
        || reader_aliases
            .into_iter()
            .flatten()
            .any(|a| a.name() == writer.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(old: &str, new: &str) -> Vec<String> {
        backward_problems(
            &Schema::parse_str(old).unwrap(),
            &Schema::parse_str(new).unwrap(),
        )
    }

    const V1: &str = r#"{"type":"record","name":"R","fields":[
        {"name":"id","type":"string"},
        {"name":"total","type":"long"},
        {"name":"items","type":{"type":"array","items":{"type":"record","name":"I","fields":[
            {"name":"qty","type":"int"}]}}},
        {"name":"state","type":{"type":"enum","name":"S","symbols":["A","B"]}}]}"#;

    #[test]
    fn a_compatible_evolution_has_no_problems() {
        let v2 = r#"{"type":"record","name":"R","fields":[
            {"name":"id","type":"string"},
            {"name":"total","type":"long"},
            {"name":"note","type":["null","string"],"default":null},
            {"name":"items","type":{"type":"array","items":{"type":"record","name":"I","fields":[
                {"name":"qty","type":"long"},
                {"name":"gift","type":"boolean","default":false}]}}},
            {"name":"state","type":{"type":"enum","name":"S","symbols":["A","B","C"]}}]}"#;
        assert_eq!(problems(V1, v2), Vec::<String>::new());
        assert_eq!(problems(V1, V1), Vec::<String>::new());
    }

    #[test]
    fn every_incompatible_field_is_named() {
        let v2 = r#"{"type":"record","name":"R","fields":[
            {"name":"id","type":"string"},
            {"name":"total","type":"string"},
            {"name":"tier","type":"string"},
            {"name":"items","type":{"type":"array","items":{"type":"record","name":"I","fields":[
                {"name":"qty","type":"int"},
                {"name":"sku","type":"string"}]}}},
            {"name":"state","type":{"type":"enum","name":"S","symbols":["A"]}}]}"#;
        let found = problems(V1, v2);
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(
            found[0].starts_with("field `total` changed type from long to string"),
            "{}",
            found[0]
        );
        assert!(
            found[1].starts_with("field `tier` is new and has no default"),
            "{}",
            found[1]
        );
        assert!(
            found[2].starts_with("field `items[].sku` is new"),
            "{}",
            found[2]
        );
        assert!(
            found[3].contains("`state`") && found[3].contains("symbol(s) B"),
            "{}",
            found[3]
        );
    }

    #[test]
    fn a_renamed_record_is_reported() {
        let v2 = V1.replacen("\"name\":\"R\"", "\"name\":\"R2\"", 1);
        let found = problems(V1, &v2);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("R2"), "{}", found[0]);
    }
}
