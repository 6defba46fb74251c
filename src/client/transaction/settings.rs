//! The settings a transaction-mode client's session carries: its startup parameters and what it
//! changed since with a session-level SET, so that every server connection it gets is brought
//! to them first (a checkout SETs what differs), and none of them leaks to another client.
//!
//! A SET counts once the server says it took effect outside any transaction block: a lone SET
//! in a simple query, or a batch whose one Bind runs a SET, that ends idle and without an
//! error. Anything else that changes a setting (a SET inside a transaction block, next to
//! other statements, a RESET of a startup parameter, RESET ALL) pins the client instead: its
//! server connection then carries the truth.

use std::sync::Arc;

use crate::protocol::{StartupParams, TransactionStatus};
use crate::sql;

/// One change a statement makes to the session's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    Set(String, String),
    Reset(String),
}

/// The changes one SQL text makes, if they are of the kind that can be carried.
pub(super) type Changes = Arc<[Change]>;

/// What a statement's settings changes come to.
pub(super) enum Outcome {
    /// None.
    Nothing,
    /// These, once the server says they took effect.
    Track(Changes),
    /// Something only the server connection can carry.
    Pin,
}

/// The client's settings.
pub(super) struct Settings {
    startup: StartupParams,
    wanted: StartupParams,
}

impl Settings {
    pub(super) fn new(startup: StartupParams) -> Settings {
        Settings { wanted: startup.clone(), startup }
    }

    /// What a server connection must carry to serve the client.
    pub(super) fn wanted(&self) -> &StartupParams {
        &self.wanted
    }

    /// What the statements of one SQL text do to the settings. Only a text of exactly one
    /// statement is tracked: with several, a ROLLBACK among them could undo the change.
    pub(super) fn outcome(&self, statements: &[sql::Statement]) -> Outcome {
        let changes: Vec<&sql::Statement> = statements
            .iter()
            .filter(|s| {
                matches!(s, sql::Statement::Set { .. } | sql::Statement::Reset { .. } | sql::Statement::ResetAll)
            })
            .collect();
        let change = match changes.as_slice() {
            [] => return Outcome::Nothing,
            [change] if statements.len() == 1 => change,
            _ => return Outcome::Pin,
        };
        match change {
            sql::Statement::Set { name, value } => Outcome::Track(Arc::new([Change::Set(name.clone(), value.clone())])),
            // RESET goes back to the session's own default, which for a startup parameter the
            // server connection may not share.
            sql::Statement::Reset { name } if spelled(&self.startup, name).is_none() => {
                Outcome::Track(Arc::new([Change::Reset(name.clone())]))
            }
            _ => Outcome::Pin,
        }
    }

    /// Applies `changes`, which the server carried out and which ended with `status`; false
    /// if they happened inside a transaction block that is still open, so only the server
    /// connection knows whether they will last.
    pub(super) fn apply(&mut self, changes: &[Change], status: TransactionStatus) -> bool {
        if status != TransactionStatus::Idle {
            return false;
        }
        for change in changes {
            match change {
                Change::Set(name, value) => {
                    let name = spelled(&self.wanted, name).unwrap_or(name).to_owned();
                    self.wanted.set(&name, value);
                }
                Change::Reset(name) => {
                    if let Some(name) = spelled(&self.wanted, name).map(str::to_owned) {
                        self.wanted.remove(&name);
                    }
                }
            }
        }
        true
    }
}

/// How `params` spells setting `name` (setting names are case-insensitive), if it has it.
fn spelled<'a>(params: &'a StartupParams, name: &str) -> Option<&'a str> {
    params.iter().map(|(key, _)| key).find(|key| key.eq_ignore_ascii_case(name))
}

/// The settings changes of the batch the client is sending (extended protocol, up to its
/// Sync): tracked only if the batch began with the server idle and runs exactly one Bind.
#[derive(Default)]
pub(super) struct Batch {
    began: bool,
    clean: bool,
    binds: u32,
    changes: Option<Changes>,
}

impl Batch {
    /// A message of the batch; `idle` says whether the server owes nothing and is outside a
    /// transaction block.
    pub(super) fn message(&mut self, idle: bool) {
        if !self.began {
            self.began = true;
            self.clean = idle;
        }
    }

    /// A Bind of a statement that makes `changes`.
    pub(super) fn bind(&mut self, changes: Option<Changes>) {
        self.binds += 1;
        if changes.is_some() {
            self.changes = changes;
        }
    }

    /// The Sync: what the batch comes to; the next one begins.
    pub(super) fn sync(&mut self) -> Outcome {
        let batch = std::mem::take(self);
        match batch.changes {
            None => Outcome::Nothing,
            Some(changes) if batch.clean && batch.binds == 1 => Outcome::Track(changes),
            Some(_) => Outcome::Pin,
        }
    }
}
