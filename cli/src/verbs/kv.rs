//! `basalt kv ...`: put, get, delete, compare-and-set, scan and watch keys.

use std::time::Duration;

use basalt_client::{CasOutcome, Client, PutIfAbsent, PutOptions};
use clap::Subcommand;

use super::{consistency, show_optional};
use crate::commands::parse_duration;

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Store a value.
    Put {
        key: String,
        value: String,
        /// Expire after this long (e.g. 30s, 500ms, 5m).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Write only if the key is absent; else print what it holds (exit 0 either way): an
        /// idempotency key (`--if-absent --ttl 24h`).
        #[arg(long)]
        if_absent: bool,
    },
    /// Read a value.
    Get {
        key: String,
        /// Read from any node without a read-index round (may be stale).
        #[arg(long)]
        stale: bool,
    },
    Delete {
        key: String,
    },
    /// Print every change under a prefix, from a revision on (0: from now), until Ctrl-C.
    Watch {
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 0)]
        from_revision: u64,
    },
    /// Compare-and-set: write only if the key has this revision (or is absent).
    Cas {
        key: String,
        value: String,
        #[arg(long, conflicts_with = "expect_absent", required_unless_present = "expect_absent")]
        expect_revision: Option<u64>,
        #[arg(long)]
        expect_absent: bool,
    },
    /// List keys with a prefix.
    Scan {
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

/// Runs one `basalt kv` verb.
pub async fn kv(client: &Client, command: KvCommand) -> Result<(), String> {
    let kv = client.kv();
    match command {
        KvCommand::Put {
            key,
            value,
            ttl,
            if_absent: true,
        } => match kv.put_if_absent(&key, &value, ttl).await.map_err(|e| e.to_string())? {
            PutIfAbsent::Created { revision } => crate::outln!("CREATED revision={revision}"),
            PutIfAbsent::Exists(entry) => {
                crate::outln!("EXISTS {}", String::from_utf8_lossy(&entry.value));
                eprintln!(
                    "revision={} created={} version={} expires_at_ms={}",
                    entry.mod_revision,
                    entry.create_revision,
                    entry.version,
                    show_optional(entry.expires_at_ms)
                );
            }
        },
        KvCommand::Put { key, value, ttl, .. } => {
            let revision = kv
                .put_with(&key, &value, PutOptions { ttl })
                .await
                .map_err(|e| e.to_string())?;
            crate::outln!("OK revision={revision}");
        }
        KvCommand::Get { key, stale } => {
            let consistency = consistency(stale);
            match kv.get_with(&key, consistency).await.map_err(|e| e.to_string())? {
                Some(entry) => {
                    crate::outln!("{}", String::from_utf8_lossy(&entry.value));
                    eprintln!(
                        "revision={} created={} version={} expires_at_ms={}",
                        entry.mod_revision,
                        entry.create_revision,
                        entry.version,
                        show_optional(entry.expires_at_ms)
                    );
                }
                None => return Err(format!("key {key:?} not found")),
            }
        }
        KvCommand::Watch { prefix, from_revision } => {
            let mut watch = kv.watch(prefix, from_revision).await.map_err(|e| e.to_string())?;
            eprintln!("watching from revision {}", watch.next_revision());
            while let Some(event) = watch.next().await {
                let e = event.map_err(|e| e.to_string())?;
                crate::outln!(
                    "{} {:?} {} revision={}",
                    match e.kind {
                        basalt_client::WatchEventKind::Put => "PUT",
                        basalt_client::WatchEventKind::Delete => "DELETE",
                    },
                    String::from_utf8_lossy(&e.key),
                    String::from_utf8_lossy(&e.value),
                    e.revision
                );
            }
        }
        KvCommand::Delete { key } => {
            let outcome = kv.delete(&key).await.map_err(|e| e.to_string())?;
            crate::outln!(
                "{} revision={}",
                if outcome.deleted { "DELETED" } else { "NOT_FOUND" },
                outcome.revision
            );
        }
        KvCommand::Cas {
            key,
            value,
            expect_revision,
            expect_absent: _,
        } => match kv.cas(&key, expect_revision, &value).await.map_err(|e| e.to_string())? {
            CasOutcome::Written { revision } => crate::outln!("OK revision={revision}"),
            CasOutcome::Conflict { current } => {
                return Err(format!("condition failed: current revision {}", show_optional(current)))
            }
        },
        KvCommand::Scan { prefix, limit } => {
            for (key, value) in kv.scan(&prefix, limit).await.map_err(|e| e.to_string())? {
                crate::outln!("{}\t{}", String::from_utf8_lossy(&key), String::from_utf8_lossy(&value));
            }
        }
    }
    Ok(())
}
