//! Internally tagged enums — `{"type":"send","req":1,...}` — read without
//! buffering.
//!
//! serde's own `#[serde(tag = "...")]` buffers every field of an object
//! (allocating each string) before it knows the variant, because the tag
//! may come anywhere. PeerLink's encoders always write the tag first, so
//! this reads it first: when the object's first key is the tag, the
//! variant's fields are read straight from the input, as for a plain struct.
//! An object whose tag comes later (written by some other encoder) is
//! buffered and read the same way: the same frames are accepted and refused
//! either way, only slower.
//!
//! An enum opts in by deriving with `#[serde(remote = "Self")]` and no
//! `tag` (serde then derives the externally tagged form as inherent
//! functions, not trait impls) and by invoking [`tagged_serde!`], which
//! implements [`Tagged`] with those functions and the serde traits that put
//! the tag first.
//! Only struct variants are supported (PeerLink's frames have no other).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use super::unique_keys::Key;
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess, VariantAccess, Visitor,
};
use serde::ser::{self, Impossible, SerializeStruct, SerializeStructVariant, Serializer};

/// An enum written as an object whose field [`Tagged::TAG`] names the
/// variant, followed by the variant's fields.
pub(crate) trait Tagged: Sized {
    /// The key naming the variant.
    const TAG: &'static str;
    /// What a decoder expects, for error messages.
    const EXPECTING: &'static str;

    /// Reads the externally tagged form: the serde-derived inherent
    /// `deserialize` of a `#[serde(remote = "Self")]` enum.
    fn deserialize_external<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error>;

    /// Writes the externally tagged form: the serde-derived inherent
    /// `serialize`.
    fn serialize_external<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error>;
}

/// Makes a `#[serde(remote = "Self")]` enum [`Tagged`] by `$tag`, and
/// implements `Serialize` and `Deserialize` with the tag first.
macro_rules! tagged_serde {
    ($ty:ty, tag = $tag:literal, expecting = $expecting:literal) => {
        impl $crate::wire::tagged::Tagged for $ty {
            const TAG: &'static str = $tag;
            const EXPECTING: &'static str = $expecting;

            fn deserialize_external<'de, D: serde::Deserializer<'de>>(
                deserializer: D,
            ) -> Result<Self, D::Error> {
                <$ty>::deserialize(deserializer)
            }

            fn serialize_external<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                <$ty>::serialize(self, serializer)
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                $crate::wire::tagged::serialize(self, serializer)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $crate::wire::tagged::deserialize(deserializer)
            }
        }
    };
}
pub(crate) use tagged_serde;

/// Writes `value` as an object with its tag first.
pub(crate) fn serialize<T: Tagged, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    value.serialize_external(TagFirst {
        tag: T::TAG,
        inner: serializer,
    })
}

/// Reads a `T` from an object naming its variant in field `T::TAG`.
pub(crate) fn deserialize<'de, T: Tagged, D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
    deserializer.deserialize_map(TaggedVisitor(PhantomData))
}

struct TaggedVisitor<T>(PhantomData<T>);

impl<'de, T: Tagged> Visitor<'de> for TaggedVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let Some(first) = map.next_key_seed(Key)? else {
            return Err(de::Error::missing_field(T::TAG));
        };
        if first == T::TAG {
            let variant = map.next_value_seed(Key)?;
            return T::deserialize_external(Variant {
                variant,
                fields: Rest { tag: T::TAG, map },
            });
        }
        // The slow path: buffer the fields, find the tag, read the rest.
        let mut fields = vec![(first.into_owned(), map.next_value::<serde_json::Value>()?)];
        while let Some(key) = map.next_key_seed(Key)? {
            fields.push((key.into_owned(), map.next_value()?));
        }
        let mut object = serde_json::Map::new();
        let mut variant = None;
        for (key, value) in fields {
            if key == T::TAG {
                if variant.is_some() {
                    return Err(de::Error::duplicate_field(T::TAG));
                }
                let serde_json::Value::String(name) = value else {
                    return Err(de::Error::invalid_type(unexpected(&value), &"a variant name"));
                };
                variant = Some(name);
            } else if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
            } else {
                object.insert(key, value);
            }
        }
        let Some(variant) = variant else {
            return Err(de::Error::missing_field(T::TAG));
        };
        serde_json::Value::Object(object)
            .deserialize_map(Buffered::<T>(variant, PhantomData))
            .map_err(de::Error::custom)
    }
}

fn unexpected(value: &serde_json::Value) -> de::Unexpected<'_> {
    match value {
        serde_json::Value::Null => de::Unexpected::Unit,
        serde_json::Value::Bool(b) => de::Unexpected::Bool(*b),
        serde_json::Value::Number(_) => de::Unexpected::Other("number"),
        serde_json::Value::String(s) => de::Unexpected::Str(s),
        serde_json::Value::Array(_) => de::Unexpected::Seq,
        serde_json::Value::Object(_) => de::Unexpected::Map,
    }
}

/// Reads the buffered fields of variant `.0`.
struct Buffered<T>(String, PhantomData<T>);

impl<'de, T: Tagged> Visitor<'de> for Buffered<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize_external(Variant {
            variant: Cow::Owned(self.0),
            fields: map,
        })
    }
}

/// The fields after the tag, which must not repeat it.
struct Rest<A> {
    tag: &'static str,
    map: A,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Rest<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        let Some(key) = self.map.next_key_seed(Key)? else {
            return Ok(None);
        };
        if key == self.tag {
            return Err(de::Error::duplicate_field(self.tag));
        }
        let key = match key {
            Cow::Borrowed(s) => seed.deserialize(de::value::BorrowedStrDeserializer::new(s)),
            Cow::Owned(s) => seed.deserialize(s.into_deserializer()),
        }?;
        Ok(Some(key))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

/// An enum whose variant is known, and whose fields are the rest of a map:
/// what the externally tagged derive reads.
struct Variant<'de, A> {
    variant: Cow<'de, str>,
    fields: A,
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for Variant<'de, A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de, A: MapAccess<'de>> EnumAccess<'de> for Variant<'de, A> {
    type Error = A::Error;
    type Variant = Fields<A>;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Fields<A>), A::Error> {
        let name = match self.variant {
            Cow::Borrowed(s) => seed.deserialize(de::value::BorrowedStrDeserializer::new(s)),
            Cow::Owned(s) => seed.deserialize(s.into_deserializer()),
        }?;
        Ok((name, Fields(self.fields)))
    }
}

/// The fields of a variant: the rest of the map.
struct Fields<A>(A);

impl<'de, A: MapAccess<'de>> VariantAccess<'de> for Fields<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        Err(only_struct_variants())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _: T) -> Result<T::Value, A::Error> {
        Err(only_struct_variants())
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, A::Error> {
        Err(only_struct_variants())
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        visitor.visit_map(self.0)
    }
}

/// A serializer that writes a struct variant as an object whose
/// first field `tag` names it.
struct TagFirst<S> {
    tag: &'static str,
    inner: S,
}

fn only_variants<E: ser::Error>() -> E {
    ser::Error::custom(ONLY_STRUCT_VARIANTS)
}

fn only_struct_variants<E: de::Error>() -> E {
    de::Error::custom(ONLY_STRUCT_VARIANTS)
}

const ONLY_STRUCT_VARIANTS: &str = "tagged enums have only struct variants";

impl<S: Serializer> Serializer for TagFirst<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Impossible<S::Ok, S::Error>;
    type SerializeTuple = Impossible<S::Ok, S::Error>;
    type SerializeTupleStruct = Impossible<S::Ok, S::Error>;
    type SerializeTupleVariant = Impossible<S::Ok, S::Error>;
    type SerializeMap = Impossible<S::Ok, S::Error>;
    type SerializeStruct = Impossible<S::Ok, S::Error>;
    type SerializeStructVariant = VariantFields<S::SerializeStruct>;

    fn serialize_struct_variant(
        self,
        name: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        let mut object = self.inner.serialize_struct(name, len + 1)?;
        object.serialize_field(self.tag, variant)?;
        Ok(VariantFields(object))
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<S::Ok, S::Error> {
        Err(only_variants())
    }
    fn serialize_bool(self, _: bool) -> Result<S::Ok, S::Error> {
        Err(only_variants())
    }
    fn serialize_i8(self, _: i8) -> Result<S::Ok, S::Error> {
        Err(only_variants())
    }
    fn serialize_i16(self, _: i16) -> Result<S::Ok, S::Error> {
        Err(only_variants())
    }
    fn serialize_i32(self, _: i32) -> Result<S::Ok, S::Error> {
        Err(only_variants())
    }
    fn serialize_i64(self, _: i64) -> Result<S::Ok, S::Error> {
        Err(only_variants())
    }
    fn serialize_u8(self, _: u8) -> Result<S::Ok, S::Error> {
        Err(only_variants())
    }
    fn serialize_u16(self, _: u16) -> Result<S::Ok, S::Error> {
        Err(only_variants())
    }
    fn serialize_u32(self, _: u32) -> Result<S::Ok, S::Error> {
        Err(only_variants())
    }
    fn serialize_u64(self, _: u64) -> Result<S::Ok, S::Error> {
        Err(only_variants())
    }
    fn serialize_f32(self, _: f32) -> Result<S::Ok, S::Error> {
        Err(only_variants())
    }
    fn serialize_f64(self, _: f64) -> Result<S::Ok, S::Error> {
        Err(only_variants())
    }
    fn serialize_char(self, _: char) -> Result<S::Ok, S::Error> {
        Err(only_variants())
    }
    fn serialize_str(self, _: &str) -> Result<S::Ok, S::Error> {
        Err(only_variants())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<S::Ok, S::Error> {
        Err(only_variants())
    }
    fn serialize_none(self) -> Result<S::Ok, S::Error> {
        Err(only_variants())
    }
    fn serialize_some<T: ?Sized + ser::Serialize>(self, _: &T) -> Result<S::Ok, S::Error> {
        Err(only_variants())
    }
    fn serialize_unit(self) -> Result<S::Ok, S::Error> {
        Err(only_variants())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<S::Ok, S::Error> {
        Err(only_variants())
    }
    fn serialize_newtype_struct<T: ?Sized + ser::Serialize>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<S::Ok, S::Error> {
        Err(only_variants())
    }
    fn serialize_newtype_variant<T: ?Sized + ser::Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<S::Ok, S::Error> {
        Err(only_variants())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        Err(only_variants())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, S::Error> {
        Err(only_variants())
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        Err(only_variants())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        Err(only_variants())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        Err(only_variants())
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, S::Error> {
        Err(only_variants())
    }
}

/// The fields of a struct variant, written after its tag.
struct VariantFields<M>(M);

impl<M: SerializeStruct> SerializeStructVariant for VariantFields<M> {
    type Ok = M::Ok;
    type Error = M::Error;

    fn serialize_field<T: ?Sized + ser::Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), M::Error> {
        self.0.serialize_field(key, value)
    }

    fn skip_field(&mut self, key: &'static str) -> Result<(), M::Error> {
        self.0.skip_field(key)
    }

    fn end(self) -> Result<M::Ok, M::Error> {
        self.0.end()
    }
}

#[cfg(test)]
mod tests;
