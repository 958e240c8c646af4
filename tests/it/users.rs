//! Users and grants through `flowstage-setup users`, against a throwaway database:
//! argon2id hashes stored, grants as rules that cover interfaces discovered later,
//! disabled users, and the audit log.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::support::Pg;

fn users(url: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowstage-setup"))
        .args(["--config", "/dev/null", "--database", url, "users"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn migrated_database(name: &str) -> (&'static Pg, String, String) {
    let pg = Pg::shared();
    let (db, url) = pg.create_database(name);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut client = flowstage::db::connect(&url).await.unwrap();
            flowstage::db::migrate(&mut client).await.unwrap();
        });
    (pg, db, url)
}

fn visible(pg: &Pg, db: &str, user: &str) -> String {
    pg.psql(
        db,
        &format!(
            "SELECT coalesce(string_agg(host(e.address) || ':' || v.ifindex, ' ' ORDER BY e.address, v.ifindex), '')
             FROM flowstage_visible_interfaces((SELECT id FROM users WHERE name = '{user}')) v
             JOIN exporters e ON e.id = v.exporter_id"
        ),
    )
}

#[test]
fn users_grants_and_the_audit_log() {
    let (pg, db, url) = migrated_database("users");
    pg.psql(
        &db,
        "INSERT INTO exporters (address, name, file_name) VALUES ('192.0.2.1', 'rtr1', 'rtr1'), ('192.0.2.2', 'rtr2', 'rtr2');
         INSERT INTO interfaces (exporter_id, ifindex, description)
           SELECT id, i, CASE WHEN i = 1 THEN 'uplink transit' ELSE 'customer acme' END
           FROM exporters, generate_series(1, 2) i;",
    );
    let out = ok(users(&url, &["add", "ops"], None));
    let password = out.trim().rsplit(' ').next().unwrap().to_string();
    assert_eq!(password.len(), 20, "{out}");
    let hash = pg.psql(&db, "SELECT password_hash FROM users WHERE name = 'ops'");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains(&password));
    assert!(flowstage::users::verify_password(&hash, &password));
    ok(users(
        &url,
        &["add", "boss", "--role", "admin", "--password-stdin"],
        Some("a long enough password\n"),
    ));
    let hash = pg.psql(&db, "SELECT password_hash FROM users WHERE name = 'boss'");
    assert!(flowstage::users::verify_password(
        &hash,
        "a long enough password"
    ));

    // Nothing granted yet; admins see everything.
    assert_eq!(visible(pg, &db, "ops"), "");
    assert_eq!(
        visible(pg, &db, "boss"),
        "192.0.2.1:1 192.0.2.1:2 192.0.2.2:1 192.0.2.2:2"
    );

    let out = ok(users(&url, &["grant", "ops", "--exporter", "rtr1"], None));
    assert!(out.contains("exporter rtr1, every interface"), "{out}");
    let out = ok(users(
        &url,
        &[
            "grant",
            "ops",
            "--exporter",
            "192.0.2.2",
            "--description",
            "^customer",
        ],
        None,
    ));
    let regex_grant: i32 = out
        .split(':')
        .next()
        .unwrap()
        .trim_start_matches("grant ")
        .parse()
        .unwrap();
    assert_eq!(
        visible(pg, &db, "ops"),
        "192.0.2.1:1 192.0.2.1:2 192.0.2.2:2"
    );
    // An interface seen later is covered by the rules already there.
    pg.psql(
        &db,
        "INSERT INTO interfaces (exporter_id, ifindex, description)
         SELECT id, 7, 'customer new' FROM exporters WHERE name IN ('rtr1', 'rtr2')",
    );
    assert_eq!(
        visible(pg, &db, "ops"),
        "192.0.2.1:1 192.0.2.1:2 192.0.2.1:7 192.0.2.2:2 192.0.2.2:7"
    );
    ok(users(
        &url,
        &["revoke", "ops", &regex_grant.to_string()],
        None,
    ));
    assert_eq!(
        visible(pg, &db, "ops"),
        "192.0.2.1:1 192.0.2.1:2 192.0.2.1:7"
    );
    // A switch that calls itself "rtr1" over SNMP (or in DNS) is not the operator's
    // rtr1: grants follow addresses and the operator's own names only.
    pg.psql(
        &db,
        "INSERT INTO exporters (address, name, snmp_name) VALUES ('192.0.2.66', 'rtr1', 'rtr1');
         INSERT INTO interfaces (exporter_id, ifindex) SELECT id, 1 FROM exporters WHERE host(address) = '192.0.2.66'",
    );
    assert_eq!(
        visible(pg, &db, "ops"),
        "192.0.2.1:1 192.0.2.1:2 192.0.2.1:7"
    );

    // Groups: several interfaces as one customer.
    pg.psql(
        &db,
        "INSERT INTO interface_groups (name) VALUES ('acme');
         INSERT INTO interface_group_members
           SELECT g.id, e.id, 2 FROM interface_groups g, exporters e WHERE g.name = 'acme' AND e.name = 'rtr2'",
    );
    ok(users(
        &url,
        &["add", "acme", "--password-stdin"],
        Some("acme's long password\n"),
    ));
    ok(users(&url, &["grant", "acme", "--group", "acme"], None));
    assert_eq!(visible(pg, &db, "acme"), "192.0.2.2:2");

    // Mistakes are refused with the offending value.
    let bad = users(
        &url,
        &[
            "grant",
            "ops",
            "--exporter",
            "rtr1",
            "--description",
            "(unclosed",
        ],
        None,
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("(unclosed"),
        "{bad:?}"
    );
    let bad = users(&url, &["grant", "nobody", "--all"], None);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no user \"nobody\""),
        "{bad:?}"
    );
    let bad = users(&url, &["add", "Bad Name"], None);
    assert!(!bad.status.success());
    let bad = users(&url, &["add", "short", "--password-stdin"], Some("tiny\n"));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("at least 10"),
        "{bad:?}"
    );

    // Disabled users see nothing.
    ok(users(&url, &["disable", "ops"], None));
    assert_eq!(visible(pg, &db, "ops"), "");
    ok(users(&url, &["enable", "ops"], None));
    ok(users(
        &url,
        &["passwd", "ops", "--password-stdin"],
        Some("another long password\n"),
    ));
    let hash = pg.psql(&db, "SELECT password_hash FROM users WHERE name = 'ops'");
    assert!(flowstage::users::verify_password(
        &hash,
        "another long password"
    ));

    let list: serde_json::Value =
        serde_json::from_str(&ok(users(&url, &["list", "--json"], None))).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme", "boss", "ops"]);
    assert_eq!(list[2]["grants"].as_array().unwrap().len(), 1, "{list}");

    let audit = pg.psql(
        &db,
        "SELECT string_agg(action || ' ' || target, ', ' ORDER BY id) FROM audit_log",
    );
    assert_eq!(
        audit,
        "user.add ops, user.add boss, grant.add ops, grant.add ops, grant.revoke ops, \
         user.add acme, grant.add acme, user.disable ops, user.enable ops, user.passwd ops"
    );
}
