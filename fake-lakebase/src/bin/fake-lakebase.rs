//! `fake-lakebase`: runs the fake for a demo, in front of an already running
//! PostgreSQL, and prints what a client needs as `KEY=value` lines.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use fake_lakebase::{FakeLakebase, FakeLakebaseConfig};

const USAGE: &str = "usage: fake-lakebase --postgres-socket-dir DIR --postgres-port N \
[--user EMAIL --pat TOKEN] [--project ID] [--host-suffix SUFFIX]";

struct Args {
    socket_dir: PathBuf,
    port: u16,
    user: String,
    pat: String,
    project: String,
    host_suffix: String,
}

fn parse_args() -> Result<Args, String> {
    let mut socket_dir = None;
    let mut port = None;
    let mut user = "demo@example.com".to_string();
    let mut pat = "dapi-demo-token".to_string();
    let mut project = "demo".to_string();
    let mut host_suffix = fake_lakebase::DEFAULT_HOST_SUFFIX.to_string();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        // Both `--flag value` and `--flag=value`.
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next()).ok_or_else(|| format!("{name} needs a value"));
        match name.as_str() {
            "--postgres-socket-dir" => socket_dir = Some(PathBuf::from(value()?)),
            "--postgres-port" => {
                let v = value()?;
                port = Some(v.parse().map_err(|_| format!("bad port {v:?}"))?);
            }
            "--user" => user = value()?,
            "--pat" => pat = value()?,
            "--project" => project = value()?,
            "--host-suffix" => host_suffix = value()?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        socket_dir: socket_dir.ok_or("--postgres-socket-dir is required")?,
        port: port.ok_or("--postgres-port is required")?,
        user,
        pat,
        project,
        host_suffix,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("fake-lakebase: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = FakeLakebaseConfig {
        postgres_socket_dir: args.socket_dir,
        postgres_port: args.port,
        host_suffix: args.host_suffix,
    };
    let fake = match FakeLakebase::start(config).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("fake-lakebase: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    fake.add_user(&args.user, &args.pat);
    let host = fake.add_project(&args.project);
    let endpoint = format!("projects/{}/branches/production/endpoints/primary", args.project);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "API_URL={}", fake.api_url());
    let _ = writeln!(out, "GATEWAY={}", fake.gateway_addr());
    let _ = writeln!(out, "CA_FILE={}", fake.ca_pem_path().display());
    let _ = writeln!(out, "ENDPOINT={endpoint}");
    let _ = writeln!(out, "HOST={host}");
    // Scripts read these lines from a pipe: flush before waiting.
    let _ = out.flush();
    drop(out);

    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fake-lakebase: cannot watch SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // Drop stops the servers and removes the CA's temp dir.
    drop(fake);
    ExitCode::SUCCESS
}
