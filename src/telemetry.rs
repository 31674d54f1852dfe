//! Logging: the `--log-level` and `--log-format` flags and the tracing
//! subscriber they configure. Logs go to stderr; stdout stays free.

use std::io::IsTerminal;

use clap::{Args, ValueEnum};
use tracing_subscriber::{EnvFilter, fmt};

/// Flags that configure logging; global, so they go before or after the
/// subcommand.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log filter: a level (error, warn, info, debug, trace) or a tracing
    /// directive list such as `info,cluster_relay=debug`.
    #[arg(
        long,
        env = "CLUSTER_RELAY_LOG_LEVEL",
        default_value = "info",
        global = true
    )]
    pub log_level: String,

    /// Log line format: `plain` for people, `json` for log collectors.
    #[arg(long, env = "CLUSTER_RELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain, global = true)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Installs the global tracing subscriber. Fails on a bad `--log-level`.
pub fn init(args: &LogArgs) -> Result<(), String> {
    let filter = EnvFilter::try_new(&args.log_level)
        .map_err(|err| format!("--log-level {:?}: {err}", args.log_level))?;
    let builder = fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match args.log_format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    result.map_err(|err| format!("cannot install the logger: {err}"))
}
