//! Command-line glue shared by the binaries: logging setup and the collector's
//! subcommands (`run`, `report`, `gen`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::collector::batch::Direction;
use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::encode::EncodeProtocol;
use crate::report::{ReportBy, ReportFormat, ReportQuery};

/// Log to stderr (colours only on a terminal); `RUST_LOG` overrides the default `info`.
pub fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

#[derive(Debug, Parser)]
#[command(
    name = "flowstage-collector",
    version,
    about = "NetFlow v5/v9 and IPFIX collector and data tools"
)]
pub struct CollectorCli {
    #[command(subcommand)]
    pub command: CollectorCommand,
}

#[derive(Debug, Subcommand)]
pub enum CollectorCommand {
    /// Receive flows and aggregate them into PostgreSQL (the daemon).
    Run(RunArgs),
    /// Report totals or top-N tables from the aggregates.
    Report(ReportArgs),
    /// Send deterministic test traffic to a loopback collector and write the expected totals.
    Gen(GenArgs),
    /// Roll the minute aggregates up to hours, days, weeks, months and years (what the
    /// timer runs every five minutes; catches up after any gap).
    Rollup(RollupArgs),
    /// Drop the partitions retention no longer keeps (what the daily timer runs).
    Purge(PurgeArgs),
    /// Raw flows from the archive, listed or aggregated, with an nfdump-like filter.
    Query(QueryArgs),
    /// Poll the exporters' SNMP agents for names, speeds and counters, look up reverse
    /// DNS names when enabled, and re-pick the shown names (what the timer runs).
    Poll(PollArgs),
    /// Evaluate the alert rules once: start and clear alerts, mail each start and
    /// clear once (what the timer runs every minute), and list the active ones.
    Alerts(AlertsArgs),
    /// The daily summary (top interfaces and talkers, exporter health, alerts) of the
    /// last 24 hours, printed or mailed to the admin (what the daily timer runs).
    Summary(SummaryArgs),
}

#[derive(Debug, Args)]
pub struct AlertsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Evaluate and record, but send no mail.
    #[arg(long)]
    pub no_mail: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Evaluate as if it were this time (tests and replays).
    #[arg(long, hide = true)]
    pub now: Option<String>,
}

#[derive(Debug, Args)]
pub struct SummaryArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Mail it to the admin instead of printing it.
    #[arg(long)]
    pub mail: bool,
    /// End of the 24 hours (default now).
    #[arg(long, hide = true)]
    pub now: Option<String>,
}

#[derive(Debug, Args)]
pub struct PollArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The archive's data directory, overriding collector.data_dir.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Start (inclusive), of the flows' end times: RFC 3339, YYYY-MM-DD[ HH:MM], now, -1h.
    #[arg(long, default_value = "-1h", allow_hyphen_values = true)]
    pub from: String,
    /// End (exclusive).
    #[arg(long, default_value = "now", allow_hyphen_values = true)]
    pub to: String,
    /// Aggregate by this key (as `report --by`); without it, flows are listed.
    #[arg(long, value_enum)]
    pub by: Option<ReportBy>,
    /// Rows shown when aggregating; the rest is summed into "other".
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Flows shown when listing.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Which interface `--by interface` counts: the input (in) or output (out) one.
    #[arg(long, value_enum, default_value = "in")]
    pub direction: DirectionArg,
    #[arg(long, value_enum, default_value = "text")]
    pub format: ReportFormat,
    /// Threads reading the archive. Default: one per CPU.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print files, row groups and flows read, and the scan rate, on stderr.
    #[arg(long)]
    pub stats: bool,
    /// The filter, e.g. `src ip 10.0.0.1 and dst port 443` (see docs/archive.md).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub filter: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RollupArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Only this level (repeatable); default all, each after its source.
    #[arg(long = "level", value_enum)]
    pub levels: Vec<crate::rollup::Level>,
    /// With --to: recompute the buckets of this period that were already rolled up.
    #[arg(long, requires = "to")]
    pub from: Option<String>,
    #[arg(long, requires = "from")]
    pub to: Option<String>,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
    /// Run as if it were this time (tests and replays).
    #[arg(long, hide = true)]
    pub now: Option<String>,
    /// Stop with an error after this many chunks (tests of interrupted runs).
    #[arg(long, hide = true)]
    pub stop_after_chunks: Option<usize>,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Show what would be dropped, drop nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Run as if it were this time (tests).
    #[arg(long, hide = true)]
    pub now: Option<String>,
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Configuration file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Database URL (libpq style), overriding the configuration.
    #[arg(long)]
    pub database: Option<String>,
}

impl CommonArgs {
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut config = Config::load_or_default(&self.config)?;
        if let Some(url) = &self.database {
            config.database_url = url.clone();
        }
        Ok(config)
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// UDP address to listen on (repeatable), replacing the configured ones.
    #[arg(long)]
    pub listen: Vec<String>,
    /// UDP address to listen on for sFlow (repeatable), replacing the configured ones.
    #[arg(long)]
    pub sflow_listen: Vec<String>,
    /// Open no sFlow sockets (collector.sflow_listen = []).
    #[arg(long, conflicts_with = "sflow_listen")]
    pub no_sflow: bool,
    /// Data directory (spool, archive).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Serve Prometheus metrics on ADDRESS:PORT.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Decode/aggregate threads.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Seconds a minute bucket stays open after the minute ends.
    #[arg(long)]
    pub flush_grace: Option<u64>,
    /// Seconds between STAT log lines (0: off).
    #[arg(long)]
    pub stats_interval: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Start (inclusive): RFC 3339, YYYY-MM-DD[ HH:MM], now, or -1h style.
    #[arg(long, default_value = "-1h", allow_hyphen_values = true)]
    pub from: String,
    /// End (exclusive).
    #[arg(long, default_value = "now", allow_hyphen_values = true)]
    pub to: String,
    /// What the rows are keyed by.
    #[arg(long, value_enum, default_value = "total")]
    pub by: ReportBy,
    /// Exporter name or address.
    #[arg(long)]
    pub exporter: Option<String>,
    /// Interface ifIndex or name.
    #[arg(long)]
    pub interface: Option<String>,
    /// Only the interfaces of this interface group.
    #[arg(long)]
    pub group: Option<String>,
    /// Choose the top N by total bytes, by their busiest step, or by the 95th
    /// percentile of their steps.
    #[arg(long, value_enum, default_value = "total")]
    pub rank: crate::report::Rank,
    /// Count flows on their input (in) or output (out) interface.
    #[arg(long, value_enum, default_value = "in")]
    pub direction: DirectionArg,
    /// Rows to show; the rest is summed into one "other" row.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Output format; JSON keys are plain strings.
    #[arg(long, value_enum, default_value = "text")]
    pub format: ReportFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DirectionArg {
    In,
    Out,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum GenProtocol {
    V5,
    V9,
    Ipfix,
    /// sFlow v5: one raw-header flow sample per flow (send to the sFlow port).
    Sflow,
}

#[derive(Debug, Args)]
pub struct GenArgs {
    /// Collector address (loopback only).
    #[arg(long, default_value = "127.0.0.1:2055")]
    pub target: SocketAddr,
    /// Export protocol.
    #[arg(long, value_enum, default_value = "v5")]
    pub protocol: GenProtocol,
    /// Export IPv6 flows (v9, IPFIX and sFlow).
    #[arg(long)]
    pub ipv6: bool,
    /// Random seed: the same seed sends the same flows.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Flows to send; the generator stops after them.
    #[arg(long, default_value_t = 10_000)]
    pub flows: u64,
    /// Flows per second (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Exporters, sending from 127.0.0.<first-source>, <first-source + 1>, ...
    #[arg(long, default_value_t = 1)]
    pub exporters: u8,
    /// Last octet of the first exporter's 127.0.0.x source address.
    #[arg(long, default_value_t = 10)]
    pub first_source: u8,
    /// v5 header sampling field: mode in the top two bits, interval below (0x4064 = 1 in
    /// 100); 0 means unsampled.
    #[arg(long, default_value_t = 0)]
    pub sampling: u16,
    /// Spread flow end times over this many seconds before now.
    #[arg(long, default_value_t = 30)]
    pub spread: u64,
    /// Seconds before now that the newest flows ended.
    #[arg(long, default_value_t = 1)]
    pub age: u64,
    /// Write the expected totals here as JSON (default: stdout).
    #[arg(long)]
    pub expected: Option<PathBuf>,
}

/// `--now` (tests and replays) or the clock.
fn now_arg(now: Option<&str>) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    match now {
        Some(t) => crate::timespec::parse_time(t, chrono::Utc::now()).context("--now"),
        None => Ok(chrono::Utc::now()),
    }
}

/// Run `job` on a migrated database connection, on a runtime of its own (the data
/// tools are one-shot commands).
fn with_database<T>(
    url: &str,
    job: impl AsyncFnOnce(&mut tokio_postgres::Client) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut client = crate::db::connect(url).await?;
            crate::db::migrate(&mut client).await?;
            job(&mut client).await
        })
}

pub fn collector_main(cli: CollectorCli) -> anyhow::Result<()> {
    match cli.command {
        CollectorCommand::Run(a) => {
            let mut config = a.common.load()?;
            let c = &mut config.collector;
            if !a.listen.is_empty() {
                c.listen = a
                    .listen
                    .iter()
                    .map(|s| crate::collector::parse_listen(s))
                    .collect::<Result<_, _>>()?;
            }
            if !a.sflow_listen.is_empty() {
                c.sflow_listen = a
                    .sflow_listen
                    .iter()
                    .map(|s| crate::collector::parse_listen(s))
                    .collect::<Result<_, _>>()?;
            }
            if a.no_sflow {
                c.sflow_listen.clear();
            }
            if let Some(d) = a.data_dir {
                c.data_dir = d;
            }
            if a.metrics.is_some() {
                c.metrics = a.metrics;
            }
            if let Some(w) = a.workers {
                anyhow::ensure!(
                    (1..=256).contains(&w),
                    "--workers {w}: must be between 1 and 256"
                );
                c.workers = w;
            }
            if let Some(g) = a.flush_grace {
                c.flush_grace_secs = g;
            }
            if let Some(s) = a.stats_interval {
                c.stats_interval_secs = s;
            }
            let path = a.common.config.exists().then_some(a.common.config.clone());
            crate::collector::run(config, path)
        }
        CollectorCommand::Report(a) => {
            let config = a.common.load()?;
            let now = chrono::Utc::now();
            let query = ReportQuery {
                visible_to: None,
                from: crate::timespec::parse_time(&a.from, now).context("--from")?,
                to: crate::timespec::parse_time(&a.to, now).context("--to")?,
                by: a.by,
                exporter: a.exporter,
                interface: a.interface,
                group: a.group,
                rank: a.rank,
                direction: match a.direction {
                    DirectionArg::In => Direction::In,
                    DirectionArg::Out => Direction::Out,
                },
                top: a.top,
            };
            anyhow::ensure!(query.from < query.to, "--from must be before --to");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let text = rt.block_on(async {
                let client = crate::db::connect(&config.database_url).await?;
                let report = crate::report::run(&client, &query).await?;
                report.render(a.format)
            })?;
            print!("{text}");
            Ok(())
        }
        CollectorCommand::Rollup(a) => {
            let config = a.common.load()?;
            let now = now_arg(a.now.as_deref())?;
            let redo = match (&a.from, &a.to) {
                (Some(f), Some(t)) => {
                    let from = crate::timespec::parse_time(f, now).context("--from")?;
                    let to = crate::timespec::parse_time(t, now).context("--to")?;
                    anyhow::ensure!(from < to, "--from must be before --to");
                    Some((from, to))
                }
                _ => None,
            };
            let options = crate::rollup::RollupOptions {
                levels: a.levels.clone(),
                redo,
                now,
                grace_secs: i64::try_from(config.collector.flush_grace_secs)
                    .unwrap_or(i64::MAX / 2)
                    .saturating_add(120),
                stop_after_chunks: a.stop_after_chunks,
            };
            let summary = with_database(&config.database_url, async |client| {
                let settings = crate::rollup::Settings::resolve(
                    client,
                    &config.history,
                    config.collector.top_n,
                )
                .await?;
                crate::rollup::rollup(client, &settings, &options).await
            })?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                for s in &summary {
                    println!(
                        "{:<6} {:>6} new buckets, {:>4} recomputed, {:>9} rows; rolled up to {}",
                        s.level,
                        s.new_buckets,
                        s.redone_buckets,
                        s.rows_written,
                        s.done_to.as_deref().unwrap_or("(nothing yet)")
                    );
                }
            }
            Ok(())
        }
        CollectorCommand::Purge(a) => {
            let config = a.common.load()?;
            let now = now_arg(a.now.as_deref())?;
            let mut items = with_database(&config.database_url, async |client| {
                crate::rollup::purge(client, &config.retention, now, a.dry_run).await
            })?;
            // The archive's age and size caps, as the collector applies at each rotation
            // (here also while it is stopped).
            let window = i64::try_from(config.collector.archive_rotate_secs).unwrap_or(300);
            let removed = crate::archive::enforce_caps(
                &crate::archive::root(&config.collector.data_dir),
                config.collector.archive_max_bytes,
                now - chrono::Duration::days(i64::from(config.retention.raw_days)),
                window,
                a.dry_run,
            )?;
            items.extend(removed.into_iter().map(|f| crate::rollup::PurgeItem {
                level: "raw".into(),
                period: f.path.display().to_string(),
                ends: (f.window + chrono::Duration::seconds(window)).to_rfc3339(),
                dropped: !a.dry_run,
                kept_because: None,
            }));
            if a.json {
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else if items.is_empty() {
                println!("nothing is past its retention");
            } else {
                for i in &items {
                    let what = match (&i.kept_because, i.dropped, a.dry_run) {
                        (Some(why), _, _) => format!("kept: {why}"),
                        (None, true, _) => "dropped".to_string(),
                        (None, false, true) => "would be dropped".to_string(),
                        (None, false, false) => "not dropped".to_string(),
                    };
                    println!("{:<6} {:<8} (ends {})  {what}", i.level, i.period, i.ends);
                }
            }
            Ok(())
        }
        CollectorCommand::Poll(a) => {
            let config = a.common.load()?;
            // SNMP sessions keep 64 KiB datagram buffers on the stack.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_stack_size(8 << 20)
                .build()?;
            let summary = rt.block_on(crate::snmp::poll(&config, chrono::Utc::now()))?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                if summary.polls.is_empty() {
                    println!("no exporter is covered by an [[snmp.target]]");
                }
                for p in &summary.polls {
                    match &p.error {
                        None => println!(
                            "{:<39} ok: {} interface(s), {} with counters, sysName {}",
                            p.exporter,
                            p.interfaces,
                            p.counters,
                            p.sys_name.as_deref().unwrap_or("-")
                        ),
                        Some(e) => println!(
                            "{:<39} FAILED: {e}; {}",
                            p.exporter,
                            match &p.last_success {
                                Some(t) => format!("names of the poll at {t} kept"),
                                None => "never polled successfully".to_string(),
                            }
                        ),
                    }
                }
                if summary.dns_lookups > 0 {
                    println!("{} reverse DNS name(s) looked up", summary.dns_lookups);
                }
                println!("{} shown name(s) changed", summary.names_changed);
            }
            anyhow::ensure!(
                summary.failures() == 0,
                "{} of {} SNMP poll(s) failed",
                summary.failures(),
                summary.polls.len()
            );
            Ok(())
        }
        CollectorCommand::Alerts(a) => {
            let config = a.common.load()?;
            let now = now_arg(a.now.as_deref())?;
            let result = with_database(&config.database_url, async |client| {
                crate::alerts::evaluate(client, &config, now, !a.no_mail).await
            })?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                for x in &result.fired {
                    println!("STARTED  {}: {}", x.rule, x.message);
                }
                for x in &result.cleared {
                    println!("CLEARED  {}: {}", x.rule, x.subject);
                }
                if result.active.is_empty() {
                    println!("no active alerts");
                }
                for x in &result.active {
                    println!(
                        "active since {}  {}: {}",
                        x.started_at.format("%Y-%m-%d %H:%M"),
                        x.rule,
                        x.message
                    );
                }
                if result.mails_sent > 0 {
                    println!("{} mail(s) sent", result.mails_sent);
                }
            }
            anyhow::ensure!(
                result.mail_errors.is_empty(),
                "mail not sent (retried next run): {}",
                result.mail_errors.join("; ")
            );
            Ok(())
        }
        CollectorCommand::Summary(a) => {
            let config = a.common.load()?;
            let now = now_arg(a.now.as_deref())?;
            let message = with_database(&config.database_url, async |client| {
                crate::alerts::daily_summary(client, &config, now).await
            })?;
            if a.mail {
                if !config.alerts.mail || !config.alerts.daily_summary {
                    println!("alerts.mail or alerts.daily_summary is off: not mailed");
                    return Ok(());
                }
                crate::mail::send(&crate::mail::Transport::from_config(&config), &message)?;
                println!("mailed {}: {}", message.to, message.subject);
            } else {
                println!("Subject: {}\n\n{}", message.subject, message.body);
            }
            Ok(())
        }
        CollectorCommand::Query(a) => {
            let config = a.common.load()?;
            let now = chrono::Utc::now();
            let from = crate::timespec::parse_time(&a.from, now).context("--from")?;
            let to = crate::timespec::parse_time(&a.to, now).context("--to")?;
            anyhow::ensure!(from < to, "--from must be before --to");
            anyhow::ensure!(a.top >= 1, "--top {}: must be at least 1", a.top);
            let mut names: std::collections::HashMap<std::net::IpAddr, String> = config
                .exporters
                .iter()
                .filter_map(|e| e.name.clone().map(|n| (e.address, n)))
                .collect();
            // Names the database knows (registered exporters), when it can be reached.
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let url = config.database_url.clone();
                let known = rt.block_on(async move {
                    let client = tokio::time::timeout(
                        std::time::Duration::from_secs(3),
                        crate::db::connect(&url),
                    )
                    .await
                    .ok()?
                    .ok()?;
                    let rows = client
                        .query(
                            "SELECT address, name FROM exporters WHERE name IS NOT NULL",
                            &[],
                        )
                        .await
                        .ok()?;
                    Some(
                        rows.iter()
                            .map(|r| (r.get::<_, std::net::IpAddr>(0), r.get::<_, String>(1)))
                            .collect::<Vec<_>>(),
                    )
                });
                for (addr, name) in known.unwrap_or_default() {
                    names.entry(addr).or_insert(name);
                }
            }
            let text = a.filter.join(" ");
            let filter = crate::archive::filter::parse(&text, &|name| {
                names
                    .iter()
                    .find(|(_, n)| n.as_str() == name)
                    .map(|(a, _)| *a)
            })
            .map_err(|e| anyhow::anyhow!("{}", e.pointed(&text)))?;
            let data_dir = a
                .data_dir
                .clone()
                .unwrap_or(config.collector.data_dir.clone());
            let root = crate::archive::root(&data_dir);
            let files = crate::archive::query::files_for(
                &root,
                from,
                to,
                i64::try_from(config.collector.archive_rotate_secs).unwrap_or(300),
            )?;
            let options = crate::archive::query::QueryOptions {
                from,
                to,
                filter,
                by: a.by,
                top: a.top,
                limit: a.limit,
                direction: match a.direction {
                    DirectionArg::In => Direction::In,
                    DirectionArg::Out => Direction::Out,
                },
                threads: a
                    .threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                interfaces: None,
            };
            let started = std::time::Instant::now();
            let (result, stats) = crate::archive::query::run(&files, &options, &names)?;
            let secs = started.elapsed().as_secs_f64();
            if a.stats {
                eprintln!(
                    "{} files, {} row groups, {} flows read in {:.3} s ({:.1} M flows/s)",
                    stats.files,
                    stats.row_groups,
                    stats.flows_scanned,
                    secs,
                    stats.flows_scanned as f64 / secs.max(1e-9) / 1e6
                );
            }
            let out = match result {
                crate::archive::query::QueryResult::Report(r) => r.render(a.format)?,
                crate::archive::query::QueryResult::Flows { rows, matched } => {
                    crate::archive::query::render_flows(&rows, matched, a.format)?
                }
            };
            print!("{out}");
            Ok(())
        }
        CollectorCommand::Gen(a) => {
            let opts = crate::gen::GenOptions {
                protocol: match a.protocol {
                    GenProtocol::V5 => EncodeProtocol::V5,
                    GenProtocol::V9 => EncodeProtocol::V9,
                    GenProtocol::Ipfix => EncodeProtocol::Ipfix,
                    GenProtocol::Sflow => EncodeProtocol::Sflow,
                },
                ipv6: a.ipv6,
                seed: a.seed,
                flows: a.flows,
                rate: a.rate,
                exporters: a.exporters,
                first_source: a.first_source,
                target: a.target,
                sampling: a.sampling,
                spread_secs: a.spread,
                age_secs: a.age,
            };
            anyhow::ensure!(
                !(a.ipv6 && matches!(a.protocol, GenProtocol::V5)),
                "--ipv6 needs --protocol v9 or ipfix"
            );
            let started = std::time::Instant::now();
            let expected = crate::gen::run(&opts, |_| {})?;
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(
                flows = expected.total.flows,
                datagrams = expected.datagrams,
                seconds = format!("{secs:.3}"),
                rate = format!("{:.0}", expected.total.flows as f64 / secs.max(1e-9)),
                "generator done"
            );
            let json = serde_json::to_string_pretty(&expected)? + "\n";
            match a.expected {
                Some(p) => {
                    std::fs::write(&p, json).with_context(|| format!("writing {}", p.display()))?
                }
                None => print!("{json}"),
            }
            Ok(())
        }
    }
}
