//! Timestamp parsing without allocation: RFC 3339 (with up to nine fractional digits) to
//! nanoseconds since the Unix epoch.

/// Parses an RFC 3339 / ISO 8601 timestamp into nanoseconds since the epoch.
///
/// Accepts `T`, `t` or a space between date and time, 0–9 fractional digits (more are
/// truncated), `Z`/`z` or a `±HH:MM` / `±HHMM` offset, and a leap second (`:60`, which lands on
/// the next second). Returns `None` for anything else, including a missing offset: a timestamp
/// without a zone is ambiguous and is rejected rather than guessed.
pub fn parse_rfc3339_nanos(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut nanos: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..9 {
            nanos *= 10;
        }
    }
    let offset_secs: i64 = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') => {
            let oh = digits(b, i + 1, 2)?;
            let om = match b.len() - i {
                6 if b[i + 3] == b':' => digits(b, i + 4, 2)?,
                5 => digits(b, i + 3, 2)?,
                3 => 0,
                _ => return None,
            };
            if oh > 23 || om > 59 {
                return None;
            }
            let off = i64::from(oh * 3600 + om * 60);
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Formats nanoseconds since the epoch as RFC 3339 UTC with nine fractional digits.
pub fn format_rfc3339_nanos(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let frac = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let mut v = 0u32;
    for &c in b.get(at..at + n)? {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

fn is_leap(y: u32) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_falco_and_audit_timestamps() {
        assert_eq!(
            parse_rfc3339_nanos("2024-05-07T18:54:19.341081180Z"),
            Some(1_715_108_059_341_081_180)
        );
        assert_eq!(
            parse_rfc3339_nanos("2024-03-26T15:15:41.284302Z"),
            Some(1_711_466_141_284_302_000)
        );
        assert_eq!(
            parse_rfc3339_nanos("2018-10-26T13:38:34Z"),
            Some(1_540_561_114_000_000_000)
        );
        assert_eq!(
            parse_rfc3339_nanos("2001-01-01T01:10:00Z"),
            Some(978_311_400_000_000_000)
        );
        assert_eq!(
            parse_rfc3339_nanos("2024-05-07T18:54:19.341081180+0000"),
            parse_rfc3339_nanos("2024-05-07T18:54:19.341081180Z")
        );
        assert_eq!(
            parse_rfc3339_nanos("2024-05-07T20:54:19.5+02:00"),
            parse_rfc3339_nanos("2024-05-07T18:54:19.500Z")
        );
    }

    #[test]
    fn rejects_what_is_not_a_timestamp() {
        for bad in [
            "",
            "2024-05-07",
            "2024-05-07T18:54:19",
            "2024-05-07T18:54:19.Z",
            "2024-13-07T18:54:19Z",
            "2023-02-29T00:00:00Z",
            "2024-05-07T24:00:00Z",
            "2024-05-07T18:54:19Zjunk",
            "20x4-05-07T18:54:19Z",
            "9999999-05-07T18:54:19Z",
        ] {
            assert_eq!(parse_rfc3339_nanos(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn leap_second_lands_on_the_next_second() {
        assert_eq!(
            parse_rfc3339_nanos("2016-12-31T23:59:60Z"),
            parse_rfc3339_nanos("2017-01-01T00:00:00Z")
        );
    }

    #[test]
    fn extra_fraction_digits_are_truncated() {
        assert_eq!(
            parse_rfc3339_nanos("1970-01-01T00:00:00.1234567891Z"),
            Some(123_456_789)
        );
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(ns in -9_000_000_000_000_000_000i64..9_000_000_000_000_000_000i64) {
            prop_assert_eq!(parse_rfc3339_nanos(&format_rfc3339_nanos(ns)), Some(ns));
        }

        #[test]
        fn agrees_with_chrono(ns in 0i64..4_102_444_800_000_000_000i64) {
            let s = format_rfc3339_nanos(ns);
            let c = chrono::DateTime::parse_from_rfc3339(&s).map(|d| d.timestamp_nanos_opt());
            prop_assert_eq!(c.ok().flatten(), Some(ns));
        }
    }
}
