//! `flowstage-web`: the web daemon.

use std::process::ExitCode;

use clap::Parser;
use flowstage::cli::init_tracing;
use flowstage::web::{web_main, WebCli};

fn main() -> ExitCode {
    let cli = WebCli::parse();
    init_tracing();
    match web_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowstage-web: {e:#}");
            ExitCode::FAILURE
        }
    }
}
