//! `flowstage-web`: the web daemon (reports, graphs, JSON API, users). Until its
//! implementation lands it prints what it will serve and exits non-zero.

use std::process::ExitCode;

fn main() -> ExitCode {
    println!("flowstage-web is not implemented yet. Planned: login, dashboard, exporter and");
    println!("interface pages, reports with graphs, /api/v1 with OpenAPI, users and grants.");
    println!("Meanwhile: flowstage-collector report --by dst-port --from -1h");
    if std::env::args()
        .nth(1)
        .is_some_and(|a| a == "--help" || a == "-h")
    {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
