//! The image config's `created` time: RFC 3339 (OCI image-spec `config.md`,
//! "combined date and time ... as defined by RFC 3339, section 5.6"), or
//! dockerTools' `"now"`.

use std::time::{SystemTime, UNIX_EPOCH};

/// `text` as it goes into the image config: an RFC 3339 date-time as given,
/// or `now` as the current UTC time to the second. Anything else is refused
/// with what is wrong.
pub fn created(text: &str, now: SystemTime) -> Result<String, String> {
    if text == "now" {
        let secs = now.duration_since(UNIX_EPOCH).map_err(|_| "the clock is before 1970".to_string())?.as_secs();
        return Ok(format_utc(secs));
    }
    check_rfc3339(text).map(|()| text.to_string())
}

/// A base json's (`--base-json`, dockerTools' baseJson) top-level
/// `created` as the image carries it: `"now"` becomes `now`, the build's one
/// resolved time (the one `--created now` gives), so that the config, the
/// history and the layer json agree; any other value must be RFC 3339.
pub fn resolve_json(json: &mut serde_json::Value, now: &str) -> Result<(), String> {
    match json.get_mut("created") {
        Some(serde_json::Value::String(s)) if s == "now" => *s = now.to_string(),
        Some(serde_json::Value::String(s)) => check_rfc3339(s)?,
        Some(serde_json::Value::Null) | None => {}
        Some(other) => return Err(format!("created: {other} is not a string")),
    }
    Ok(())
}

/// `text` is an RFC 3339 date-time (what the image may carry).
pub fn is_rfc3339(text: &str) -> bool {
    check_rfc3339(text).is_ok()
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).expect("u64 seconds / 86400 fits i64");
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).expect("1..=31");
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).expect("1..=12");
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn check_rfc3339(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let want = "an RFC 3339 date-time such as 2024-05-01T12:00:00Z, or \"now\"";
    let bad = |why: &str| Err(format!("{s:?} is not {want}: {why}"));
    let digits = |from: usize, len: usize| -> Option<u32> {
        let part = b.get(from..from + len)?;
        part.iter().all(u8::is_ascii_digit).then(|| std::str::from_utf8(part).ok()?.parse().ok())?
    };
    let (Some(year), Some(month), Some(day)) = (digits(0, 4), digits(5, 2), digits(8, 2)) else {
        return bad("the date must be YYYY-MM-DD");
    };
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return bad("the date must be YYYY-MM-DD");
    }
    if !matches!(b.get(10), Some(b'T' | b't')) {
        return bad("a 'T' must separate date and time");
    }
    let (Some(hour), Some(minute), Some(second)) = (digits(11, 2), digits(14, 2), digits(17, 2)) else {
        return bad("the time must be HH:MM:SS");
    };
    if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
        return bad("the time must be HH:MM:SS");
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return bad("no such month"),
    };
    if day == 0 || day > days_in_month {
        return bad("no such day");
    }
    if hour > 23 || minute > 59 || second > 60 {
        return bad("no such time of day");
    }
    let mut at = 19;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return bad("a '.' needs fraction digits");
        }
    }
    match &b[at.min(b.len())..] {
        [b'Z' | b'z'] => Ok(()),
        [sign, ..] if *sign == b'+' || *sign == b'-' => {
            let (Some(h), Some(m)) = (digits(at + 1, 2), digits(at + 4, 2)) else {
                return bad("the offset must be Z or +HH:MM");
            };
            if b.len() != at + 6 || b[at + 3] != b':' || h > 23 || m > 59 {
                return bad("the offset must be Z or +HH:MM");
            }
            Ok(())
        }
        _ => bad("the time zone (Z or +HH:MM) is missing or followed by more"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_date_times_pass_as_given() {
        for ok in [
            "1970-01-01T00:00:01Z",
            "2024-02-29T23:59:60Z",
            "2024-05-01t12:00:00.123456789+02:00",
            "1999-12-31T23:59:59-05:30",
            "2000-02-29T00:00:00z",
        ] {
            assert_eq!(created(ok, UNIX_EPOCH).as_deref(), Ok(ok), "{ok}");
        }
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        for (bad, why) in [
            ("yesterday", "YYYY-MM-DD"),
            ("2024-05-01", "'T'"),
            ("2024-05-01 12:00:00Z", "'T'"),
            ("2024-05-01T12:00:00", "time zone"),
            ("2023-02-29T00:00:00Z", "no such day"),
            ("2024-13-01T00:00:00Z", "no such month"),
            ("2024-05-01T24:00:00Z", "time of day"),
            ("2024-05-01T12:00:00.Z", "fraction"),
            ("2024-05-01T12:00:00+0200", "offset"),
            ("2024-05-01T12:00:00Z trailing", "followed by more"),
            ("", "YYYY-MM-DD"),
            ("２０２４-05-01T12:00:00Z", "YYYY-MM-DD"),
        ] {
            let e = created(bad, UNIX_EPOCH).unwrap_err();
            assert!(e.contains(why) && e.contains("RFC 3339"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_base_json_gets_the_builds_one_now() {
        let mut j = serde_json::json!({ "created": "now", "config": { "Cmd": ["now"] } });
        resolve_json(&mut j, "2025-12-01T21:35:30Z").unwrap();
        assert_eq!(j, serde_json::json!({ "created": "2025-12-01T21:35:30Z", "config": { "Cmd": ["now"] } }));
        let mut j = serde_json::json!({ "created": "1999-12-31T23:59:59-05:30" });
        resolve_json(&mut j, "2025-12-01T21:35:30Z").unwrap();
        assert_eq!(j["created"], "1999-12-31T23:59:59-05:30");
        let mut j = serde_json::json!({ "config": {} });
        resolve_json(&mut j, "2025-12-01T21:35:30Z").unwrap();
        assert!(j.get("created").is_none());
        for bad in [serde_json::json!({ "created": "yesterday" }), serde_json::json!({ "created": 5 })] {
            assert!(resolve_json(&mut bad.clone(), "2025-12-01T21:35:30Z").is_err(), "{bad}");
        }
    }

    #[test]
    fn now_is_the_current_utc_second() {
        let t = UNIX_EPOCH + Duration::from_secs(1_764_624_930);
        assert_eq!(created("now", t).unwrap(), "2025-12-01T21:35:30Z");
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(4_107_542_399), "2100-02-28T23:59:59Z");
        let made = created("now", SystemTime::now()).unwrap();
        assert!(check_rfc3339(&made).is_ok(), "{made}");
    }
}
