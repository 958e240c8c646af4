//! `flowstage-setup routers import`: exporter names and interface descriptions from the
//! Stager-style text files operators already keep (`exporters.cfg`: address and name;
//! `routers.cfg`: router, ifIndex, description), compared with the database and applied
//! in one transaction, or shown as a readable diff with `--dry-run -v`. Timestamps are
//! the database's own (triggers), so nobody updates them by hand.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use anyhow::Context;
use tokio_postgres::Client;

/// A line that could not be read: file, line number and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct LineError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExporterLine {
    pub address: IpAddr,
    pub name: String,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceLine {
    /// A name from exporters.cfg (or the database), or an address.
    pub router: String,
    pub ifindex: u32,
    pub description: String,
    pub line: usize,
}

/// Content lines with their numbers: `#` starts a comment, blank lines are skipped.
fn content(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, l)| {
        let l = l.split_once('#').map_or(l, |(before, _)| before).trim();
        (!l.is_empty()).then_some((i + 1, l))
    })
}

/// The first whitespace-separated token and the rest.
fn token(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    s.split_at(end)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// `exporters.cfg`: `ADDRESS NAME` per line.
pub fn parse_exporters(text: &str, file: &str) -> Result<Vec<ExporterLine>, Vec<LineError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let err = |line: usize, message: String| LineError {
        file: file.to_string(),
        line,
        message,
    };
    for (n, l) in content(text) {
        let fields: Vec<&str> = l.split_whitespace().collect();
        match fields.as_slice() {
            [address, name] => match address.parse::<IpAddr>() {
                Ok(a) if valid_name(name) => {
                    if let Some(first) = out
                        .iter()
                        .find(|e: &&ExporterLine| e.address == a || e.name == *name)
                    {
                        errors.push(err(
                            n,
                            format!("{address} {name}: already given on line {}", first.line),
                        ));
                    } else {
                        out.push(ExporterLine {
                            address: a,
                            name: name.to_string(),
                            line: n,
                        });
                    }
                }
                Ok(_) => errors.push(err(
                    n,
                    format!("{name:?} is not a name (letters, digits, - _ . ; at most 63)"),
                )),
                Err(_) => errors.push(err(n, format!("{address:?} is not an IP address"))),
            },
            _ => errors.push(err(
                n,
                format!(
                    "expected ADDRESS NAME, found {} fields: {l:?}",
                    fields.len()
                ),
            )),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// `routers.cfg`: `ROUTER IFINDEX DESCRIPTION...` per line; the description is the
/// rest of the line (quotes around it are dropped).
pub fn parse_routers(text: &str, file: &str) -> Result<Vec<InterfaceLine>, Vec<LineError>> {
    let mut out: Vec<InterfaceLine> = Vec::new();
    let mut errors = Vec::new();
    let err = |line: usize, message: String| LineError {
        file: file.to_string(),
        line,
        message,
    };
    for (n, l) in content(text) {
        let (router, rest) = token(l);
        let (ifindex, rest) = token(rest);
        if ifindex.is_empty() {
            errors.push(err(
                n,
                format!("expected ROUTER IFINDEX DESCRIPTION, found {l:?}"),
            ));
            continue;
        }
        let description = rest.trim().trim_matches('"').to_string();
        let Ok(ifindex) = ifindex.parse::<u32>() else {
            errors.push(err(
                n,
                format!("{ifindex:?} is not an ifIndex (0 to 4294967295)"),
            ));
            continue;
        };
        if description.is_empty() {
            errors.push(err(
                n,
                format!("{router} {ifindex}: the description is missing"),
            ));
            continue;
        }
        if description.len() > 255 || description.chars().any(char::is_control) {
            errors.push(err(
                n,
                "the description is longer than 255 characters or has control characters".into(),
            ));
            continue;
        }
        if let Some(first) = out
            .iter()
            .find(|i| i.router == router && i.ifindex == ifindex)
        {
            errors.push(err(
                n,
                format!("{router} {ifindex}: already given on line {}", first.line),
            ));
            continue;
        }
        out.push(InterfaceLine {
            router: router.to_string(),
            ifindex,
            description,
            line: n,
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// One change the import makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    AddExporter {
        address: IpAddr,
        name: String,
    },
    RenameExporter {
        address: IpAddr,
        from: Option<String>,
        to: String,
    },
    AddInterface {
        exporter: String,
        address: IpAddr,
        ifindex: u32,
        description: String,
    },
    Describe {
        exporter: String,
        address: IpAddr,
        ifindex: u32,
        from: Option<String>,
        to: String,
    },
}

/// What the files say compared with the database. Routers named in routers.cfg must be
/// in exporters.cfg, registered under that name, or be an address.
pub async fn plan(
    client: &Client,
    exporters: &[ExporterLine],
    interfaces: &[InterfaceLine],
    files: (&str, &str),
) -> anyhow::Result<Result<Vec<Change>, Vec<LineError>>> {
    let (exporters_file, routers_file) = files;
    let known: Vec<(IpAddr, Option<String>)> = client
        .query("SELECT address, file_name FROM exporters", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut changes = Vec::new();
    let mut errors = Vec::new();
    for e in exporters {
        // A name is one router's: another registered exporter keeping it would make
        // reports and grants ambiguous.
        if let Some((other, _)) = known.iter().find(|(a, n)| {
            *a != e.address
                && n.as_deref() == Some(e.name.as_str())
                && !exporters.iter().any(|x| x.address == *a)
        }) {
            errors.push(LineError {
                file: exporters_file.to_string(),
                line: e.line,
                message: format!(
                    "the name {:?} is already {other}'s; rename that one in the file too",
                    e.name
                ),
            });
            continue;
        }
        match known.iter().find(|(a, _)| *a == e.address) {
            None => changes.push(Change::AddExporter {
                address: e.address,
                name: e.name.clone(),
            }),
            Some((_, name)) if name.as_deref() != Some(e.name.as_str()) => {
                changes.push(Change::RenameExporter {
                    address: e.address,
                    from: name.clone(),
                    to: e.name.clone(),
                })
            }
            Some(_) => {}
        }
    }
    for i in interfaces {
        let address = exporters
            .iter()
            .find(|e| e.name == i.router)
            .map(|e| e.address)
            .or_else(|| {
                known
                    .iter()
                    .find(|(_, n)| n.as_deref() == Some(i.router.as_str()))
                    .map(|(a, _)| *a)
            })
            .or_else(|| i.router.parse::<IpAddr>().ok());
        let Some(address) = address else {
            errors.push(LineError {
                file: routers_file.to_string(),
                line: i.line,
                message: format!("router {:?} is in neither exporters.cfg nor the database, and is not an address", i.router),
            });
            continue;
        };
        let current: Option<Option<String>> = client
            .query_opt(
                "SELECT i.file_description FROM interfaces i JOIN exporters e ON e.id = i.exporter_id
                 WHERE e.address = $1 AND i.ifindex = $2",
                &[&address, &i64::from(i.ifindex)],
            )
            .await?
            .map(|r| r.get(0));
        match current {
            None => changes.push(Change::AddInterface {
                exporter: i.router.clone(),
                address,
                ifindex: i.ifindex,
                description: i.description.clone(),
            }),
            Some(d) if d.as_deref() != Some(i.description.as_str()) => {
                changes.push(Change::Describe {
                    exporter: i.router.clone(),
                    address,
                    ifindex: i.ifindex,
                    from: d,
                    to: i.description.clone(),
                })
            }
            Some(_) => {}
        }
    }
    Ok(if errors.is_empty() {
        Ok(changes)
    } else {
        Err(errors)
    })
}

/// The changes as a readable diff (`-v`) or a summary.
pub fn describe(changes: &[Change], verbose: bool, dry_run: bool) -> String {
    let mut o = String::new();
    if verbose {
        for c in changes {
            let _ = match c {
                Change::AddExporter { address, name } => writeln!(o, "+ exporter {address} {name}"),
                Change::RenameExporter { address, from, to } => writeln!(
                    o,
                    "~ exporter {address} {} -> {to}",
                    from.as_deref().unwrap_or("(unnamed)")
                ),
                Change::AddInterface {
                    exporter,
                    ifindex,
                    description,
                    ..
                } => {
                    writeln!(o, "+ interface {exporter} {ifindex} {description:?}")
                }
                Change::Describe {
                    exporter,
                    ifindex,
                    from,
                    to,
                    ..
                } => writeln!(
                    o,
                    "~ interface {exporter} {ifindex} {} -> {to:?}",
                    from.as_deref()
                        .map_or("(no description)".to_string(), |f| format!("{f:?}"))
                ),
            };
        }
    }
    let exporters = changes
        .iter()
        .filter(|c| {
            matches!(
                c,
                Change::AddExporter { .. } | Change::RenameExporter { .. }
            )
        })
        .count();
    let interfaces = changes.len() - exporters;
    if changes.is_empty() {
        o.push_str("no changes: the database already says what the files say\n");
    } else if dry_run {
        let _ = writeln!(
            o,
            "{exporters} exporter(s) and {interfaces} interface(s) would change; run without --dry-run to apply"
        );
    } else {
        let _ = writeln!(
            o,
            "{exporters} exporter(s) and {interfaces} interface(s) changed"
        );
    }
    o
}

/// Apply the changes in one transaction, re-pick the shown names by `precedence`, then
/// record the changes in the audit log.
pub async fn apply(
    client: &mut Client,
    changes: &[Change],
    actor: &str,
    precedence: &[String],
) -> anyhow::Result<()> {
    let tx = client.transaction().await?;
    for c in changes {
        match c {
            Change::AddExporter { address, name }
            | Change::RenameExporter {
                address, to: name, ..
            } => {
                tx.execute(
                    "INSERT INTO exporters (address, file_name) VALUES ($1, $2)
                     ON CONFLICT (address) DO UPDATE SET file_name = EXCLUDED.file_name",
                    &[address, name],
                )
                .await?;
            }
            Change::AddInterface {
                address,
                ifindex,
                description,
                ..
            }
            | Change::Describe {
                address,
                ifindex,
                to: description,
                ..
            } => {
                // An interface of an exporter not seen in flows yet registers it too.
                tx.execute(
                    "INSERT INTO exporters (address) VALUES ($1) ON CONFLICT (address) DO NOTHING",
                    &[address],
                )
                .await?;
                tx.execute(
                    "INSERT INTO interfaces (exporter_id, ifindex, file_description)
                     SELECT id, $2, $3 FROM exporters WHERE address = $1
                     ON CONFLICT (exporter_id, ifindex) DO UPDATE SET file_description = EXCLUDED.file_description",
                    &[address, &i64::from(*ifindex), description],
                )
                .await?;
            }
        }
    }
    tx.execute("SELECT flowstage_apply_names($1)", &[&precedence])
        .await?;
    tx.commit().await?;
    if !changes.is_empty() {
        crate::users::audit(
            client,
            actor,
            "routers.import",
            "",
            describe(changes, false, false).trim_end(),
        )
        .await?;
    }
    Ok(())
}

/// Read a file of the import, naming it in errors.
pub fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}
