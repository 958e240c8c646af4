//! What a report page or API call asks for, from its URL query: scope (exporter,
//! interface), report kind, direction, period, top N. All view state lives in the URL so
//! links can be shared; this module parses it (every value hostile) and builds the
//! links of the time navigator.

use chrono::{DateTime, TimeDelta, Utc};
use clap::ValueEnum;
use serde::Deserialize;

use super::calendar::{Calendar, Period};
use crate::collector::batch::Direction;
use crate::report::{ReportBy, ReportQuery};

/// The raw query string of a report view.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ViewParams {
    pub by: Option<String>,
    pub exporter: Option<String>,
    pub interface: Option<String>,
    pub group: Option<String>,
    pub direction: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub top: Option<String>,
    /// Graph unit: bits (default), packets or flows per second.
    pub unit: Option<String>,
    /// Top N by total (default), max or p95.
    pub rank: Option<String>,
}

/// A checked report view.
#[derive(Debug, Clone)]
pub struct View {
    pub by: ReportBy,
    pub exporter: Option<String>,
    pub interface: Option<String>,
    pub group: Option<String>,
    pub direction: Direction,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub top: usize,
    pub unit: crate::report::Measure,
    pub rank: crate::report::Rank,
}

impl View {
    pub fn parse(p: &ViewParams, now: DateTime<Utc>) -> Result<View, String> {
        let by = match p.by.as_deref().filter(|s| !s.is_empty()) {
            None => ReportBy::Total,
            Some(s) => ReportBy::from_str(s, true).map_err(|_| {
                format!("by={s:?}: expected total, exporter, interface, src-as, dst-as, src-ip, dst-ip, src-port, dst-port or proto")
            })?,
        };
        let direction = match p.direction.as_deref().unwrap_or("in") {
            "in" | "" => Direction::In,
            "out" => Direction::Out,
            other => return Err(format!("direction={other:?}: expected in or out")),
        };
        let parse = |s: Option<&str>, default: &str| {
            crate::timespec::parse_time(s.filter(|s| !s.is_empty()).unwrap_or(default), now)
                .map_err(|e| e.to_string())
        };
        let to = parse(p.to.as_deref(), "now")?;
        let from = parse(p.from.as_deref(), "-1d")?;
        // Flows exist between 1970 and the year 9999; outside, dates only overflow.
        let earliest = DateTime::<Utc>::UNIX_EPOCH;
        let latest = DateTime::parse_from_rfc3339("9999-01-01T00:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(earliest);
        if from < earliest || to > latest {
            return Err("times must lie between 1970 and 9999".into());
        }
        if from >= to {
            return Err("from must be before to".into());
        }
        if to - from > TimeDelta::days(3660) {
            return Err("the period is limited to ten years".into());
        }
        let top = match p.top.as_deref().filter(|s| !s.is_empty()) {
            None => 10,
            Some(s) => s
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| format!("top={s:?}: expected a number from 1 to 1000"))?,
        };
        let unit = match p.unit.as_deref().unwrap_or("") {
            "" | "bits" => crate::report::Measure::Bytes,
            "packets" => crate::report::Measure::Packets,
            "flows" => crate::report::Measure::Flows,
            other => return Err(format!("unit={other:?}: expected bits, packets or flows")),
        };
        // Names go into SQL parameters: PostgreSQL refuses NUL, and no exporter,
        // interface or group name contains control characters.
        let rank = match p.rank.as_deref().unwrap_or("") {
            "" | "total" => crate::report::Rank::Total,
            "max" => crate::report::Rank::Max,
            "p95" => crate::report::Rank::P95,
            other => return Err(format!("rank={other:?}: expected total, max or p95")),
        };
        let clean = |name: &str, s: &Option<String>| -> Result<Option<String>, String> {
            match s.as_ref().map(|s| s.trim()) {
                None | Some("") => Ok(None),
                Some(v) if v.len() > 255 || v.chars().any(char::is_control) => Err(format!(
                    "{name}: at most 255 characters, without control characters"
                )),
                Some(v) => Ok(Some(v.to_string())),
            }
        };
        Ok(View {
            by,
            exporter: clean("exporter", &p.exporter)?,
            interface: clean("interface", &p.interface)?,
            group: clean("group", &p.group)?,
            direction,
            from,
            to,
            top,
            unit,
            rank,
        })
    }

    pub fn query(&self, visible_to: Option<i32>) -> ReportQuery {
        ReportQuery {
            from: self.from,
            to: self.to,
            by: self.by,
            exporter: self.exporter.clone(),
            interface: self.interface.clone(),
            group: self.group.clone(),
            rank: self.rank,
            direction: self.direction,
            top: self.top,
            visible_to,
        }
    }

    /// The query string of this view with some fields changed.
    pub fn link(&self, path: &str, change: impl FnOnce(&mut View)) -> String {
        let mut v = self.clone();
        change(&mut v);
        let mut pairs = vec![("by", v.by.as_str().to_string())];
        if let Some(e) = &v.exporter {
            pairs.push(("exporter", e.clone()));
        }
        if let Some(i) = &v.interface {
            pairs.push(("interface", i.clone()));
        }
        if let Some(g) = &v.group {
            pairs.push(("group", g.clone()));
        }
        if v.direction == Direction::Out {
            pairs.push(("direction", "out".into()));
        }
        pairs.push(("from", v.from.format("%Y-%m-%dT%H:%M:%SZ").to_string()));
        pairs.push(("to", v.to.format("%Y-%m-%dT%H:%M:%SZ").to_string()));
        pairs.push(("top", v.top.to_string()));
        match v.rank {
            crate::report::Rank::Total => {}
            crate::report::Rank::Max => pairs.push(("rank", "max".into())),
            crate::report::Rank::P95 => pairs.push(("rank", "p95".into())),
        }
        match v.unit {
            crate::report::Measure::Bytes => {}
            crate::report::Measure::Packets => pairs.push(("unit", "packets".into())),
            crate::report::Measure::Flows => pairs.push(("unit", "flows".into())),
        }
        let qs: Vec<String> = pairs
            .into_iter()
            .map(|(k, v)| format!("{k}={}", encode(&v)))
            .collect();
        format!("{path}?{}", qs.join("&"))
    }

    /// The previous or next period: the adjacent calendar period when this view is one
    /// (a month steps to the month before), else the period of the same length.
    pub fn shifted(&self, path: &str, forward: bool, calendar: &Calendar) -> String {
        if let Some(period) = calendar.exact(self.from, self.to) {
            let n = if forward { 1 } else { -1 };
            return self.link(path, |v| {
                v.from = calendar.add(period, v.from, n);
                v.to = calendar.add(period, v.from, 1);
            });
        }
        let span = self.to - self.from;
        self.link(path, |v| {
            let moved = if forward {
                v.from
                    .checked_add_signed(span)
                    .zip(v.to.checked_add_signed(span))
            } else {
                v.from
                    .checked_sub_signed(span)
                    .zip(v.to.checked_sub_signed(span))
            };
            if let Some((from, to)) = moved {
                v.from = from;
                v.to = to;
            }
        })
    }

    /// The calendar period (hour, day, week, month, year in the display time zone)
    /// holding the end of this view: whole rolled-up buckets, shareable as a link.
    pub fn zoomed(&self, path: &str, period: Period, calendar: &Calendar) -> String {
        self.link(path, |v| {
            let last = v.to - TimeDelta::milliseconds(1);
            (v.from, v.to) = calendar.period_of(period, last);
        })
    }
}

/// Percent-encoding for query values.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_parse_hostile_values_into_errors() {
        let now = Utc::now();
        for (p, want) in [
            (
                ViewParams {
                    by: Some("bogus".into()),
                    ..Default::default()
                },
                "by=",
            ),
            (
                ViewParams {
                    top: Some("0".into()),
                    ..Default::default()
                },
                "top=",
            ),
            (
                ViewParams {
                    top: Some("1e9".into()),
                    ..Default::default()
                },
                "top=",
            ),
            (
                ViewParams {
                    from: Some("-1h".into()),
                    to: Some("-2h".into()),
                    ..Default::default()
                },
                "before",
            ),
            (
                ViewParams {
                    direction: Some("up".into()),
                    ..Default::default()
                },
                "direction",
            ),
            (
                ViewParams {
                    from: Some("yesterday-ish".into()),
                    ..Default::default()
                },
                "cannot read time",
            ),
        ] {
            let err = View::parse(&p, now).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
        let v = View::parse(&ViewParams::default(), now).unwrap();
        assert_eq!((v.by, v.top), (ReportBy::Total, 10));
        let calendar = Calendar::default();
        let next = v.shifted("/report", true, &calendar);
        assert!(next.starts_with("/report?by=total&from="), "{next}");
        // A calendar view steps by calendar periods: November, then December.
        let november = View::parse(
            &ViewParams {
                from: Some("2026-11-01".into()),
                to: Some("2026-12-01".into()),
                ..Default::default()
            },
            now,
        )
        .unwrap();
        assert_eq!(
            november.shifted("/r", true, &calendar),
            "/r?by=total&from=2026-12-01T00:00:00Z&to=2027-01-01T00:00:00Z&top=10"
        );
        assert_eq!(
            november.zoomed("/r", Period::Week, &calendar),
            "/r?by=total&from=2026-11-30T00:00:00Z&to=2026-12-07T00:00:00Z&top=10"
        );
    }
}
