//! `flowstage-setup` under `--root`: the rendered appliance (snapshots), idempotency,
//! drift detection and repair, validation of answers, the wizard on a pseudo-terminal,
//! crash convergence, unit and init-script checks, and uninstall.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

fn setup_bin() -> &'static str {
    env!("CARGO_BIN_EXE_flowstage-setup")
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn example_answers() -> PathBuf {
    repo().join("provision/answers.example.toml")
}

/// Small stand-ins for the three binaries, so each test root does not get a copy of
/// the debug builds.
fn stand_in_binaries() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        for name in ["flowstage-setup", "flowstage-collector", "flowstage-web"] {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\necho {name} stand-in\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    })
    .path()
}

fn setup_env(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(setup_bin());
    cmd.arg("--root")
        .arg(root)
        .args(args)
        .env("FLOWSTAGE_SETUP_BINARIES_FROM", stand_in_binaries())
        .env_remove("FLOWSTAGE_SETUP_ABORT_AFTER")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn setup(root: &Path, args: &[&str]) -> Output {
    setup_env(root, args, &[])
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn install_example(root: &Path) -> Output {
    let answers = example_answers();
    let o = setup(
        root,
        &["install", "--answers", answers.to_str().unwrap(), "--yes"],
    );
    assert!(o.status.success(), "install failed: {}", text(&o));
    o
}

/// The rendered tree: relative path → (contents, mode), without logs and backups.
fn tree(root: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, (Vec<u8>, u32)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if rel.starts_with("var/log") || rel.starts_with("var/backups") {
                continue;
            }
            let mode = std::fs::symlink_metadata(&p).unwrap().permissions().mode() & 0o7777;
            if p.is_dir() {
                out.insert(format!("{rel}/"), (Vec::new(), mode));
                walk(base, &p, out);
            } else {
                out.insert(rel, (std::fs::read(&p).unwrap(), mode));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Secrets differ per install; keep their shape (keys, length), drop their values.
fn redact_secrets(content: &[u8]) -> String {
    String::from_utf8_lossy(content)
        .lines()
        .map(|l| match l.split_once(" = \"") {
            Some((k, v)) => format!("{k} = <{} hex characters>", v.trim_end_matches('"').len()),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const SECRETS: &str = "etc/flowstage/secrets.toml";

#[test]
fn rendered_files_match_snapshots() {
    let root = tempfile::tempdir().unwrap();
    install_example(root.path());
    let files = tree(root.path());
    let mut listing = String::new();
    for (path, (content, mode)) in &files {
        listing.push_str(&format!("{mode:04o} {path}\n"));
        // Binaries are stand-ins; the certificate and key are generated per install.
        if path.ends_with('/')
            || path.starts_with("usr/local/bin/")
            || path.starts_with("etc/flowstage/tls/")
        {
            continue;
        }
        let shown = if path == SECRETS {
            redact_secrets(content)
        } else {
            String::from_utf8(content.clone()).unwrap()
        };
        let name = path.replace('/', "__");
        insta::assert_snapshot!(name, shown);
    }
    insta::assert_snapshot!("tree", listing);
    // The secrets really are secret and generated.
    let (secrets, mode) = &files[SECRETS];
    assert_eq!(*mode, 0o600);
    assert!(redact_secrets(secrets).contains("database_password = <48 hex characters>"));
    // The answers file is installed as the configuration, verbatim.
    assert_eq!(
        files["etc/flowstage/flowstage.toml"].0,
        std::fs::read(example_answers()).unwrap()
    );
}

#[test]
fn reconfigure_after_install_changes_nothing_not_even_mtimes() {
    let root = tempfile::tempdir().unwrap();
    install_example(root.path());
    let mtimes = |root: &Path| -> BTreeMap<String, (i64, i64)> {
        tree(root)
            .keys()
            .filter(|k| !k.ends_with('/'))
            .map(|k| {
                let m = std::fs::metadata(root.join(k)).unwrap();
                (k.clone(), (m.mtime(), m.mtime_nsec()))
            })
            .collect()
    };
    let before = mtimes(root.path());
    let o = setup(root.path(), &["reconfigure"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("no changes"), "{}", text(&o));
    assert_eq!(before, mtimes(root.path()));
    // Re-running install with the same answers is just as quiet.
    let answers = example_answers();
    let o = setup(
        root.path(),
        &["install", "--answers", answers.to_str().unwrap(), "--yes"],
    );
    assert!(text(&o).contains("no changes"), "{}", text(&o));
    assert_eq!(before, mtimes(root.path()));
}

#[test]
fn drift_is_reported_diffed_and_repaired_and_text_outside_blocks_survives() {
    let root = tempfile::tempdir().unwrap();
    install_example(root.path());
    let r = root.path();
    let ntp = r.join("etc/ntpsec/ntp.conf");
    let rendered_ntp = std::fs::read_to_string(&ntp).unwrap();
    std::fs::write(&ntp, format!("{rendered_ntp}server evil.example.net\n")).unwrap();
    // A shared file: the operator's own lines outside the block, and an edit inside it.
    let aliases = r.join("etc/aliases");
    let rendered_aliases = std::fs::read_to_string(&aliases).unwrap();
    let edited_aliases = format!(
        "postmaster: root\n{}webmaster: root\n",
        rendered_aliases.replace("root: noc@example.net", "root: someone@else.example")
    );
    std::fs::write(&aliases, &edited_aliases).unwrap();
    std::fs::set_permissions(
        r.join("etc/init.d/flowstage-web"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();

    let status = setup(r, &["status"]);
    let out = text(&status);
    assert_eq!(status.status.code(), Some(1), "{out}");
    for (file, what) in [
        ("/etc/ntpsec/ntp.conf", "drift: differs"),
        ("/etc/aliases", "drift: differs"),
        ("/etc/init.d/flowstage-web", "drift: mode 0644, want 0755"),
    ] {
        assert!(
            out.lines().any(|l| l.contains(file) && l.contains(what)),
            "{file}: {what}\n{out}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&setup(r, &["status", "--json"]).stdout).unwrap();
    assert_eq!(json["warn"], 3, "{json}");
    assert_eq!(json["fail"], 0, "{json}");

    let dry = setup(r, &["reconfigure", "--dry-run"]);
    let diff = String::from_utf8_lossy(&dry.stdout).into_owned();
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(diff.contains("-server evil.example.net"), "{diff}");
    assert!(diff.contains("-root: someone@else.example"), "{diff}");
    assert!(diff.contains("+root: noc@example.net"), "{diff}");
    assert!(!diff.contains("-postmaster: root"), "{diff}");
    assert_eq!(
        std::fs::read_to_string(&ntp).unwrap(),
        format!("{rendered_ntp}server evil.example.net\n"),
        "dry run changed a file"
    );

    let fix = setup(r, &["reconfigure"]);
    assert!(fix.status.success(), "{}", text(&fix));
    assert_eq!(std::fs::read_to_string(&ntp).unwrap(), rendered_ntp);
    let repaired = std::fs::read_to_string(&aliases).unwrap();
    assert!(repaired.starts_with("postmaster: root\n"), "{repaired}");
    assert!(repaired.ends_with("webmaster: root\n"), "{repaired}");
    assert!(repaired.contains("root: noc@example.net"), "{repaired}");
    assert!(!repaired.contains("someone@else"), "{repaired}");
    let mode = std::fs::metadata(r.join("etc/init.d/flowstage-web"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
    // The edited versions went to the backup of that run.
    let backups: Vec<PathBuf> = std::fs::read_dir(r.join("var/backups/flowstage"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let saved = backups
        .iter()
        .map(|b| b.join("etc/ntpsec/ntp.conf"))
        .find(|p| p.exists())
        .expect("a backup of the drifted ntp.conf");
    assert!(std::fs::read_to_string(saved)
        .unwrap()
        .contains("evil.example.net"));
    let clean = setup(r, &["status"]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
}

#[test]
fn another_config_file_is_for_checking_not_for_installing() {
    let root = tempfile::tempdir().unwrap();
    install_example(root.path());
    let candidate = root.path().join("candidate.toml");
    std::fs::write(
        &candidate,
        "[site]\nname = \"next\"\nadmin_email = \"noc@example.net\"\n",
    )
    .unwrap();
    let cfg = candidate.strip_prefix(root.path()).unwrap();
    let cfg = format!("/{}", cfg.display());
    // A dry run against a candidate file shows what it would change.
    let dry = setup(root.path(), &["--config", &cfg, "reconfigure", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("would change"), "{}", text(&dry));
    // Applying it is refused, and nothing changes.
    let real = setup(root.path(), &["--config", &cfg, "reconfigure"]);
    assert_eq!(real.status.code(), Some(2), "{}", text(&real));
    assert!(
        text(&real).contains("always use /etc/flowstage/flowstage.toml"),
        "{}",
        text(&real)
    );
    assert!(text(&setup(root.path(), &["reconfigure"])).contains("no changes"));
}

#[test]
fn status_mail_goes_out_only_when_the_result_changes() {
    let root = tempfile::tempdir().unwrap();
    install_example(root.path());
    let r = root.path();
    let first = setup(r, &["status", "--mail"]);
    assert!(
        text(&first).contains(
            "would mail noc@example.net (--root): [flowstage flowstage-example] status: all ok"
        ),
        "{}",
        text(&first)
    );
    let again = setup(r, &["status", "--mail"]);
    assert!(!text(&again).contains("would mail"), "{}", text(&again));
    // Drift turns the result into a warning: one mail, then quiet again.
    std::fs::write(r.join("etc/cron.d/flowstage"), "# edited\n").unwrap();
    let changed = setup(r, &["status", "--mail"]);
    assert_eq!(changed.status.code(), Some(1));
    assert!(
        text(&changed).contains("status: warnings"),
        "{}",
        text(&changed)
    );
    assert!(!text(&setup(r, &["status", "--mail"])).contains("would mail"));
}

#[test]
fn bad_answers_are_refused_naming_the_key_and_nothing_is_written() {
    let cases: &[(&str, &str)] = &[
        ("[collector]\nlisten_on = [\"0.0.0.0:2055\"]\n", "listen_on"),
        ("[colector]\n", "colector"),
        (
            "[collector]\nlisten = [\"300.1.2.3:2055\"]\n",
            "collector.listen",
        ),
        (
            "[collector]\nlisten = [\"0.0.0.0:70000\"]\n",
            "collector.listen",
        ),
        (
            "[collector]\nlisten = [\"0.0.0.0:0\"]\n",
            "collector.listen",
        ),
        (
            "[collector]\nallowed_exporters = [\"10.0.0.0/33\"]\n",
            "collector.allowed_exporters",
        ),
        (
            "[collector]\nmetrics = \"localhost\"\n",
            "collector.metrics",
        ),
        ("[collector]\ntop_n = 0\n", "collector.top_n"),
        ("[web]\nlisten = \"0.0.0.0:99999\"\n", "web.listen"),
        ("[web]\ntls = \"files\"\n", "web.tls"),
        ("[web]\ntls = \"yes\"\n", "web.tls"),
        ("[retention]\nminute_days = 0\n", "retention.minute_days"),
        (
            "[retention]\nminute_days = 30\nhour_days = 7\n",
            "retention.hour_days",
        ),
        (
            "[retention]\nhour_days = 900\nday_days = 365\n",
            "retention.day_days",
        ),
        (
            "[site]\nadmin_email = \"not an address\"\n",
            "site.admin_email",
        ),
        ("[site]\nname = \"bad<name>\"\n", "site.name"),
        ("[time]\ndaemon = \"systemd-timesyncd\"\n", "time.daemon"),
        ("[time]\nservers = []\n", "time.servers"),
        ("[time]\nservers = [\"bad host\"]\n", "time.servers"),
        (
            "[mail]\nrelay_host = \"[smtp.example.net]:0\"\n",
            "mail.relay_host",
        ),
        (
            "[database]\npostgresql_version = 3\n",
            "database.postgresql_version",
        ),
        ("[[exporter]]\naddress = \"rtr1\"\n", "exporter[0].address"),
        (
            "[[exporter]]\naddress = \"192.0.2.1\"\n[[exporter]]\naddress = \"192.0.2.1\"\n",
            "exporter[1].address",
        ),
        (
            "[[exporter]]\naddress = \"192.0.2.1\"\nsampling_rate = 0\n",
            "exporter[0].sampling_rate",
        ),
        (
            "[database]\nurl = \"postgresql://u:secret@localhost/db\"\n",
            "database.url",
        ),
        ("[database]\nurl = \"postgresql://[::1\"\n", "database.url"),
        (
            "[collector]\ndata_dir = \"relative/dir\"\n",
            "collector.data_dir",
        ),
        (
            "[collector]\nmetrics = \"127.0.0.1:0\"\n",
            "collector.metrics",
        ),
        (
            "[collector]\nreceive_buffer_bytes = 4294967296\n",
            "collector.receive_buffer_bytes",
        ),
        (
            "[collector]\nmax_keys_per_bucket = 10\n",
            "collector.max_keys_per_bucket",
        ),
        ("[collector]\nworkers = 1000\n", "collector.workers"),
        (
            "[collector]\nexpected_flows_per_second = 1000000000\n",
            "collector.expected_flows_per_second",
        ),
        ("[retention]\nday_days = 40000\n", "retention.day_days"),
        ("[retention]\nraw_days = 0\n", "retention.raw_days"),
        ("[site\n", "TOML parse error"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (answers, key)) in cases.iter().enumerate() {
        let root = dir.path().join(format!("root{i}"));
        std::fs::create_dir(&root).unwrap();
        let file = dir.path().join(format!("answers{i}.toml"));
        std::fs::write(&file, answers).unwrap();
        let o = setup(
            &root,
            &["install", "--answers", file.to_str().unwrap(), "--yes"],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{answers}: {err}");
        assert!(err.contains(key), "{answers}: expected {key} in: {err}");
        assert_eq!(
            std::fs::read_dir(&root).unwrap().count(),
            0,
            "{answers}: something was written"
        );
    }
    // Values are quoted and the line is named.
    let file = dir.path().join("line.toml");
    std::fs::write(
        &file,
        "[site]\nname = \"x\"\n\n[web]\nlisten = \"0.0.0.0:99999\"\n",
    )
    .unwrap();
    let o = setup(
        &dir.path().join("root0"),
        &["install", "--answers", file.to_str().unwrap(), "--yes"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("line 5: web.listen = \"0.0.0.0:99999\""),
        "{err}"
    );
}

#[test]
fn install_without_a_terminal_or_yes_refuses_instead_of_hanging() {
    let root = tempfile::tempdir().unwrap();
    let o = setup(root.path(), &["install"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no terminal") && err.contains("--answers FILE --yes"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    // An answers file without --yes and without a terminal is refused too.
    let answers = example_answers();
    let o = setup(
        root.path(),
        &["install", "--answers", answers.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}

fn spawn_wizard(root: &Path) -> rexpect::session::PtySession {
    let cmd = format!(
        "env FLOWSTAGE_SETUP_BINARIES_FROM={} TERM=dumb {} --root {} install",
        stand_in_binaries().display(),
        setup_bin(),
        root.display()
    );
    rexpect::spawn(&cmd, Some(30_000)).unwrap()
}

const DOWN: &str = "\x1b[B";

#[test]
fn wizard_asks_only_the_admin_address_then_offers_to_customise() {
    let root = tempfile::tempdir().unwrap();
    let mut p = spawn_wizard(root.path());
    p.exp_string("This machine:").unwrap();
    p.exp_string("Admin e-mail").unwrap();
    // No safe default: an empty or local answer is asked again.
    p.send_line("nobody").unwrap();
    p.exp_string("an address like").unwrap();
    p.send_line("noc@example.org").unwrap();
    p.exp_string("disk estimate").unwrap();
    p.exp_string("Proceed?").unwrap();
    p.send(DOWN).unwrap();
    p.send_line("").unwrap();
    p.exp_string("Site name").unwrap();
    p.send_line("noc-lab").unwrap();
    p.exp_string("Admin e-mail").unwrap();
    p.send_line("").unwrap();
    p.exp_string("Time servers").unwrap();
    p.send_line("ntp1.example.org, ntp2.example.org").unwrap();
    p.exp_string("Mail relay").unwrap();
    p.send_line("[relay.example.org]:587").unwrap();
    p.exp_string("UDP port").unwrap();
    p.send_line("9995").unwrap();
    p.exp_string("Web interface").unwrap();
    p.send_line("127.0.0.1:8088").unwrap();
    p.exp_string("Expected flows").unwrap();
    p.send_line("20000").unwrap();
    p.exp_string("Proceed?").unwrap();
    p.send_line("").unwrap();
    p.exp_string("Flowstage is installed on noc-lab").unwrap();
    p.exp_eof().unwrap();
    let config = std::fs::read_to_string(root.path().join("etc/flowstage/flowstage.toml")).unwrap();
    for want in [
        "name = \"noc-lab\"",
        "admin_email = \"noc@example.org\"",
        "servers = [\"ntp1.example.org\", \"ntp2.example.org\"]",
        "relay_host = \"[relay.example.org]:587\"",
        "listen = [\"0.0.0.0:9995\", \"[::]:9995\"]",
        "listen = \"127.0.0.1:8088\"",
        "expected_flows_per_second = 20000",
    ] {
        assert!(config.contains(want), "{want} missing in:\n{config}");
    }
    let ntp = std::fs::read_to_string(root.path().join("etc/ntpsec/ntp.conf")).unwrap();
    assert!(ntp.contains("server ntp1.example.org iburst"), "{ntp}");
    // What the wizard wrote is a valid configuration for everything else.
    let o = setup(root.path(), &["reconfigure"]);
    assert!(text(&o).contains("no changes"), "{}", text(&o));
}

#[test]
fn wizard_rerun_keeps_the_operators_own_settings() {
    let root = tempfile::tempdir().unwrap();
    let config_path = root.path().join("etc/flowstage/flowstage.toml");
    std::fs::create_dir_all(config_path.parent().unwrap()).unwrap();
    let mine = "# our appliance\n[site]\nadmin_email = \"noc@example.org\"\n\n[collector]\ntop_n = 50 # enough\n\n[[exporter]]\naddress = \"192.0.2.1\"\nname = \"rtr-lib-sl\"\n";
    std::fs::write(&config_path, mine).unwrap();
    let mut p = spawn_wizard(root.path());
    p.exp_string("Admin e-mail").unwrap();
    p.send_line("").unwrap();
    p.exp_string("Proceed?").unwrap();
    p.send_line("").unwrap();
    p.exp_string("Flowstage is installed").unwrap();
    p.exp_eof().unwrap();
    let config = std::fs::read_to_string(&config_path).unwrap();
    for kept in [
        "# our appliance",
        "top_n = 50 # enough",
        "name = \"rtr-lib-sl\"",
        "admin_email = \"noc@example.org\"",
    ] {
        assert!(config.contains(kept), "{kept} lost:\n{config}");
    }
}

#[test]
fn an_install_interrupted_after_any_step_converges_when_rerun() {
    let reference = tempfile::tempdir().unwrap();
    install_example(reference.path());
    let want = tree(reference.path());
    let answers = example_answers();
    let args = ["install", "--answers", answers.to_str().unwrap(), "--yes"];
    for step in flowstage::setup::steps::STEP_NAMES {
        let root = tempfile::tempdir().unwrap();
        let o = setup_env(root.path(), &args, &[("FLOWSTAGE_SETUP_ABORT_AFTER", step)]);
        assert_eq!(o.status.code(), Some(99), "{step}: {}", text(&o));
        let o = setup(root.path(), &args);
        assert!(o.status.success(), "{step}: {}", text(&o));
        let got = tree(root.path());
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "after {step}"
        );
        for (path, (content, mode)) in &want {
            let (got_content, got_mode) = &got[path];
            assert_eq!(mode, got_mode, "{path} after {step}");
            if path == SECRETS {
                assert_eq!(redact_secrets(content), redact_secrets(got_content));
            } else if path.starts_with("etc/flowstage/tls/") && !path.ends_with('/') {
                // Generated per install; what matters is that there is one.
                assert!(!got_content.is_empty(), "{path} after {step}");
            } else {
                assert!(content == got_content, "{path} differs after {step}");
            }
        }
    }
}

#[test]
fn units_verify_and_init_scripts_parse() {
    let root = tempfile::tempdir().unwrap();
    install_example(root.path());
    let r = root.path();
    for script in ["flowstage-collector", "flowstage-web"] {
        let path = r.join("etc/init.d").join(script);
        let o = Command::new("sh").arg("-n").arg(&path).output().unwrap();
        assert!(o.status.success(), "{script}: {}", text(&o));
    }
    let bad = r.join("broken.sh");
    std::fs::write(&bad, "case x in\n").unwrap();
    assert!(!Command::new("sh")
        .arg("-n")
        .arg(&bad)
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success());

    if which("systemd-analyze").is_none() {
        eprintln!("skipping systemd-analyze verify: systemd-analyze is not installed");
        return;
    }
    // verify --root needs the targets the units name and the commands they run.
    let sys = r.join("lib/systemd/system");
    std::fs::create_dir_all(&sys).unwrap();
    for dir in ["/lib/systemd/system", "/usr/lib/systemd/system"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".target") && e.path().is_file() {
                let _ = std::fs::copy(e.path(), sys.join(&name));
            }
        }
    }
    std::fs::create_dir_all(r.join("bin")).unwrap();
    std::fs::copy(which("kill").unwrap(), r.join("bin/kill")).unwrap();
    let units: Vec<PathBuf> = [
        "flowstage-collector.service",
        "flowstage-web.service",
        "flowstage-status.service",
        "flowstage-status.timer",
    ]
    .iter()
    .map(|u| r.join("etc/systemd/system").join(u))
    .collect();
    let verify = |units: &[PathBuf]| {
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", r.display()))
            .args(units)
            .output()
            .unwrap()
    };
    let o = verify(&units);
    assert!(o.status.success(), "{}", text(&o));
    // And it does catch a unit that cannot run.
    let broken = r.join("etc/systemd/system/broken.service");
    std::fs::write(
        &broken,
        "[Service]\nExecStart=/usr/local/bin/does-not-exist\n",
    )
    .unwrap();
    assert!(!verify(&[broken]).status.success());
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(cmd))
            .find(|p| p.is_file())
    })
}

#[test]
fn uninstall_restores_originals_and_removes_what_it_added() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let originals = [
        (
            "etc/postfix/main.cf",
            "# the distribution's main.cf\ninet_interfaces = all\n",
        ),
        (
            "etc/postgresql/15/main/pg_hba.conf",
            "local all postgres peer\nlocal all all peer\n",
        ),
        ("etc/aliases", "postmaster: root\n"),
    ];
    for (path, content) in originals {
        std::fs::create_dir_all(r.join(path).parent().unwrap()).unwrap();
        std::fs::write(r.join(path), content).unwrap();
    }
    install_example(r);
    let hba = std::fs::read_to_string(r.join("etc/postgresql/15/main/pg_hba.conf")).unwrap();
    assert!(hba.starts_with("# BEGIN FLOWSTAGE MANAGED BLOCK"), "{hba}");
    assert!(
        hba.ends_with("local all postgres peer\nlocal all all peer\n"),
        "{hba}"
    );
    // A second run keeps the backup of the distribution's file as the original.
    setup(r, &["reconfigure"]);

    let o = setup(r, &["uninstall", "--yes"]);
    assert!(o.status.success(), "{}", text(&o));
    for (path, content) in originals {
        assert_eq!(
            std::fs::read_to_string(r.join(path)).unwrap(),
            content,
            "{path}"
        );
    }
    for gone in [
        "etc/ntpsec/ntp.conf",
        "etc/systemd/system/flowstage-collector.service",
        "etc/systemd/system/flowstage-status.timer",
        "etc/init.d/flowstage-web",
        "etc/cron.d/flowstage",
        "etc/sysctl.d/60-flowstage.conf",
        "usr/local/bin/flowstage-collector",
    ] {
        assert!(!r.join(gone).exists(), "{gone} is still there");
    }
    assert!(r.join("etc/flowstage/flowstage.toml").exists());
    assert!(r.join(SECRETS).exists());

    let o = setup(r, &["uninstall", "--yes", "--purge-data"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!r.join("etc/flowstage").exists());
    assert!(!r.join("var/lib/flowstage").exists());
}

#[test]
fn a_self_signed_certificate_is_generated_once_and_kept() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let answers = r.join("answers.toml");
    std::fs::write(
        &answers,
        "[web]\ntls = \"self-signed\"\nlisten = \"0.0.0.0:8443\"\n",
    )
    .unwrap();
    let o = setup(
        r,
        &["install", "--answers", answers.to_str().unwrap(), "--yes"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("https://127.0.0.1:8443/"), "{}", text(&o));
    let cert = r.join("etc/flowstage/tls/self-signed.crt");
    let key = r.join("etc/flowstage/tls/self-signed.key");
    let pem = std::fs::read_to_string(&cert).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!((mode(&cert), mode(&key)), (0o644, 0o640));
    let o = setup(r, &["reconfigure"]);
    assert!(text(&o).contains("no changes"), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), pem);
    // The key never shows up in a diff.
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::write(&cert, "not a certificate").unwrap();
    let dry = setup(r, &["reconfigure", "--dry-run"]);
    assert!(String::from_utf8_lossy(&dry.stdout).contains("secret file, contents not shown"));
}

#[test]
fn chrony_or_no_time_daemon_render_as_configured() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let answers = r.join("chrony.toml");
    std::fs::write(
        &answers,
        "[time]\ndaemon = \"chrony\"\nservers = [\"ntp1.example.net\", \"pool.example.org\"]\n",
    )
    .unwrap();
    let o = setup(
        r,
        &["install", "--answers", answers.to_str().unwrap(), "--yes"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let chrony = std::fs::read_to_string(r.join("etc/chrony/chrony.conf")).unwrap();
    insta::assert_snapshot!("chrony.conf", chrony);
    assert!(!r.join("etc/ntpsec/ntp.conf").exists());

    let none = tempfile::tempdir().unwrap();
    let answers = none.path().join("none.toml");
    std::fs::write(&answers, "[time]\ndaemon = \"none\"\n").unwrap();
    let o = setup(
        none.path(),
        &["install", "--answers", answers.to_str().unwrap(), "--yes"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("time keeping is left to the host"),
        "{}",
        text(&o)
    );
    assert!(!none.path().join("etc/ntpsec").exists());
    assert!(!none.path().join("etc/chrony").exists());
}

#[test]
fn uninstall_without_a_terminal_or_yes_refuses() {
    let root = tempfile::tempdir().unwrap();
    install_example(root.path());
    let o = setup(root.path(), &["uninstall"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(root.path().join("etc/init.d/flowstage-web").exists());
}

#[test]
fn check_reports_every_preflight_item_as_json() {
    let root = tempfile::tempdir().unwrap();
    let o = setup(root.path(), &["check", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for want in [
        "os",
        "root",
        "cpus",
        "memory",
        "mounts",
        "disk data",
        "disk database",
        "time sync",
        "commands",
    ] {
        assert!(names.contains(&want), "{want} missing: {names:?}");
    }
    let worst = ["ok", "warn", "fail"]
        .iter()
        .rposition(|l| {
            v["checks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["level"] == *l)
        })
        .unwrap();
    assert_eq!(o.status.code(), Some(worst as i32), "{v}");
}
