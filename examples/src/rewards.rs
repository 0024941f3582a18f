//! # rewards
//!
//! A loyalty program: every purchase earns points (one per whole dollar), at most a daily cap per
//! user, as a team would build it on TigerBeetle (or a ledger table and Redis for the caps):
//! - each user has a points account; points are issued from an issuance account;
//! - each user has, per day, a cap account funded with the day's cap and flagged
//!   `DEBITS_MUST_NOT_EXCEED_CREDITS`;
//! - a purchase is two linked transfers in one batch: its points from the user's cap account for
//!   the day (to a sink), then from issuance to the user. A purchase past the cap fails its first
//!   transfer (`exceeds_credits`), and the link fails the second (`linked_event_failed`): no
//!   points without room under the cap, no cap used without points;
//! - purchases go in batches of up to 4,000 (8,000 transfers, one Raft entry) from several
//!   clients at once.
//!
//! Invariant: the points issued equal the points earned, recomputed independently from the
//! purchases the ledger accepted, per user and in total; no user's day crosses its cap, and a
//! purchase refused had more points than its day had room left.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use basalt_client::ledger::{account_flags, transfer_flags, Account, EventFailure, Transfer};
use basalt_client::Ledger;

use crate::{connect, joined, mix, Demo, DemoError, Doing, Locked, Report, RunFuture, Scale, System};

pub const SYSTEM: System = System {
    name: "rewards",
    summary: "purchases earning points through batched, linked ledger transfers, with a per-user \
              daily cap held by cap accounts that may not go below zero",
    invariant: "points issued equal points earned recomputed from the accepted purchases; no \
                user's day crosses its cap",
    nodes: 3,
    regions: &[],
    origin: false,
    run: start,
};

fn start(demo: &Demo) -> RunFuture<'_> {
    Box::pin(run(demo))
}

const LEDGER: u32 = 7;
const CODE_ACCOUNT: u16 = 1;
const CODE_EARN: u16 = 20;
const CODE_CAP: u16 = 21;
const CODE_FUND: u16 = 22;
const ISSUANCE: u128 = 1;
const CAP_FUNDING: u128 = 2;
const CAP_SINK: u128 = 3;
/// Points a user may earn per day.
const DAILY_CAP: u128 = 500;
/// The days purchases fall on.
const DAYS: u64 = 3;
/// The largest purchase, in cents.
const PURCHASE_CENTS_MAX: u64 = 12_000;
/// Purchases per batch at most: two transfers each, within one request's 8,190 events.
const BATCH_PURCHASES_MAX: usize = 4_000;
/// Accounts per create or lookup request.
const ACCOUNTS_PER_REQUEST: usize = 8_000;
/// Clients sending batches at once.
const SENDERS: u64 = 4;

struct Scope {
    users: u64,
    purchases: u64,
    /// Purchases per batch, at most `BATCH_PURCHASES_MAX`.
    batch: usize,
}

impl Scope {
    fn of(scale: Scale) -> Scope {
        match scale {
            Scale::Short => Scope {
                users: 200,
                purchases: 4_000,
                batch: 500,
            },
            Scale::Full => Scope {
                users: 5_000,
                purchases: 100_000,
                batch: BATCH_PURCHASES_MAX,
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Purchase {
    id: u64,
    user: u64,
    day: u64,
    cents: u64,
}

impl Purchase {
    fn planned(id: u64, users: u64) -> Purchase {
        let draw = mix(id);
        Purchase {
            id,
            user: draw % users,
            day: (draw >> 24) % DAYS,
            cents: 100 + (draw >> 32) % (PURCHASE_CENTS_MAX - 100),
        }
    }

    /// The earning rule: a point per whole dollar.
    fn points(&self) -> u128 {
        u128::from(self.cents / 100)
    }

    /// The linked pair: room under the day's cap, then the points.
    fn transfers(&self) -> [Transfer; 2] {
        let points = self.points();
        [
            Transfer {
                id: (2 << 64) | u128::from(self.id),
                debit_account_id: cap_account(self.user, self.day),
                credit_account_id: CAP_SINK,
                amount: points,
                ledger: LEDGER,
                code: CODE_CAP,
                flags: transfer_flags::LINKED,
                ..Transfer::default()
            },
            Transfer {
                id: (1 << 64) | u128::from(self.id),
                debit_account_id: ISSUANCE,
                credit_account_id: points_account(self.user),
                amount: points,
                user_data_64: self.id,
                ledger: LEDGER,
                code: CODE_EARN,
                ..Transfer::default()
            },
        ]
    }
}

fn points_account(user: u64) -> u128 {
    (1 << 40) | u128::from(user)
}

fn cap_account(user: u64, day: u64) -> u128 {
    ((2 + u128::from(day)) << 40) | u128::from(user)
}

fn account(id: u128, flags: u16) -> Account {
    Account {
        id,
        ledger: LEDGER,
        code: CODE_ACCOUNT,
        flags,
        ..Account::default()
    }
}

/// What became of each purchase: accepted, or refused with its pair's result codes.
#[derive(Clone, Default)]
struct Outcomes {
    accepted: Vec<Purchase>,
    refused: Vec<(Purchase, String, String)>,
    batches: u64,
}

/// The purchases' fates from a batch's failures (indexes into the batch's transfers, two per
/// purchase).
fn sort_out(batch: &[Purchase], failures: &[EventFailure], outcomes: &mut Outcomes) {
    let mut failed: BTreeMap<usize, [String; 2]> = BTreeMap::new();
    for failure in failures {
        let index = failure.index as usize;
        failed.entry(index / 2).or_default()[index % 2] = failure.result.clone();
    }
    for (i, purchase) in batch.iter().enumerate() {
        match failed.remove(&i) {
            None => outcomes.accepted.push(*purchase),
            Some([cap, earn]) => outcomes.refused.push((*purchase, cap, earn)),
        }
    }
}

async fn send(
    endpoints: Vec<String>,
    batches: Vec<Vec<Purchase>>,
    outcomes: Arc<Mutex<Outcomes>>,
) -> Result<(), DemoError> {
    let client = connect(&endpoints).await?;
    let ledger = client.ledger();
    for batch in batches {
        let transfers: Vec<Transfer> = batch.iter().flat_map(Purchase::transfers).collect();
        let failures = ledger
            .create_transfers(&transfers)
            .await
            .doing(|| format!("sending a batch of {} purchases", batch.len()))?;
        let mut outcomes = outcomes.locked();
        sort_out(&batch, &failures, &mut outcomes);
        outcomes.batches += 1;
    }
    Ok(())
}

async fn lookup_all(ledger: &Ledger, ids: &[u128]) -> Result<BTreeMap<u128, Account>, DemoError> {
    let mut found = BTreeMap::new();
    for chunk in ids.chunks(ACCOUNTS_PER_REQUEST) {
        for account in ledger
            .lookup_accounts(chunk)
            .await
            .doing(|| "looking up accounts".into())?
        {
            found.insert(account.id, account);
        }
    }
    Ok(found)
}

/// The checks, from the accepted and refused purchases and the accounts as the ledger holds them.
fn check(outcomes: &Outcomes, accounts: &BTreeMap<u128, Account>, users: u64) -> Vec<String> {
    let mut violations = Vec::new();
    let mut earned: BTreeMap<u64, u128> = BTreeMap::new();
    let mut used: BTreeMap<(u64, u64), u128> = BTreeMap::new();
    for purchase in &outcomes.accepted {
        *earned.entry(purchase.user).or_default() += purchase.points();
        *used.entry((purchase.user, purchase.day)).or_default() += purchase.points();
    }
    let get = |id: u128| accounts.get(&id).copied().unwrap_or_default();
    let total: u128 = earned.values().sum();
    if get(ISSUANCE).debits_posted != total {
        violations.push(format!(
            "issued {} points, the accepted purchases earned {total}",
            get(ISSUANCE).debits_posted
        ));
    }
    for user in 0..users {
        let points = get(points_account(user)).credits_posted;
        let want = earned.get(&user).copied().unwrap_or(0);
        if points != want {
            violations.push(format!("user {user}: holds {points} points, earned {want}"));
        }
        for day in 0..DAYS {
            let cap = get(cap_account(user, day));
            let want = used.get(&(user, day)).copied().unwrap_or(0);
            if cap.debits_posted != want {
                violations.push(format!(
                    "user {user}, day {day}: {} of the cap used, the accepted purchases earned {want}",
                    cap.debits_posted
                ));
            }
            if cap.debits_posted > DAILY_CAP || cap.credits_posted != DAILY_CAP {
                violations.push(format!(
                    "user {user}, day {day}: {} earned against a cap of {}",
                    cap.debits_posted, cap.credits_posted
                ));
            }
        }
    }
    for (purchase, cap, earn) in &outcomes.refused {
        let room = DAILY_CAP.saturating_sub(used.get(&(purchase.user, purchase.day)).copied().unwrap_or(0));
        if cap != "exceeds_credits" || earn != "linked_event_failed" {
            violations.push(format!(
                "purchase {}: refused with {cap:?} and {earn:?}, not for the cap",
                purchase.id
            ));
        } else if purchase.points() <= room {
            violations.push(format!(
                "purchase {}: {} points refused, yet its day still has room for {room}",
                purchase.id,
                purchase.points()
            ));
        }
    }
    violations
}

async fn run(demo: &Demo) -> Result<Report, DemoError> {
    let scope = Scope::of(demo.scale());
    let client = demo.connect().await?;
    let ledger = client.ledger();

    let started = Instant::now();
    let mut accounts = vec![account(ISSUANCE, 0), account(CAP_FUNDING, 0), account(CAP_SINK, 0)];
    accounts.extend((0..scope.users).map(|u| account(points_account(u), 0)));
    accounts.extend((0..scope.users).flat_map(|u| {
        (0..DAYS).map(move |d| account(cap_account(u, d), account_flags::DEBITS_MUST_NOT_EXCEED_CREDITS))
    }));
    for chunk in accounts.chunks(ACCOUNTS_PER_REQUEST) {
        let failures = ledger
            .create_accounts(chunk)
            .await
            .doing(|| "creating the accounts".into())?;
        if let Some(failure) = failures.first() {
            return Err(DemoError::Setup(format!(
                "creating account {} failed: {} (an earlier run on this cluster?); run without --endpoints on a temporary cluster",
                chunk.get(failure.index as usize).map_or(0, |a| a.id), failure.result
            )));
        }
    }
    let funding: Vec<Transfer> = accounts
        .iter()
        .filter(|a| a.flags & account_flags::DEBITS_MUST_NOT_EXCEED_CREDITS != 0)
        .map(|a| Transfer {
            id: (3 << 64) | a.id,
            debit_account_id: CAP_FUNDING,
            credit_account_id: a.id,
            amount: DAILY_CAP,
            ledger: LEDGER,
            code: CODE_FUND,
            ..Transfer::default()
        })
        .collect();
    for chunk in funding.chunks(ACCOUNTS_PER_REQUEST) {
        let failures = ledger
            .create_transfers(chunk)
            .await
            .doing(|| "funding the daily caps".into())?;
        if let Some(failure) = failures.first() {
            return Err(DemoError::Setup(format!(
                "funding a daily cap failed: {}",
                failure.result
            )));
        }
    }
    demo.say(&format!(
        "{} accounts: {} users' points and {} daily caps of {DAILY_CAP} points, funded in {:.1}s",
        accounts.len(),
        scope.users,
        funding.len(),
        started.elapsed().as_secs_f64()
    ));

    let purchases: Vec<Purchase> = (1..=scope.purchases)
        .map(|id| Purchase::planned(id, scope.users))
        .collect();
    let batches: Vec<Vec<Purchase>> = purchases
        .chunks(scope.batch.min(BATCH_PURCHASES_MAX))
        .map(<[Purchase]>::to_vec)
        .collect();
    let mut shares: Vec<Vec<Vec<Purchase>>> = (0..SENDERS).map(|_| Vec::new()).collect();
    for (i, batch) in batches.into_iter().enumerate() {
        shares[i % SENDERS as usize].push(batch);
    }
    demo.say(&format!(
        "{} purchases, {} transfers, in batches of {} purchases from {SENDERS} clients",
        scope.purchases,
        scope.purchases * 2,
        scope.batch
    ));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let started = Instant::now();
    let senders: Vec<_> = shares
        .into_iter()
        .map(|share| tokio::spawn(send(demo.endpoints().to_vec(), share, outcomes.clone())))
        .collect();
    for sender in senders {
        joined(sender, "a sender").await?;
    }
    let sending = started.elapsed();
    let outcomes = std::mem::take(&mut *outcomes.locked());

    demo.say("recomputing the points from the accepted purchases");
    let ids: Vec<u128> = accounts.iter().map(|a| a.id).collect();
    let found = lookup_all(&ledger, &ids).await?;
    let mut report = Report {
        violations: check(&outcomes, &found, scope.users),
        ..Report::default()
    };
    if found.len() != ids.len() {
        report
            .violations
            .push(format!("{} of {} accounts found", found.len(), ids.len()));
    }
    let issued: u128 = outcomes.accepted.iter().map(Purchase::points).sum();
    let transfers = scope.purchases * 2;
    report.figure(
        "users, days, daily cap",
        format!("{}, {DAYS}, {DAILY_CAP} points", scope.users),
    );
    report.figure("purchases", scope.purchases);
    report.figure(
        "accepted, refused at the cap",
        format!("{}, {}", outcomes.accepted.len(), outcomes.refused.len()),
    );
    report.figure("points issued", issued);
    report.figure(
        "transfers",
        format!(
            "{transfers} in {} batches, {:.2}s: {:.0} transfers/s ({SENDERS} clients)",
            outcomes.batches,
            sending.as_secs_f64(),
            transfers as f64 / sending.as_secs_f64()
        ),
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger_state(outcomes: &Outcomes, users: u64) -> BTreeMap<u128, Account> {
        let mut accounts = BTreeMap::new();
        for user in 0..users {
            accounts.insert(points_account(user), account(points_account(user), 0));
            for day in 0..DAYS {
                let mut cap = account(cap_account(user, day), 0);
                cap.credits_posted = DAILY_CAP;
                accounts.insert(cap.id, cap);
            }
        }
        let mut issuance = account(ISSUANCE, 0);
        for purchase in &outcomes.accepted {
            issuance.debits_posted += purchase.points();
            accounts
                .entry(points_account(purchase.user))
                .or_default()
                .credits_posted += purchase.points();
            accounts
                .entry(cap_account(purchase.user, purchase.day))
                .or_default()
                .debits_posted += purchase.points();
        }
        accounts.insert(ISSUANCE, issuance);
        accounts
    }

    fn purchase(id: u64, user: u64, day: u64, cents: u64) -> Purchase {
        Purchase { id, user, day, cents }
    }

    #[test]
    fn a_batch_sorts_into_accepted_and_refused_pairs() {
        let batch = [purchase(1, 0, 0, 100), purchase(2, 0, 0, 200), purchase(3, 1, 0, 300)];
        let failures = [
            EventFailure {
                index: 2,
                result: "exceeds_credits".into(),
            },
            EventFailure {
                index: 3,
                result: "linked_event_failed".into(),
            },
        ];
        let mut outcomes = Outcomes::default();
        sort_out(&batch, &failures, &mut outcomes);
        assert_eq!(outcomes.accepted, vec![batch[0], batch[2]]);
        assert_eq!(
            outcomes.refused,
            vec![(
                batch[1],
                "exceeds_credits".to_string(),
                "linked_event_failed".to_string()
            )]
        );
    }

    #[test]
    fn the_checks_hold_for_a_consistent_ledger_and_find_what_is_off() {
        // 300 + 199 = 499 used: a 2-point purchase cannot fit, a 1-point one could have.
        let outcomes = Outcomes {
            accepted: vec![purchase(1, 0, 0, 30_000), purchase(2, 0, 0, 19_999)],
            refused: vec![(
                purchase(3, 0, 0, 250),
                "exceeds_credits".into(),
                "linked_event_failed".into(),
            )],
            batches: 1,
        };
        let accounts = ledger_state(&outcomes, 2);
        assert_eq!(check(&outcomes, &accounts, 2), Vec::<String>::new());

        let mut wrong = outcomes.clone();
        wrong.refused = vec![(
            purchase(4, 0, 0, 150),
            "exceeds_credits".into(),
            "linked_event_failed".into(),
        )];
        assert_eq!(
            check(&wrong, &accounts, 2),
            vec!["purchase 4: 1 points refused, yet its day still has room for 1".to_string()]
        );

        let mut over = ledger_state(&outcomes, 2);
        if let Some(points) = over.get_mut(&points_account(0)) {
            points.credits_posted += 5;
        }
        assert_eq!(
            check(&outcomes, &over, 2),
            vec!["user 0: holds 504 points, earned 499".to_string()]
        );
    }

    #[test]
    fn purchases_fall_within_the_plan() {
        for id in 1..1000 {
            let p = Purchase::planned(id, 50);
            assert!(p.user < 50 && p.day < DAYS && (100..PURCHASE_CENTS_MAX).contains(&p.cents));
            assert!((1..=120).contains(&p.points()));
        }
    }
}
