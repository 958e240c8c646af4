//! Times on the command line: RFC 3339, `YYYY-MM-DD[ HH:MM[:SS]]` (UTC), `now`, and
//! relative forms such as `-90s`, `-15m`, `-1h`, `-2d`, `-1w` (or `+1h` ahead).

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, Utc};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot read time {0:?}: use RFC 3339 (2026-12-04T10:00:00Z), YYYY-MM-DD[ HH:MM], now, or -90s/-15m/-1h/-2d/-1w")]
pub struct TimeSpecError(pub String);

pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, TimeSpecError> {
    let err = || TimeSpecError(s.to_string());
    let t = s.trim();
    if t == "now" {
        return Ok(now);
    }
    let relative = t
        .strip_prefix('-')
        .map(|r| (r, -1))
        .or_else(|| t.strip_prefix('+').map(|r| (r, 1)));
    if let Some((rel, sign)) = relative {
        let (num, unit) = rel.split_at(rel.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?);
        let n: i64 = num.parse().map_err(|_| err())?;
        let delta = match unit {
            "s" => TimeDelta::try_seconds(n),
            "m" | "min" => TimeDelta::try_minutes(n),
            "h" => TimeDelta::try_hours(n),
            "d" => TimeDelta::try_days(n),
            "w" => TimeDelta::try_weeks(n),
            _ => None,
        }
        .ok_or_else(err)?;
        return now.checked_add_signed(delta * sign).ok_or_else(err);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(t) {
        return Ok(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, fmt) {
            return Ok(n.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return d.and_hms_opt(0, 0, 0).map(|n| n.and_utc()).ok_or_else(err);
    }
    Err(err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let now = DateTime::parse_from_rfc3339("2026-12-04T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let p = |s| parse_time(s, now).unwrap().to_rfc3339();
        assert_eq!(p("-1h"), "2026-12-04T09:00:00+00:00");
        assert_eq!(p("-2d"), "2026-12-02T10:00:00+00:00");
        assert_eq!(p("+30m"), "2026-12-04T10:30:00+00:00");
        assert_eq!(p("2026-12-01"), "2026-12-01T00:00:00+00:00");
        assert_eq!(p("2026-12-01 08:30"), "2026-12-01T08:30:00+00:00");
        assert_eq!(p("2026-12-01T08:30:00+01:00"), "2026-12-01T07:30:00+00:00");
        assert!(parse_time("yesterday", now)
            .unwrap_err()
            .to_string()
            .contains("yesterday"));
        assert!(parse_time("-5y", now).is_err());
    }
}
