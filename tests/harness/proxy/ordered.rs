//! JSON that keeps its members in the order they were written, so a fault
//! that edits one field changes nothing else (WS-CMD-2 compares order).

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    pub fn parse(message: &Message) -> Option<Json> {
        match message {
            Message::Text(text) => serde_json::from_str(text).ok(),
            _ => None,
        }
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap()
    }

    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Json> {
        match self {
            Json::Object(members) => members.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    /// Sets a member: in its place if it exists, else at the end.
    pub fn insert(&mut self, key: &str, value: Json) {
        if let Some(slot) = self.get_mut(key) {
            *slot = value;
        } else if let Json::Object(members) = self {
            members.push((key.to_string(), value));
        }
    }

    pub fn remove_value(&mut self, key: &str) -> Option<Json> {
        let Json::Object(members) = self else {
            return None;
        };
        let at = members.iter().position(|(k, _)| k == key)?;
        Some(members.remove(at).1)
    }

    pub fn remove(&mut self, key: &str) {
        self.remove_value(key);
    }

    pub fn rename(&mut self, from: &str, to: &str) {
        if let Json::Object(members) = self {
            for (key, _) in members.iter_mut().filter(|(k, _)| k == from) {
                *key = to.to_string();
            }
        }
    }

    /// Integer-like keys first, ascending, at every depth (what a
    /// JavaScript object does with its property order).
    pub fn integer_keys_first(&mut self) {
        match self {
            Json::Object(members) => {
                let index = |k: &str| {
                    k.parse::<u32>()
                        .ok()
                        .filter(|_| !k.starts_with('0') || k == "0")
                };
                members.sort_by_key(|(k, _)| index(k).map_or((1, 0), |n| (0, n)));
                members.iter_mut().for_each(|(_, v)| v.integer_keys_first());
            }
            Json::Array(items) => items.iter_mut().for_each(Json::integer_keys_first),
            _ => {}
        }
    }

    /// Replaces the strings `edit` has a replacement for, at every depth.
    pub fn edit_strings(&mut self, edit: &dyn Fn(&str) -> Option<String>) {
        match self {
            Json::String(text) => {
                if let Some(new) = edit(text) {
                    *text = new;
                }
            }
            Json::Object(members) => members.iter_mut().for_each(|(_, v)| v.edit_strings(edit)),
            Json::Array(items) => items.iter_mut().for_each(|v| v.edit_strings(edit)),
            _ => {}
        }
    }

    /// Sorts object keys at every depth (what a jsonb column does).
    pub fn sort_keys(&mut self) {
        match self {
            Json::Object(members) => {
                members.sort_by(|a, b| a.0.cmp(&b.0));
                members.iter_mut().for_each(|(_, v)| v.sort_keys());
            }
            Json::Array(items) => items.iter_mut().for_each(Json::sort_keys),
            _ => {}
        }
    }
}

impl From<u64> for Json {
    fn from(n: u64) -> Json {
        Json::Number(n.into())
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
                Ok(Json::Bool(b))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Json, E> {
                Ok(serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number))
            }
            fn visit_str<E>(self, s: &str) -> Result<Json, E> {
                Ok(Json::String(s.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Json::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut members = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Json>()? {
                    members.push((k, v));
                }
                Ok(Json::Object(members))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Number(n) => n.serialize(s),
            Json::String(text) => s.serialize_str(text),
            Json::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(members) => {
                let mut map = s.serialize_map(Some(members.len()))?;
                for (k, v) in members {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}
