//! The `lakebase-proxy` binary: parse the command line, set up logging, run until a signal.

use std::process::ExitCode;

use clap::Parser;
use lakebase_proxy::cli::{Cli, LogFormat};
use lakebase_proxy::config::Config;
use lakebase_proxy::ops::health::Health;
use lakebase_proxy::ops::http;
use lakebase_proxy::proxy::RunningProxy;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log_level);
    let run_connection_test = cli.run_connection_test;
    let config = match cli.into_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("lakebase-proxy: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("lakebase-proxy: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        if run_connection_test {
            return match lakebase_proxy::check::connection_test(&config).await {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(report) => {
                    print!("{report}");
                    ExitCode::FAILURE
                }
            };
        }
        serve(config).await
    })
}

/// Runs the proxy until a signal or `POST /quitquitquit`, then shuts down gracefully: keep
/// accepting for `--min-sigterm-delay`, then drain for up to `--max-sigterm-delay`. A second
/// signal stops at once. The exit code is 0 either way.
async fn serve(config: Config) -> ExitCode {
    let health = Health::new();
    if let Some(address) = config.http
        && let Err(error) = http::serve(address, health.clone()).await
    {
        error!(%error, %address, "cannot start the HTTP admin listener");
        return ExitCode::FAILURE;
    }
    let (linger, grace) = (config.min_sigterm_delay, config.max_sigterm_delay);
    let proxy = match RunningProxy::start(config).await {
        Ok(proxy) => proxy,
        Err(error) => {
            error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    health.set_started(proxy.view());
    let reason = tokio::select! {
        signal = wait_for_signal() => signal,
        () = health.quit_requested() => "POST /quitquitquit",
    };
    health.set_draining();
    if !linger.is_zero() {
        info!(reason, linger = ?linger, "stopping soon: still accepting clients for a while");
        tokio::select! {
            () = tokio::time::sleep(linger) => {}
            signal = wait_for_signal() => info!(signal, "second signal: draining now"),
        }
    }
    info!(reason, grace = ?grace, "stopping: no new clients; sessions may finish their transactions");
    tokio::select! {
        () = proxy.shutdown(grace) => info!("stopped"),
        signal = wait_for_signal() => info!(signal, "second signal: stopping now"),
    }
    ExitCode::SUCCESS
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}
