//! `flowstage-setup routers import`: the example files give exactly the expected
//! tables; `--dry-run -v` shows a readable diff and changes nothing; a re-import
//! changes nothing; malformed lines are named by file and line and nothing is applied.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{self, Pg};

fn provision(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("provision")
        .join(name)
}

fn import(url: &str, exporters: &Path, routers: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowstage-setup"))
        .args(["--config"])
        .arg(support::empty_config())
        .args(["--database", url, "routers", "import", "--exporters"])
        .arg(exporters)
        .arg("--routers")
        .arg(routers)
        .args(extra)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn tables(pg: &Pg, db: &str) -> (String, String) {
    (
        pg.psql(
            db,
            "SELECT string_agg(host(address) || ' ' || coalesce(name, '-'), '; ' ORDER BY address) FROM exporters",
        ),
        pg.psql(
            db,
            "SELECT string_agg(host(e.address) || ' ' || i.ifindex || ' ' || coalesce(i.description, '-'), '; '
                               ORDER BY e.address, i.ifindex)
             FROM interfaces i JOIN exporters e ON e.id = i.exporter_id",
        ),
    )
}

#[test]
fn example_files_import_exactly_once_with_a_readable_dry_run() {
    let pg = Pg::shared();
    let (db, url) = pg.create_database("routers_import");
    let (exporters, routers) = (provision("exporters.cfg"), provision("routers.cfg"));
    // The collector met one of the routers already: unnamed, with an old description.
    let first = import(&url, &exporters, &routers, &["--dry-run"]);
    assert!(first.status.success(), "{}", text(&first));
    pg.psql(
        &db,
        "UPDATE exporters SET name = NULL; INSERT INTO exporters (address) VALUES ('192.0.2.2');
         INSERT INTO interfaces (exporter_id, ifindex, file_description)
         SELECT id, 10, 'old text' FROM exporters WHERE address = '192.0.2.2'",
    );
    let before = tables(pg, &db);
    let dry = import(&url, &exporters, &routers, &["--dry-run", "-v"]);
    assert!(dry.status.success(), "{}", text(&dry));
    insta::assert_snapshot!("routers_dry_run", String::from_utf8_lossy(&dry.stdout));
    assert_eq!(tables(pg, &db), before, "a dry run changes nothing");

    let real = import(&url, &exporters, &routers, &[]);
    assert!(real.status.success(), "{}", text(&real));
    assert_eq!(
        String::from_utf8_lossy(&real.stdout),
        "3 exporter(s) and 5 interface(s) changed\n"
    );
    assert_eq!(
        tables(pg, &db),
        (
            "192.0.2.1 rtr-lib-sl; 192.0.2.2 rtr-core-1; 192.0.2.3 -; 2001:db8::1 rtr-v6-edge"
                .to_string(),
            "192.0.2.1 1 Gi0/0 uplink to core; 192.0.2.1 2 Gi0/1 library LAN; \
             192.0.2.2 10 Te1/1 transit: ExampleNet; 192.0.2.2 11 Te1/2 peering IX; \
             192.0.2.3 5 an unnamed router's interface"
                .to_string()
        )
    );
    // Timestamps are the database's: renamed and described rows were stamped.
    assert_eq!(
        pg.psql(
            &db,
            "SELECT count(*) FROM interfaces WHERE updated_at > now() - interval '1 minute'"
        ),
        "5"
    );
    assert_eq!(
        pg.psql(
            &db,
            "SELECT count(*) FROM audit_log WHERE action = 'routers.import'"
        ),
        "1"
    );
    // Again: nothing to do.
    let again = import(&url, &exporters, &routers, &["-v"]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        "no changes: the database already says what the files say\n"
    );
    assert_eq!(
        pg.psql(
            &db,
            "SELECT count(*) FROM audit_log WHERE action = 'routers.import'"
        ),
        "1"
    );
}

#[test]
fn malformed_lines_are_named_and_nothing_is_applied() {
    let pg = Pg::shared();
    let (db, url) = pg.create_database("routers_bad");
    let dir = tempfile::tempdir().unwrap();
    let exporters = dir.path().join("exporters.cfg");
    let routers = dir.path().join("routers.cfg");
    std::fs::write(
        &exporters,
        "# fine\n192.0.2.1 rtr-a\n192.0.2.300 rtr-b\n192.0.2.4 bad/name\n192.0.2.1 rtr-c\n192.0.2.5\n",
    )
    .unwrap();
    std::fs::write(&routers, "rtr-a 1 uplink\n").unwrap();
    let o = import(&url, &exporters, &routers, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let e = exporters.display();
    for want in [
        format!("{e}:3: \"192.0.2.300\" is not an IP address"),
        format!("{e}:4: \"bad/name\" is not a name"),
        format!("{e}:5: 192.0.2.1 rtr-c: already given on line 2"),
        format!("{e}:6: expected ADDRESS NAME, found 1 fields"),
        "nothing imported: 4 line(s) to fix".to_string(),
    ] {
        assert!(err.contains(&want), "{want}\nin:\n{err}");
    }
    std::fs::write(&exporters, "192.0.2.1 rtr-a\n").unwrap();
    std::fs::write(
        &routers,
        "rtr-a 1 uplink\nrtr-a x uplink\nrtr-a 2\nnobody 3 lost\nrtr-a 1 again\n",
    )
    .unwrap();
    let o = import(&url, &exporters, &routers, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let r = routers.display();
    let e = exporters.display();
    for want in [
        format!("{r}:2: \"x\" is not an ifIndex"),
        format!("{r}:3: rtr-a 2: the description is missing"),
        format!("{r}:5: rtr-a 1: already given on line 1"),
    ] {
        assert!(err.contains(&want), "{want}\nin:\n{err}");
    }
    // The unknown router is found only once the lines parse.
    std::fs::write(&routers, "rtr-a 1 uplink\nnobody 3 lost\n").unwrap();
    let o = import(&url, &exporters, &routers, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!(
            "{r}:2: router \"nobody\" is in neither exporters.cfg nor the database"
        )),
        "{}",
        text(&o)
    );
    assert_eq!(
        tables(pg, &db),
        (String::new(), String::new()),
        "nothing was applied"
    );
    // A name another registered exporter already has.
    pg.psql(
        &db,
        "INSERT INTO exporters (address, file_name) VALUES ('192.0.2.9', 'rtr-a')",
    );
    std::fs::write(&routers, "rtr-a 1 uplink\n").unwrap();
    let o = import(&url, &exporters, &routers, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains(&format!("{e}:1: the name \"rtr-a\" is already 192.0.2.9's")),
        "{}",
        text(&o)
    );
}

#[test]
fn snippets_for_every_vendor_point_at_the_appliance() {
    let snippet = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_flowstage-setup"))
            .args(["--config"])
            .arg(support::empty_config())
            .args([
                "routers",
                "snippet",
                "--address",
                "192.0.2.10",
                "--port",
                "9995",
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let mut all = String::new();
    for (vendor, version) in [
        ("cisco-ios", "5"),
        ("cisco-ios", "9"),
        ("cisco-iosxe", "ipfix"),
        ("junos", "ipfix"),
        ("mikrotik", "9"),
        ("nokia-sros", "ipfix"),
    ] {
        let o = snippet(&["--vendor", vendor, "--version", version]);
        assert!(o.status.success(), "{vendor} {version}: {}", text(&o));
        let out = String::from_utf8(o.stdout).unwrap();
        assert!(out.contains("192.0.2.10") && out.contains("9995"), "{out}");
        all.push_str(&format!("===== {vendor} --version {version}\n{out}"));
    }
    insta::assert_snapshot!("router_snippets", all);
    // Sampling where asked; combinations a platform cannot do are refused.
    let sampled = snippet(&[
        "--vendor",
        "mikrotik",
        "--version",
        "ipfix",
        "--sampling",
        "100",
    ]);
    assert!(String::from_utf8_lossy(&sampled.stdout).contains("sampling-interval=100"));
    for (vendor, version) in [("cisco-ios", "ipfix"), ("junos", "5")] {
        let o = snippet(&["--vendor", vendor, "--version", version]);
        assert_eq!(o.status.code(), Some(2), "{vendor} {version}");
        assert!(text(&o).contains("cannot export"), "{}", text(&o));
    }
}
