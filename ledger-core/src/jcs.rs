//! RFC 8785 JSON Canonicalization Scheme (JCS): the exact bytes a journal entry's hash covers.
//!
//! Only integers with magnitude at most 2^53 are supported as numbers. The journal holds no
//! other numbers (`seq` is the only one), and refusing the rest keeps ledger-core free of
//! the float formatting RFC 8785 §3.2.2.3 would otherwise require.

use serde_json::{Map, Value};

/// The largest integer magnitude JCS represents exactly (IEEE 754 double precision).
const INTEGER_MAGNITUDE_MAX: u64 = 1 << 53;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JcsError {
    #[error(
        "number {0} is not an integer of magnitude at most 2^53; JCS here supports only those"
    )]
    UnsupportedNumber(String),
}

/// The canonical JSON text of `value`.
pub fn canonicalize(value: &Value) -> Result<String, JcsError> {
    let mut out = Vec::new();
    canonicalize_into(value, &mut out)?;
    Ok(String::from_utf8(out)
        .expect("canonical JSON is built only from &str slices and ASCII, so it is UTF-8"))
}

/// Appends the canonical JSON text of `value` to `out`; on error `out` may hold a partial text.
pub fn canonicalize_into(value: &Value, out: &mut Vec<u8>) -> Result<(), JcsError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => write_number(number, out)?,
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push(b'[');
            for (position, item) in items.iter().enumerate() {
                if position > 0 {
                    out.push(b',');
                }
                canonicalize_into(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(members) => write_object(members, out)?,
    }
    Ok(())
}

/// RFC 8785 §3.2.3: members sorted by their names as arrays of UTF-16 code units.
fn write_object(members: &Map<String, Value>, out: &mut Vec<u8>) -> Result<(), JcsError> {
    let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
    sorted.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
    out.push(b'{');
    for (position, (name, member)) in sorted.into_iter().enumerate() {
        if position > 0 {
            out.push(b',');
        }
        write_string(name, out);
        out.push(b':');
        canonicalize_into(member, out)?;
    }
    out.push(b'}');
    Ok(())
}

fn write_number(number: &serde_json::Number, out: &mut Vec<u8>) -> Result<(), JcsError> {
    let text = if let Some(integer) = number.as_i64() {
        (integer.unsigned_abs() <= INTEGER_MAGNITUDE_MAX).then(|| integer.to_string())
    } else if let Some(integer) = number.as_u64() {
        (integer <= INTEGER_MAGNITUDE_MAX).then(|| integer.to_string())
    } else {
        None
    };
    let text = text.ok_or_else(|| JcsError::UnsupportedNumber(number.to_string()))?;
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// RFC 8785 §3.2.2.2: `text` as a JSON string, escaped as ECMAScript's JSON.stringify does.
/// Only `"`, `\` and the C0 controls are escaped; everything else, U+2028/U+2029 and
/// non-ASCII included, is written as literal UTF-8.
pub fn write_string(text: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    write_string_contents(text, out);
    out.push(b'"');
}

/// The escaped contents of a JSON string, without the quotes. Runs of bytes that need no
/// escape are copied at once: every byte of a multi-byte UTF-8 sequence is 0x80 or above, so
/// only ASCII bytes can need an escape.
pub fn write_string_contents(text: &str, out: &mut Vec<u8>) {
    let mut rest = text.as_bytes();
    loop {
        let plain = plain_prefix_len(rest);
        out.extend_from_slice(&rest[..plain]);
        let Some((&byte, after)) = rest[plain..].split_first() else {
            return;
        };
        // The two-character escapes JSON.stringify uses; other C0 controls get \u00xx.
        let short_escape: Option<&[u8]> = match byte {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            0x08 => Some(b"\\b"),
            0x0c => Some(b"\\f"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            _ => None,
        };
        match short_escape {
            Some(escape) => out.extend_from_slice(escape),
            None => {
                const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX_DIGITS[usize::from(byte >> 4)]);
                out.push(HEX_DIGITS[usize::from(byte & 0x0f)]);
            }
        }
        rest = after;
    }
}

/// How many leading bytes of `bytes` a JSON string holds as they are: up to the first `"`,
/// `\` or C0 control (or all of them). Looks at eight bytes at a time, since most strings
/// in a journal have nothing to escape.
pub fn plain_prefix_len(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_le_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_le_bytes([b'\\'; 8]);
    const SPACES: u64 = u64::from_le_bytes([0x20; 8]);
    // A byte's high bit set here, for any byte of `word` below `limit` (which is at most
    // 0x80). The classic "has less than" test: exact for the first such byte (a borrow
    // only runs upward, past it), which is all the caller needs.
    let any_below = |word: u64, limit: u64| word.wrapping_sub(limit) & !word & HIGHS;
    let mut position = 0;
    for chunk in bytes.chunks_exact(8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunks_exact(8) gives 8 bytes"));
        let special = any_below(word ^ QUOTES, ONES)
            | any_below(word ^ BACKSLASHES, ONES)
            | any_below(word, SPACES);
        if special != 0 {
            // Little-endian: the first byte is the lowest, and its high bit is exact.
            return position + special.trailing_zeros() as usize / 8;
        }
        position += 8;
    }
    position
        + bytes[position..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            .unwrap_or(bytes.len() - position)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const JOURNAL: &str = include_str!("../../../shared/vectors/journal.jsonl");
    const VECTORS: &str = include_str!("../../../shared/vectors/vectors.json");

    fn check(input: &str, expected: &str) {
        let value: Value = serde_json::from_str(input).expect("test input is JSON");
        assert_eq!(
            canonicalize(&value).as_deref(),
            Ok(expected),
            "input {input}"
        );
    }

    fn check_value(value: Value, expected: &str) {
        assert_eq!(
            canonicalize(&value).as_deref(),
            Ok(expected),
            "value {value}"
        );
    }

    #[test]
    fn literals_and_whitespace() {
        check(" null ", "null");
        check("true", "true");
        check("false", "false");
        check("[ 1 , [ ] , { } , \"a\" ]", "[1,[],{},\"a\"]");
        check("{ \"a\" : [ { \"b\" : null } ] }", "{\"a\":[{\"b\":null}]}");
    }

    #[test]
    fn integers_up_to_two_to_the_53() {
        check("0", "0");
        check("42", "42");
        check("-42", "-42");
        check("9007199254740992", "9007199254740992");
        check("-9007199254740992", "-9007199254740992");
    }

    #[test]
    fn other_numbers_are_unsupported() {
        let check_unsupported = |input: &str| {
            let value: Value = serde_json::from_str(input).expect("test input is JSON");
            assert!(
                matches!(canonicalize(&value), Err(JcsError::UnsupportedNumber(_))),
                "input {input}"
            );
        };
        check_unsupported("9007199254740993");
        check_unsupported("-9007199254740993");
        check_unsupported("18446744073709551615");
        check_unsupported("1.5");
        check_unsupported("1.0");
        // serde_json reads "-0" as the float -0.0.
        check_unsupported("-0");
        check_unsupported("1e3");
        check_unsupported("{\"a\":[0.1]}");
    }

    #[test]
    fn keys_sort_by_utf16_code_units() {
        // U+10000 is the surrogate pair D800 DC00, which sorts before U+FFFF in UTF-16 even
        // though its code point and its UTF-8 bytes sort after.
        check_value(
            json!({"\u{ffff}": 1, "\u{10000}": 2}),
            "{\"\u{10000}\":2,\"\u{ffff}\":1}",
        );
        // RFC 8785 §3.2.3 sorting example.
        check(
            r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
            "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"ö\":\"Latin Small Letter O With Diaeresis\",\"€\":\"Euro Sign\",\"😀\":\"Emoji: Grinning Face\",\"דּ\":\"Hebrew Letter Dalet With Dagesh\"}",
        );
        check(
            r#"{"b":1,"a":2,"aa":3,"A":4}"#,
            r#"{"A":4,"a":2,"aa":3,"b":1}"#,
        );
    }

    #[test]
    fn strings_escape_like_json_stringify() {
        // RFC 8785 §3.2.2.2 example.
        check(
            r#""\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/""#,
            "\"€$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"",
        );
        check_value(json!("\u{8}\u{c}\n\r\t\"\\"), r#""\b\f\n\r\t\"\\""#);
        check_value(json!("\u{0}\u{1}\u{1f}"), r#""\u0000\u0001\u001f""#);
        check_value(
            json!("\u{7f}\u{2028}\u{2029}"),
            "\"\u{7f}\u{2028}\u{2029}\"",
        );
        check_value(json!("服务未完成"), "\"服务未完成\"");
    }

    #[test]
    fn plain_prefix_stops_at_the_first_byte_to_escape() {
        let check = |text: &[u8], expected: usize| {
            assert_eq!(plain_prefix_len(text), expected, "{text:?}");
        };
        check(b"", 0);
        check(b"abc", 3);
        check(b"abcdefghijklmnop", 16);
        check(b"abcdefgh\"", 8);
        check(b"abcdefghi\\", 9);
        check(b"ab\x1fcdefghij", 2);
        check(b"abcdefghijklm\x00", 13);
        check("\u{4e00}\u{2028}\x7f ".as_bytes(), 8);
        check(b"\x80\x81\xff\x20\x21\x22", 5);
    }

    proptest::proptest! {
        #[test]
        fn plain_prefix_matches_a_byte_scan(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let expected = bytes
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .unwrap_or(bytes.len());
            proptest::prop_assert_eq!(plain_prefix_len(&bytes), expected);
        }

        /// JSON.stringify's escaping is serde_json's too: same set, same short forms,
        /// lowercase hex.
        #[test]
        fn write_string_matches_serde_json(text in "(\\PC|[\\x00-\\x1f\"\\\\\u{2028}\u{7f}])*") {
            let mut out = Vec::new();
            write_string(&text, &mut out);
            proptest::prop_assert_eq!(out, serde_json::to_vec(&text).expect("a string serialises"));
        }
    }

    #[test]
    fn nested_objects_sort_at_every_level() {
        check(
            r#"{"z":{"y":[{"b":1,"a":2}],"x":"1"},"a":[3,{"d":null,"c":true}]}"#,
            r#"{"a":[3,{"c":true,"d":null}],"z":{"x":"1","y":[{"a":2,"b":1}]}}"#,
        );
    }

    #[test]
    fn canonicalize_into_appends() {
        let mut out = b"ledger-entry-v1\n".to_vec();
        canonicalize_into(&json!({"b": 1, "a": "x"}), &mut out).expect("canonical");
        assert_eq!(out, b"ledger-entry-v1\n{\"a\":\"x\",\"b\":1}");
    }

    fn journal_entries() -> Vec<serde_json::Map<String, Value>> {
        JOURNAL
            .lines()
            .map(|line| serde_json::from_str(line).expect("journal vector line is an object"))
            .collect()
    }

    #[test]
    fn reproduces_vector_canonical_text_of_entry_2() {
        let vectors: Value = serde_json::from_str(VECTORS).expect("vectors.json parses");
        let expected = vectors["jcs_of_entry_2_without_hash"]
            .as_str()
            .expect("vector is a string");
        let mut entry = journal_entries()
            .into_iter()
            .find(|entry| entry["seq"] == json!(2))
            .expect("journal vector has seq 2");
        entry.remove("hash");
        check_value(Value::Object(entry), expected);
    }

    #[test]
    fn reproduces_every_vector_entry_hash() {
        let entries = journal_entries();
        assert_eq!(entries.len(), 8);
        for mut entry in entries {
            let Some(Value::String(expected)) = entry.remove("hash") else {
                panic!("entry without a string hash: {entry:?}");
            };
            let mut preimage = b"ledger-entry-v1\n".to_vec();
            canonicalize_into(&Value::Object(entry.clone()), &mut preimage).expect("canonical");
            let digest = ring::digest::digest(&ring::digest::SHA256, &preimage);
            assert_eq!(
                hex::encode(digest.as_ref()),
                expected,
                "seq {}",
                entry["seq"]
            );
        }
    }
}
