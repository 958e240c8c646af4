//! History: rolling the minute aggregates up to hours, days, weeks, months and years
//! (top N + "other" re-applied at each level, so totals stay exact), dropping whole
//! partitions that retention no longer keeps, and choosing for a report the coarsest
//! rolled-up buckets that tile its period.
//!
//! Bucket arithmetic (time zones, week starts, daylight-saving days) lives in SQL
//! functions of `sql/0004_rollups.sql`, so the rollup, the purge and the report
//! planner share one definition of a bucket.

use std::fmt::Write as _;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::config::{HistoryConfig, RetentionConfig};

/// A level of aggregation, finest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Minute,
    #[serde(rename = "5min")]
    #[value(name = "5min")]
    FiveMin,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Level {
    /// The levels that are rolled up, in the order a run processes them (each after its
    /// source).
    pub const ROLLUPS: [Level; 6] = [
        Level::FiveMin,
        Level::Hour,
        Level::Day,
        Level::Week,
        Level::Month,
        Level::Year,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Minute => "minute",
            Level::FiveMin => "5min",
            Level::Hour => "hour",
            Level::Day => "day",
            Level::Week => "week",
            Level::Month => "month",
            Level::Year => "year",
        }
    }

    fn parse(s: &str) -> Option<Level> {
        std::iter::once(Level::Minute)
            .chain(Level::ROLLUPS)
            .find(|l| l.as_str() == s)
    }

    /// The level a rollup level is computed from. Hours come from minutes, not five
    /// minutes, so that their top N is chosen from the finest data; weeks come from days
    /// because weeks do not tile months.
    pub fn source(self) -> Level {
        match self {
            Level::Minute | Level::FiveMin | Level::Hour => Level::Minute,
            Level::Day => Level::Hour,
            Level::Week | Level::Month => Level::Day,
            Level::Year => Level::Month,
        }
    }

    /// The levels computed from this one.
    fn consumers(self) -> &'static [Level] {
        match self {
            Level::Minute => &[Level::FiveMin, Level::Hour],
            Level::Hour => &[Level::Day],
            Level::Day => &[Level::Week, Level::Month],
            Level::Month => &[Level::Year],
            Level::FiveMin | Level::Week | Level::Year => &[],
        }
    }

    /// Buckets per transaction: small enough that the collector, which waits for an
    /// hour chunk when it writes late minutes, never waits long.
    fn chunk_buckets(self) -> i32 {
        match self {
            Level::Minute | Level::FiveMin => 72,
            Level::Hour => 6,
            Level::Day => 3,
            Level::Week | Level::Month | Level::Year => 1,
        }
    }

    /// Nominal bucket length, for estimating how many rows a plan reads.
    fn nominal_secs(self) -> i64 {
        match self {
            Level::Minute => 60,
            Level::FiveMin => 300,
            Level::Hour => 3600,
            Level::Day => 86_400,
            Level::Week => 7 * 86_400,
            Level::Month => 30 * 86_400,
            Level::Year => 365 * 86_400,
        }
    }

    /// The table holding one report kind at this level.
    pub fn table(self, kind: Kind) -> String {
        match self {
            Level::Minute => kind.base().to_string(),
            _ => format!("{}_{}", kind.base(), self.as_str()),
        }
    }

    pub fn time_column(self) -> &'static str {
        match self {
            Level::Minute => "minute",
            _ => "bucket",
        }
    }

    /// How many days of this level the configuration keeps; None keeps it forever.
    fn retention_days(self, r: &RetentionConfig) -> Option<u32> {
        match self {
            Level::Minute => Some(r.minute_days),
            Level::FiveMin => Some(r.five_minute_days),
            Level::Hour => Some(r.hour_days),
            Level::Day => Some(r.day_days),
            Level::Week => r.week_days,
            Level::Month => r.month_days,
            Level::Year => r.year_days,
        }
    }

    /// The end of the partition named with this suffix (`20261204` for minute and
    /// five-minute days, `202612` for hour months, `2026` for the other levels' years).
    fn partition_end(self, suffix: &str) -> Option<DateTime<Utc>> {
        let digits = |r: std::ops::Range<usize>| suffix.get(r)?.parse::<i32>().ok();
        let date = |y: i32, m: u32, d: u32| {
            chrono::NaiveDate::from_ymd_opt(y, m, d)?
                .and_hms_opt(0, 0, 0)
                .map(|t| t.and_utc())
        };
        match (self, suffix.len()) {
            (Level::Minute | Level::FiveMin, 8) => {
                let start = date(digits(0..4)?, digits(4..6)? as u32, digits(6..8)? as u32)?;
                Some(start + chrono::Duration::days(1))
            }
            (Level::Hour, 6) => {
                let (y, m) = (digits(0..4)?, digits(4..6)? as u32);
                if m == 12 {
                    date(y + 1, 1, 1)
                } else {
                    date(y, m + 1, 1)
                }
            }
            (Level::Day | Level::Week | Level::Month | Level::Year, 4) => {
                date(digits(0..4)? + 1, 1, 1)
            }
            _ => None,
        }
    }
}

/// The aggregate tables, one per report kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Totals,
    As,
    Ip,
    Port,
    Proto,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Totals, Kind::As, Kind::Ip, Kind::Port, Kind::Proto];

    pub fn base(self) -> &'static str {
        match self {
            Kind::Totals => "flow_totals",
            Kind::As => "flow_as",
            Kind::Ip => "flow_ip",
            Kind::Port => "flow_port",
            Kind::Proto => "flow_proto",
        }
    }

    /// Every column after the time column, in table order.
    pub fn columns(self) -> &'static str {
        match self {
            Kind::Totals => "exporter_id, ifindex, direction, sampling_rate, bytes, packets, flows",
            Kind::As => "exporter_id, ifindex, direction, side, asn, bytes, packets, flows",
            Kind::Ip => "exporter_id, ifindex, direction, side, addr, bytes, packets, flows",
            Kind::Port => "exporter_id, ifindex, direction, side, port, bytes, packets, flows",
            Kind::Proto => "exporter_id, ifindex, direction, proto, bytes, packets, flows",
        }
    }

    /// (grouping columns, the key kept to the top N) of a rollup.
    fn rollup_shape(self) -> (&'static str, Option<&'static str>) {
        match self {
            Kind::Totals => ("exporter_id, ifindex, direction, sampling_rate", None),
            Kind::As => ("exporter_id, ifindex, direction, side", Some("asn")),
            Kind::Ip => ("exporter_id, ifindex, direction, side", Some("addr")),
            Kind::Port => ("exporter_id, ifindex, direction, side", Some("port")),
            // At most 256 protocols: every one is kept.
            Kind::Proto => ("exporter_id, ifindex, direction, proto", None),
        }
    }
}

/// How buckets are laid out, as stored in `rollup_settings` for the report planner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub timezone: String,
    /// ISO day number: 1 Monday, 7 Sunday.
    pub week_start: i16,
    /// The zone's offset from UTC modulo one hour, in seconds.
    pub hour_offset_secs: i32,
    pub top_n: i32,
}

impl Settings {
    /// Resolve the configuration against the database's time zone data (which also
    /// validates the zone name).
    pub async fn resolve(
        client: &Client,
        history: &HistoryConfig,
        top_n: usize,
    ) -> anyhow::Result<Settings> {
        let row = client
            .query_one(
                "SELECT extract(epoch FROM (now() AT TIME ZONE $1) - (now() AT TIME ZONE 'UTC'))::integer",
                &[&history.timezone],
            )
            .await
            .with_context(|| format!("history.timezone = {:?}: not a time zone PostgreSQL knows", history.timezone))?;
        let offset: i32 = row.get(0);
        Ok(Settings {
            timezone: history.timezone.clone(),
            week_start: history.week_start,
            hour_offset_secs: offset.rem_euclid(3600),
            top_n: i32::try_from(top_n).unwrap_or(i32::MAX),
        })
    }

    /// The start of the bucket of `level` holding `t`.
    async fn bucket(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        level: Level,
        t: DateTime<Utc>,
    ) -> anyhow::Result<DateTime<Utc>> {
        Ok(tx
            .query_one(
                "SELECT flowstage_bucket($1, $2, $3, $4, $5)",
                &[
                    &level.as_str(),
                    &t,
                    &self.timezone,
                    &i32::from(self.week_start),
                    &self.hour_offset_secs,
                ],
            )
            .await?
            .get(0))
    }

    async fn store(&self, client: &Client) -> anyhow::Result<()> {
        client
            .execute(
                "INSERT INTO rollup_settings (timezone, week_start, hour_offset_secs, top_n)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (singleton) DO UPDATE SET timezone = $1, week_start = $2,
                     hour_offset_secs = $3, top_n = $4, updated_at = now()
                 WHERE (rollup_settings.timezone, rollup_settings.week_start,
                        rollup_settings.hour_offset_secs, rollup_settings.top_n)
                       IS DISTINCT FROM ($1, $2, $3, $4)",
                &[
                    &self.timezone,
                    &self.week_start,
                    &self.hour_offset_secs,
                    &self.top_n,
                ],
            )
            .await?;
        Ok(())
    }
}

/// What a rollup run is asked to do.
#[derive(Debug, Clone)]
pub struct RollupOptions {
    /// Only these levels; empty means all.
    pub levels: Vec<Level>,
    /// Recompute the buckets overlapping [from, to) that were already rolled up.
    pub redo: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub now: DateTime<Utc>,
    /// Minutes younger than this are not rolled up yet (the collector may still write them).
    pub grace_secs: i64,
    /// Stop with an error after this many chunks: the tests' simulated interruption.
    pub stop_after_chunks: Option<usize>,
}

/// What one level did in a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LevelSummary {
    pub level: String,
    /// Buckets rolled up for the first time (including empty ones).
    pub new_buckets: i64,
    /// Buckets recomputed because their source changed.
    pub redone_buckets: i64,
    pub rows_written: u64,
    /// End of the rolled-up region after the run.
    pub done_to: Option<String>,
}

/// Serialises rollup and purge runs (timer and hand-run alike).
const RUN_LOCK: i64 = 7_465_236;

async fn take_run_lock(client: &Client) -> anyhow::Result<()> {
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&RUN_LOCK])
        .await?
        .get(0);
    anyhow::ensure!(
        got,
        "another rollup or purge is running on this database; try again when it ends"
    );
    Ok(())
}

async fn release_run_lock(client: &Client) {
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&RUN_LOCK])
        .await;
}

/// Roll up every level that has complete buckets, recompute dirty ones, catch up after
/// any gap. Each chunk of buckets is one transaction that also advances the level's
/// `done_to`, so an interrupted run leaves nothing half done and a re-run goes on
/// from where it stopped.
pub async fn rollup(
    client: &mut Client,
    settings: &Settings,
    options: &RollupOptions,
) -> anyhow::Result<Vec<LevelSummary>> {
    take_run_lock(client).await?;
    let result = rollup_locked(client, settings, options).await;
    release_run_lock(client).await;
    result
}

async fn rollup_locked(
    client: &mut Client,
    settings: &Settings,
    options: &RollupOptions,
) -> anyhow::Result<Vec<LevelSummary>> {
    settings.store(client).await?;
    let selected = |l: Level| options.levels.is_empty() || options.levels.contains(&l);
    if let Some((from, to)) = options.redo {
        for level in Level::ROLLUPS.into_iter().filter(|l| selected(*l)) {
            let marked = client
                .execute(
                    "INSERT INTO rollup_dirty (level, bucket)
                     SELECT $1, b FROM rollup_levels l,
                         flowstage_buckets($1, greatest($2, l.done_from), least($3, l.done_to), $4, $5, $6) b
                     WHERE l.level = $1 AND l.done_to IS NOT NULL
                     ON CONFLICT DO NOTHING",
                    &[
                        &level.as_str(),
                        &from,
                        &to,
                        &settings.timezone,
                        &i32::from(settings.week_start),
                        &settings.hour_offset_secs,
                    ],
                )
                .await?;
            tracing::info!(
                level = level.as_str(),
                marked,
                "buckets marked for recomputation"
            );
        }
    }
    let mut chunks = 0usize;
    let mut summaries = Vec::new();
    for level in Level::ROLLUPS.into_iter().filter(|l| selected(*l)) {
        let mut summary = LevelSummary {
            level: level.as_str().into(),
            ..Default::default()
        };
        loop {
            let Some(step) =
                roll_next_chunk(client, settings, level, options.now, options.grace_secs).await?
            else {
                break;
            };
            summary.new_buckets += step.buckets;
            summary.rows_written += step.rows;
            chunks += 1;
            check_stop(options, chunks)?;
        }
        loop {
            let Some(step) = redo_dirty_chunk(client, settings, level).await? else {
                break;
            };
            summary.redone_buckets += step.buckets;
            summary.rows_written += step.rows;
            chunks += 1;
            check_stop(options, chunks)?;
        }
        let done_to: Option<DateTime<Utc>> = client
            .query_one(
                "SELECT done_to FROM rollup_levels WHERE level = $1",
                &[&level.as_str()],
            )
            .await?
            .get(0);
        summary.done_to = done_to.map(|t| t.to_rfc3339());
        summaries.push(summary);
    }
    Ok(summaries)
}

fn check_stop(options: &RollupOptions, chunks: usize) -> anyhow::Result<()> {
    if options.stop_after_chunks.is_some_and(|n| chunks >= n) {
        anyhow::bail!("stopped after {chunks} chunks as asked (--stop-after-chunks)");
    }
    Ok(())
}

struct ChunkDone {
    buckets: i64,
    rows: u64,
}

/// The INSERT that rolls the source rows in [$1, $2) of one kind up to a level, with
/// top N + "other" re-applied per bucket. Parameters: $1 from, $2 to, $3 time zone,
/// $4 week start, $5 hour offset, $6 top N.
fn rollup_insert(level: Level, kind: Kind) -> String {
    let source = level.source();
    let (src_table, src_time) = (source.table(kind), source.time_column());
    let target = level.table(kind);
    let bucket = format!(
        "flowstage_bucket('{}', {src_time}, $3, $4, $5)",
        level.as_str()
    );
    let (group, key) = kind.rollup_shape();
    // Rows of one direction (and side) together on disk, for the direction index.
    let order = if group.contains("side") {
        "direction, side, bucket"
    } else {
        "direction, bucket"
    };
    match key {
        None => format!(
            "INSERT INTO {target} (bucket, {group}, bytes, packets, flows)
             SELECT {bucket} AS bucket, {group}, sum(bytes), sum(packets), sum(flows)
             FROM {src_table} WHERE {src_time} >= $1 AND {src_time} < $2
             GROUP BY 1, {group}
             ORDER BY {order}"
        ),
        Some(key) => format!(
            "INSERT INTO {target} (bucket, {group}, {key}, bytes, packets, flows)
             SELECT bucket, {group}, CASE WHEN rn <= $6 THEN {key} END AS kept,
                    sum(b), sum(p), sum(f)
             FROM (
                 SELECT *, row_number() OVER (PARTITION BY bucket, {group}
                                              ORDER BY ({key} IS NULL), b DESC, {key}) AS rn
                 FROM (
                     SELECT {bucket} AS bucket, {group}, {key},
                            sum(bytes) AS b, sum(packets) AS p, sum(flows) AS f
                     FROM {src_table} WHERE {src_time} >= $1 AND {src_time} < $2
                     GROUP BY 1, {group}, {key}
                 ) g
             ) r
             GROUP BY bucket, {group}, kept
             ORDER BY {order}"
        ),
    }
}

/// Insert the rollup of [from, to) for every kind; returns rows written.
async fn roll_range(
    tx: &tokio_postgres::Transaction<'_>,
    settings: &Settings,
    level: Level,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<u64> {
    tx.execute(
        "SELECT flowstage_ensure_rollup($1, flowstage_bucket($1, $2, $4, $5, $6), $3)",
        &[
            &level.as_str(),
            &from,
            &to,
            &settings.timezone,
            &i32::from(settings.week_start),
            &settings.hour_offset_secs,
        ],
    )
    .await?;
    let mut rows = 0;
    let top_n = i64::from(settings.top_n);
    let week_start = i32::from(settings.week_start);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
        &from,
        &to,
        &settings.timezone,
        &week_start,
        &settings.hour_offset_secs,
        &top_n,
    ];
    for kind in Kind::ALL {
        let used = if kind.rollup_shape().1.is_some() {
            6
        } else {
            5
        };
        rows += tx
            .execute(&rollup_insert(level, kind), &params[..used])
            .await
            .with_context(|| format!("rolling {} up to {}", kind.base(), level.as_str()))?;
    }
    Ok(rows)
}

/// Roll up the next chunk of complete buckets past `done_to`; None when there is none.
async fn roll_next_chunk(
    client: &mut Client,
    settings: &Settings,
    level: Level,
    now: DateTime<Utc>,
    grace_secs: i64,
) -> anyhow::Result<Option<ChunkDone>> {
    let tx = client.transaction().await?;
    let state = tx
        .query_one(
            "SELECT done_from, done_to FROM rollup_levels WHERE level = $1 FOR UPDATE",
            &[&level.as_str()],
        )
        .await?;
    let done_to: Option<DateTime<Utc>> = state.get(1);
    let source = level.source();
    let source_state = tx
        .query_one(
            "SELECT done_from, done_to FROM rollup_levels WHERE level = $1",
            &[&source.as_str()],
        )
        .await?;
    // Source data is complete up to `ready`: minutes up to the grace period, rollup
    // levels up to their own done_to.
    let ready: Option<DateTime<Utc>> = if source == Level::Minute {
        Some(now - chrono::Duration::seconds(grace_secs))
    } else {
        source_state.get(1)
    };
    let Some(ready) = ready else {
        return Ok(None);
    };
    let start = match done_to {
        Some(t) => t,
        None => {
            // First run: start at the bucket holding the oldest source data.
            let origin: Option<DateTime<Utc>> = if source == Level::Minute {
                tx.query_one("SELECT min(minute) FROM flow_totals", &[])
                    .await?
                    .get(0)
            } else {
                source_state.get(0)
            };
            let Some(origin) = origin else {
                return Ok(None);
            };
            settings.bucket(&tx, level, origin).await?
        }
    };
    // The chunk ends after chunk_buckets() buckets, and never past the last complete
    // bucket (the start of the bucket `ready` falls in).
    let row = tx
        .query_one(
            "SELECT least(
                 flowstage_bucket_end($1, flowstage_bucket($1, $2, $4, $5, $6), $4, $7),
                 flowstage_bucket($1, $3, $4, $5, $6)),
                 flowstage_bucket($1, $3, $4, $5, $6)",
            &[
                &level.as_str(),
                &start,
                &ready,
                &settings.timezone,
                &i32::from(settings.week_start),
                &settings.hour_offset_secs,
                &level.chunk_buckets(),
            ],
        )
        .await?;
    let mut end: DateTime<Utc> = row.get(0);
    let last_complete: DateTime<Utc> = row.get(1);
    if end <= start {
        return Ok(None);
    }
    // Skip over a gap without source data in one step: catching up after a long
    // outage must not take a transaction per empty chunk.
    let next_data: Option<DateTime<Utc>> = tx
        .query_one(
            &format!(
                "SELECT min({time}) FROM {table} WHERE {time} >= $1",
                time = source.time_column(),
                table = source.table(Kind::Totals)
            ),
            &[&start],
        )
        .await?
        .get(0);
    match next_data {
        None => end = end.max(last_complete),
        Some(t) if t >= end => {
            let bucket = settings.bucket(&tx, level, t).await?;
            end = end.max(bucket.min(last_complete));
        }
        Some(_) => {}
    }
    let rows = roll_range(&tx, settings, level, start, end).await?;
    let buckets: i64 = tx
        .query_one(
            "SELECT count(*) FROM flowstage_buckets($1, $2, $3, $4, $5, $6)",
            &[
                &level.as_str(),
                &start,
                &end,
                &settings.timezone,
                &i32::from(settings.week_start),
                &settings.hour_offset_secs,
            ],
        )
        .await?
        .get(0);
    tx.execute(
        "UPDATE rollup_levels SET done_from = coalesce(done_from, $2), done_to = $3, updated_at = now()
         WHERE level = $1",
        &[&level.as_str(), &start, &end],
    )
    .await?;
    tx.commit().await?;
    tracing::debug!(level = level.as_str(), %start, %end, rows, "rolled up");
    Ok(Some(ChunkDone { buckets, rows }))
}

/// Recompute a few dirty buckets of a level; None when there are none left.
async fn redo_dirty_chunk(
    client: &mut Client,
    settings: &Settings,
    level: Level,
) -> anyhow::Result<Option<ChunkDone>> {
    let tx = client.transaction().await?;
    tx.query_one(
        "SELECT 1 FROM rollup_levels WHERE level = $1 FOR UPDATE",
        &[&level.as_str()],
    )
    .await?;
    let dirty: Vec<DateTime<Utc>> = tx
        .query(
            "SELECT bucket FROM rollup_dirty WHERE level = $1 ORDER BY bucket LIMIT $2",
            &[&level.as_str(), &i64::from(level.chunk_buckets())],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if dirty.is_empty() {
        return Ok(None);
    }
    let source = level.source();
    let source_state = tx
        .query_one(
            "SELECT horizon, done_from FROM rollup_levels WHERE level = $1",
            &[&source.as_str()],
        )
        .await?;
    let source_horizon: Option<DateTime<Utc>> = source_state.get(0);
    let mut done = ChunkDone {
        buckets: 0,
        rows: 0,
    };
    for bucket in dirty {
        tx.execute(
            "DELETE FROM rollup_dirty WHERE level = $1 AND bucket = $2",
            &[&level.as_str(), &bucket],
        )
        .await?;
        let end: DateTime<Utc> = tx
            .query_one(
                "SELECT flowstage_bucket_end($1, $2, $3)",
                &[&level.as_str(), &bucket, &settings.timezone],
            )
            .await?
            .get(0);
        if source_horizon.is_some_and(|h| bucket < h) {
            // Its source is partly purged: recomputing would lose what only the
            // rollup still holds.
            tracing::warn!(level = level.as_str(), %bucket, "not recomputed: its source data has been purged");
            continue;
        }
        for kind in Kind::ALL {
            tx.execute(
                &format!(
                    "DELETE FROM {} WHERE bucket >= $1 AND bucket < $2",
                    level.table(kind)
                ),
                &[&bucket, &end],
            )
            .await?;
        }
        done.rows += roll_range(&tx, settings, level, bucket, end).await?;
        done.buckets += 1;
        for consumer in level.consumers() {
            tx.execute(
                "INSERT INTO rollup_dirty (level, bucket)
                 SELECT $1, flowstage_bucket($1, $2, $3, $4, $5) FROM rollup_levels
                 WHERE level = $1 AND done_to > $2
                 ON CONFLICT DO NOTHING",
                &[
                    &consumer.as_str(),
                    &bucket,
                    &settings.timezone,
                    &i32::from(settings.week_start),
                    &settings.hour_offset_secs,
                ],
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(Some(done))
}

/// One partition period that retention removes (or keeps, with the reason).
#[derive(Debug, Clone, Serialize)]
pub struct PurgeItem {
    pub level: String,
    /// The partitions' common suffix (`20261127`, `202609`, `2024`).
    pub period: String,
    /// The end of the period: everything in it is older than this.
    pub ends: String,
    pub dropped: bool,
    /// Why a period past its retention is kept.
    pub kept_because: Option<String>,
}

/// Drop the partitions whose whole period lies beyond their level's retention, but
/// only once the next level has rolled them up. `now` is injectable for tests.
pub async fn purge(
    client: &mut Client,
    retention: &RetentionConfig,
    now: DateTime<Utc>,
    dry_run: bool,
) -> anyhow::Result<Vec<PurgeItem>> {
    take_run_lock(client).await?;
    let result = purge_locked(client, retention, now, dry_run).await;
    release_run_lock(client).await;
    result
}

async fn purge_locked(
    client: &mut Client,
    retention: &RetentionConfig,
    now: DateTime<Utc>,
    dry_run: bool,
) -> anyhow::Result<Vec<PurgeItem>> {
    let mut items = Vec::new();
    let states: Vec<(String, Option<DateTime<Utc>>)> = client
        .query("SELECT level, done_to FROM rollup_levels", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let done_to = |l: Level| {
        states
            .iter()
            .find(|(name, _)| name == l.as_str())
            .and_then(|s| s.1)
    };
    for level in std::iter::once(Level::Minute).chain(Level::ROLLUPS) {
        let Some(days) = level.retention_days(retention) else {
            continue;
        };
        let cutoff = now - chrono::Duration::days(i64::from(days));
        let parent = level.table(Kind::Totals);
        let prefix = format!("{parent}_");
        let mut periods: Vec<(String, DateTime<Utc>)> = client
            .query(
                "SELECT c.relname::text FROM pg_inherits i
                 JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
                 WHERE p.relname = $1",
                &[&parent],
            )
            .await?
            .iter()
            .filter_map(|r| {
                let name: String = r.get(0);
                let suffix = name.strip_prefix(&prefix)?.to_string();
                let end = level.partition_end(&suffix)?;
                Some((suffix, end))
            })
            .filter(|(_, end)| *end <= cutoff)
            .collect();
        periods.sort();
        for (period, end) in periods {
            // Not rolled up yet by every level computed from this one: keep it.
            let blocker = level
                .consumers()
                .iter()
                .find(|c| done_to(**c).is_none_or(|t| t < end));
            let mut item = PurgeItem {
                level: level.as_str().into(),
                period: period.clone(),
                ends: end.to_rfc3339(),
                dropped: false,
                kept_because: blocker.map(|c| format!("not rolled up to {} yet", c.as_str())),
            };
            if blocker.is_none() && !dry_run {
                let tx = client.transaction().await?;
                let mut sql = String::new();
                for kind in Kind::ALL {
                    let _ = writeln!(sql, "DROP TABLE IF EXISTS {}_{period};", level.table(kind));
                }
                tx.batch_execute(&sql).await?;
                // What is left of the level starts at its first whole bucket after
                // the horizon.
                tx.execute(
                    "UPDATE rollup_levels l SET horizon = greatest(l.horizon, $2),
                         done_from = CASE WHEN l.done_from IS NULL OR l.done_from >= $2 THEN l.done_from
                             ELSE (SELECT CASE WHEN b = $2 THEN b ELSE flowstage_bucket_end(l.level, b, s.timezone) END
                                   FROM rollup_settings s,
                                        flowstage_bucket(l.level, $2, s.timezone, s.week_start, s.hour_offset_secs) b)
                             END,
                         updated_at = now()
                     WHERE l.level = $1",
                    &[&level.as_str(), &end],
                )
                .await?;
                if level == Level::Minute {
                    tx.execute("DELETE FROM ingest_batches WHERE written_at < $1", &[&end])
                        .await?;
                }
                tx.commit().await?;
                item.dropped = true;
            }
            items.push(item);
        }
    }
    if !dry_run {
        client
            .execute("DELETE FROM web_sessions WHERE expires_at < $1", &[&now])
            .await?;
        // Exporter health and device counters are kept as long as five-minute
        // buckets. Each exporter's newest health row stays, so an exporter silent for
        // longer is still known to be silent.
        let cutoff = now - chrono::Duration::days(i64::from(retention.five_minute_days));
        client
            .execute(
                "DELETE FROM exporter_health h WHERE h.minute < $1
                   AND h.minute < (SELECT max(x.minute) FROM exporter_health x WHERE x.exporter_id = h.exporter_id)",
                &[&cutoff],
            )
            .await?;
        client
            .execute("DELETE FROM interface_counters WHERE time < $1", &[&cutoff])
            .await?;
    }
    Ok(items)
}

/// A stretch of a report's period read from one level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub level: Level,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// Where a report reads its period from.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The period actually covered: the one asked for, widened to whole buckets where
    /// the finer data has been purged.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub segments: Vec<Segment>,
    pub settings: Option<Settings>,
}

#[derive(Debug, Clone, Copy)]
struct LevelState {
    level: Level,
    done_from: Option<DateTime<Utc>>,
    done_to: Option<DateTime<Utc>>,
    horizon: Option<DateTime<Utc>>,
    /// The start of the bucket holding `from`, and of the next one.
    from_floor: Option<DateTime<Utc>>,
    from_ceil: Option<DateTime<Utc>>,
    to_floor: Option<DateTime<Utc>>,
    to_ceil: Option<DateTime<Utc>>,
}

impl LevelState {
    /// The first bucket boundary at or after `from`.
    fn ceil_from(&self, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.from_floor == Some(from) {
            Some(from)
        } else {
            self.from_ceil
        }
    }

    fn covers(&self, t: DateTime<Utc>) -> bool {
        matches!((self.done_from, self.done_to), (Some(a), Some(b)) if a <= t && t < b)
    }
}

impl Plan {
    /// Minutes only: for a database without the rollup tables yet.
    pub fn minutes(from: DateTime<Utc>, to: DateTime<Utc>) -> Plan {
        Plan {
            from,
            to,
            segments: vec![Segment {
                level: Level::Minute,
                from,
                to,
            }],
            settings: None,
        }
    }
}

/// The coarsest level whose buckets fit in a graph step of `step_secs`.
pub fn coarsest_for_step(step_secs: i64) -> Level {
    match step_secs {
        s if s >= 7 * 86_400 && s % (7 * 86_400) == 0 => Level::Week,
        s if s >= 86_400 && s % 86_400 == 0 => Level::Day,
        s if s >= 3600 && s % 3600 == 0 => Level::Hour,
        s if s >= 300 && s % 300 == 0 => Level::FiveMin,
        _ => Level::Minute,
    }
}

/// Plan a report over [from, to): the coarsest rolled-up buckets that fit inside the
/// period, finer ones at its edges, minutes for the rest. `coarsest` bounds the
/// levels used (a graph with hourly steps cannot read days).
pub async fn plan(
    client: &Client,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    coarsest: Level,
) -> anyhow::Result<Plan> {
    let first = plan_once(client, from, to, coarsest).await?;
    if (first.from, first.to) == (from, to) {
        return Ok(first);
    }
    // Widened over purged minutes: plan the wider period with its own bucket edges.
    plan_once(client, first.from, first.to, coarsest).await
}

async fn plan_once(
    client: &Client,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    coarsest: Level,
) -> anyhow::Result<Plan> {
    let rows = client
        .query(
            "SELECT l.level, l.done_from, l.done_to, l.horizon,
                    ff, flowstage_bucket_end(l.level, ff, s.timezone),
                    tf, flowstage_bucket_end(l.level, tf, s.timezone),
                    s.timezone, s.week_start, s.hour_offset_secs, s.top_n
             FROM rollup_levels l
             LEFT JOIN rollup_settings s ON true
             LEFT JOIN LATERAL (SELECT flowstage_bucket(l.level, $1, s.timezone, s.week_start, s.hour_offset_secs) AS ff,
                                       flowstage_bucket(l.level, $2, s.timezone, s.week_start, s.hour_offset_secs) AS tf) b ON true",
            &[&from, &to],
        )
        .await
        .context("reading the rollup state")?;
    let mut settings = None;
    let mut states = Vec::new();
    for r in &rows {
        let Some(level) = Level::parse(r.get::<_, &str>(0)) else {
            continue;
        };
        if let Some(timezone) = r.get::<_, Option<String>>(8) {
            settings = Some(Settings {
                timezone,
                week_start: r.get(9),
                hour_offset_secs: r.get(10),
                top_n: r.get(11),
            });
        }
        states.push(LevelState {
            level,
            done_from: r.get(1),
            done_to: r.get(2),
            horizon: r.get(3),
            from_floor: r.get(4),
            from_ceil: r.get(5),
            to_floor: r.get(6),
            to_ceil: r.get(7),
        });
    }
    Ok(plan_from_states(from, to, coarsest, &states, settings))
}

fn plan_from_states(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    coarsest: Level,
    states: &[LevelState],
    settings: Option<Settings>,
) -> Plan {
    let state = |l: Level| states.iter().find(|s| s.level == l);
    let usable: Vec<&LevelState> = Level::ROLLUPS
        .iter()
        .filter(|l| **l <= coarsest)
        .filter_map(|l| state(*l))
        .collect();
    // Where minutes have been purged, widen the period to the finest rollup bucket
    // still held, so the report says which period its numbers are for.
    let minute_horizon = state(Level::Minute).and_then(|s| s.horizon);
    let (mut from, mut to) = (from, to);
    // The finest level still holding a moment (not purged there); if it has buckets
    // there, the period is widened to that level's bucket edge. Before a level's first
    // bucket there was no traffic at all, so nothing needs widening.
    let holder = |t: DateTime<Utc>| {
        usable
            .iter()
            .find(|s| s.horizon.is_none_or(|h| t >= h))
            .filter(|s| s.covers(t))
    };
    if minute_horizon.is_some_and(|h| from < h) {
        if let Some(floor) = holder(from).and_then(|s| s.from_floor) {
            from = floor;
        }
    }
    if minute_horizon.is_some_and(|h| to < h) {
        if let Some(s) = holder(to) {
            if s.to_floor != Some(to) {
                to = s.to_ceil.unwrap_or(to);
            }
        }
    }
    let chain = |levels: &[Level]| -> Vec<LevelState> {
        levels
            .iter()
            .filter_map(|l| usable.iter().find(|s| s.level == *l).map(|s| **s))
            .rev()
            .collect()
    };
    // Weeks do not tile months: plan with each and keep the cheaper.
    let by_month = tile(
        from,
        to,
        &chain(&[
            Level::FiveMin,
            Level::Hour,
            Level::Day,
            Level::Month,
            Level::Year,
        ]),
    );
    let by_week = tile(
        from,
        to,
        &chain(&[Level::FiveMin, Level::Hour, Level::Day, Level::Week]),
    );
    let cost = |segments: &[Segment]| -> i64 {
        segments
            .iter()
            .map(|s| (s.to - s.from).num_seconds() / s.level.nominal_secs() + 1)
            .sum()
    };
    let mut segments = if cost(&by_week) < cost(&by_month) {
        by_week
    } else {
        by_month
    };
    // Purged minutes hold nothing: do not read them.
    if let Some(h) = minute_horizon {
        segments.retain(|s| s.level != Level::Minute || s.to > h);
        for s in segments.iter_mut().filter(|s| s.level == Level::Minute) {
            s.from = s.from.max(h);
        }
    }
    Plan {
        from,
        to,
        segments,
        settings,
    }
}

/// Cover [from, to) with `chain` (coarsest first), then minutes.
fn tile(from: DateTime<Utc>, to: DateTime<Utc>, chain: &[LevelState]) -> Vec<Segment> {
    fn cover(
        lo: DateTime<Utc>,
        hi: DateTime<Utc>,
        period: (DateTime<Utc>, DateTime<Utc>),
        chain: &[LevelState],
        out: &mut Vec<Segment>,
    ) {
        if lo >= hi {
            return;
        }
        let Some((level, finer)) = chain.split_first() else {
            out.push(Segment {
                level: Level::Minute,
                from: lo,
                to: hi,
            });
            return;
        };
        // lo and hi are the period's ends or boundaries of a coarser level, which are
        // boundaries of this one too.
        let a = if lo == period.0 {
            level.ceil_from(lo)
        } else {
            Some(lo)
        };
        let b = if hi == period.1 {
            level.to_floor
        } else {
            Some(hi)
        };
        let range = match (a, b, level.done_from, level.done_to) {
            (Some(a), Some(b), Some(df), Some(dt)) => Some((a.max(df), b.min(dt))),
            _ => None,
        };
        match range {
            Some((a, b)) if a < b && a >= lo && b <= hi => {
                cover(lo, a, period, finer, out);
                out.push(Segment {
                    level: level.level,
                    from: a,
                    to: b,
                });
                cover(b, hi, period, finer, out);
            }
            _ => cover(lo, hi, period, finer, out),
        }
    }
    let mut out = Vec::new();
    cover(from, to, (from, to), chain, &mut out);
    out
}

/// The SQL of a plan's rows of one kind: a `UNION ALL` of one branch per segment, each
/// exposing the minute table's columns (the bucket start as `minute`). Parameters are
/// appended to `params` as the branches need them.
pub fn source_sql(
    plan: &Plan,
    kind: Kind,
    params: &mut Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>,
) -> String {
    let mut branches = Vec::new();
    for s in &plan.segments {
        params.push(Box::new(s.from));
        let lo = params.len();
        params.push(Box::new(s.to));
        let hi = params.len();
        let time = s.level.time_column();
        branches.push(format!(
            "SELECT {time} AS minute, {} FROM {} WHERE {time} >= ${lo} AND {time} < ${hi}",
            kind.columns(),
            s.level.table(kind)
        ));
    }
    if branches.is_empty() {
        // An empty period: no rows, the right columns.
        branches.push(format!(
            "SELECT minute, {} FROM {} WHERE false",
            kind.columns(),
            kind.base()
        ));
    }
    format!("({})", branches.join(" UNION ALL "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .expect("test time")
    }

    #[test]
    fn partition_ends_follow_their_names() {
        assert_eq!(
            Level::Minute.partition_end("20261231"),
            Some(t("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            Level::Hour.partition_end("202612"),
            Some(t("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            Level::Hour.partition_end("202602"),
            Some(t("2026-03-01T00:00:00Z"))
        );
        assert_eq!(
            Level::Day.partition_end("2026"),
            Some(t("2027-01-01T00:00:00Z"))
        );
        assert_eq!(Level::Hour.partition_end("2026"), None);
        assert_eq!(Level::Minute.partition_end("2026x231"), None);
    }

    /// UTC state for [from, to) with hours and days rolled up over [done_from, done_to).
    fn utc_state(level: Level, from: &str, to: &str, done: Option<(&str, &str)>) -> LevelState {
        let secs = level.nominal_secs();
        let floor = |x: DateTime<Utc>| {
            DateTime::from_timestamp(x.timestamp().div_euclid(secs) * secs, 0).expect("time")
        };
        let (from, to) = (t(from), t(to));
        LevelState {
            level,
            done_from: done.map(|d| t(d.0)),
            done_to: done.map(|d| t(d.1)),
            horizon: None,
            from_floor: Some(floor(from)),
            from_ceil: Some(floor(from) + chrono::Duration::seconds(secs)),
            to_floor: Some(floor(to)),
            to_ceil: Some(floor(to) + chrono::Duration::seconds(secs)),
        }
    }

    #[test]
    fn a_plan_uses_days_inside_hours_at_the_edges_and_minutes_at_the_ends() {
        let (from, to) = ("2026-11-01T10:30:00Z", "2026-11-04T05:10:00Z");
        let states = vec![
            utc_state(
                Level::Hour,
                from,
                to,
                Some(("2026-10-01T00:00:00Z", "2026-11-04T04:00:00Z")),
            ),
            utc_state(
                Level::Day,
                from,
                to,
                Some(("2026-10-01T00:00:00Z", "2026-11-04T00:00:00Z")),
            ),
        ];
        let plan = plan_from_states(t(from), t(to), Level::Year, &states, None);
        let got: Vec<(Level, String, String)> = plan
            .segments
            .iter()
            .map(|s| (s.level, s.from.to_rfc3339(), s.to.to_rfc3339()))
            .collect();
        let want = [
            (
                Level::Minute,
                "2026-11-01T10:30:00+00:00",
                "2026-11-01T11:00:00+00:00",
            ),
            (
                Level::Hour,
                "2026-11-01T11:00:00+00:00",
                "2026-11-02T00:00:00+00:00",
            ),
            (
                Level::Day,
                "2026-11-02T00:00:00+00:00",
                "2026-11-04T00:00:00+00:00",
            ),
            (
                Level::Hour,
                "2026-11-04T00:00:00+00:00",
                "2026-11-04T04:00:00+00:00",
            ),
            (
                Level::Minute,
                "2026-11-04T04:00:00+00:00",
                "2026-11-04T05:10:00+00:00",
            ),
        ];
        assert_eq!(
            got,
            want.iter()
                .map(|(l, a, b)| (*l, a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        );
        // Graphs with hourly steps stop at hours.
        let hourly = plan_from_states(t(from), t(to), Level::Hour, &states, None);
        assert!(hourly.segments.iter().all(|s| s.level <= Level::Hour));
        assert_eq!(hourly.segments.len(), 3);
    }

    #[test]
    fn nothing_rolled_up_reads_minutes() {
        let (from, to) = ("2026-11-01T10:30:00Z", "2026-11-04T05:10:00Z");
        let states = vec![utc_state(Level::Hour, from, to, None)];
        let plan = plan_from_states(t(from), t(to), Level::Year, &states, None);
        assert_eq!(
            plan.segments,
            vec![Segment {
                level: Level::Minute,
                from: t(from),
                to: t(to)
            }]
        );
    }
}
