//! The recorded history: every invocation and completion, as Jepsen records them, and the
//! pairing of the two into operations for the checkers.
//!
//! A completion is `ok` (it happened, with this result), `fail` (it certainly did not happen)
//! or `info` (unknown: it may have happened, at any time after its invocation). A process with an
//! `info` operation never invokes again; its client continues as a new process.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// Who did it: a client process, or the nemesis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Process {
    Client(u64),
    Nemesis(NemesisTag),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NemesisTag {
    Nemesis,
}

pub const NEMESIS: Process = Process::Nemesis(NemesisTag::Nemesis);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub index: u64,
    /// Nanoseconds since the run started.
    pub time_ns: u64,
    pub process: Process,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub f: String,
    pub value: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The history being recorded; clones share it.
#[derive(Clone)]
pub struct Recorder {
    started: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            started: Instant::now(),
            events: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn events(&self) -> MutexGuard<'_, Vec<Event>> {
        // Each push is atomic, so a poisoned lock still guards a whole history.
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn record(&self, process: Process, kind: EventType, f: &str, value: Value, error: Option<String>) -> Event {
        let mut events = self.events();
        let event = Event {
            index: events.len() as u64,
            time_ns: self.elapsed_ns(),
            process,
            kind,
            f: f.to_string(),
            value,
            error,
        };
        events.push(event.clone());
        event
    }

    pub fn snapshot(&self) -> Vec<Event> {
        self.events().clone()
    }

    /// Counts of completions by type.
    pub fn counts(&self) -> BTreeMap<EventType, u64> {
        let mut counts = BTreeMap::new();
        for e in self.events().iter().filter(|e| matches!(e.process, Process::Client(_))) {
            *counts.entry(e.kind).or_insert(0) += 1;
        }
        counts
    }
}

pub fn write_jsonl(events: &[Event], path: &Path) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for event in events {
        serde_json::to_writer(&mut out, event)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

pub fn read_jsonl(path: &Path) -> std::io::Result<Vec<Event>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect()
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Ok(Value),
    Fail,
    /// Unknown; it may have taken effect at any time after the invocation.
    Info,
}

/// An invocation paired with its completion.
#[derive(Clone, Debug, PartialEq)]
pub struct Operation {
    pub process: u64,
    pub f: String,
    pub value: Value,
    pub outcome: Outcome,
    pub invoke_ns: u64,
    /// `None` for `info`: the operation's window never closes.
    pub complete_ns: Option<u64>,
}

impl Operation {
    pub fn is_ok(&self) -> bool {
        matches!(self.outcome, Outcome::Ok(_))
    }

    pub fn result(&self) -> Option<&Value> {
        match &self.outcome {
            Outcome::Ok(v) => Some(v),
            _ => None,
        }
    }
}

/// Pairs each client invocation with the completion that follows it on the same process; an
/// invocation left without one (the run ended) counts as `info`.
pub fn operations(events: &[Event]) -> Vec<Operation> {
    let mut open: BTreeMap<u64, usize> = BTreeMap::new();
    let mut ops: Vec<Operation> = Vec::new();
    for e in events {
        let Process::Client(process) = e.process else { continue };
        match e.kind {
            EventType::Invoke => {
                open.insert(process, ops.len());
                ops.push(Operation {
                    process,
                    f: e.f.clone(),
                    value: e.value.clone(),
                    outcome: Outcome::Info,
                    invoke_ns: e.time_ns,
                    complete_ns: None,
                });
            }
            kind => {
                let Some(i) = open.remove(&process) else { continue };
                let op = &mut ops[i];
                match kind {
                    EventType::Ok => {
                        op.outcome = Outcome::Ok(e.value.clone());
                        op.complete_ns = Some(e.time_ns);
                    }
                    EventType::Fail => {
                        op.outcome = Outcome::Fail;
                        op.complete_ns = Some(e.time_ns);
                    }
                    _ => {}
                }
            }
        }
    }
    ops
}

/// Test helpers: build histories by hand.
#[cfg(test)]
pub mod build {
    use super::*;

    #[derive(Default, Clone)]
    pub struct HistoryBuilder {
        pub events: Vec<Event>,
        time: u64,
    }

    impl HistoryBuilder {
        pub fn new() -> HistoryBuilder {
            HistoryBuilder::default()
        }

        pub fn at(&mut self, process: u64, kind: EventType, f: &str, value: Value) -> &mut Self {
            self.time += 1;
            self.events.push(Event {
                index: self.events.len() as u64,
                time_ns: self.time,
                process: Process::Client(process),
                kind,
                f: f.into(),
                value,
                error: None,
            });
            self
        }

        pub fn invoke(&mut self, process: u64, f: &str, value: Value) -> &mut Self {
            self.at(process, EventType::Invoke, f, value)
        }

        pub fn ok(&mut self, process: u64, f: &str, value: Value) -> &mut Self {
            self.at(process, EventType::Ok, f, value)
        }

        pub fn fail(&mut self, process: u64, f: &str) -> &mut Self {
            self.at(process, EventType::Fail, f, Value::Null)
        }

        pub fn info(&mut self, process: u64, f: &str) -> &mut Self {
            self.at(process, EventType::Info, f, Value::Null)
        }

        /// Lets `ns` pass before the next event.
        pub fn advance_ns(&mut self, ns: u64) -> &mut Self {
            self.time += ns;
            self
        }

        /// A whole operation with nothing concurrent.
        pub fn call(&mut self, process: u64, f: &str, invoke: Value, result: Value) -> &mut Self {
            self.invoke(process, f, invoke).ok(process, f, result)
        }

        pub fn ops(&self) -> Vec<Operation> {
            operations(&self.events)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::build::HistoryBuilder;
    use super::*;
    use serde_json::json;

    #[test]
    fn pairs_by_process_and_leaves_unfinished_calls_unknown() {
        let mut h = HistoryBuilder::new();
        h.invoke(1, "write", json!(1))
            .invoke(2, "read", json!(null))
            .ok(2, "read", json!(0))
            .ok(1, "write", json!(1))
            .invoke(3, "write", json!(2));
        let ops = h.ops();
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0].outcome, Outcome::Ok(json!(1)));
        assert_eq!((ops[0].invoke_ns, ops[0].complete_ns), (1, Some(4)));
        assert_eq!(ops[1].result(), Some(&json!(0)));
        assert_eq!(ops[2].outcome, Outcome::Info);
        assert_eq!(ops[2].complete_ns, None);
    }

    #[test]
    fn jsonl_round_trips_with_the_nemesis_as_a_process() {
        let recorder = Recorder::new();
        recorder.record(NEMESIS, EventType::Info, "start", json!({"fault": "pause"}), None);
        recorder.record(Process::Client(4), EventType::Invoke, "read", json!({"key": "k"}), None);
        let dir = std::env::temp_dir().join(format!("basalt-jepsen-history-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("history.jsonl");
        write_jsonl(&recorder.snapshot(), &path).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.lines().next().expect("a line").contains("\"process\":\"nemesis\""));
        assert_eq!(read_jsonl(&path).expect("parse"), recorder.snapshot());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
