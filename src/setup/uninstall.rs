//! `flowstage-setup uninstall`: stop and remove Flowstage's services, units, init
//! scripts, cron entries and binaries; take its blocks out of shared files and put back
//! the originals of files it replaced (from `/var/backups/flowstage`). Data, database,
//! configuration and the system user stay unless `--purge-data`. Packages stay: other
//! software may use them.

use std::path::Path;
use std::process::Command;

use anyhow::Context as _;

use super::files::{self, Original};
use super::host::{systemd_is_pid1, Host};
use super::preflight::OsRelease;
use super::render::{self, USER};
use crate::config::Config;

fn remove(host: &Host, path: &str) -> anyhow::Result<bool> {
    let p = host.path(path);
    match std::fs::remove_file(&p) {
        Ok(()) => {
            host.log(format!("removed {path}"));
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

/// Put back what a wholly managed file replaced, or remove it if Flowstage created it.
fn restore_whole(host: &Host, path: &str) -> anyhow::Result<Option<String>> {
    let on_disk = host.path(path);
    if !on_disk.exists() {
        return Ok(None);
    }
    match files::original(host, Path::new(path)) {
        Some(Original::Saved(copy)) => {
            let bytes = std::fs::read(&copy)
                .with_context(|| format!("reading backup {}", copy.display()))?;
            std::fs::write(&on_disk, bytes)
                .with_context(|| format!("restoring {}", on_disk.display()))?;
            Ok(Some(format!("restored {path} from {}", copy.display())))
        }
        Some(Original::Absent) => {
            remove(host, path)?;
            Ok(Some(format!("removed {path}")))
        }
        // Not Flowstage's doing (or its backups are gone): leave it alone.
        None => Ok(None),
    }
}

/// Take the managed block out of a shared file.
fn remove_block(host: &Host, path: &str) -> anyhow::Result<Option<String>> {
    let on_disk = host.path(path);
    let Ok(text) = std::fs::read_to_string(&on_disk) else {
        return Ok(None);
    };
    let Some(rest) = files::remove_block(&text) else {
        return Ok(None);
    };
    if rest.trim().is_empty() && files::original(host, Path::new(path)) == Some(Original::Absent) {
        remove(host, path)?;
        return Ok(Some(format!("removed {path} (Flowstage had created it)")));
    }
    std::fs::write(&on_disk, rest).with_context(|| format!("writing {}", on_disk.display()))?;
    Ok(Some(format!("removed the Flowstage block from {path}")))
}

pub fn run(host: &Host, config: &Config, purge: bool) -> anyhow::Result<()> {
    let live = host.is_live();
    let systemd = live && systemd_is_pid1();
    let say = |s: String| {
        eprintln!("  {s}");
        host.log(&s);
    };
    // Stop services first, so nothing runs from files about to go.
    if live {
        for service in render::SERVICES {
            if systemd {
                let _ = host.run(Command::new("systemctl").args(["disable", "--now", service]));
            } else if host.path(format!("/etc/init.d/{service}")).exists() {
                let _ = host.run(Command::new(format!("/etc/init.d/{service}")).arg("stop"));
                let _ = host.run(Command::new("update-rc.d").args([service, "remove"]));
            }
            if let Some(pid) = super::steps::flowstage_pid(systemd, host, service) {
                anyhow::bail!(
                    "{service} (pid {pid}) is still running; stop it and run uninstall again"
                );
            }
            say(format!("stopped {service}"));
        }
        if systemd {
            let _ = host.run(
                Command::new("systemctl")
                    .args(["disable", "--now"])
                    .args(render::TIMERS),
            );
        }
    }
    for unit in render::SYSTEMD_UNITS {
        if remove(host, &format!("/etc/systemd/system/{unit}"))? {
            say(format!("removed unit {unit}"));
        }
    }
    if systemd {
        let _ = host.run(Command::new("systemctl").arg("daemon-reload"));
    }
    for service in render::SERVICES {
        if remove(host, &format!("/etc/init.d/{service}"))? {
            say(format!("removed /etc/init.d/{service}"));
        }
    }
    for path in [
        render::CRON_FILE,
        render::SYSCTL_CONF,
        render::LOGROTATE_FILE,
    ] {
        if remove(host, path)? {
            say(format!("removed {path}"));
        }
    }
    for bin in super::steps::installed_binaries() {
        if remove(host, &bin)? {
            say(format!("removed {bin}"));
        }
    }
    // Shared system files: originals back, blocks out.
    let os = OsRelease::read(host);
    let pg_hba = render::pg_hba_path(render::postgresql_version(config, &os));
    let mut time_restored = Vec::new();
    for (path, service) in [
        (render::NTPSEC_CONF, "ntpsec"),
        (render::CHRONY_CONF, "chrony"),
    ] {
        if let Some(msg) = restore_whole(host, path)? {
            time_restored.push(service);
            say(msg);
        }
    }
    let postfix_changed = restore_whole(host, render::POSTFIX_MAIN_CF)?.inspect(|m| say(m.clone()));
    let aliases_changed = remove_block(host, render::ALIASES)?.inspect(|m| say(m.clone()));
    let hba_changed = remove_block(host, &pg_hba)?.inspect(|m| say(m.clone()));
    if live {
        let restart = |name: &str, verb: &str| {
            let _ = if systemd {
                host.run(Command::new("systemctl").args([verb, name]))
            } else {
                host.run(Command::new(format!("/etc/init.d/{name}")).arg(verb))
            };
        };
        if postfix_changed.is_some() {
            restart("postfix", "restart");
        }
        if aliases_changed.is_some() {
            let _ = host.run(&mut Command::new("newaliases"));
        }
        // A running time daemon goes on with the restored configuration.
        for service in time_restored {
            if Command::new(format!("/etc/init.d/{service}"))
                .arg("status")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
                || systemd
            {
                restart(service, if systemd { "try-restart" } else { "restart" });
            }
        }
        if hba_changed.is_some() || purge {
            let version = render::postgresql_version(config, &os).to_string();
            let _ = host.run(Command::new("pg_ctlcluster").args([&version, "main", "reload"]));
        }
    }
    if purge {
        let (db, role) = render::database_names(config);
        if live {
            for sql in [
                format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    db.replace('"', "\"\"")
                ),
                format!("DROP ROLE IF EXISTS \"{}\"", role.replace('"', "\"\"")),
            ] {
                host.run_with_input(
                    Command::new("runuser").args([
                        "-u",
                        "postgres",
                        "--",
                        "psql",
                        "-X",
                        "-q",
                        "-v",
                        "ON_ERROR_STOP=1",
                        "-d",
                        "postgres",
                    ]),
                    Some(&sql),
                )
                .with_context(|| format!("dropping the database ({sql})"))?;
            }
            say(format!("dropped database {db} and role {role}"));
        }
        // The backups hold old secrets and keys too.
        for dir in [
            config.collector.data_dir.clone(),
            "/etc/flowstage".into(),
            files::BACKUP_ROOT.into(),
        ] {
            let p = host.path(&dir);
            if p.exists() {
                std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
                say(format!("deleted {}", dir.display()));
            }
        }
        if live && nix::unistd::User::from_name(USER)?.is_some() {
            host.run(Command::new("userdel").arg(USER))?;
            if nix::unistd::Group::from_name(USER)?.is_some() {
                let _ = host.run(Command::new("groupdel").arg(USER));
            }
            say(format!("removed system user {USER}"));
        }
    } else {
        say(format!(
            "kept: database, {}, /etc/flowstage, user {USER} (--purge-data removes them)",
            config.collector.data_dir.display()
        ));
    }
    say(format!(
        "kept: installed packages, logs in {}, backups in {}",
        render::LOG_DIR,
        files::BACKUP_ROOT
    ));
    eprintln!("Flowstage is uninstalled.");
    Ok(())
}
