//! Checkers: pure functions from a recorded history to a verdict. Each has unit tests with
//! hand-written histories, valid and invalid, so that a broken checker cannot pass silently.

pub mod bank;
pub mod counter;
pub mod lease;
pub mod linearizable;
pub mod queue;
pub mod regions;
pub mod register;
pub mod stream;
pub mod txn;

use serde::Serialize;
use serde_json::Value;

/// How many problems a verdict lists; the count is always complete.
pub const PROBLEMS_LISTED: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Validity {
    Valid,
    Invalid,
    /// The checker could not decide (its search budget ran out, or the final reads failed).
    Unknown,
}

#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub checker: &'static str,
    pub validity: Validity,
    pub problem_count: usize,
    /// The first [`PROBLEMS_LISTED`] problems, each a sentence naming the operations involved.
    pub problems: Vec<String>,
    /// Why the verdict is unknown, if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undecided: Option<String>,
    pub stats: Value,
}

impl Verdict {
    pub fn new(checker: &'static str) -> Verdict {
        Verdict {
            checker,
            validity: Validity::Valid,
            problem_count: 0,
            problems: Vec::new(),
            undecided: None,
            stats: Value::Null,
        }
    }

    pub fn problem(&mut self, text: String) {
        self.validity = Validity::Invalid;
        self.problem_count += 1;
        if self.problems.len() < PROBLEMS_LISTED {
            self.problems.push(text);
        }
    }

    /// Marks the verdict unknown unless a problem already made it invalid.
    pub fn undecided(&mut self, why: String) {
        if self.validity == Validity::Valid {
            self.validity = Validity::Unknown;
        }
        self.undecided = Some(why);
    }

    pub fn is_valid(&self) -> bool {
        self.validity == Validity::Valid
    }
}

/// Reads an integer field of an operation's value.
pub(crate) fn int(value: &Value, field: &str) -> Option<i64> {
    value.get(field).and_then(Value::as_i64)
}

pub(crate) fn uint(value: &Value, field: &str) -> Option<u64> {
    value.get(field).and_then(Value::as_u64)
}

pub(crate) fn text<'v>(value: &'v Value, field: &str) -> Option<&'v str> {
    value.get(field).and_then(Value::as_str)
}
