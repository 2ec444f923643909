//! UTC time without a time crate: Unix seconds, the civil calendar, and the two text forms
//! the agent reads and writes (RFC 3339 / ISO 8601 with `Z`). One module for the whole
//! agent: logs, status, S3 listings and SigV4 dates all use it.

/// Seconds since the Unix epoch, from the system clock (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `2026-11-21T05:06:52Z`, from the system clock.
pub fn utc_timestamp() -> String {
    utc_timestamp_of(unix_now())
}

/// `2026-11-21T05:06:52Z` for Unix seconds `secs`.
pub fn utc_timestamp_of(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are in range by construction.
    (year, month as u32, day as u32)
}

/// (year, month, day) → days since 1970-01-01; the inverse of [`civil_from_days`].
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// ISO-8601 / RFC 3339 UTC time as S3 writes it (`2009-10-12T17:50:30.000Z`) → Unix seconds.
/// Accepts any number of fraction digits and a `Z` or `±HH:MM` offset.
pub fn parse_iso8601(text: &str) -> Option<i64> {
    let s = text.trim().as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = s.get(range)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(
            digits
                .iter()
                .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')),
        )
    };
    if s.len() < 20
        || s[4] != b'-'
        || s[7] != b'-'
        || !matches!(s[10], b'T' | b't')
        || s[13] != b':'
        || s[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    if s[i] == b'.' {
        i += 1;
        let start = i;
        while i < s.len() && s[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset_secs = match s.get(i..)? {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let hh = num(i + 1..i + 3)?;
            let mm = num(i + 4..i + 6)?;
            if hh > 23 || mm > 59 {
                return None;
            }
            let v = hh * 3600 + mm * 60;
            if *sign == b'+' { v } else { -v }
        }
        _ => return None,
    };
    let month_u32 = u32::try_from(month).ok()?;
    if !(1..=12).contains(&month_u32) || day < 1 || day > days_in_month(year, month_u32) {
        return None;
    }
    // 60 is a leap second; seconds resolution cannot show it, so it folds into :59.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month_u32, u32::try_from(day).ok()?);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_secs)
}

fn days_in_month(year: i64, month: u32) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Serde for Unix seconds as RFC 3339 text (`2026-11-21T05:06:52Z`), as `status --json`
/// shows times. Reading also accepts plain integers (status files of older versions).
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Secs(i64),
        Text(String),
    }

    fn from_either<E: serde::de::Error>(v: Either) -> Result<i64, E> {
        match v {
            Either::Secs(s) => Ok(s),
            Either::Text(t) => super::parse_iso8601(&t)
                .ok_or_else(|| E::custom(format!("expected an RFC 3339 time, got {t:?}"))),
        }
    }

    pub fn serialize<S: Serializer>(secs: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::utc_timestamp_of(*secs))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        from_either(Either::deserialize(d)?)
    }

    /// The same for `Option<i64>` (`null` when absent).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(secs: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
            match secs {
                Some(v) => s.serialize_str(&crate::time::utc_timestamp_of(*v)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
            match Option::<super::Either>::deserialize(d)? {
                Some(v) => super::from_either(v).map(Some),
                None => Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_000), (2022, 1, 8));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn civil_days_round_trip_over_a_wide_range() {
        // Every day from 1600 to 2400 must round-trip and move forward by exactly one day.
        let start = days_from_civil(1600, 1, 1);
        let end = days_from_civil(2400, 12, 31);
        let mut previous = civil_from_days(start - 1);
        for d in start..=end {
            let (y, m, day) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, day), d);
            assert!((y, m, day) > previous);
            assert!((1..=12).contains(&m) && (1..=31).contains(&day));
            previous = (y, m, day);
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    }

    #[test]
    fn iso8601_parsing() {
        assert_eq!(parse_iso8601("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_iso8601("2009-10-12T17:50:30.000Z"),
            Some(1_255_369_830)
        );
        assert_eq!(
            parse_iso8601("2009-10-12T17:50:30.999999Z"),
            Some(1_255_369_830)
        );
        assert_eq!(
            parse_iso8601("2009-10-12T19:50:30+02:00"),
            Some(1_255_369_830)
        );
        assert_eq!(
            parse_iso8601("2009-10-12T15:20:30.5-02:30"),
            Some(1_255_369_830)
        );
        assert_eq!(parse_iso8601("2000-02-29T23:59:59Z"), Some(951_868_799));
        assert_eq!(
            parse_iso8601("2016-12-31T23:59:60Z"),
            parse_iso8601("2016-12-31T23:59:59Z")
        );
        assert_eq!(parse_iso8601("1969-12-31T23:59:59Z"), Some(-1));
        for bad in [
            "",
            "2009-10-12",
            "2009-10-12T17:50:30",
            "2009-10-12 17:50:30Z",
            "2009-13-12T17:50:30Z",
            "2009-02-29T17:50:30Z",
            "2009-10-32T17:50:30Z",
            "2009-10-12T24:00:00Z",
            "2009-10-12T17:60:30Z",
            "2009-10-12T17:50:30.Z",
            "2009-10-12T17:50:30ZZ",
            "2009-10-12T17:50:30+2:00",
            "+009-10-12T17:50:30Z",
            "2009-1a-12T17:50:30Z",
            "2009-10-12T17:50:30+24:00",
            "２００９-10-12T17:50:30Z",
        ] {
            assert_eq!(parse_iso8601(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(utc_timestamp_of(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp_of(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(
            parse_iso8601(&utc_timestamp_of(1_796_285_178)),
            Some(1_796_285_178)
        );
    }
}
