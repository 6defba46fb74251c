//! The statements clients of one pool prepare, shared by text: two clients that prepare the
//! same query with the same parameter types get the same [`Statement`], so a server connection
//! prepares it once for all of them, under a name no client chooses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::{Bytes, BytesMut};

use crate::upstream::{StatementId, server_statement_name};

/// One query text with its parameter types, as every server connection prepares it.
#[derive(Debug)]
pub struct Statement {
    /// Its id; the name on the servers comes from it.
    pub id: StatementId,
    /// Its name on the servers, NUL-terminated as messages carry it.
    server_name: Box<[u8]>,
    /// The Parse message's body after the statement name: query text, parameter count and
    /// types. Kept once, however many clients and names use it.
    definition: Bytes,
}

impl Statement {
    fn new(id: StatementId, definition: Bytes) -> Statement {
        let mut server_name = server_statement_name(id).into_bytes();
        server_name.push(0);
        Statement { id, server_name: server_name.into(), definition }
    }

    /// Its name on the servers, NUL-terminated as messages carry it.
    pub fn server_name(&self) -> &[u8] {
        &self.server_name
    }

    /// The body of a Parse that prepares this statement on a server connection.
    pub fn parse_body(&self) -> BytesMut {
        let mut body = BytesMut::with_capacity(self.server_name.len() + self.definition.len());
        body.extend_from_slice(&self.server_name);
        body.extend_from_slice(&self.definition);
        body
    }
}

/// The statements of one pool, held as long as some client holds one of them.
#[derive(Debug, Default)]
pub struct StatementRegistry {
    by_definition: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    statements: HashMap<Bytes, Weak<Statement>>,
    /// Entries there were after the last sweep of dropped statements.
    swept_at: usize,
}

/// Ids are unique in the process, so a server connection never sees one id stand for two
/// statements.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl StatementRegistry {
    /// The statement for `definition` (a Parse body after the name), shared with every client
    /// of the pool that prepared the same.
    pub fn statement(&self, definition: &[u8]) -> Arc<Statement> {
        let mut registry = self.by_definition.lock().unwrap();
        if let Some(statement) = registry.statements.get(definition).and_then(Weak::upgrade) {
            return statement;
        }
        let definition = Bytes::copy_from_slice(definition);
        let statement = Arc::new(Statement::new(NEXT_ID.fetch_add(1, Ordering::Relaxed), definition.clone()));
        registry.statements.insert(definition, Arc::downgrade(&statement));
        // Statements no client holds any more are swept once the table has doubled, so a
        // client that prepares a new text per query leaves memory flat.
        if registry.statements.len() >= 2 * registry.swept_at.max(64) {
            registry.statements.retain(|_, statement| statement.strong_count() > 0);
            registry.swept_at = registry.statements.len();
        }
        statement
    }

    /// Statements some client holds.
    pub fn len(&self) -> usize {
        self.by_definition.lock().unwrap().statements.values().filter(|s| s.strong_count() > 0).count()
    }

    /// Whether no client holds any statement.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_definition_is_one_statement_while_held() {
        let registry = StatementRegistry::default();
        let a = registry.statement(b"SELECT 1\0\0\0");
        let b = registry.statement(b"SELECT 1\0\0\0");
        let c = registry.statement(b"SELECT 2\0\0\0");
        assert!(Arc::ptr_eq(&a, &b) && a.id != c.id);
        assert_eq!(&a.parse_body()[..], format!("_lbp{}\0SELECT 1\0\0\0", a.id).as_bytes());
        let id = a.id;
        drop((a, b));
        assert_ne!(registry.statement(b"SELECT 1\0\0\0").id, id, "a dropped statement is not reused");
    }

    #[test]
    fn statements_nobody_holds_are_swept() {
        let registry = StatementRegistry::default();
        for n in 0..10_000 {
            registry.statement(format!("SELECT {n}\0\0\0").as_bytes());
        }
        assert!(registry.by_definition.lock().unwrap().statements.len() < 200);
        assert!(registry.is_empty());
    }
}
