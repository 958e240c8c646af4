//! `flowstage-collector`: the UDP flow collector daemon and its data tools.

use std::process::ExitCode;

use clap::Parser;
use flowstage::cli::{collector_main, init_tracing, CollectorCli};

fn main() -> ExitCode {
    let cli = CollectorCli::parse();
    init_tracing();
    match collector_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowstage-collector: {e:#}");
            ExitCode::FAILURE
        }
    }
}
