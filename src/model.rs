//! The values that flow from devices to the broker and the history.

use serde_json::Number;

/// Largest integer a JSON number carries exactly in every consumer (JavaScript's 2^53).
pub const MAX_EXACT_INT: i128 = 1 << 53;

/// A point's published value (README "Topics").
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    /// Integers stay integers; i128 holds every u64 and i64.
    Int(i128),
    Float(f64),
    /// Strings and map labels.
    Text(String),
}

impl Value {
    /// The JSON form: integers beyond ±2^53 become decimal strings so nothing is silently
    /// rounded on the way to JavaScript or Python consumers.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) if i.abs() <= MAX_EXACT_INT => match i64::try_from(*i) {
                Ok(i) => serde_json::Value::Number(Number::from(i)),
                Err(_) => serde_json::Value::String(i.to_string()),
            },
            Value::Int(i) => serde_json::Value::String(i.to_string()),
            Value::Float(f) => Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Text(t) => serde_json::Value::String(t.clone()),
        }
    }

    /// The numeric value, for deadband checks and limits.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Bool(_) | Value::Text(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_integers_become_decimal_strings() {
        assert_eq!(Value::Int(42).to_json(), serde_json::json!(42));
        assert_eq!(
            Value::Int(1 << 53).to_json(),
            serde_json::json!(9007199254740992i64)
        );
        assert_eq!(
            Value::Int((1 << 53) + 1).to_json(),
            serde_json::json!("9007199254740993")
        );
        assert_eq!(
            Value::Int(i128::from(u64::MAX)).to_json(),
            serde_json::json!("18446744073709551615")
        );
        assert_eq!(Value::Float(21.5).to_json(), serde_json::json!(21.5));
    }
}
