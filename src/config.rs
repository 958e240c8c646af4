//! `/etc/flowstage/flowstage.toml`, read in two stages: [`RawConfig`] is exactly what
//! the file may say (unknown keys are errors), [`RawConfig::validate`] turns it into a
//! checked [`Config`]. Defaults are documented on each field and in
//! `provision/answers.example.toml`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::collector::worker::MAX_SAMPLING_RATE;
use serde::Deserialize;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/flowstage/flowstage.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{}{key} = {value:?}: {reason}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Invalid {
        key: String,
        value: String,
        reason: String,
        /// 1-based line of the key in the file, when the file is known.
        line: Option<usize>,
    },
}

fn invalid(key: impl Into<String>, value: impl ToString, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.to_string(),
        reason: reason.into(),
        line: None,
    }
}

impl ConfigError {
    /// The dotted key this error is about (`collector.listen`, `exporter[1].address`).
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    fn with_line_from(self, text: Option<&str>) -> ConfigError {
        match (self, text) {
            (
                ConfigError::Invalid {
                    key,
                    value,
                    reason,
                    line: None,
                },
                Some(text),
            ) => {
                let line = locate_key(text, &key);
                ConfigError::Invalid {
                    key,
                    value,
                    reason,
                    line,
                }
            }
            (other, _) => other,
        }
    }
}

/// The 1-based line where a dotted key (`collector.listen`, `exporter[1].address`) is set
/// in a TOML text, for error messages. A plain scan is enough: the configuration is flat
/// tables and one array of tables.
pub fn locate_key(text: &str, key: &str) -> Option<usize> {
    let (table, field) = key.rsplit_once('.').unwrap_or(("", key));
    let field = field.split('[').next().unwrap_or(field);
    let (table_name, wanted_index) = match table.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
        None => (table, None),
    };
    let mut current = String::new();
    let mut index_seen: Option<usize> = None;
    let mut table_line = None;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split(']').next()) {
            current = name.trim().to_string();
            if current == table_name {
                index_seen = Some(index_seen.map_or(0, |i| i + 1));
            }
            if current == table_name && index_seen == wanted_index {
                table_line = Some(n + 1);
            }
            continue;
        }
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            current = name.trim().to_string();
            if current == table_name && wanted_index.is_none() {
                table_line = Some(n + 1);
            }
            continue;
        }
        let in_table =
            current == table_name && (wanted_index.is_none() || index_seen == wanted_index);
        if in_table {
            if let Some((k, _)) = t.split_once('=') {
                if k.trim().trim_matches('"') == field {
                    return Some(n + 1);
                }
            }
        }
    }
    table_line
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The text this was parsed from, so validation errors can name a line.
    #[serde(skip)]
    pub source_text: Option<String>,
    #[serde(default)]
    pub site: RawSite,
    #[serde(default)]
    pub time: RawTime,
    #[serde(default)]
    pub mail: RawMail,
    #[serde(default)]
    pub database: RawDatabase,
    #[serde(default)]
    pub collector: RawCollector,
    #[serde(default)]
    pub retention: RawRetention,
    #[serde(default)]
    pub history: RawHistory,
    #[serde(default)]
    pub web: RawWeb,
    #[serde(default)]
    pub names: RawNames,
    #[serde(default)]
    pub snmp: RawSnmp,
    #[serde(default)]
    pub alerts: RawAlerts,
    /// Known exporters: names and per-exporter settings.
    #[serde(default, rename = "exporter")]
    pub exporters: Vec<RawExporter>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    /// Name of this appliance, shown in the web UI and in mail. Default: the host name.
    pub name: Option<String>,
    /// Where root's mail and alerts go. Default `root@localhost` (local mailbox).
    pub admin_email: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTime {
    /// `ntpsec`, `chrony`, or `none` (time is kept by something else). Default `ntpsec`,
    /// as the howto's ntp.
    pub daemon: Option<String>,
    /// Time servers or pools. Default the four `N.debian.pool.ntp.org` pools.
    pub servers: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMail {
    /// Smart host for outgoing mail, e.g. `[smtp.example.net]:587`. Default: none
    /// (postfix delivers directly, or locally only).
    pub relay_host: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    /// libpq-style URL. Default: the local socket, database and user `flowstage`.
    pub url: Option<String>,
    /// File holding the password (the installer's secrets file, mode 0600): either the
    /// bare password, or a TOML file with a `database_password` key.
    pub password_file: Option<PathBuf>,
    /// Major version of the local PostgreSQL the installer manages. Default: the one of
    /// the distribution (15 on Debian 12).
    pub postgresql_version: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// Days of minute buckets kept. Default 7.
    pub minute_days: Option<u32>,
    /// Days of five-minute buckets kept. Default 30.
    pub five_minute_days: Option<u32>,
    /// Days of hour buckets kept. Default 90.
    pub hour_days: Option<u32>,
    /// Days of day buckets kept. Default 730.
    pub day_days: Option<u32>,
    /// Days of week buckets kept. Default: forever.
    pub week_days: Option<u32>,
    /// Days of month buckets kept. Default: forever.
    pub month_days: Option<u32>,
    /// Days of year buckets kept. Default: forever.
    pub year_days: Option<u32>,
    /// Days of raw flow archive kept. Default 7.
    pub raw_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHistory {
    /// IANA time zone that days, weeks, months and years follow, in rollups and in the
    /// web UI, e.g. `Europe/Berlin`. Default `UTC`. Times are stored in UTC regardless.
    pub timezone: Option<String>,
    /// `monday` (ISO 8601 weeks, Stager's `YYYY-IW`) or `sunday`. Default `monday`.
    pub week_start: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    /// HTTP(S) listener of `flowstage-web`. Default `0.0.0.0:8443`.
    pub listen: Option<String>,
    /// `off`, `self-signed` (generated at install) or `files` (`tls_cert`/`tls_key`).
    /// Default `self-signed`: the login page is never served in plain text by default.
    pub tls: Option<String>,
    /// PEM certificate chain, for `tls = "files"`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key, for `tls = "files"`.
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCollector {
    /// UDP listen addresses. Default `["0.0.0.0:2055", "[::]:2055"]`.
    pub listen: Option<Vec<String>>,
    /// UDP listen addresses for sFlow v5 agents (switches). Default
    /// `["0.0.0.0:6343", "[::]:6343"]`; `[]` turns sFlow off. The same decoders serve
    /// every port, so this only adds sockets.
    pub sflow_listen: Option<Vec<String>>,
    /// Spool and archive directory. Default `/var/lib/flowstage`.
    pub data_dir: Option<PathBuf>,
    /// Prometheus metrics listener, e.g. `127.0.0.1:9655`. Default: off.
    pub metrics: Option<String>,
    /// Keys kept per bucket for high-cardinality reports. Default 200.
    pub top_n: Option<usize>,
    /// Decode/aggregate threads. Default: one per CPU.
    pub workers: Option<usize>,
    /// Socket receive buffer in bytes. Default 32 MiB.
    pub receive_buffer_bytes: Option<usize>,
    /// Seconds a minute bucket stays open after the minute ends. Default 60.
    pub flush_grace_secs: Option<u64>,
    /// Upper bound of the on-disk spool used while the database is away. Default 1 GiB.
    pub spool_max_bytes: Option<u64>,
    /// Only these addresses or networks may export; empty allows all. Default empty.
    pub allowed_exporters: Option<Vec<String>>,
    /// Seconds between STAT log lines. Default 60; 0 turns them off.
    pub stats_interval_secs: Option<u64>,
    /// Seconds data waits for its template before it is counted as expired. Default 60.
    pub template_wait_secs: Option<u64>,
    /// Keys a bucket tracks per report kind (heavy-hitter table size); when a bucket has
    /// more distinct keys, the smallest are folded into "other". Default 1024.
    pub max_keys_per_bucket: Option<usize>,
    /// Flows per second the site expects, for the installer's disk sizing. Default 5000.
    pub expected_flows_per_second: Option<u64>,
    /// Write every decoded flow to the Parquet archive under `data_dir/archive`.
    /// Default true.
    pub archive: Option<bool>,
    /// Seconds per archive file (flow-capture's `-n`); must divide a day. Default 300.
    pub archive_rotate_secs: Option<u64>,
    /// Upper bound of the archive's total size; the oldest files go first (`-E`).
    /// Default 10 GiB. Files older than `retention.raw_days` go too.
    pub archive_max_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExporter {
    pub address: String,
    pub name: Option<String>,
    /// Overrides whatever sampling rate the exporter announces.
    pub sampling_rate: Option<u32>,
}

/// A validated configuration.
#[derive(Clone)]
pub struct Config {
    pub site: SiteConfig,
    pub time: TimeConfig,
    pub mail: MailConfig,
    pub database_url: String,
    pub database: DatabaseConfig,
    pub collector: CollectorConfig,
    pub retention: RetentionConfig,
    pub history: HistoryConfig,
    pub web: WebConfig,
    pub names: NamesConfig,
    pub snmp: SnmpConfig,
    pub alerts: AlertsConfig,
    pub exporters: Vec<ExporterConfig>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("site", &self.site)
            .field("time", &self.time)
            .field("mail", &self.mail)
            .field("database_url", &redact_url(&self.database_url))
            .field("database", &self.database)
            .field("collector", &self.collector)
            .field("retention", &self.retention)
            .field("history", &self.history)
            .field("web", &self.web)
            .field("names", &self.names)
            .field("snmp", &self.snmp)
            .field("alerts", &self.alerts)
            .field("exporters", &self.exporters)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteConfig {
    pub name: String,
    pub admin_email: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeDaemon {
    Ntpsec,
    Chrony,
    /// Flowstage leaves time keeping alone (a hypervisor or another tool keeps it).
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeConfig {
    pub daemon: TimeDaemon,
    pub servers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailConfig {
    pub relay_host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// The URL as configured, without the password.
    pub url: String,
    pub password_file: Option<PathBuf>,
    pub postgresql_version: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    pub minute_days: u32,
    pub five_minute_days: u32,
    pub hour_days: u32,
    pub day_days: u32,
    /// None: kept forever.
    pub week_days: Option<u32>,
    pub month_days: Option<u32>,
    pub year_days: Option<u32>,
    pub raw_days: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryConfig {
    pub timezone: String,
    /// ISO day number the week starts on: 1 Monday, 7 Sunday.
    pub week_start: i16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    Off,
    SelfSigned,
    Files { cert: PathBuf, key: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    pub listen: SocketAddr,
    pub tls: TlsMode,
}

/// Where the installer keeps the certificate it generates for `web.tls = "self-signed"`.
pub const SELF_SIGNED_CERT: &str = "/etc/flowstage/tls/self-signed.crt";
pub const SELF_SIGNED_KEY: &str = "/etc/flowstage/tls/self-signed.key";

impl WebConfig {
    /// The certificate chain and key to serve, if TLS is on.
    pub fn tls_files(&self) -> Option<(PathBuf, PathBuf)> {
        match &self.tls {
            TlsMode::Off => None,
            TlsMode::SelfSigned => Some((SELF_SIGNED_CERT.into(), SELF_SIGNED_KEY.into())),
            TlsMode::Files { cert, key } => Some((cert.clone(), key.clone())),
        }
    }

    /// The URL a browser on this host uses to reach the web daemon.
    pub fn local_url(&self) -> String {
        let scheme = if self.tls == TlsMode::Off {
            "http"
        } else {
            "https"
        };
        let host = match self.listen.ip() {
            IpAddr::V4(a) if a.is_unspecified() => "127.0.0.1".to_string(),
            IpAddr::V6(a) if a.is_unspecified() => "[::1]".to_string(),
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        format!("{scheme}://{host}:{}", self.listen.port())
    }
}

pub const DEFAULT_TIME_SERVERS: [&str; 4] = [
    "0.debian.pool.ntp.org",
    "1.debian.pool.ntp.org",
    "2.debian.pool.ntp.org",
    "3.debian.pool.ntp.org",
];

#[derive(Debug, Clone)]
pub struct CollectorConfig {
    pub listen: Vec<SocketAddr>,
    /// sFlow sockets; may be empty.
    pub sflow_listen: Vec<SocketAddr>,
    pub data_dir: PathBuf,
    pub metrics: Option<SocketAddr>,
    pub top_n: usize,
    pub workers: usize,
    pub receive_buffer_bytes: usize,
    pub flush_grace_secs: u64,
    pub spool_max_bytes: u64,
    pub allowed_exporters: Vec<IpNet>,
    pub stats_interval_secs: u64,
    pub template_wait_secs: u64,
    pub max_keys_per_bucket: usize,
    pub expected_flows_per_second: u64,
    pub archive: bool,
    pub archive_rotate_secs: u64,
    pub archive_max_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExporterConfig {
    pub address: IpAddr,
    pub name: Option<String>,
    pub sampling_rate: Option<u32>,
}

pub const DEFAULT_DATABASE_URL: &str =
    "postgresql:///flowstage?host=/var/run/postgresql&user=flowstage";

/// Replace the password of a libpq URL or key/value string with `***`.
pub fn redact_url(url: &str) -> String {
    if let Some(rest) = url.split_once("://") {
        let (scheme, rest) = rest;
        if let Some((userinfo, host)) = rest.split_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
        let mut out = format!("{scheme}://{rest}");
        if let Some(i) = out.find("password=") {
            let end = out[i..].find('&').map(|e| i + e).unwrap_or(out.len());
            out.replace_range(i + 9..end, "***");
        }
        return out;
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***".to_string()
            } else {
                kv.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_listen(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse::<SocketAddr>()
        .ok()
        .filter(|a| a.port() != 0)
        .ok_or_else(|| {
            invalid(
                key,
                s,
                "expected ADDRESS:PORT with a port from 1 to 65535, e.g. 0.0.0.0:2055 or [::]:2055",
            )
        })
}

impl RawConfig {
    pub fn from_toml(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        raw.source_text = Some(text.to_string());
        Ok(raw)
    }

    pub fn load(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_toml(&text, path)
    }

    pub fn validate(mut self) -> Result<Config, ConfigError> {
        let text = self.source_text.take();
        self.validate_inner()
            .map_err(|e| e.with_line_from(text.as_deref()))
    }

    fn validate_inner(self) -> Result<Config, ConfigError> {
        let site = validate_site(self.site)?;
        let time = validate_time(self.time)?;
        let mail = validate_mail(self.mail)?;
        let retention = validate_retention(self.retention)?;
        let history = validate_history(self.history)?;
        let web = validate_web(self.web)?;
        let names = validate_names(self.names)?;
        let snmp = validate_snmp(self.snmp)?;
        let alerts = validate_alerts(self.alerts)?;
        if let Some(v) = self
            .database
            .postgresql_version
            .filter(|v| !(10..=30).contains(v))
        {
            return Err(invalid(
                "database.postgresql_version",
                v,
                "expected a PostgreSQL major version such as 15",
            ));
        }
        let c = self.collector;
        let listen = match c.listen {
            Some(list) => list
                .iter()
                .map(|s| parse_listen("collector.listen", s))
                .collect::<Result<Vec<_>, _>>()?,
            None => vec![
                parse_listen("collector.listen", "0.0.0.0:2055")?,
                parse_listen("collector.listen", "[::]:2055")?,
            ],
        };
        let sflow_listen = match c.sflow_listen {
            Some(list) => list
                .iter()
                .map(|s| parse_listen("collector.sflow_listen", s))
                .collect::<Result<Vec<_>, _>>()?,
            // A NetFlow socket on 6343 already receives sFlow too.
            None => ["0.0.0.0:6343", "[::]:6343"]
                .iter()
                .map(|s| parse_listen("collector.sflow_listen", s))
                .filter(|a| a.as_ref().map_or(true, |a| !listen.contains(a)))
                .collect::<Result<Vec<_>, _>>()?,
        };
        if let Some(clash) = sflow_listen.iter().find(|a| listen.contains(a)) {
            return Err(invalid(
                "collector.sflow_listen",
                clash,
                "is also in collector.listen; one socket serves both (the decoders tell the protocols apart), so leave it in one list",
            ));
        }
        if listen.is_empty() {
            return Err(invalid(
                "collector.listen",
                "[]",
                "at least one listen address is needed",
            ));
        }
        let metrics = c
            .metrics
            .map(|m| {
                m.parse::<SocketAddr>()
                    .ok()
                    .filter(|a| a.port() != 0)
                    .ok_or_else(|| {
                        invalid(
                            "collector.metrics",
                            &m,
                            "expected ADDRESS:PORT with a port from 1 to 65535",
                        )
                    })
            })
            .transpose()?;
        let top_n = c.top_n.unwrap_or(200);
        if !(1..=10_000).contains(&top_n) {
            return Err(invalid(
                "collector.top_n",
                top_n,
                "must be between 1 and 10000",
            ));
        }
        let max_keys = c.max_keys_per_bucket.unwrap_or(1024);
        if max_keys < top_n || max_keys > 1 << 20 {
            return Err(invalid(
                "collector.max_keys_per_bucket",
                max_keys,
                "must be at least collector.top_n and at most 1048576",
            ));
        }
        let workers = match c.workers.unwrap_or(0) {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n if n > 256 => return Err(invalid("collector.workers", n, "must be at most 256")),
            n => n,
        };
        let allowed_exporters = c
            .allowed_exporters
            .unwrap_or_default()
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        invalid(
                            "collector.allowed_exporters",
                            s,
                            "expected an address or a network like 192.0.2.0/24",
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut exporters = Vec::new();
        for (i, e) in self.exporters.into_iter().enumerate() {
            let address = e.address.parse::<IpAddr>().map_err(|_| {
                invalid(
                    format!("exporter[{i}].address"),
                    &e.address,
                    "expected an IP address",
                )
            })?;
            if let Some(rate) = e
                .sampling_rate
                .filter(|r| !(1..=MAX_SAMPLING_RATE).contains(r))
            {
                return Err(invalid(
                    format!("exporter[{i}].sampling_rate"),
                    rate,
                    "must be between 1 and 16777216 (2^24)",
                ));
            }
            if exporters
                .iter()
                .any(|x: &ExporterConfig| x.address == address)
            {
                return Err(invalid(
                    format!("exporter[{i}].address"),
                    address,
                    "listed twice",
                ));
            }
            exporters.push(ExporterConfig {
                address,
                name: e.name,
                sampling_rate: e.sampling_rate,
            });
        }
        let configured_url = self
            .database
            .url
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
        let data_dir = c
            .data_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/flowstage"));
        if !data_dir.is_absolute()
            || data_dir.to_string_lossy().contains(char::is_whitespace)
            || data_dir == Path::new("/")
        {
            return Err(invalid(
                "collector.data_dir",
                data_dir.display(),
                "must be an absolute path without spaces, and not /",
            ));
        }
        let receive_buffer_bytes = c.receive_buffer_bytes.unwrap_or(32 << 20);
        if !(65_536..=i32::MAX as usize).contains(&receive_buffer_bytes) {
            return Err(invalid(
                "collector.receive_buffer_bytes",
                receive_buffer_bytes,
                "must be between 65536 and 2147483647",
            ));
        }
        match configured_url.parse::<tokio_postgres::Config>() {
            Err(e) => {
                return Err(invalid(
                    "database.url",
                    redact_url(&configured_url),
                    format!("not a PostgreSQL URL: {e}"),
                ))
            }
            Ok(parsed) if parsed.get_password().is_some() => {
                return Err(invalid(
                    "database.url",
                    redact_url(&configured_url),
                    "keep the password out of the URL: database.password_file (the installer's secrets file) holds it",
                ))
            }
            Ok(_) => {}
        }
        let archive_rotate_secs = c.archive_rotate_secs.unwrap_or(300);
        if !(60..=86_400).contains(&archive_rotate_secs) || 86_400 % archive_rotate_secs != 0 {
            return Err(invalid(
                "collector.archive_rotate_secs",
                archive_rotate_secs,
                "must divide a day (86400) and be at least 60, e.g. 300 or 900",
            ));
        }
        let archive_max_bytes = c.archive_max_bytes.unwrap_or(10 << 30);
        if archive_max_bytes < 1 << 20 {
            return Err(invalid(
                "collector.archive_max_bytes",
                archive_max_bytes,
                "must be at least 1048576 (1 MiB)",
            ));
        }
        let expected_flows_per_second = c.expected_flows_per_second.unwrap_or(5000);
        if expected_flows_per_second > 100_000_000 {
            return Err(invalid(
                "collector.expected_flows_per_second",
                expected_flows_per_second,
                "must be at most 100000000",
            ));
        }
        Ok(Config {
            site,
            time,
            mail,
            retention,
            history,
            web,
            names,
            snmp,
            alerts,
            database: DatabaseConfig {
                url: configured_url.clone(),
                password_file: self.database.password_file,
                postgresql_version: self.database.postgresql_version,
            },
            database_url: configured_url.clone(),
            collector: CollectorConfig {
                listen,
                sflow_listen,
                data_dir,
                metrics,
                top_n,
                workers,
                receive_buffer_bytes,
                flush_grace_secs: c.flush_grace_secs.unwrap_or(60),
                spool_max_bytes: c.spool_max_bytes.unwrap_or(1 << 30),
                allowed_exporters,
                stats_interval_secs: c.stats_interval_secs.unwrap_or(60),
                template_wait_secs: c.template_wait_secs.unwrap_or(60),
                max_keys_per_bucket: max_keys,
                expected_flows_per_second,
                archive: c.archive.unwrap_or(true),
                archive_rotate_secs,
                archive_max_bytes,
            },
            exporters,
        })
    }
}

/// The password in `file`: a TOML secrets file's `database_password`, or the whole
/// file trimmed.
fn read_password_file(file: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|error| ConfigError::Read {
        path: file.to_path_buf(),
        error,
    })?;
    if let Ok(table) = text.parse::<toml::Table>() {
        if let Some(toml::Value::String(p)) = table.get("database_password") {
            return Ok(p.clone());
        }
    }
    Ok(text.trim().to_string())
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn is_host_or_address(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok() || is_hostname(s)
}

/// The host name of this machine, the default site name.
pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| is_hostname(s))
        .unwrap_or_else(|| "flowstage".to_string())
}

fn validate_site(raw: RawSite) -> Result<SiteConfig, ConfigError> {
    let name = raw.name.unwrap_or_else(local_hostname);
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || " ._-".contains(c))
    {
        return Err(invalid(
            "site.name",
            &name,
            "use 1 to 64 letters, digits, spaces, dots, dashes or underscores",
        ));
    }
    let admin_email = raw
        .admin_email
        .unwrap_or_else(|| "root@localhost".to_string());
    let valid_email = admin_email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && !local.contains(char::is_whitespace)
            && !local.contains(['<', '>', ',', ':', '"'])
            && is_hostname(domain)
    });
    if !valid_email {
        return Err(invalid(
            "site.admin_email",
            &admin_email,
            "expected an address like noc@example.net",
        ));
    }
    Ok(SiteConfig { name, admin_email })
}

fn validate_time(raw: RawTime) -> Result<TimeConfig, ConfigError> {
    let daemon = match raw.daemon.as_deref().unwrap_or("ntpsec") {
        "ntpsec" | "ntp" => TimeDaemon::Ntpsec,
        "chrony" => TimeDaemon::Chrony,
        "none" => TimeDaemon::None,
        other => {
            return Err(invalid(
                "time.daemon",
                other,
                "expected ntpsec, chrony or none",
            ))
        }
    };
    let servers = raw
        .servers
        .unwrap_or_else(|| DEFAULT_TIME_SERVERS.iter().map(|s| s.to_string()).collect());
    if servers.is_empty() {
        return Err(invalid(
            "time.servers",
            "[]",
            "at least one time server is needed (the local clock is only a fallback)",
        ));
    }
    if let Some(bad) = servers.iter().find(|s| !is_host_or_address(s)) {
        return Err(invalid(
            "time.servers",
            bad,
            "expected a host name or an IP address",
        ));
    }
    Ok(TimeConfig { daemon, servers })
}

fn validate_mail(raw: RawMail) -> Result<MailConfig, ConfigError> {
    let relay_host = raw.relay_host.filter(|r| !r.is_empty());
    if let Some(relay) = &relay_host {
        // postfix's forms: host, host:port, [host], [host]:port.
        let (host, port) = match relay.strip_prefix('[') {
            Some(rest) => match rest.split_once(']') {
                Some((h, p)) => (h, p.strip_prefix(':')),
                None => ("", None),
            },
            None => match relay.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (relay.as_str(), None),
            },
        };
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
        if !is_host_or_address(host) || !port_ok {
            return Err(invalid(
                "mail.relay_host",
                relay,
                "expected host, host:port, [host] or [host]:port with a port from 1 to 65535",
            ));
        }
    }
    Ok(MailConfig { relay_host })
}

fn validate_retention(raw: RawRetention) -> Result<RetentionConfig, ConfigError> {
    let r = RetentionConfig {
        minute_days: raw.minute_days.unwrap_or(7),
        five_minute_days: raw.five_minute_days.unwrap_or(30),
        hour_days: raw.hour_days.unwrap_or(90),
        day_days: raw.day_days.unwrap_or(730),
        week_days: raw.week_days,
        month_days: raw.month_days,
        year_days: raw.year_days,
        raw_days: raw.raw_days.unwrap_or(7),
    };
    for (key, days) in [
        ("retention.week_days", r.week_days),
        ("retention.month_days", r.month_days),
        ("retention.year_days", r.year_days),
    ] {
        if let Some(days) = days {
            if !(1..=36_500).contains(&days) {
                return Err(invalid(key, days, "must be between 1 and 36500 days"));
            }
            if days < r.day_days {
                return Err(invalid(
                    key,
                    days,
                    format!(
                        "cannot be kept shorter than days (retention.day_days = {})",
                        r.day_days
                    ),
                ));
            }
        }
    }

    for (key, days) in [
        ("retention.minute_days", r.minute_days),
        ("retention.five_minute_days", r.five_minute_days),
        ("retention.hour_days", r.hour_days),
        ("retention.day_days", r.day_days),
        ("retention.raw_days", r.raw_days),
    ] {
        if !(1..=36_500).contains(&days) {
            return Err(invalid(key, days, "must be between 1 and 36500 days"));
        }
    }
    if r.five_minute_days < r.minute_days {
        return Err(invalid(
            "retention.five_minute_days",
            r.five_minute_days,
            format!(
                "five minutes cannot be kept shorter than minutes (retention.minute_days = {})",
                r.minute_days
            ),
        ));
    }
    if r.hour_days < r.minute_days {
        return Err(invalid(
            "retention.hour_days",
            r.hour_days,
            format!(
                "hours cannot be kept shorter than minutes (retention.minute_days = {})",
                r.minute_days
            ),
        ));
    }
    if r.day_days < r.hour_days {
        return Err(invalid(
            "retention.day_days",
            r.day_days,
            format!(
                "days cannot be kept shorter than hours (retention.hour_days = {})",
                r.hour_days
            ),
        ));
    }
    Ok(r)
}

fn validate_history(raw: RawHistory) -> Result<HistoryConfig, ConfigError> {
    let timezone = raw.timezone.unwrap_or_else(|| "UTC".to_string());
    let well_formed = !timezone.is_empty()
        && !timezone.starts_with('/')
        && !timezone
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        && timezone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+-/".contains(c));
    // The zone database PostgreSQL and chrono's hosts use; where it is missing (a
    // container without tzdata) PostgreSQL is the judge when the rollup runs.
    let zoneinfo = Path::new("/usr/share/zoneinfo");
    if !well_formed || (zoneinfo.is_dir() && !zoneinfo.join(&timezone).is_file()) {
        return Err(invalid(
            "history.timezone",
            &timezone,
            "expected an IANA time zone name such as UTC or Europe/Berlin",
        ));
    }
    let week_start = match raw.week_start.as_deref().unwrap_or("monday") {
        "monday" => 1,
        "sunday" => 7,
        other => {
            return Err(invalid(
                "history.week_start",
                other,
                "expected monday or sunday",
            ))
        }
    };
    Ok(HistoryConfig {
        timezone,
        week_start,
    })
}

fn validate_web(raw: RawWeb) -> Result<WebConfig, ConfigError> {
    let listen_text = raw.listen.unwrap_or_else(|| "0.0.0.0:8443".to_string());
    let listen = listen_text
        .parse::<SocketAddr>()
        .ok()
        .filter(|a| a.port() != 0)
        .ok_or_else(|| {
            invalid(
                "web.listen",
                &listen_text,
                "expected ADDRESS:PORT with a port from 1 to 65535, e.g. 0.0.0.0:8080",
            )
        })?;
    let tls = match raw.tls.as_deref().unwrap_or("self-signed") {
        "off" => TlsMode::Off,
        "self-signed" => TlsMode::SelfSigned,
        "files" => match (raw.tls_cert, raw.tls_key) {
            (Some(cert), Some(key)) => TlsMode::Files { cert, key },
            _ => {
                return Err(invalid(
                    "web.tls",
                    "files",
                    "needs both web.tls_cert and web.tls_key",
                ))
            }
        },
        other => {
            return Err(invalid(
                "web.tls",
                other,
                "expected off, self-signed or files",
            ))
        }
    };
    Ok(WebConfig { listen, tls })
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub const DEFAULT_SECRETS_PATH: &str = "/etc/flowstage/secrets.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNames {
    /// Where shown names come from, first non-empty wins: `file` (exporters.cfg and
    /// routers.cfg), `snmp` (sysName, ifName/ifDescr, ifAlias), `dns` (reverse lookup
    /// of the exporter's address). Default `["file", "snmp", "dns"]`.
    pub precedence: Option<Vec<String>>,
    /// Look up exporter names by reverse DNS at each poll. Default false: router
    /// addresses often resolve to names that say nothing.
    pub reverse_dns: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamesConfig {
    pub precedence: Vec<String>,
    pub reverse_dns: bool,
}

pub const NAME_SOURCES: [&str; 3] = ["file", "snmp", "dns"];

fn validate_names(raw: RawNames) -> Result<NamesConfig, ConfigError> {
    let precedence = raw
        .precedence
        .unwrap_or_else(|| NAME_SOURCES.iter().map(|s| s.to_string()).collect());
    for (i, source) in precedence.iter().enumerate() {
        if !NAME_SOURCES.contains(&source.as_str()) {
            return Err(invalid(
                format!("names.precedence[{i}]"),
                source,
                "expected file, snmp or dns",
            ));
        }
        if precedence[..i].contains(source) {
            return Err(invalid(
                format!("names.precedence[{i}]"),
                source,
                "listed twice",
            ));
        }
    }
    Ok(NamesConfig {
        precedence,
        reverse_dns: raw.reverse_dns.unwrap_or(false),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSnmp {
    /// Seconds between polls (the installer's timer). Default 300.
    pub interval_secs: Option<u64>,
    /// Seconds to wait for each answer. Default 2.
    pub timeout_secs: Option<u64>,
    /// Attempts after a timeout. Default 1.
    pub retries: Option<u32>,
    /// File holding the credentials, as `[snmp.NAME]` tables. Default the installer's
    /// secrets file, `/etc/flowstage/secrets.toml`.
    pub secrets_file: Option<PathBuf>,
    /// Which exporters to poll, with which credentials. Default: none (no polling).
    #[serde(default, rename = "target")]
    pub targets: Vec<RawSnmpTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSnmpTarget {
    /// Exporter addresses or networks this target covers.
    pub exporters: Vec<String>,
    /// Name of the `[snmp.NAME]` table in the secrets file.
    pub credentials: String,
    /// Agent UDP port. Default 161.
    pub port: Option<u16>,
    /// Poll this address instead of the exporter's own (one exporter only): a router
    /// that exports from one address and answers SNMP on another.
    pub agent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnmpConfig {
    pub interval_secs: u64,
    pub timeout_secs: u64,
    pub retries: u32,
    pub secrets_file: PathBuf,
    pub targets: Vec<SnmpTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnmpTarget {
    pub exporters: Vec<IpNet>,
    pub credentials: String,
    pub port: u16,
    pub agent: Option<IpAddr>,
}

fn validate_snmp(raw: RawSnmp) -> Result<SnmpConfig, ConfigError> {
    let interval_secs = raw.interval_secs.unwrap_or(300);
    if !(60..=86_400).contains(&interval_secs) {
        return Err(invalid(
            "snmp.interval_secs",
            interval_secs,
            "expected 60 to 86400 seconds",
        ));
    }
    let timeout_secs = raw.timeout_secs.unwrap_or(2);
    if !(1..=60).contains(&timeout_secs) {
        return Err(invalid(
            "snmp.timeout_secs",
            timeout_secs,
            "expected 1 to 60 seconds",
        ));
    }
    let retries = raw.retries.unwrap_or(1);
    if retries > 5 {
        return Err(invalid("snmp.retries", retries, "expected 0 to 5"));
    }
    let mut targets = Vec::new();
    for (i, t) in raw.targets.into_iter().enumerate() {
        let key = |k: &str| format!("snmp.target[{i}].{k}");
        if t.exporters.is_empty() {
            return Err(invalid(
                key("exporters"),
                "[]",
                "name at least one exporter address or network",
            ));
        }
        let exporters = t
            .exporters
            .iter()
            .map(|e| {
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| invalid(key("exporters"), e, "expected an address or network"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let valid_name = !t.credentials.is_empty()
            && t.credentials
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(invalid(
                key("credentials"),
                &t.credentials,
                "expected the name of a [snmp.NAME] table in the secrets file (letters, digits, - and _)",
            ));
        }
        let agent = match t.agent {
            None => None,
            Some(a) => {
                let single = exporters.len() == 1
                    && exporters[0].prefix_len() == exporters[0].max_prefix_len();
                if !single {
                    return Err(invalid(
                        key("agent"),
                        &a,
                        "an agent address is for a target of exactly one exporter address",
                    ));
                }
                Some(
                    a.parse::<IpAddr>()
                        .map_err(|_| invalid(key("agent"), &a, "expected an IP address"))?,
                )
            }
        };
        let port = t.port.unwrap_or(161);
        if port == 0 {
            return Err(invalid(key("port"), port, "expected 1 to 65535"));
        }
        targets.push(SnmpTarget {
            exporters,
            credentials: t.credentials,
            port,
            agent,
        });
    }
    Ok(SnmpConfig {
        interval_secs,
        timeout_secs,
        retries,
        secrets_file: raw
            .secrets_file
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SECRETS_PATH)),
        targets,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    /// Mail alerts (start and clear) and the daily summary to `site.admin_email`.
    /// Default true.
    pub mail: Option<bool>,
    /// Send the daily summary mail. Default true.
    pub daily_summary: Option<bool>,
    /// `sendmail` program to hand mail to. Default `/usr/sbin/sendmail` (postfix).
    pub sendmail: Option<PathBuf>,
    /// Send through SMTP on this loopback address instead of `sendmail`, e.g.
    /// `127.0.0.1:25`. Default: none.
    pub smtp: Option<String>,
    /// An alert clears only after its condition has not held for this many minutes,
    /// so a flapping condition is one alert, not a mail every minute. Default 5.
    pub clear_after_minutes: Option<u32>,
    /// The rules. Default: the five rules in docs/alerts.md.
    #[serde(rename = "rule")]
    pub rules: Option<Vec<RawAlertRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlertRule {
    /// Shown in mail, the web UI and `status`; unique.
    pub name: String,
    /// `silent`, `loss`, `decode_errors`, `interface_utilisation`, `spool_full` or
    /// `archive_full`.
    pub kind: String,
    /// The window the condition must hold over (silent: minutes without packets).
    pub minutes: Option<u32>,
    /// loss, interface_utilisation, spool_full, archive_full: the threshold in %.
    pub percent: Option<f64>,
    /// decode_errors: errors within the window.
    pub count: Option<u64>,
    /// interface_utilisation: `flows` (the flows' rate, every minute of the window
    /// above the threshold) or `device` (the average rate the device's own counters
    /// measured over the window, SNMP or sFlow). Default `flows`.
    pub measure: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlertsConfig {
    pub mail: bool,
    pub clear_after_minutes: u32,
    pub daily_summary: bool,
    pub sendmail: PathBuf,
    pub smtp: Option<SocketAddr>,
    pub rules: Vec<AlertRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    Silent,
    Loss,
    DecodeErrors,
    InterfaceUtilisation,
    SpoolFull,
    ArchiveFull,
}

impl AlertKind {
    pub const ALL: [AlertKind; 6] = [
        AlertKind::Silent,
        AlertKind::Loss,
        AlertKind::DecodeErrors,
        AlertKind::InterfaceUtilisation,
        AlertKind::SpoolFull,
        AlertKind::ArchiveFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Silent => "silent",
            AlertKind::Loss => "loss",
            AlertKind::DecodeErrors => "decode_errors",
            AlertKind::InterfaceUtilisation => "interface_utilisation",
            AlertKind::SpoolFull => "spool_full",
            AlertKind::ArchiveFull => "archive_full",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    pub name: String,
    pub kind: AlertKind,
    pub minutes: u32,
    pub percent: f64,
    pub count: u64,
    /// interface_utilisation only: read the device's counters instead of the flows.
    pub device_counters: bool,
}

/// The rules used when the configuration names none.
pub fn default_alert_rules() -> Vec<AlertRule> {
    let rule = |name: &str, kind, minutes, percent, count| AlertRule {
        name: name.into(),
        kind,
        minutes,
        percent,
        count,
        device_counters: false,
    };
    vec![
        rule("exporter silent", AlertKind::Silent, 15, 0.0, 0),
        rule("flow loss", AlertKind::Loss, 15, 5.0, 0),
        rule("decode errors", AlertKind::DecodeErrors, 15, 0.0, 100),
        rule(
            "interface busy",
            AlertKind::InterfaceUtilisation,
            15,
            90.0,
            0,
        ),
        rule("spool nearly full", AlertKind::SpoolFull, 0, 80.0, 0),
        rule("archive nearly full", AlertKind::ArchiveFull, 0, 95.0, 0),
    ]
}

fn validate_alerts(raw: RawAlerts) -> Result<AlertsConfig, ConfigError> {
    let smtp = match raw.smtp {
        None => None,
        Some(s) => Some(
            s.parse::<SocketAddr>()
                .ok()
                .filter(|a| a.ip().is_loopback() && a.port() != 0)
                .ok_or_else(|| {
                    invalid(
                        "alerts.smtp",
                        &s,
                        "expected a loopback ADDRESS:PORT such as 127.0.0.1:25 (the local postfix)",
                    )
                })?,
        ),
    };
    let rules = match raw.rules {
        None => default_alert_rules(),
        Some(list) => {
            let mut rules: Vec<AlertRule> = Vec::new();
            for (i, r) in list.into_iter().enumerate() {
                let key = |k: &str| format!("alerts.rule[{i}].{k}");
                let name = r.name.trim().to_string();
                if name.is_empty() || rules.iter().any(|x| x.name == name) {
                    return Err(invalid(
                        key("name"),
                        &r.name,
                        "expected a unique, non-empty name",
                    ));
                }
                let kind = AlertKind::ALL
                    .into_iter()
                    .find(|k| k.as_str() == r.kind)
                    .ok_or_else(|| {
                        invalid(
                            key("kind"),
                            &r.kind,
                            "expected silent, loss, decode_errors, interface_utilisation, spool_full or archive_full",
                        )
                    })?;
                let windowed = !matches!(kind, AlertKind::SpoolFull | AlertKind::ArchiveFull);
                let minutes = r.minutes.unwrap_or(if windowed { 15 } else { 0 });
                if windowed && !(1..=1440).contains(&minutes) {
                    return Err(invalid(
                        key("minutes"),
                        minutes,
                        "expected 1 to 1440 minutes",
                    ));
                }
                let percent = r.percent.unwrap_or(match kind {
                    AlertKind::Loss => 5.0,
                    AlertKind::InterfaceUtilisation => 90.0,
                    AlertKind::SpoolFull => 80.0,
                    AlertKind::ArchiveFull => 95.0,
                    _ => 0.0,
                });
                if !(0.0..=1000.0).contains(&percent) {
                    return Err(invalid(key("percent"), percent, "expected 0 to 1000"));
                }
                let count = r.count.unwrap_or(100);
                let device_counters = match r.measure.as_deref() {
                    None | Some("flows") => false,
                    Some("device") if kind == AlertKind::InterfaceUtilisation => true,
                    Some(other) => {
                        return Err(invalid(
                            key("measure"),
                            other,
                            "expected flows or device (for interface_utilisation rules)",
                        ))
                    }
                };
                rules.push(AlertRule {
                    name,
                    kind,
                    minutes,
                    percent,
                    count,
                    device_counters,
                });
            }
            rules
        }
    };
    let clear_after_minutes = raw.clear_after_minutes.unwrap_or(5);
    if clear_after_minutes > 1440 {
        return Err(invalid(
            "alerts.clear_after_minutes",
            clear_after_minutes,
            "expected 0 to 1440 minutes",
        ));
    }
    Ok(AlertsConfig {
        mail: raw.mail.unwrap_or(true),
        clear_after_minutes,
        daily_summary: raw.daily_summary.unwrap_or(true),
        sendmail: raw
            .sendmail
            .unwrap_or_else(|| PathBuf::from("/usr/sbin/sendmail")),
        smtp,
        rules,
    })
}

impl Config {
    /// Load `path`; a missing file at the default location means all defaults, so the
    /// collector runs without any installer. The database password is resolved too.
    pub fn load_or_default(path: &Path) -> Result<Config, ConfigError> {
        let mut config = if !path.exists() && path == Path::new(DEFAULT_CONFIG_PATH) {
            RawConfig::default().validate()?
        } else {
            RawConfig::load(path)?.validate()?
        };
        config.resolve_password()?;
        Ok(config)
    }

    /// Append the database password to `database_url`: from `database.password_file`,
    /// or from the installer's secrets file when it exists and is readable (a user
    /// without access falls back to peer authentication).
    pub fn resolve_password(&mut self) -> Result<(), ConfigError> {
        let password = match &self.database.password_file {
            Some(file) => Some(read_password_file(file)?),
            None => read_password_file(Path::new(DEFAULT_SECRETS_PATH)).ok(),
        };
        if let Some(password) = password.filter(|p| !p.is_empty()) {
            let url = &self.database.url;
            let sep = if url.contains('?') { '&' } else { '?' };
            self.database_url = format!("{url}{sep}password={}", percent_encode(&password));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let err =
            RawConfig::from_toml("[collector]\nlisten_on = []\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("listen_on"), "{err}");
    }

    #[test]
    fn bad_listen_address_is_quoted() {
        let raw = RawConfig::from_toml(
            "[collector]\nlisten = [\"1.2.3.4:99999\"]\n",
            Path::new("x"),
        )
        .unwrap();
        let err = raw.validate().unwrap_err().to_string();
        assert!(
            err.contains("collector.listen") && err.contains("1.2.3.4:99999"),
            "{err}"
        );
    }

    #[test]
    fn sflow_listens_on_6343_unless_told_otherwise() {
        let config = |text: &str| {
            RawConfig::from_toml(text, Path::new("x"))
                .unwrap()
                .validate()
        };
        let default = config("").unwrap();
        assert_eq!(
            default.collector.sflow_listen,
            vec![
                "0.0.0.0:6343".parse::<SocketAddr>().unwrap(),
                "[::]:6343".parse().unwrap()
            ]
        );
        let off = config("[collector]\nsflow_listen = []\n").unwrap();
        assert!(off.collector.sflow_listen.is_empty());
        // NetFlow already on 6343: that socket takes sFlow too.
        let shared = config("[collector]\nlisten = [\"0.0.0.0:6343\"]\n").unwrap();
        assert_eq!(
            shared.collector.sflow_listen,
            vec!["[::]:6343".parse::<SocketAddr>().unwrap()]
        );
        let err = config("[collector]\nsflow_listen = [\"6343\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("collector.sflow_listen") && err.contains("\"6343\""),
            "{err}"
        );
        let err =
            config("[collector]\nlisten = [\"127.0.0.1:9\"]\nsflow_listen = [\"127.0.0.1:9\"]\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("collector.sflow_listen") && err.contains("127.0.0.1:9"),
            "{err}"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgresql://u:secret@h/db"),
            "postgresql://u:***@h/db"
        );
        assert_eq!(
            redact_url("postgresql:///db?host=/tmp&password=secret&user=u"),
            "postgresql:///db?host=/tmp&password=***&user=u"
        );
        assert_eq!(
            redact_url("host=/tmp password=secret"),
            "host=/tmp password=***"
        );
    }

    #[test]
    fn password_file_is_appended_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db-password");
        std::fs::write(&file, "s3cr&t\n").unwrap();
        let text = format!(
            "[database]\nurl = \"postgresql:///flowstage?host=/run/postgresql\"\npassword_file = \"{}\"\n",
            file.display()
        );
        let mut config = RawConfig::from_toml(&text, Path::new("x"))
            .unwrap()
            .validate()
            .unwrap();
        config.resolve_password().unwrap();
        assert!(
            config.database_url.ends_with("&password=s3cr%26t"),
            "{}",
            config.database_url
        );
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
    }

    #[test]
    fn sampling_override_is_bounded() {
        let raw = RawConfig::from_toml(
            "[[exporter]]\naddress = \"192.0.2.1\"\nsampling_rate = 0\n",
            Path::new("x"),
        )
        .unwrap();
        let err = raw.validate().unwrap_err().to_string();
        assert!(err.contains("exporter[0].sampling_rate"), "{err}");
    }
}
