//! Typed access to GGUF key/values, shared by `convert` (GGUF sources) and `engine` (model
//! config and tokenizer), so that both read a key the same way.
//!
//! Every accessor tells three cases apart: the key is absent (`Ok(None)`, and the caller
//! decides whether a default applies or [`MetaError::Missing`] via the `require_*` forms),
//! the key holds a usable value (`Ok(Some(_))`), or the key holds the wrong type
//! ([`MetaError::WrongType`], naming the key, the type found and the type expected). A wrong
//! type is never silently read as absent.
//!
//! Conversions are deliberately the same everywhere:
//! - an integer is any of the eight integer types; a negative value is a wrong value for a
//!   count or id (`expected a non-negative integer`);
//! - a float is `f32`, `f64` or an integer widened to a float;
//! - a bool is `bool`, or an integer where 0 is false (some writers store flags as `u8`);
//! - arrays check every item and name its index when one is of the wrong type.

use super::MetaValue;

/// A key that is absent or holds a value of the wrong type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("no `{key}` key")]
    Missing { key: String },
    #[error("`{key}` is {found}, expected {expected}")]
    WrongType {
        /// The key, with `[i]` appended for an item of an array.
        key: String,
        found: String,
        expected: &'static str,
    },
}

impl MetaError {
    /// The key the error is about.
    pub fn key(&self) -> &str {
        match self {
            MetaError::Missing { key } | MetaError::WrongType { key, .. } => key,
        }
    }

    fn wrong(key: &str, found: &MetaValue, expected: &'static str) -> Self {
        let found = match *found {
            MetaValue::I8(v) if v < 0 => format!("i8 {v}"),
            MetaValue::I16(v) if v < 0 => format!("i16 {v}"),
            MetaValue::I32(v) if v < 0 => format!("i32 {v}"),
            MetaValue::I64(v) if v < 0 => format!("i64 {v}"),
            ref other => other.type_name(),
        };
        MetaError::WrongType {
            key: key.to_owned(),
            found,
            expected,
        }
    }
}

const INTEGER: &str = "a non-negative integer";
const FLOAT: &str = "a number";
const STRING: &str = "a string";
const BOOL: &str = "a bool";
const ARRAY: &str = "an array";

/// A read-only view of GGUF key/values in file order. Of repeated keys the first wins,
/// as llama.cpp's `gguf_find_key` does.
#[derive(Clone, Copy, Debug)]
pub struct Meta<'a> {
    kv: &'a [(String, MetaValue)],
}

impl<'a> Meta<'a> {
    pub fn new(kv: &'a [(String, MetaValue)]) -> Self {
        Meta { kv }
    }

    /// The raw value of a key.
    pub fn get(&self, key: &str) -> Option<&'a MetaValue> {
        self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Whether the key is present, whatever its type.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn typed<T>(
        &self,
        key: &str,
        expected: &'static str,
        conv: impl Fn(&'a MetaValue) -> Option<T>,
    ) -> Result<Option<T>, MetaError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => conv(v)
                .map(Some)
                .ok_or_else(|| MetaError::wrong(key, v, expected)),
        }
    }

    /// A non-negative integer of any width.
    pub fn u64(&self, key: &str) -> Result<Option<u64>, MetaError> {
        self.typed(key, INTEGER, MetaValue::as_u64)
    }

    /// A float, or an integer widened to a float.
    pub fn f64(&self, key: &str) -> Result<Option<f64>, MetaError> {
        self.typed(key, FLOAT, MetaValue::as_f64)
    }

    pub fn str(&self, key: &str) -> Result<Option<&'a str>, MetaError> {
        self.typed(key, STRING, MetaValue::as_str)
    }

    /// A bool, or an integer where 0 is false.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, MetaError> {
        self.typed(key, BOOL, as_flag)
    }

    /// The items of an array key, each converted by `item`; `expected` names the item type.
    fn array<T>(
        &self,
        key: &str,
        expected: &'static str,
        item: impl Fn(&'a MetaValue) -> Option<T>,
    ) -> Result<Option<Vec<T>>, MetaError> {
        let Some(items) = self.typed(key, ARRAY, MetaValue::as_array)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                item(v).ok_or_else(|| MetaError::wrong(&format!("{key}[{i}]"), v, expected))
            })
            .collect::<Result<Vec<T>, MetaError>>()
            .map(Some)
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>, MetaError> {
        self.array(key, STRING, MetaValue::as_str)
    }

    /// An array of integers of any width and sign.
    pub fn ints(&self, key: &str) -> Result<Option<Vec<i64>>, MetaError> {
        self.array(key, "an integer", as_i64)
    }

    /// An array of floats (`f32`, or `f64` narrowed).
    pub fn floats(&self, key: &str) -> Result<Option<Vec<f32>>, MetaError> {
        self.array(key, "a float", |v| match *v {
            MetaValue::F32(x) => Some(x),
            MetaValue::F64(x) => Some(x as f32),
            _ => None,
        })
    }

    /// [`Meta::u64`], with an absent key an error.
    pub fn require_u64(&self, key: &str) -> Result<u64, MetaError> {
        self.u64(key)?.ok_or_else(|| missing(key))
    }

    /// [`Meta::str`], with an absent key an error.
    pub fn require_str(&self, key: &str) -> Result<&'a str, MetaError> {
        self.str(key)?.ok_or_else(|| missing(key))
    }

    /// [`Meta::strings`], with an absent key an error.
    pub fn require_strings(&self, key: &str) -> Result<Vec<&'a str>, MetaError> {
        self.strings(key)?.ok_or_else(|| missing(key))
    }
}

fn missing(key: &str) -> MetaError {
    MetaError::Missing {
        key: key.to_owned(),
    }
}

fn as_flag(v: &MetaValue) -> Option<bool> {
    match *v {
        MetaValue::Bool(b) => Some(b),
        ref other => as_i64(other).map(|x| x != 0),
    }
}

fn as_i64(v: &MetaValue) -> Option<i64> {
    match *v {
        MetaValue::I8(x) => Some(x.into()),
        MetaValue::I16(x) => Some(x.into()),
        MetaValue::I32(x) => Some(x.into()),
        MetaValue::I64(x) => Some(x),
        ref other => other.as_u64().and_then(|x| i64::try_from(x).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::gguf::ValueType;

    fn kv() -> Vec<(String, MetaValue)> {
        vec![
            ("a.count".into(), MetaValue::U32(7)),
            ("a.neg".into(), MetaValue::I32(-1)),
            ("a.eps".into(), MetaValue::F32(0.5)),
            ("a.name".into(), MetaValue::String("x".into())),
            ("a.flag".into(), MetaValue::U8(1)),
            (
                "a.tokens".into(),
                MetaValue::Array {
                    elem: ValueType::String,
                    items: vec![MetaValue::String("t".into()), MetaValue::U32(3)],
                },
            ),
            (
                "a.types".into(),
                MetaValue::Array {
                    elem: ValueType::I32,
                    items: vec![MetaValue::I32(-2), MetaValue::U8(1)],
                },
            ),
        ]
    }

    #[test]
    fn absent_present_and_wrong_type_are_told_apart() {
        let kv = kv();
        let m = Meta::new(&kv);
        assert_eq!(m.u64("a.count"), Ok(Some(7)));
        assert_eq!(m.u64("a.absent"), Ok(None));
        assert_eq!(
            m.require_u64("a.absent").unwrap_err().to_string(),
            "no `a.absent` key"
        );
        assert_eq!(
            m.u64("a.name").unwrap_err().to_string(),
            "`a.name` is string, expected a non-negative integer"
        );
        assert_eq!(
            m.u64("a.neg").unwrap_err().to_string(),
            "`a.neg` is i32 -1, expected a non-negative integer"
        );
        assert_eq!(m.f64("a.eps"), Ok(Some(0.5)));
        assert_eq!(m.f64("a.count"), Ok(Some(7.0)));
        assert_eq!(m.str("a.name"), Ok(Some("x")));
        assert_eq!(m.require_str("a.count").unwrap_err().key(), "a.count");
        assert_eq!(m.bool("a.flag"), Ok(Some(true)));
        assert_eq!(
            m.bool("a.name").unwrap_err().to_string(),
            "`a.name` is string, expected a bool"
        );
    }

    #[test]
    fn arrays_name_the_bad_item() {
        let kv = kv();
        let m = Meta::new(&kv);
        assert_eq!(
            m.strings("a.tokens").unwrap_err().to_string(),
            "`a.tokens[1]` is u32, expected a string"
        );
        assert_eq!(m.ints("a.types"), Ok(Some(vec![-2, 1])));
        assert_eq!(
            m.strings("a.count").unwrap_err().to_string(),
            "`a.count` is u32, expected an array"
        );
        assert_eq!(m.floats("a.absent"), Ok(None));
    }
}
