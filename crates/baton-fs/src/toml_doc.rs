//! TOML through `toml_edit`, so comments and layout survive an edit. Edits are
//! made on the JSON tree, then *reconciled* into the parsed document: items
//! whose value did not change are left exactly as written.

use baton_core::Error;
use indexmap::IndexMap;
use serde_json::Number;
use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, TableLike, Value};

use crate::node::Node;

pub(crate) fn document_to_node(doc: &DocumentMut) -> Node {
    table_like_to_node(doc.as_table())
}

fn table_like_to_node(table: &dyn TableLike) -> Node {
    Node::Object(
        table
            .iter()
            .map(|(key, item)| (key.to_owned(), item_to_node(item)))
            .collect(),
    )
}

fn item_to_node(item: &Item) -> Node {
    match item {
        Item::None => Node::Null,
        Item::Value(value) => value_to_node(value),
        Item::Table(table) => table_like_to_node(table),
        Item::ArrayOfTables(tables) => {
            Node::Array(tables.iter().map(|t| table_like_to_node(t)).collect())
        }
    }
}

fn value_to_node(value: &Value) -> Node {
    match value {
        Value::String(s) => Node::String(s.value().clone()),
        Value::Integer(i) => Node::Number((*i.value()).into()),
        // JSON has no NaN or infinity: those read as their TOML spelling.
        Value::Float(f) => Number::from_f64(*f.value())
            .map(Node::Number)
            .unwrap_or_else(|| Node::String(f.to_string().trim().to_owned())),
        Value::Boolean(b) => Node::Bool(*b.value()),
        // Dates read as strings; an unchanged date stays a TOML date.
        Value::Datetime(d) => Node::String(d.value().to_string()),
        Value::Array(items) => Node::Array(items.iter().map(value_to_node).collect()),
        Value::InlineTable(table) => table_like_to_node(table),
    }
}

/// Makes `doc` hold `root`, touching only what differs.
pub(crate) fn reconcile_document(doc: &mut DocumentMut, root: &Node) -> Result<(), Error> {
    let Node::Object(map) = root else {
        return Err(Error::invalid(
            "value",
            format!(
                "a TOML document must be a table, not {}; nothing was changed",
                root.type_name()
            ),
        ));
    };
    reconcile_table(doc.as_table_mut(), map, false)
}

fn reconcile_table(
    table: &mut dyn TableLike,
    wanted: &IndexMap<String, Node>,
    inline: bool,
) -> Result<(), Error> {
    let gone: Vec<String> = table
        .iter()
        .map(|(key, _)| key.to_owned())
        .filter(|key| !wanted.contains_key(key))
        .collect();
    for key in gone {
        table.remove(&key);
    }
    for (key, node) in wanted {
        match table.get_mut(key) {
            Some(item) => {
                if item_to_node(item) == *node {
                    continue;
                }
                let child_inline = inline || item.is_value();
                if let (Some(child), Node::Object(child_map)) = (item.as_table_like_mut(), node) {
                    reconcile_table(child, child_map, child_inline)?;
                    continue;
                }
                let mut replacement = if item.is_array_of_tables() && is_array_of_objects(node) {
                    Item::ArrayOfTables(array_of_tables(node)?)
                } else {
                    node_to_item(node, child_inline)?
                };
                // Keep a trailing comment (`port = 80 # why`) on the new value.
                if let (Item::Value(old), Item::Value(new)) = (&*item, &mut replacement) {
                    *new.decor_mut() = old.decor().clone();
                }
                // Replacing through get_mut keeps the key and the comment above it.
                *item = replacement;
            }
            None => {
                table.insert(key, node_to_item(node, inline)?);
            }
        }
    }
    Ok(())
}

fn is_array_of_objects(node: &Node) -> bool {
    matches!(node, Node::Array(items) if !items.is_empty() && items.iter().all(|i| matches!(i, Node::Object(_))))
}

fn array_of_tables(node: &Node) -> Result<ArrayOfTables, Error> {
    let mut tables = ArrayOfTables::new();
    if let Node::Array(items) = node {
        for item in items {
            if let Node::Object(map) = item {
                let mut table = Table::new();
                reconcile_table(&mut table, map, false)?;
                tables.push(table);
            }
        }
    }
    Ok(tables)
}

fn node_to_item(node: &Node, inline: bool) -> Result<Item, Error> {
    match node {
        Node::Object(map) if !inline => {
            let mut table = Table::new();
            // A table that only holds tables needs no `[header]` of its own.
            table.set_implicit(true);
            reconcile_table(&mut table, map, false)?;
            Ok(Item::Table(table))
        }
        other => Ok(Item::Value(node_to_value(other)?)),
    }
}

fn node_to_value(node: &Node) -> Result<Value, Error> {
    Ok(match node {
        Node::Null => {
            return Err(Error::invalid(
                "value",
                "TOML has no null; use unset to remove a key. Nothing was changed",
            ));
        }
        Node::Bool(b) => Value::from(*b),
        Node::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if n.is_u64() {
                return Err(Error::invalid(
                    "value",
                    format!("{n} is too large for a TOML integer (64-bit signed)"),
                ));
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Node::String(s) => Value::from(s.as_str()),
        Node::Array(items) => {
            let mut array = Array::new();
            for item in items {
                array.push(node_to_value(item)?);
            }
            Value::Array(array)
        }
        Node::Object(map) => {
            let mut table = InlineTable::new();
            reconcile_table(&mut table, map, true)?;
            Value::InlineTable(table)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(text: &str, change: impl FnOnce(&mut Node)) -> String {
        let mut doc: DocumentMut = text.parse().unwrap();
        let mut root = document_to_node(&doc);
        change(&mut root);
        reconcile_document(&mut doc, &root).unwrap();
        doc.to_string()
    }

    fn patch(text: &str) -> Node {
        serde_json::from_str(text).unwrap()
    }

    const CONFIG: &str = r#"# Top comment
title = "demo" # trailing

[server]
# the port people use
port = 8080 # keep me
host = "localhost"

[[plugins]]
name = "a"
"#;

    #[test]
    fn unchanged_documents_render_byte_for_byte() {
        assert_eq!(edit(CONFIG, |_| {}), CONFIG);
    }

    #[test]
    fn changing_a_value_keeps_comments_around_it() {
        let out = edit(CONFIG, |root| {
            root.merge_patch(&patch(r#"{"server":{"port":9090}}"#))
        });
        assert_eq!(out, CONFIG.replace("port = 8080", "port = 9090"));
    }

    #[test]
    fn adding_and_removing_keys_leaves_the_rest_alone() {
        let out = edit(CONFIG, |root| {
            root.merge_patch(&patch(
                r#"{"server":{"host":null,"tls":{"enabled":true}},"owner":"me"}"#,
            ))
        });
        let expected = r#"# Top comment
title = "demo" # trailing
owner = "me"

[server]
# the port people use
port = 8080 # keep me

[server.tls]
enabled = true

[[plugins]]
name = "a"
"#;
        assert_eq!(out, expected);
        let reparsed: DocumentMut = out.parse().unwrap();
        assert_eq!(reparsed["server"]["tls"]["enabled"].as_bool(), Some(true));
    }

    #[test]
    fn types_convert_and_null_is_refused() {
        let doc: DocumentMut =
            "a = 1\nb = 2.5\nc = [1, \"x\"]\nd = { e = true }\nt = 1979-05-27T07:32:00Z\n"
                .parse()
                .unwrap();
        let node = document_to_node(&doc);
        assert_eq!(
            node.to_value(),
            serde_json::json!({"a":1,"b":2.5,"c":[1,"x"],"d":{"e":true},"t":"1979-05-27T07:32:00Z"})
        );
        let mut doc2 = doc.clone();
        let mut root = node.clone();
        root.merge_patch(&patch(r#"{"d":{"f":[null]}}"#));
        assert!(reconcile_document(&mut doc2, &root).is_err());
        // An untouched date stays a date.
        let mut doc3 = doc.clone();
        let mut root = node;
        root.merge_patch(&patch(r#"{"a":2}"#));
        reconcile_document(&mut doc3, &root).unwrap();
        assert!(doc3["t"].as_datetime().is_some());
        assert!(doc3.to_string().contains("d = { e = true }"));
    }
}
