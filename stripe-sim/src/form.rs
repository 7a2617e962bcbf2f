//! Stripe's request encoding: `application/x-www-form-urlencoded` with bracketed keys
//! (`metadata[k]=v`, `payment_method_types[]=card`, `a[0][b]=c`) decoded into one JSON tree.
//!
//! Leaves stay strings, exactly as Stripe receives them; each handler coerces and validates
//! the fields it knows, so a type error names the parameter the way Stripe does.

use serde_json::{Map, Value};

/// Decodes a query string or form body into a JSON object. Later duplicates of a scalar key win,
/// which is what Stripe does for repeated plain keys.
pub fn decode(input: &[u8]) -> Value {
    let mut root = Map::new();
    for (key, value) in form_urlencoded::parse(input) {
        let segments = split_key(&key);
        insert(&mut root, &segments, value.into_owned());
    }
    let mut root = Value::Object(root);
    arrays_from_indexed_objects(&mut root);
    root
}

/// `a[b][]` -> ["a", "b", ""]. A key with unbalanced brackets is taken literally.
fn split_key(key: &str) -> Vec<String> {
    let Some(open) = key.find('[') else {
        return vec![key.to_owned()];
    };
    let mut segments = vec![key[..open].to_owned()];
    let mut rest = &key[open..];
    while let Some(stripped) = rest.strip_prefix('[') {
        let Some(close) = stripped.find(']') else {
            return vec![key.to_owned()];
        };
        segments.push(stripped[..close].to_owned());
        rest = &stripped[close + 1..];
    }
    if !rest.is_empty() {
        return vec![key.to_owned()];
    }
    segments
}

fn insert(map: &mut Map<String, Value>, segments: &[String], value: String) {
    let (first, rest) = segments.split_first().expect("split_key never returns an empty list");
    // `[]` appends: number it by the children it already has, so it becomes an array later.
    let key = if first.is_empty() { map.len().to_string() } else { first.clone() };
    if rest.is_empty() {
        map.insert(key, Value::String(value));
        return;
    }
    let child = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !child.is_object() {
        // `a=1&a[b]=2`: the nested form wins, like a later duplicate would.
        *child = Value::Object(Map::new());
    }
    insert(child.as_object_mut().expect("made an object above"), rest, value);
}

/// Turns `{"0": x, "1": y}` into `[x, y]` wherever every key is an index.
fn arrays_from_indexed_objects(value: &mut Value) {
    let Value::Object(map) = value else { return };
    for child in map.values_mut() {
        arrays_from_indexed_objects(child);
    }
    if map.is_empty() || !map.keys().all(|k| k.parse::<usize>().is_ok()) {
        return;
    }
    let mut items: Vec<(usize, Value)> =
        std::mem::take(map).into_iter().map(|(k, v)| (k.parse().expect("checked above"), v)).collect();
    items.sort_by_key(|(i, _)| *i);
    *value = Value::Array(items.into_iter().map(|(_, v)| v).collect());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_keys_arrays_and_escapes() {
        let v = decode(
            b"amount=5000&metadata[call_id]=c%201&payment_method_types[]=card&payment_method_types[]=link\
              &automatic_payment_methods[enabled]=true&expand[0]=latest_charge&a[0][b]=x&a[1][b]=y",
        );
        assert_eq!(
            v,
            json!({
                "amount": "5000",
                "metadata": {"call_id": "c 1"},
                "payment_method_types": ["card", "link"],
                "automatic_payment_methods": {"enabled": "true"},
                "expand": ["latest_charge"],
                "a": [{"b": "x"}, {"b": "y"}],
            })
        );
    }

    #[test]
    fn malformed_brackets_are_literal_keys() {
        let v = decode(b"a[b=1&c]d=2");
        assert_eq!(v, json!({"a[b": "1", "c]d": "2"}));
    }

    #[test]
    fn empty_metadata_value_is_kept_for_unset_semantics() {
        let v = decode(b"metadata[k]=");
        assert_eq!(v, json!({"metadata": {"k": ""}}));
    }
}
