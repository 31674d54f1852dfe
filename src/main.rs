//! The `agent` binary: parse the command line, set up logging and the runtime,
//! hand over to the library, and turn the outcome into an exit code.

use std::process::ExitCode;

use clap::{Parser as _, error::ErrorKind};
use cluster_relay::cli::Cli;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help and --version.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            return ExitCode::from(2);
        }
        Err(err) => {
            // One line naming the problem, like every other start-up error;
            // clap's own text adds usage and a hint on further lines.
            let text = err.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            eprintln!(
                "agent: {} (see --help)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    if let Err(err) = cluster_relay::telemetry::init(&cli.log) {
        eprintln!("agent: {err}");
        return ExitCode::from(2);
    }
    // One thread: the single-threaded runtime, with no hand-offs between
    // threads at all (a multi-threaded one with one worker still runs the
    // accept loop on a second thread and hands each connection over).
    let mut builder = match cli.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n.into());
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("agent: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cluster_relay::cli::run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line naming the problem; the chain of causes joined by ": ".
            eprintln!("agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}
