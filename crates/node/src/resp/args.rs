//! Argument parsing shared by the framing guard and the commands: integers as
//! Redis reads them.

/// Parses `bytes` the way Redis's `string2ll` does: an optional `-` then decimal
/// digits, no leading zero (except `0` itself), no `+`, no spaces, within `i64`.
/// Anything else is `None`, which commands answer with
/// `ERR value is not an integer or out of range`.
pub fn parse_i64(bytes: &[u8]) -> Option<i64> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let canonical = match digits {
        [] => false,
        [b'0'] => digits.len() == bytes.len(),
        [first, rest @ ..] => (b'1'..=b'9').contains(first) && rest.iter().all(u8::is_ascii_digit),
    };
    if !canonical {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_i64;

    #[test]
    fn parses_like_redis() {
        let cases: &[(&str, Option<i64>)] = &[
            ("0", Some(0)),
            ("7", Some(7)),
            ("-7", Some(-7)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("-0", None),
            ("007", None),
            ("+7", None),
            (" 7", None),
            ("7 ", None),
            ("", None),
            ("-", None),
            ("1.5", None),
            ("1e3", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_i64(text.as_bytes()), *want, "{text:?}");
        }
    }
}
