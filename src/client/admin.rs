//! The read-only admin console, in the PgBouncer tradition: a client that connects to the
//! database `lakebase_proxy` talks to the proxy itself and can run `SHOW POOLS`,
//! `SHOW CLIENTS`, `SHOW SERVERS`, `SHOW TARGETS`, `SHOW CREDENTIALS`, `SHOW STATS`,
//! `SHOW CONFIG`, `SHOW VERSION` and `SHOW HELP` as simple queries.

use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::ClientStream;
use super::error::{SessionEnd, SessionError};
use super::handshake::SessionStartup;
use crate::ops::view::ProxyView;
use crate::protocol::frame::read_message;
use crate::protocol::messages::{self, ErrorFields, Severity};
use crate::protocol::{CancelKey, TransactionStatus, frontend, sqlstate};

/// The database name that selects the console.
pub const ADMIN_DATABASE: &str = "lakebase_proxy";
/// Console queries are short; anything longer is not one.
const MAX_QUERY: usize = 64 * 1024;
const VERSION: &str = concat!("lakebase-proxy ", env!("CARGO_PKG_VERSION"));

/// Serves the console until the client leaves.
pub(super) async fn serve_console(
    client: &mut ClientStream,
    startup: &SessionStartup,
    early: BytesMut,
    view: &ProxyView,
) -> Result<SessionEnd, SessionError> {
    let mut out = BytesMut::new();
    if startup.needs_negotiation() {
        messages::negotiate_protocol_version(&mut out, 0, &startup.protocol_options);
    }
    messages::authentication_ok(&mut out);
    let application_name = startup.params.get("application_name").unwrap_or("");
    for (name, value) in [
        // Leading digits so clients that parse the version (psql) see a number.
        ("server_version", concat!("15.0 (lakebase-proxy ", env!("CARGO_PKG_VERSION"), ")")),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", application_name),
    ] {
        messages::parameter_status(&mut out, name, value);
    }
    messages::backend_key_data(&mut out, CancelKey { pid: 0, secret: 0 });
    messages::ready_for_query(&mut out, TransactionStatus::Idle);
    let mut inbound = early;
    loop {
        client.write_all(&out).await.map_err(SessionError::ClientIo)?;
        client.flush().await.map_err(SessionError::ClientIo)?;
        out.clear();
        let message = read_message(client, &mut inbound, MAX_QUERY).await.map_err(|error| match error.kind() {
            std::io::ErrorKind::InvalidData => SessionError::ClientProtocol(error),
            _ => SessionError::ClientIo(error),
        })?;
        let Some((tag, body)) = message else {
            return Ok(SessionEnd::ClientDone);
        };
        match tag {
            frontend::QUERY => {
                let text = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned();
                run_queries(&text, view, &mut out);
                messages::ready_for_query(&mut out, TransactionStatus::Idle);
            }
            frontend::TERMINATE => return Ok(SessionEnd::ClientDone),
            // Extended protocol: refuse once, then answer the Sync that ends the batch.
            frontend::SYNC => messages::ready_for_query(&mut out, TransactionStatus::Idle),
            frontend::PARSE => error("the admin console takes simple queries only", sqlstate::FEATURE_NOT_SUPPORTED)
                .write_error(&mut out),
            _ => {}
        }
    }
}

fn error(message: &str, code: &str) -> ErrorFields {
    ErrorFields::new(Severity::Error, code, message.to_owned())
}

/// Runs each `;`-separated statement of a simple query.
fn run_queries(text: &str, view: &ProxyView, out: &mut BytesMut) {
    let statements: Vec<&str> = text.split(';').map(str::trim).filter(|s| !s.is_empty()).collect();
    if statements.is_empty() {
        messages::empty_query_response(out);
    }
    for statement in statements {
        let words: Vec<String> = statement.split_whitespace().map(str::to_ascii_uppercase).collect();
        let table = match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["SHOW", what] => show(what, view),
            _ => None,
        };
        match table {
            Some((columns, rows)) => {
                messages::row_description(out, &columns);
                for row in &rows {
                    let values: Vec<Option<&str>> = row.iter().map(|v| v.as_deref()).collect();
                    messages::data_row(out, &values);
                }
                messages::command_complete(out, "SHOW");
            }
            None => {
                let mut fields = error(&format!("unknown admin command {statement:?}"), sqlstate::SYNTAX_ERROR);
                fields.hint = Some("Try SHOW HELP.".into());
                fields.write_error(out);
                // Like a server, stop the rest of the query string after an error.
                return;
            }
        }
    }
}

type Table = (Vec<&'static str>, Vec<Vec<Option<String>>>);

fn show(what: &str, view: &ProxyView) -> Option<Table> {
    let text = |value: String| Some(value);
    let seconds = |d: Duration| Some(d.as_secs().to_string());
    Some(match what {
        "HELP" => (
            vec!["command", "shows"],
            [
                ("SHOW POOLS", "upstream connections per target, database, role and options"),
                ("SHOW CLIENTS", "connected clients and what they are doing"),
                ("SHOW SERVERS", "upstream connections, idle and in use"),
                ("SHOW TARGETS", "what each local port serves"),
                ("SHOW CREDENTIALS", "password and token sources: age, expiry, errors (never the secret)"),
                ("SHOW STATS", "every metric, as /metrics reports it"),
                ("SHOW CONFIG", "the effective settings"),
                ("SHOW VERSION", "the version"),
            ]
            .iter()
            .map(|(c, s)| vec![text(c.to_string()), text(s.to_string())])
            .collect(),
        ),
        "VERSION" => (vec!["version"], vec![vec![text(VERSION.into())]]),
        "TARGETS" => (
            vec!["listen", "upstream", "origin", "idle", "open", "max_pool_size"],
            view.targets()
                .iter()
                .map(|t| {
                    let (idle, open) =
                        t.pools.all().iter().map(|p| p.counts()).fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
                    vec![
                        text(t.listen.clone()),
                        text(t.label.clone()),
                        text(t.origin.clone()),
                        text(idle.to_string()),
                        text(open.to_string()),
                        text(t.pools.upstream().max_pool_size().to_string()),
                    ]
                })
                .collect(),
        ),
        "POOLS" => (
            vec!["target", "database", "user", "options", "idle", "active", "max"],
            view.targets()
                .iter()
                .flat_map(|t| {
                    t.pools.all().into_iter().map(move |pool| {
                        let (idle, open) = pool.counts();
                        let key = pool.key();
                        vec![
                            text(t.label.clone()),
                            text(key.database.clone()),
                            text(key.user.clone()),
                            key.options.clone(),
                            text(idle.to_string()),
                            text(open.saturating_sub(idle).to_string()),
                            text(t.pools.upstream().max_pool_size().to_string()),
                        ]
                    })
                })
                .collect(),
        ),
        "CLIENTS" => (
            vec![
                "id",
                "peer",
                "target",
                "user",
                "database",
                "state",
                "upstream_pid",
                "pinned",
                "connected_at",
                "age_s",
            ],
            view.clients
                .snapshot()
                .into_iter()
                .map(|(id, c)| {
                    vec![
                        text(id.to_string()),
                        text(c.peer),
                        text(c.target),
                        text(c.user),
                        text(c.database),
                        text(c.state.to_owned()),
                        c.upstream_pid.map(|p| p.to_string()),
                        c.pinned.map(str::to_owned),
                        text(timestamp(c.connected_at)),
                        seconds(SystemTime::now().duration_since(c.connected_at).unwrap_or_default()),
                    ]
                })
                .collect(),
        ),
        "SERVERS" => {
            let mut rows = Vec::new();
            for t in &view.targets() {
                for pool in t.pools.all() {
                    for (pid, age, idle_for) in pool.idle_connections() {
                        let key = pool.key();
                        rows.push(vec![
                            text(t.label.clone()),
                            text(key.database.clone()),
                            text(key.user.clone()),
                            text("idle".into()),
                            text(pid.to_string()),
                            seconds(age),
                            seconds(idle_for),
                        ]);
                    }
                }
            }
            for (_, c) in view.clients.snapshot() {
                if let Some(pid) = c.upstream_pid {
                    rows.push(vec![
                        text(c.target),
                        text(c.database),
                        text(c.user),
                        text("active".into()),
                        text(pid.to_string()),
                        None,
                        None,
                    ]);
                }
            }
            (vec!["target", "database", "user", "state", "pid", "age_s", "idle_s"], rows)
        }
        "CREDENTIALS" => (
            vec!["source", "fetched_at", "age_s", "expires_at", "expires_in_s", "fetches", "last_error"],
            view.caches()
                .iter()
                .map(|cache| {
                    let status = cache.status();
                    let now = SystemTime::now();
                    vec![
                        text(cache.describe()),
                        status.fetched_at.map(timestamp),
                        status.fetched_at.and_then(|at| seconds(now.duration_since(at).unwrap_or_default())),
                        status.expires_at.map(timestamp),
                        status.expires_at.map(|at| match at.duration_since(now) {
                            Ok(left) => left.as_secs().to_string(),
                            Err(past) => format!("-{}", past.duration().as_secs()),
                        }),
                        text(status.fetches.to_string()),
                        status.last_error,
                    ]
                })
                .collect(),
        ),
        "STATS" => (
            vec!["metric", "value"],
            view.render_metrics()
                .lines()
                .filter(|line| !line.starts_with('#') && !line.is_empty())
                .filter_map(|line| line.rsplit_once(' '))
                .map(|(series, value)| vec![text(series.to_owned()), text(value.to_owned())])
                .collect(),
        ),
        "CONFIG" => (
            vec!["key", "value"],
            view.settings().iter().map(|(k, v)| vec![text(k.clone()), text(v.clone())]).collect(),
        ),
        _ => return None,
    })
}

fn timestamp(at: SystemTime) -> String {
    time::OffsetDateTime::from(at).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
