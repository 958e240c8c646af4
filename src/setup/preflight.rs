//! Preflight (`flowstage-setup check`, and the first step of `install`): is this a
//! machine Flowstage can be installed on, and what should the operator know first?
//! OS, root, CPUs, memory, the mount layout against the howto's partitions (advice),
//! free space against a sizing estimate, ports, time sync and required commands.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

use super::checks::Check;
use super::host::{have_command, Host};
use crate::config::Config;

/// `/etc/os-release`, the parts that matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsRelease {
    pub id: String,
    pub version_id: String,
    pub pretty: String,
}

impl OsRelease {
    pub fn parse(text: &str) -> OsRelease {
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_string())
                .unwrap_or_default()
        };
        OsRelease {
            id: get("ID"),
            version_id: get("VERSION_ID"),
            pretty: get("PRETTY_NAME"),
        }
    }

    /// This machine's (the root's, if it has one).
    pub fn read(host: &Host) -> OsRelease {
        let text = std::fs::read_to_string(host.path("/etc/os-release"))
            .or_else(|_| std::fs::read_to_string("/etc/os-release"))
            .unwrap_or_default();
        OsRelease::parse(&text)
    }

    pub fn supported(&self) -> bool {
        matches!(
            (self.id.as_str(), self.version_id.as_str()),
            ("debian", "12" | "13") | ("ubuntu", "22.04" | "24.04")
        )
    }

    /// The PostgreSQL major version the distribution ships.
    pub fn default_postgresql(&self) -> u32 {
        match (self.id.as_str(), self.version_id.as_str()) {
            ("debian", "13") => 17,
            ("ubuntu", "22.04") => 14,
            ("ubuntu", "24.04") => 16,
            _ => 15,
        }
    }
}

/// Disk space Flowstage needs for the configured flow rate and retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizingEstimate {
    /// Aggregate tables in PostgreSQL, all levels.
    pub database_bytes: u64,
    /// Raw flow archive plus the spool's upper bound, under the data directory.
    pub data_dir_bytes: u64,
}

/// Interfaces assumed per appliance for sizing (the operator's routers are unknown at
/// install time); documented in docs/operator-guide.md.
const SIZING_INTERFACES: u64 = 8;
const BYTES_PER_AGGREGATE_ROW: u64 = 90;
const BYTES_PER_ARCHIVED_FLOW: u64 = 20;

pub fn sizing(config: &Config) -> SizingEstimate {
    let c = &config.collector;
    let r = &config.retention;
    let rate = c.expected_flows_per_second;
    let per_interface_minute = rate * 60 / SIZING_INTERFACES;
    // One bucket: totals, protocol, and six top-N kinds, on both directions.
    let keys = (c.top_n as u64 + 1).min(per_interface_minute.max(1));
    let rows_per_bucket = SIZING_INTERFACES * 2 * (1 + 20.min(keys) + 6 * keys);
    let buckets = u64::from(r.minute_days) * 1440 + u64::from(r.hour_days) * 24
        + u64::from(r.day_days)
        // weeks, months and years: kept forever; ten years of them.
        + 10 * (52 + 12 + 1);
    SizingEstimate {
        database_bytes: rows_per_bucket * buckets * BYTES_PER_AGGREGATE_ROW,
        data_dir_bytes: rate * 86_400 * u64::from(r.raw_days) * BYTES_PER_ARCHIVED_FLOW
            + c.spool_max_bytes,
    }
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Space on the file system holding a path, as `df` counts it.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskSpace {
    /// The path's nearest existing ancestor (itself if it exists).
    pub at: PathBuf,
    /// Bytes an unprivileged user can still write.
    pub free: u64,
    /// df's Use%: used / (used + available); blocks reserved for root count as
    /// neither.
    pub used_percent: f64,
}

/// Space on the file system holding `path` (or its nearest existing parent).
pub fn disk_space(path: &Path) -> Option<DiskSpace> {
    let at = path.ancestors().find(|p| p.exists())?.to_path_buf();
    let st = nix::sys::statvfs::statvfs(&at).ok()?;
    let used = st.blocks().saturating_sub(st.blocks_free()) as f64;
    let usable = used + st.blocks_available() as f64;
    Some(DiskSpace {
        free: st.blocks_available() * st.fragment_size(),
        used_percent: if usable > 0.0 {
            used * 100.0 / usable
        } else {
            100.0
        },
        at,
    })
}

/// Free bytes on the filesystem holding `path` (or its nearest existing parent).
pub fn free_bytes(path: &Path) -> Option<(PathBuf, u64)> {
    disk_space(path).map(|d| (d.at, d.free))
}

/// The mount point holding `path`, from /proc/self/mounts (longest prefix wins).
fn mount_point(path: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.len())
        .map(str::to_string)
}

fn process_running(name: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .any(|comm| name.starts_with(comm.trim()) && !comm.trim().is_empty())
}

/// Is a time daemon keeping the clock synchronised? (`None`: cannot tell.)
pub fn time_sync(host: &Host) -> (bool, String) {
    if have_command("chronyc") {
        if let Some(out) = host.probe(std::process::Command::new("chronyc").arg("tracking")) {
            let leap_ok = out
                .lines()
                .any(|l| l.starts_with("Leap status") && l.trim_end().ends_with("Normal"));
            return (
                leap_ok,
                if leap_ok {
                    "chrony: synchronised".to_string()
                } else {
                    "chrony: not synchronised yet".to_string()
                },
            );
        }
    }
    if have_command("ntpq") {
        if let Some(out) = host.probe(std::process::Command::new("ntpq").args(["-c", "rv 0"])) {
            let synced = out.contains("sync_ntp") || out.contains("sync_pps");
            return (
                synced,
                if synced {
                    "ntpsec: synchronised".to_string()
                } else if out.contains("sync_local") {
                    "ntpsec: on the local clock only (orphan), no server reachable".to_string()
                } else {
                    "ntpsec: not synchronised yet".to_string()
                },
            );
        }
    }
    if super::host::systemd_is_pid1() {
        if let Some(out) = host.probe(std::process::Command::new("timedatectl").args([
            "show",
            "-p",
            "NTPSynchronized",
            "--value",
        ])) {
            let synced = out.trim() == "yes";
            return (
                synced,
                format!("timedatectl: NTPSynchronized={}", out.trim()),
            );
        }
    }
    (false, "no running time daemon answered".to_string())
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PreflightOptions {
    pub force: bool,
}

pub fn run(host: &Host, config: &Config, opts: PreflightOptions) -> Vec<Check> {
    let mut checks = Vec::new();
    let os = OsRelease::read(host);
    let os_name = if os.pretty.is_empty() {
        format!("{} {}", os.id, os.version_id)
    } else {
        os.pretty.clone()
    };
    checks.push(if os.supported() {
        Check::ok("os", os_name)
    } else if opts.force {
        Check::warn("os", format!("{os_name} is not supported; going on (--force)"))
    } else {
        Check::fail(
            "os",
            format!("{os_name} is not supported (Debian 12/13, Ubuntu 22.04/24.04); --force to try anyway"),
        )
    });
    let root = nix::unistd::geteuid().is_root();
    checks.push(match (root, host.is_live()) {
        (true, _) => Check::ok("root", "running as root"),
        (false, false) => Check::ok("root", "not root, fine with --root"),
        (false, true) => Check::fail("root", "must run as root (sudo flowstage-setup ...)"),
    });
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    checks.push(if cpus > 1 {
        Check::ok("cpus", format!("{cpus} CPUs"))
    } else {
        Check::warn(
            "cpus",
            "1 CPU: receiving, aggregation and PostgreSQL share it; 2 or more recommended",
        )
    });
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    let mem = sys.total_memory();
    checks.push(if mem >= 2 << 30 {
        Check::ok("memory", human_bytes(mem))
    } else if mem >= 1 << 30 {
        Check::warn(
            "memory",
            format!("{}: 2 GiB or more recommended", human_bytes(mem)),
        )
    } else {
        Check::fail(
            "memory",
            format!("{}: at least 1 GiB needed", human_bytes(mem)),
        )
    });
    // The howto gave /var and /tmp their own partitions so that flow data filling up
    // cannot take the root filesystem with it. Advice only.
    let data_dir = &config.collector.data_dir;
    let data_mount = mount_point(data_dir).unwrap_or_else(|| "/".to_string());
    let pg_mount = mount_point(Path::new("/var/lib/postgresql")).unwrap_or_else(|| "/".to_string());
    checks.push(if data_mount != "/" && pg_mount != "/" {
        Check::ok(
            "mounts",
            format!("data on {data_mount}, database on {pg_mount}, both off the root filesystem"),
        )
    } else {
        Check::warn(
            "mounts",
            format!(
                "advice: {} and /var/lib/postgresql are on {}; a separate /var (the howto's layout) keeps a full disk from stopping the system",
                data_dir.display(),
                if data_mount == "/" { "/" } else { &pg_mount }
            ),
        )
    });
    let need = sizing(config);
    for (name, path, bytes) in [
        ("disk data", data_dir.as_path(), need.data_dir_bytes),
        (
            "disk database",
            Path::new("/var/lib/postgresql"),
            need.database_bytes,
        ),
    ] {
        let Some((at, free)) = free_bytes(&host.path(path)) else {
            checks.push(Check::warn(
                name,
                format!("cannot tell free space for {}", path.display()),
            ));
            continue;
        };
        let text = format!(
            "{} free at {}, estimate {} for {} flows/s and the configured retention",
            human_bytes(free),
            at.display(),
            human_bytes(bytes),
            config.collector.expected_flows_per_second
        );
        checks.push(if free >= bytes {
            Check::ok(name, text)
        } else if free >= 1 << 30 {
            Check::warn(name, text)
        } else {
            Check::fail(name, text)
        });
    }
    for addr in config
        .collector
        .listen
        .iter()
        .chain(&config.collector.sflow_listen)
    {
        checks.push(port_check("port udp", *addr, true));
    }
    checks.push(port_check("port tcp", config.web.listen, false));
    let (synced, why) = time_sync(host);
    checks.push(if synced {
        Check::ok("time sync", why)
    } else {
        Check::warn("time sync", format!("{why} (the time step configures it)"))
    });
    let missing: Vec<&str> = [
        "apt-get",
        "dpkg-query",
        "debconf-set-selections",
        "useradd",
        "groupadd",
        "runuser",
        "start-stop-daemon",
        "update-rc.d",
        "sysctl",
    ]
    .into_iter()
    .filter(|c| !have_command(c))
    .collect();
    checks.push(if missing.is_empty() {
        Check::ok(
            "commands",
            "apt-get, dpkg-query, debconf-set-selections, useradd, groupadd, runuser, start-stop-daemon, update-rc.d, sysctl",
        )
    } else {
        Check::fail("commands", format!("missing: {}", missing.join(", ")))
    });
    checks
}

fn port_check(name: &str, addr: SocketAddr, udp: bool) -> Check {
    let label = format!("{name} {addr}");
    let bound = if udp {
        UdpSocket::bind(addr).map(drop)
    } else {
        TcpListener::bind(addr).map(drop)
    };
    let ours = if udp {
        "flowstage-collector"
    } else {
        "flowstage-web"
    };
    match bound {
        Ok(()) => Check::ok(label, "free"),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if process_running(ours) {
                Check::ok(label, format!("in use by {ours}"))
            } else {
                Check::fail(label, "in use by another program")
            }
        }
        Err(e) => Check::warn(label, format!("cannot bind here: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_is_parsed_and_judged() {
        let d12 = OsRelease::parse(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
        );
        assert!(d12.supported());
        assert_eq!(d12.default_postgresql(), 15);
        let u24 = OsRelease::parse("ID=ubuntu\nVERSION_ID=\"24.04\"\n");
        assert!(u24.supported());
        assert_eq!(u24.default_postgresql(), 16);
        let centos = OsRelease::parse("ID=\"centos\"\nVERSION_ID=\"9\"\n");
        assert!(!centos.supported());
    }

    #[test]
    fn sizing_grows_with_rate_and_retention() {
        let base = crate::config::RawConfig::default().validate().unwrap();
        let small = sizing(&base);
        let mut bigger = base.clone();
        bigger.collector.expected_flows_per_second *= 10;
        bigger.retention.raw_days *= 2;
        let big = sizing(&bigger);
        assert!(big.data_dir_bytes > small.data_dir_bytes * 10);
        // 5000 flows/s, 7 days of raw flows at 20 bytes each, plus the 1 GiB spool.
        assert_eq!(small.data_dir_bytes, 5000 * 86_400 * 7 * 20 + (1 << 30));
    }
}
