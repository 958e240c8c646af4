//! Calendar periods in the display time zone (`history.timezone`, `week_start`): the
//! hour, day, week, month or year holding a moment, the one before or after, and
//! times shown as local. The same periods as the rollups' buckets, so a calendar view
//! reads whole rolled-up buckets.

use chrono::{
    DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, Offset, TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;

/// A calendar level of the time navigator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    pub const ALL: [Period; 5] = [
        Period::Hour,
        Period::Day,
        Period::Week,
        Period::Month,
        Period::Year,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Year => "year",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Calendar {
    pub tz: Tz,
    pub week_start: Weekday,
}

impl Default for Calendar {
    fn default() -> Self {
        Calendar {
            tz: chrono_tz::UTC,
            week_start: Weekday::Mon,
        }
    }
}

impl Calendar {
    /// From the configuration's zone name and ISO week-start day (1 Monday, 7 Sunday);
    /// an unknown zone falls back to UTC (the configuration was validated against the
    /// system's zone database already).
    pub fn new(timezone: &str, week_start: i16) -> Calendar {
        Calendar {
            tz: timezone.parse().unwrap_or(chrono_tz::UTC),
            week_start: if week_start == 7 {
                Weekday::Sun
            } else {
                Weekday::Mon
            },
        }
    }

    /// A local midnight (or the first moment of the day, where a daylight-saving
    /// change skips midnight) as UTC.
    fn at_local(&self, date: NaiveDate) -> DateTime<Utc> {
        let midnight = date.and_hms_opt(0, 0, 0).unwrap_or(NaiveDateTime::MIN);
        let local = (0..4)
            .find_map(|h| {
                self.tz
                    .from_local_datetime(&(midnight + Duration::hours(h)))
                    .earliest()
            })
            .unwrap_or_else(|| self.tz.from_utc_datetime(&midnight));
        local.with_timezone(&Utc)
    }

    /// The start of the period holding `t`.
    pub fn floor(&self, period: Period, t: DateTime<Utc>) -> DateTime<Utc> {
        let local = t.with_timezone(&self.tz);
        let date = local.date_naive();
        match period {
            Period::Hour => {
                // Hours begin at the zone's offset modulo one hour, as the rollups'.
                let offset = i64::from(local.offset().fix().local_minus_utc()).rem_euclid(3600);
                let secs = (t.timestamp() + offset).div_euclid(3600) * 3600 - offset;
                DateTime::from_timestamp(secs, 0).unwrap_or(t)
            }
            Period::Day => self.at_local(date),
            Period::Week => {
                let back = (7 + date.weekday().num_days_from_monday()
                    - self.week_start.num_days_from_monday())
                    % 7;
                self.at_local(date - Duration::days(i64::from(back)))
            }
            Period::Month => self.at_local(date.with_day(1).unwrap_or(date)),
            Period::Year => {
                self.at_local(NaiveDate::from_ymd_opt(date.year(), 1, 1).unwrap_or(date))
            }
        }
    }

    /// The start of the period `n` periods after the one starting at `start`.
    pub fn add(&self, period: Period, start: DateTime<Utc>, n: i32) -> DateTime<Utc> {
        let date = start.with_timezone(&self.tz).date_naive();
        let months = |m: i32| {
            let shifted = if m >= 0 {
                date.checked_add_months(chrono::Months::new(m.unsigned_abs()))
            } else {
                date.checked_sub_months(chrono::Months::new(m.unsigned_abs()))
            };
            self.at_local(shifted.unwrap_or(date))
        };
        match period {
            Period::Hour => start + Duration::hours(i64::from(n)),
            Period::Day => self.at_local(date + Duration::days(i64::from(n))),
            Period::Week => self.at_local(date + Duration::days(7 * i64::from(n))),
            Period::Month => months(n),
            Period::Year => months(12 * n),
        }
    }

    /// The period holding `t`.
    pub fn period_of(&self, period: Period, t: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let start = self.floor(period, t);
        (start, self.add(period, start, 1))
    }

    /// Which calendar period [from, to) is exactly, if any (the finest that fits).
    pub fn exact(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Option<Period> {
        Period::ALL
            .into_iter()
            .find(|p| self.period_of(*p, from) == (from, to))
    }

    /// A moment as local time, e.g. `2026-12-04 21:05`.
    pub fn show(&self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.tz)
            .format("%Y-%m-%d %H:%M")
            .to_string()
    }

    pub fn zone_name(&self) -> &'static str {
        self.tz.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .expect("time")
    }

    #[test]
    fn periods_follow_the_zone_and_its_daylight_saving() {
        let berlin = Calendar::new("Europe/Berlin", 1);
        // 2026-10-25 is the autumn change: a 25-hour day.
        let (a, b) = berlin.period_of(Period::Day, t("2026-10-25T12:00:00Z"));
        assert_eq!(
            (a, b),
            (t("2026-10-24T22:00:00Z"), t("2026-10-25T23:00:00Z"))
        );
        assert_eq!(berlin.exact(a, b), Some(Period::Day));
        // ISO weeks start on Monday; with week_start 7, on Sunday.
        let (w, _) = berlin.period_of(Period::Week, t("2026-12-05T12:00:00Z"));
        assert_eq!(w, t("2026-11-29T23:00:00Z"));
        let sunday = Calendar::new("Europe/Berlin", 7);
        assert_eq!(
            sunday.floor(Period::Week, t("2026-12-05T12:00:00Z")),
            t("2026-11-28T23:00:00Z")
        );
        // Months and years, and stepping across them.
        let (m, m_end) = berlin.period_of(Period::Month, t("2026-12-31T23:30:00Z"));
        assert_eq!(
            (m, m_end),
            (t("2026-12-31T23:00:00Z"), t("2027-01-31T23:00:00Z"))
        );
        assert_eq!(berlin.add(Period::Month, m, -1), t("2026-11-30T23:00:00Z"));
        assert_eq!(
            berlin.floor(Period::Year, t("2026-06-01T00:00:00Z")),
            t("2025-12-31T23:00:00Z")
        );
        // Hours at :30 in India, as the rollups'.
        let india = Calendar::new("Asia/Kolkata", 1);
        assert_eq!(
            india.floor(Period::Hour, t("2026-12-04T20:51:00Z")),
            t("2026-12-04T20:30:00Z")
        );
        assert_eq!(berlin.show(t("2026-12-04T20:51:00Z")), "2026-12-04 21:51");
        assert_eq!(
            berlin.exact(t("2026-12-04T00:00:00Z"), t("2026-12-05T00:00:00Z")),
            None
        );
    }
}
