//! # billing
//!
//! Multi-tenant usage billing, as a team would build it on Redis (metering counters), Postgres
//! (invoices, a ledger) and Kafka (the outbox to the mailer):
//! - metering: each API call's units go, in one transaction, into the tenant's plan quota for
//!   the period (a bounded counter: a call past the plan's limit is refused whole) and into
//!   the tenant's daily usage (a windowed counter, one bucket per day);
//! - invoicing: when a period closes, every tenant gets an invoice: base fee plus units × price,
//!   summed from the daily windows. Each invoice is one transaction: the idempotency key
//!   `invoice/TENANT/PERIOD` is written only if absent, together with the ledger transfer
//!   (tenant receivable → revenue) and the outbox message to the mailer. Two invoicing runs race
//!   over every tenant (a cron job started twice), and a third runs after (a retry);
//! - an outbox relay hands each invoice message to the "mailer" and acknowledges it.
//!
//! Invariant: the ledger is balanced; no tenant is billed twice for a period; the usage billed
//! equals the usage metered (the units the metering calls were told were accepted), which never
//! exceeds the plan's limit; every invoice reaches the mailer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use basalt_client::ledger::{Account, AccountFilter, Transfer};
use basalt_client::txn::{Condition, TxnOp};
use basalt_client::{
    window, Client, CounterOp, CounterOutcome, NewMessage, QueueOptions, ReceiveOptions, TxnOpResult, TxnOutcome,
};

use crate::{connect, joined, mix, unix_ms, Demo, DemoError, Doing, Locked, Report, RunFuture, Scale, System};

pub const SYSTEM: System = System {
    name: "billing",
    summary: "usage metered per tenant (bounded plan quotas, daily windowed counters), invoices as \
              ledger transfers written with their idempotency key and outbox message in one \
              transaction, two invoicing runs racing",
    invariant: "the ledger is balanced, no tenant billed twice for a period, usage billed equals \
                usage metered and stays within the plan",
    nodes: 3,
    regions: &[],
    origin: false,
    run: start,
};

fn start(demo: &Demo) -> RunFuture<'_> {
    Box::pin(run(demo))
}

const LEDGER: u32 = 1;
const CODE_ACCOUNT: u16 = 1;
const CODE_INVOICE: u16 = 10;
const REVENUE: u128 = 1;
const OUTBOX: &str = "invoices-outbox";
/// A billing period, in days (aligned to the Unix epoch).
const PERIOD_DAYS: u64 = 30;
const DAY_MS: u64 = 24 * 3600 * 1000;
/// Daily usage windows are kept this long after the day ends: longer than two periods.
const USAGE_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// Price of one unit, in cents.
const UNIT_PRICE: u128 = 2;
/// Concurrent metering clients.
const METERS: u64 = 8;
/// Concurrent invoicing runs (then one more after them).
const INVOICERS: usize = 2;
/// How long the outbox relay may take to hand every invoice on, from when it starts (after the
/// last invoice is written).
const RELAY_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    Free,
    Pro,
    Enterprise,
}

impl Plan {
    fn of(tenant: u64) -> Plan {
        [Plan::Free, Plan::Pro, Plan::Enterprise][(tenant % 3) as usize]
    }

    /// Units a tenant may use per period (`None`: no limit).
    fn limit(self) -> Option<i64> {
        match self {
            Plan::Free => Some(500),
            Plan::Pro => Some(5_000),
            Plan::Enterprise => None,
        }
    }

    /// The monthly base fee, in cents.
    fn base_fee(self) -> u128 {
        match self {
            Plan::Free => 0,
            Plan::Pro => 2_900,
            Plan::Enterprise => 50_000,
        }
    }
}

struct Scope {
    tenants: u64,
    calls: u64,
}

impl Scope {
    fn of(scale: Scale) -> Scope {
        match scale {
            Scale::Short => Scope {
                tenants: 12,
                calls: 3_000,
            },
            Scale::Full => Scope {
                tenants: 200,
                calls: 50_000,
            },
        }
    }
}

/// One metered API call.
#[derive(Clone, Copy, Debug)]
struct Call {
    tenant: u64,
    period: u64,
    units: i64,
    at_ms: u64,
}

impl Call {
    /// The `i`th call, in one of the two periods before `current`.
    fn planned(i: u64, tenants: u64, current: u64) -> Call {
        let draw = mix(i);
        let period = current - 1 - (draw & 1);
        Call {
            tenant: (draw >> 1) % tenants,
            period,
            units: 1 + ((draw >> 20) % 20) as i64,
            at_ms: period * PERIOD_DAYS * DAY_MS + (draw >> 32) % (PERIOD_DAYS * DAY_MS),
        }
    }
}

fn quota_key(tenant: u64, period: u64) -> String {
    format!("billing/quota/tenant-{tenant}/{period}")
}

fn usage_key(tenant: u64) -> String {
    format!("billing/usage/tenant-{tenant}")
}

fn invoice_key(tenant: u64, period: u64) -> String {
    format!("billing/invoice/tenant-{tenant}/{period}")
}

fn receivable(tenant: u64) -> u128 {
    1_000 + u128::from(tenant)
}

fn invoice_id(tenant: u64, period: u64) -> u128 {
    (u128::from(period) << 32) | u128::from(tenant + 1)
}

/// `(year, month, day)` of a day counted from 1970-01-01 (the civil calendar).
fn civil(days: u64) -> (i64, u64, u64) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe as i64 + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn period_name(period: u64) -> String {
    let (y, m, d) = civil(period * PERIOD_DAYS);
    format!("{y:04}-{m:02}-{d:02}+{PERIOD_DAYS}d")
}

/// What metering was told: per (tenant, period), the units accepted and refused.
#[derive(Default)]
struct Metered {
    accepted: BTreeMap<(u64, u64), i64>,
    refused_calls: u64,
    refused_units: i64,
}

/// Meters calls `first, first + METERS, ...`: one transaction each, quota and daily usage.
async fn meter(
    endpoints: Vec<String>,
    scope_calls: u64,
    tenants: u64,
    current: u64,
    first: u64,
    metered: Arc<Mutex<Metered>>,
) -> Result<(), DemoError> {
    let client = connect(&endpoints).await?;
    for i in (first..scope_calls).step_by(METERS as usize) {
        let call = Call::planned(i, tenants, current);
        let quota = CounterOp::bounded(
            quota_key(call.tenant, call.period),
            call.units,
            None,
            Plan::of(call.tenant).limit(),
        );
        let usage = CounterOp::windowed(
            usage_key(call.tenant),
            call.units,
            window::DAY,
            USAGE_RETENTION,
            Some(call.at_ms),
        );
        let outcome = client
            .txn()
            .then(TxnOp::counters(vec![quota, usage]))
            .commit()
            .await
            .doing(|| format!("metering call {i}"))?;
        let mut metered = metered.locked();
        match outcome {
            TxnOutcome::Committed { .. } => {
                *metered.accepted.entry((call.tenant, call.period)).or_default() += call.units;
            }
            TxnOutcome::Aborted {
                reason: TxnOpResult::Counters(outcomes),
                ..
            } if matches!(outcomes.first(), Some(CounterOutcome::BoundExceeded { .. })) => {
                metered.refused_calls += 1;
                metered.refused_units += call.units;
            }
            TxnOutcome::Aborted { reason, .. } => {
                return Err(DemoError::Setup(format!("metering call {i} was refused: {reason:?}")));
            }
        }
    }
    Ok(())
}

/// What the invoicing runs did.
#[derive(Default)]
struct Invoicing {
    written: u64,
    /// Attempts that found the invoice's idempotency key already written.
    already_billed: u64,
    aborted: Vec<String>,
}

/// One invoicing run over every (tenant, period), in an order of its own.
async fn invoice_all(
    endpoints: Vec<String>,
    tenants: u64,
    periods: Vec<u64>,
    run: u64,
    invoicing: Arc<Mutex<Invoicing>>,
) -> Result<(), DemoError> {
    let client = connect(&endpoints).await?;
    let mut work: Vec<(u64, u64)> = periods
        .iter()
        .flat_map(|&p| (0..tenants).map(move |t| (t, p)))
        .collect();
    work.sort_by_key(|&(t, p)| mix(t ^ (p << 20) ^ (run << 40)));
    for (tenant, period) in work {
        let from = period * PERIOD_DAYS * DAY_MS;
        let usage = client
            .counter(usage_key(tenant))
            .windows(window::DAY, from, from + PERIOD_DAYS * DAY_MS)
            .await
            .doing(|| format!("reading tenant {tenant}'s usage"))?
            .sum;
        let plan = Plan::of(tenant);
        let amount = plan.base_fee() + u128::try_from(usage).unwrap_or(0) * UNIT_PRICE;
        let key = invoice_key(tenant, period);
        let transfer = Transfer {
            id: invoice_id(tenant, period),
            debit_account_id: receivable(tenant),
            credit_account_id: REVENUE,
            amount,
            user_data_64: period,
            ledger: LEDGER,
            code: CODE_INVOICE,
            ..Transfer::default()
        };
        let message = NewMessage::new(format!("{key} {amount}")).dedup_id(key.clone());
        let outcome = client
            .txn()
            .when(Condition::absent(key.clone()))
            .then(TxnOp::put(key.clone(), format!("{usage} {amount}")))
            .then(TxnOp::create_transfers(&[transfer]))
            .then(TxnOp::enqueue(OUTBOX, vec![message]))
            .commit()
            .await
            .doing(|| format!("writing invoice {key}"))?;
        let mut invoicing = invoicing.locked();
        match outcome {
            TxnOutcome::Committed { succeeded: true, .. } => invoicing.written += 1,
            TxnOutcome::Committed { succeeded: false, .. } => invoicing.already_billed += 1,
            TxnOutcome::Aborted { op, reason, .. } => {
                invoicing.aborted.push(format!("{key}: op {op} refused: {reason:?}"))
            }
        }
    }
    Ok(())
}

/// The outbox relay: hands each invoice message to the mailer (`sent`), then acknowledges it.
async fn relay(client: Client, expected: usize, sent: Arc<Mutex<Vec<String>>>) -> Result<(), DemoError> {
    let outbox = client.queue(OUTBOX);
    let deadline = Instant::now() + RELAY_WAIT;
    while sent.locked().len() < expected && Instant::now() < deadline {
        let options = ReceiveOptions {
            wait: Duration::from_millis(500),
            ..ReceiveOptions::default()
        };
        let messages = outbox
            .receive(100, options)
            .await
            .doing(|| format!("receiving from {OUTBOX}"))?;
        for message in messages {
            let text = String::from_utf8_lossy(&message.payload).into_owned();
            sent.locked().push(text);
            outbox
                .ack(&message.receipt)
                .await
                .doing(|| format!("acknowledging in {OUTBOX}"))?;
        }
    }
    Ok(())
}

async fn run(demo: &Demo) -> Result<Report, DemoError> {
    let scope = Scope::of(demo.scale());
    let client = demo.connect().await?;
    let ledger = client.ledger();
    let accounts: Vec<Account> = std::iter::once(REVENUE)
        .chain((0..scope.tenants).map(receivable))
        .map(|id| Account {
            id,
            ledger: LEDGER,
            code: CODE_ACCOUNT,
            ..Account::default()
        })
        .collect();
    let failures = ledger
        .create_accounts(&accounts)
        .await
        .doing(|| "creating the accounts".into())?;
    if let Some(failure) = failures.first() {
        return Err(DemoError::Setup(format!(
            "creating account {} failed: {} (an earlier run on this cluster?); run without --endpoints on a temporary cluster",
            accounts.get(failure.index as usize).map_or(0, |a| a.id), failure.result
        )));
    }
    client
        .queue(OUTBOX)
        .create(QueueOptions {
            dedup_window: Duration::from_secs(24 * 3600),
            ..QueueOptions::default()
        })
        .await
        .doing(|| format!("creating queue {OUTBOX}"))?;
    let current = unix_ms() / (PERIOD_DAYS * DAY_MS);
    let periods = vec![current - 2, current - 1];
    demo.say(&format!(
        "{} tenants on free (500 units), pro (5,000) and enterprise plans; {} metered calls over periods {} and {}",
        scope.tenants,
        scope.calls,
        period_name(periods[0]),
        period_name(periods[1])
    ));

    let started = Instant::now();
    let metered = Arc::new(Mutex::new(Metered::default()));
    let meters: Vec<_> = (0..METERS)
        .map(|first| {
            tokio::spawn(meter(
                demo.endpoints().to_vec(),
                scope.calls,
                scope.tenants,
                current,
                first,
                metered.clone(),
            ))
        })
        .collect();
    for meter in meters {
        joined(meter, "a meter").await?;
    }
    let metering = started.elapsed();
    let metered = std::mem::take(&mut *metered.locked());
    demo.say(&format!(
        "metered {} calls in {:.1}s ({:.0} calls/s); {} refused by plan limits",
        scope.calls,
        metering.as_secs_f64(),
        scope.calls as f64 / metering.as_secs_f64(),
        metered.refused_calls
    ));

    let invoices = (scope.tenants as usize) * periods.len();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let invoicing = Arc::new(Mutex::new(Invoicing::default()));
    let started = Instant::now();
    let racing: Vec<_> = (0..INVOICERS as u64)
        .map(|run| {
            tokio::spawn(invoice_all(
                demo.endpoints().to_vec(),
                scope.tenants,
                periods.clone(),
                run,
                invoicing.clone(),
            ))
        })
        .collect();
    for run in racing {
        joined(run, "an invoicing run").await?;
    }
    demo.say("two invoicing runs raced over every tenant; a third runs again (a retry)");
    invoice_all(
        demo.endpoints().to_vec(),
        scope.tenants,
        periods.clone(),
        INVOICERS as u64,
        invoicing.clone(),
    )
    .await?;
    let invoicing_time = started.elapsed();
    // The relay, a process of its own, hands on what the outbox holds (its wait counts from now).
    relay(demo.connect().await?, invoices, sent.clone()).await?;
    let invoicing = std::mem::take(&mut *invoicing.locked());
    let sent = std::mem::take(&mut *sent.locked());

    demo.say("checking the ledger, the invoices and the usage");
    let mut report = Report::default();
    report.violations.extend(invoicing.aborted.iter().cloned());
    let looked_up = ledger
        .lookup_accounts(&accounts.iter().map(|a| a.id).collect::<Vec<_>>())
        .await
        .doing(|| "looking up the accounts".into())?;
    let debits: u128 = looked_up.iter().map(|a| a.debits_posted).sum();
    let credits: u128 = looked_up.iter().map(|a| a.credits_posted).sum();
    if debits != credits {
        report.violations.push(format!(
            "the ledger is not balanced: debits {debits}, credits {credits}"
        ));
    }
    let mut revenue = 0u128;
    let mut billed_units = 0i64;
    for tenant in 0..scope.tenants {
        let plan = Plan::of(tenant);
        let transfers = ledger
            .get_account_transfers(&AccountFilter::all(receivable(tenant), 100))
            .await
            .doing(|| format!("reading tenant {tenant}'s transfers"))?;
        for &period in &periods {
            let bills: Vec<&Transfer> = transfers.iter().filter(|t| t.user_data_64 == period).collect();
            let name = format!("tenant-{tenant}, period {}", period_name(period));
            if bills.len() != 1 {
                report.violations.push(format!("{name}: billed {} times", bills.len()));
            }
            let accepted = metered.accepted.get(&(tenant, period)).copied().unwrap_or(0);
            let expected = plan.base_fee() + u128::try_from(accepted).unwrap_or(0) * UNIT_PRICE;
            for bill in &bills {
                if bill.amount != expected {
                    report.violations.push(format!(
                        "{name}: billed {} cents, the {accepted} units metered make {expected}",
                        bill.amount
                    ));
                }
            }
            let quota = client
                .counter(quota_key(tenant, period))
                .get()
                .await
                .doing(|| format!("reading {name}'s quota"))?;
            if quota != accepted {
                report.violations.push(format!(
                    "{name}: the plan quota counted {quota} units, metering was told {accepted}"
                ));
            }
            if plan.limit().is_some_and(|limit| accepted > limit) {
                report
                    .violations
                    .push(format!("{name}: {accepted} units accepted, over the {plan:?} limit"));
            }
            revenue += expected;
            billed_units += accepted;
        }
    }
    let written: BTreeSet<String> = (0..scope.tenants)
        .flat_map(|t| periods.iter().map(move |&p| invoice_key(t, p)))
        .collect();
    let mut relayed: BTreeMap<String, u64> = BTreeMap::new();
    for message in &sent {
        let key = message.split(' ').next().unwrap_or_default().to_string();
        *relayed.entry(key).or_default() += 1;
    }
    for key in &written {
        if !relayed.contains_key(key) {
            report
                .violations
                .push(format!("{key}: no outbox message reached the mailer"));
        }
    }
    for (key, times) in &relayed {
        if !written.contains(key) {
            report
                .violations
                .push(format!("{key}: an outbox message for no invoice"));
        } else if *times > 1 {
            report
                .violations
                .push(format!("{key}: its message reached the mailer {times} times"));
        }
    }

    report.figure("tenants, periods", format!("{}, {}", scope.tenants, periods.len()));
    report.figure(
        "metered calls",
        format!(
            "{} in {:.1}s ({:.0} transactions/s, {METERS} clients)",
            scope.calls,
            metering.as_secs_f64(),
            scope.calls as f64 / metering.as_secs_f64()
        ),
    );
    report.figure(
        "refused by plan limits",
        format!("{} calls, {} units", metered.refused_calls, metered.refused_units),
    );
    report.figure("units billed", billed_units);
    report.figure("invoices written", invoicing.written);
    report.figure("second invoices refused by idempotency key", invoicing.already_billed);
    report.figure("revenue", format!("{revenue} cents, debits = credits = {credits}"));
    report.figure("outbox messages relayed", sent.len());
    report.figure(
        "invoicing time (3 runs)",
        format!("{:.1}s", invoicing_time.as_secs_f64()),
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(59), (1970, 3, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(20_788), (2026, 12, 1));
    }

    #[test]
    fn calls_fall_in_the_two_periods_before_the_current_one() {
        let current = 700;
        let mut periods = BTreeSet::new();
        for i in 0..1000 {
            let call = Call::planned(i, 12, current);
            assert!(call.period == current - 1 || call.period == current - 2);
            assert_eq!(call.at_ms / (PERIOD_DAYS * DAY_MS), call.period);
            assert!((1..=20).contains(&call.units) && call.tenant < 12);
            periods.insert(call.period);
        }
        assert_eq!(periods.len(), 2);
    }

    #[test]
    fn invoice_ids_are_distinct_per_tenant_and_period() {
        let ids: BTreeSet<u128> = (0..100)
            .flat_map(|t| (690..700).map(move |p| invoice_id(t, p)))
            .collect();
        assert_eq!(ids.len(), 1000);
        assert!(!ids.contains(&0));
    }
}
