//! Refusing frames with a duplicate key. `serde_json` keeps the last of two
//! equal keys, so `{"to":"bob","to":"carol"}` would mean carol to the router
//! and perhaps bob to a proxy or a log reader in front of it. PeerLink
//! accepts only frames whose every object has distinct keys.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The first key found twice in one object of `line`, if any. `line` must
/// be valid JSON (checked by the caller's parse).
pub(super) fn first_duplicate(line: &[u8]) -> Option<String> {
    let mut de = serde_json::Deserializer::from_slice(line);
    match Unique.deserialize(&mut de) {
        Ok(()) => None,
        Err(e) => Some(e.to_string()),
    }
}

/// Walks any JSON value, failing at the first object with a repeated key.
struct Unique;

impl<'de> DeserializeSeed<'de> for Unique {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Unique)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key_seed(Key)? {
            if seen.contains(&key) {
                let shown: String = key.chars().take(32).collect();
                return Err(de::Error::custom(format!("duplicate key {shown:?}")));
            }
            seen.insert(key);
            map.next_value_seed(Unique)?;
        }
        Ok(())
    }
}

/// A string (an object key, or a tag's value), borrowed from the line when
/// it has no escapes.
pub(super) struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::first_duplicate;

    #[test]
    fn a_key_twice_in_any_object_is_found() {
        assert_eq!(first_duplicate(br#"{"a":1,"b":2}"#), None);
        assert!(first_duplicate(br#"{"a":1,"a":2}"#).is_some());
        assert!(
            first_duplicate(br#"{"type":"send","req":7,"seq":1,"to":"bob","to":"carol","body":"x"}"#)
                .is_some()
        );
        assert!(first_duplicate(br#"{"x":{"a":1,"a":2}}"#).is_some());
        assert!(first_duplicate(br#"{"x":[{"a":1},{"a":1,"a":1}]}"#).is_some());
        // The same key in two objects is fine; escapes are compared decoded.
        assert_eq!(first_duplicate(br#"{"x":{"a":1},"y":{"a":1}}"#), None);
        assert!(first_duplicate(br#"{"a":1,"\u0061":2}"#).is_some());
    }
}
