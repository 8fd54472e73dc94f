//! Tool schemas every MCP client accepts. schemars writes Rust details that
//! strict JSON Schema 2020-12 validators refuse or warn about: formats such
//! as `uint32` (Ajv in strict mode: "unknown format"), type arrays such as
//! `["string", "null"]` and `anyOf [X, null]` for `Option` (MCP Inspector's
//! strict mode: "type arrays are not portable"). Optional fields are simply
//! left out, never sent as null, so the plain type is the honest schema.

use serde_json::{Map, Value};

/// Formats schemars derives from Rust number types; none is a JSON Schema format.
const RUST_FORMATS: &[&str] =
    &["int8", "int16", "int32", "int64", "int", "uint8", "uint16", "uint32", "uint64", "uint", "float", "double"];

/// Rewrites a schema (and every schema inside it) in place.
pub fn make_portable(schema: &mut Map<String, Value>) {
    if schema.get("format").and_then(Value::as_str).is_some_and(|f| RUST_FORMATS.contains(&f)) {
        schema.remove("format");
    }
    if let Some(Value::Array(types)) = schema.get("type") {
        let non_null: Vec<Value> = types.iter().filter(|t| t.as_str() != Some("null")).cloned().collect();
        if non_null.len() == 1 {
            schema.insert("type".into(), non_null.into_iter().next().unwrap_or(Value::Null));
        }
    }
    if let Some(Value::Array(any)) = schema.get("anyOf") {
        let non_null: Vec<&Value> =
            any.iter().filter(|s| s.get("type").and_then(Value::as_str) != Some("null")).collect();
        if non_null.len() == 1 && any.len() == 2 {
            if let Some(Value::Object(inner)) = non_null.first().cloned().cloned() {
                schema.remove("anyOf");
                for (k, v) in inner {
                    schema.entry(k).or_insert(v);
                }
            }
        }
    }
    for v in schema.values_mut() {
        match v {
            Value::Object(o) => make_portable(o),
            Value::Array(items) => {
                for i in items.iter_mut() {
                    if let Value::Object(o) = i {
                        make_portable(o);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_formats_type_arrays_and_nullable_refs_are_rewritten() {
        let mut s = serde_json::json!({
            "type": "object",
            "properties": {
                "limit": {"type": ["integer", "null"], "format": "uint32", "minimum": 0},
                "tier": {"description": "d", "anyOf": [{"$ref": "#/$defs/Tier"}, {"type": "null"}]},
                "when": {"type": "string", "format": "date-time"}
            },
            "$defs": {"N": {"type": "number", "format": "double"}}
        });
        let Value::Object(o) = &mut s else { unreachable!() };
        make_portable(o);
        assert_eq!(
            s,
            serde_json::json!({
                "type": "object",
                "properties": {
                    "limit": {"type": "integer", "minimum": 0},
                    "tier": {"description": "d", "$ref": "#/$defs/Tier"},
                    "when": {"type": "string", "format": "date-time"}
                },
                "$defs": {"N": {"type": "number"}}
            })
        );
    }
}
