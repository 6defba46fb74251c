//! The checklist's scale items (R1-R4): deep pipelines, a random stress with constant
//! evictions (the transaction-mode runs cap each server connection at 10 statements), many
//! clients with the same texts, and a client that leaves in the middle of a large result.
//! Deterministic: the "random" pipelines come from a fixed seed, so a failure repeats.

use test_support::wire::{bind, execute, parse, sync};

use crate::harness::Scenario;

/// A small xorshift generator: the same pipelines every run, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Every scale scenario.
pub fn all() -> Vec<Scenario> {
    vec![r1_deep_pipeline(), r1_syncs_in_flight(), r2_random_stress(), r3_many_clients(), r4_reset_mid_result()]
}

/// R1: 500 statements in one batch without a Sync, while another client waits its turn.
fn r1_deep_pipeline() -> Scenario {
    let mut batch = Vec::new();
    for i in 0..500 {
        batch.extend([parse("", &format!("SELECT {i} AS n"), &[]), bind("", "", &[]), execute("", 0)]);
    }
    batch.push(sync());
    Scenario::new("R1 500 queries without a Sync", 2)
        .send(0, batch)
        .sq(1, "SELECT 'after the pipeline' AS b")
        .wait(0)
        .wait(1)
        .build()
}

/// R1: 50 batches, each with its Sync, sent before any reply is read; named statements
/// prepared in early batches are used by later ones.
fn r1_syncs_in_flight() -> Scenario {
    let mut batches = Vec::new();
    for i in 0..50 {
        let name = format!("r1_{}", i % 5);
        if i < 5 {
            batches.push(parse(&name, &format!("SELECT $1::int + {i} AS n"), &[23]));
        }
        batches.extend([bind("", &name, &[Some(i.to_string().as_bytes())]), execute("", 0), sync()]);
    }
    Scenario::new("R1 50 Syncs in flight", 2).send(0, batches).sq(1, "SELECT 2 AS two").wait(0).wait(1).build()
}

/// R2: pipelines of 0-9 statements over 100 texts from three clients, each statement with a
/// 512-byte parameter, some prepared by name (kept and used again), some unnamed; with the
/// per-connection cap of 10, statements are evicted and prepared again all the time.
fn r2_random_stress() -> Scenario {
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    let clients = 3;
    let mut prepared = vec![std::collections::HashSet::new(); clients];
    let mut scenario = Scenario::new("R2 random pipelines over 100 texts with constant evictions", clients);
    let param = "x".repeat(512);
    for _ in 0..60 {
        let c = rng.below(clients as u64) as usize;
        let mut batch = Vec::new();
        for _ in 0..rng.below(10) {
            let text = rng.below(100);
            let sql = format!("SELECT length($1::text) + {text} AS n, 'r2_{text}' AS t");
            if rng.below(4) == 0 {
                batch.extend([parse("", &sql, &[25]), bind("", "", &[Some(param.as_bytes())])]);
            } else {
                let name = format!("r2_{text}");
                if prepared[c].insert(text) {
                    batch.push(parse(&name, &sql, &[25]));
                }
                batch.push(bind("", &name, &[Some(param.as_bytes())]));
            }
            batch.push(execute("", 0));
        }
        batch.push(sync());
        scenario.send(c, batch).wait(c);
    }
    scenario.build()
}

/// R3: many clients preparing the same 150 texts, half of their batches inside a transaction.
fn r3_many_clients() -> Scenario {
    let clients = 100;
    let mut scenario = Scenario::new("R3 100 clients x 150 statements of the same texts", clients);
    for round in 0..3 {
        for c in 0..clients {
            let mut batch = Vec::new();
            let in_transaction = (c + round) % 2 == 0;
            if in_transaction {
                batch.extend([parse("", "BEGIN", &[]), bind("", "", &[]), execute("", 0)]);
            }
            for i in round * 50..(round + 1) * 50 {
                let name = format!("r3_{i}");
                batch.push(parse(&name, &format!("SELECT {i} AS n"), &[]));
                batch.extend([bind("", &name, &[]), execute("", 0)]);
            }
            if in_transaction {
                batch.extend([parse("", "COMMIT", &[]), bind("", "", &[]), execute("", 0)]);
            }
            batch.push(sync());
            scenario.send(c, batch).wait(c);
        }
    }
    // Every client runs one of its statements again, wherever it lands now.
    for c in 0..clients {
        scenario.send(c, [bind("", &format!("r3_{}", c % 150), &[]), execute("", 0), sync()]).wait(c);
    }
    scenario.build()
}

/// R4: a client that vanishes while a large result streams to it leaves nothing behind.
fn r4_reset_mid_result() -> Scenario {
    Scenario::new("R4 a client reset during a large streamed result", 2)
        .sq(0, "SELECT g, repeat('x', 1000) FROM generate_series(1, 100000) g")
        .tag(0, b'D', 100)
        .disconnect(0)
        .q(1, "SELECT 'clean' AS c")
        .send(
            1,
            [parse("r4", "SELECT $1::int * 2 AS twice", &[23]), bind("", "r4", &[Some(b"21")]), execute("", 0), sync()],
        )
        .wait(1)
        .build()
}
