//! The `lakebase-proxy` binary: parse the command line, set up logging, run until a signal.

use std::process::ExitCode;

use std::ffi::{OsStr, OsString};
use std::io::IsTerminal;
use std::time::Duration;

use clap::CommandFactory;
use lakebase_proxy::cli::{self, Cli, LoadError, LogFormat, ProxyArgs, Subcommand, WaitArgs};
use lakebase_proxy::config::Config;
use lakebase_proxy::ops::health::Health;
use lakebase_proxy::ops::http;
use lakebase_proxy::proxy::RunningProxy;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = match cli::parse(&argv) {
        Ok(cli) => cli,
        Err(LoadError::Arguments(error)) => error.exit(),
        Err(error) => {
            eprintln!("lakebase-proxy: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match build_runtime(cli.proxy.worker_threads) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("lakebase-proxy: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let proxy_args = match cli.command {
        Some(Subcommand::Wait(args)) => return runtime.block_on(wait(args)),
        Some(Subcommand::CheckConfig(args)) => return check_config(*args),
        Some(Subcommand::Completions { shell }) => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "lakebase-proxy", &mut script);
            print_out(&String::from_utf8_lossy(&script));
            return ExitCode::SUCCESS;
        }
        Some(Subcommand::Manpage) => {
            let mut page = Vec::new();
            return match clap_mangen::Man::new(Cli::command()).render(&mut page) {
                Ok(()) => {
                    print_out(&String::from_utf8_lossy(&page));
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("lakebase-proxy: {error}");
                    ExitCode::FAILURE
                }
            };
        }
        None => cli.proxy,
    };
    init_logging(proxy_args.log_format, &proxy_args.log_level);
    let run_connection_test = proxy_args.run_connection_test;
    let config = match proxy_args.into_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("lakebase-proxy: {error}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async {
        if run_connection_test {
            return match lakebase_proxy::check::connection_test(&config).await {
                Ok(report) => {
                    print_out(&report);
                    ExitCode::SUCCESS
                }
                Err(report) => {
                    print_out(&report);
                    ExitCode::FAILURE
                }
            };
        }
        serve(config, argv).await
    })
}

/// One thread: a current-thread runtime (tasks, timers and I/O on a single event loop, with
/// blocking work such as DNS on tokio's blocking pool). More: a work-stealing runtime.
fn build_runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if worker_threads > 1 {
            builder.worker_threads(worker_threads);
        }
        builder
    };
    builder.enable_all().build()
}

/// `check-config`: the effective settings, or why there are none.
fn check_config(args: ProxyArgs) -> ExitCode {
    // Settings of the process rather than of the proxy's configuration (not reloadable).
    let log_format = match args.log_format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    let process = format!(
        "log_format = {log_format}\nlog_level = {}\nworker_threads = {}\n",
        args.log_level, args.worker_threads
    );
    match args.into_config() {
        Ok(config) => {
            let text: String = config.describe().iter().map(|(key, value)| format!("{key} = {value}\n")).collect();
            print_out(&(text + &process));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("lakebase-proxy: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Writes to stdout; a reader that went away (`| head`) is not an error worth a panic.
fn print_out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// `wait`: polls the /startup probe until it answers 200.
async fn wait(args: WaitArgs) -> ExitCode {
    let url = format!("http://{}/startup", std::net::SocketAddr::new(args.http_address, args.http_port));
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + args.timeout;
    loop {
        if let Ok(response) = client.get(&url).timeout(Duration::from_secs(2)).send().await
            && response.status().is_success()
        {
            return ExitCode::SUCCESS;
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!("lakebase-proxy: {url} did not answer 200 within {}", humantime::format_duration(args.timeout));
            return ExitCode::FAILURE;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the proxy until a signal or `POST /quitquitquit`, then shuts down gracefully: keep
/// accepting for `--min-sigterm-delay`, then drain for up to `--max-sigterm-delay`. A second
/// signal stops at once. The exit code is 0 either way.
async fn serve(config: Config, argv: Vec<OsString>) -> ExitCode {
    let health = Health::new();
    if let Some(address) = config.http
        && let Err(error) = http::serve(address, health.clone()).await
    {
        error!(%error, %address, "cannot start the HTTP admin listener");
        return ExitCode::FAILURE;
    }
    let (linger, grace) = (config.min_sigterm_delay, config.max_sigterm_delay);
    let mut proxy = match RunningProxy::start(config).await {
        Ok(proxy) => proxy,
        Err(error) => {
            error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    health.set_started(proxy.view());
    let mut hangup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let reason = loop {
        tokio::select! {
            signal = wait_for_signal() => break signal,
            () = health.quit_requested() => break "POST /quitquitquit",
            _ = hangup.recv() => reload(&mut proxy, &argv).await,
        }
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

/// SIGHUP: reads the configuration again (command line, environment, file) and applies it;
/// a configuration that does not load or start is rejected and the current one stays.
async fn reload(proxy: &mut RunningProxy, argv: &[OsString]) {
    let config = match cli::parse(argv)
        .map_err(|e| e.to_string())
        .and_then(|cli| cli.proxy.into_config().map_err(|e| e.to_string()))
    {
        Ok(config) => config,
        Err(error) => {
            error!(%error, "reload rejected; keeping the current configuration");
            return;
        }
    };
    match proxy.reload(config).await {
        Ok(notes) if notes.is_empty() => info!("reloaded: nothing changed"),
        Ok(notes) => {
            for note in notes {
                info!(%note, "reloaded");
            }
        }
        Err(error) => error!(%error, "reload rejected; keeping the current configuration"),
    }
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let ansi = colour_logs(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
}

/// Whether log lines get ANSI colours: only on a terminal, since escape codes in a file, a
/// pipe or a collector are noise; and never with `NO_COLOR` set to anything non-empty
/// (<https://no-color.org/>).
fn colour_logs(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

async fn wait_for_signal() -> &'static str {
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

#[cfg(test)]
mod tests {
    use super::colour_logs;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_logs(true, None));
        assert!(!colour_logs(false, None));
        assert!(!colour_logs(true, Some(OsStr::new("1"))));
        assert!(!colour_logs(false, Some(OsStr::new("1"))));
        // no-color.org: an empty NO_COLOR does not disable colour.
        assert!(colour_logs(true, Some(OsStr::new(""))));
    }
}
