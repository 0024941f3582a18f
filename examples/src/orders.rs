//! # orders
//!
//! An order saga across payment, inventory and shipping, as a team would build it with a saga
//! orchestrator, an outbox table, Redis for stock and a payment provider's two-phase API:
//! - placing an order writes it with its idempotency key (`orders/order-N`, only if absent)
//!   and, in the same transaction, its outbox message to the saga queue `orders.saga`: a client
//!   retrying the placement creates nothing twice;
//! - saga workers take an order from the queue and drive it step by step. Each step is one
//!   transaction conditioned on the order's current state, which it advances together with the
//!   step's effect: reserve the payment (a pending ledger transfer), reserve stock (a counter
//!   bounded at 0), request shipping (a message to the `shipping` queue), capture the payment
//!   (post the pending transfer). A declined payment cancels the order; missing stock voids the
//!   payment reservation and cancels it (compensation);
//! - a worker is killed after every step in turn (and once after the last, before acknowledging):
//!   the order's message comes back after its visibility timeout and another worker resumes it
//!   from its stored state; a step that was applied is not applied again, its condition no longer
//!   holds.
//!
//! Invariant: every order ends completed or fully compensated; stock never goes below zero; no
//! payment is captured twice (nor left reserved); every completed order is shipped once and no
//! cancelled one at all.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use basalt_client::ledger::{account_flags, transfer_flags, Account, Transfer};
use basalt_client::txn::{Compare, Condition, TxnOp};
use basalt_client::{
    Client, CounterOp, CounterOutcome, Message, NewMessage, QueueOptions, ReadConsistency, ReceiveOptions, TxnOpResult,
    TxnOutcome,
};

use crate::worker::{Closing, Worker};
use crate::{connect, drain, mix, Demo, DemoError, Doing, Locked, Report, RunFuture, Scale, System};

pub const SYSTEM: System = System {
    name: "orders",
    summary: "a saga across payment (two-phase ledger transfer), inventory (stock counter bounded \
              at 0) and shipping (a queue), with an outbox and idempotency keys; the saga worker \
              is killed after every step in turn",
    invariant: "every order ends completed or fully compensated, stock never below zero, no \
                payment captured twice",
    nodes: 3,
    regions: &[],
    origin: false,
    run: start,
};

fn start(demo: &Demo) -> RunFuture<'_> {
    Box::pin(run(demo))
}

const SAGA_QUEUE: &str = "orders.saga";
const SHIPPING_QUEUE: &str = "shipping";
const LEDGER: u32 = 3;
const CODE_ACCOUNT: u16 = 1;
const CODE_PAYMENT: u16 = 30;
const MERCHANT: u128 = 1;
/// How long an order a killed worker was driving waits before another worker resumes it.
const VISIBILITY: Duration = Duration::from_secs(2);
const SKUS: u64 = 3;
const WORKERS: usize = 2;
/// Cents each customer starts with; one customer in five has too little for most orders.
const FUNDS: u128 = 100_000;
const LOW_FUNDS: u128 = 1_500;
/// One placement in this many is sent twice (a client retry).
const RETRY_ONE_IN: u64 = 7;
const TICK: Duration = Duration::from_millis(100);
/// Steps one worker takes on one order at most: the saga has four, each retried at most once
/// after another worker moved the order on.
const STEPS_PER_ORDER_MAX: usize = 16;
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

struct Scope {
    orders: u64,
    customers: u64,
    /// Each SKU's stock at the start: less than the orders want, so some run out.
    stock: i64,
    /// Kill the worker after each step, this many rounds.
    kill_rounds: usize,
    deadline: Duration,
}

impl Scope {
    fn of(scale: Scale) -> Scope {
        match scale {
            Scale::Short => Scope {
                orders: 60,
                customers: 10,
                stock: 30,
                kill_rounds: 1,
                deadline: Duration::from_secs(90),
            },
            Scale::Full => Scope {
                orders: 600,
                customers: 50,
                stock: 300,
                kill_rounds: 3,
                deadline: Duration::from_secs(240),
            },
        }
    }
}

/// Where an order stands; its key holds the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    Placed,
    PaymentReserved,
    StockReserved,
    ShippingRequested,
    Completed,
    /// The payment was declined: nothing to undo.
    CancelledDeclined,
    /// Out of stock: the payment reservation was voided.
    CancelledOutOfStock,
}

impl State {
    const ALL: [State; 7] = [
        State::Placed,
        State::PaymentReserved,
        State::StockReserved,
        State::ShippingRequested,
        State::Completed,
        State::CancelledDeclined,
        State::CancelledOutOfStock,
    ];

    fn name(self) -> &'static str {
        match self {
            State::Placed => "placed",
            State::PaymentReserved => "payment-reserved",
            State::StockReserved => "stock-reserved",
            State::ShippingRequested => "shipping-requested",
            State::Completed => "completed",
            State::CancelledDeclined => "cancelled: payment declined",
            State::CancelledOutOfStock => "cancelled: out of stock",
        }
    }

    fn parse(value: &[u8]) -> Option<State> {
        State::ALL.into_iter().find(|s| s.name().as_bytes() == value)
    }

    fn is_final(self) -> bool {
        matches!(
            self,
            State::Completed | State::CancelledDeclined | State::CancelledOutOfStock
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Order {
    id: u64,
    customer: u64,
    sku: u64,
    quantity: i64,
    /// Cents.
    amount: u128,
}

impl Order {
    fn planned(id: u64, customers: u64) -> Order {
        let draw = mix(id);
        let quantity = 1 + ((draw >> 16) % 3) as i64;
        Order {
            id,
            customer: draw % customers,
            sku: (draw >> 8) % SKUS,
            quantity,
            amount: 1_000 * quantity as u128,
        }
    }

    fn key(&self) -> String {
        order_key(self.id)
    }
}

fn order_key(id: u64) -> String {
    format!("orders/order-{id}")
}

fn stock_key(sku: u64) -> String {
    format!("orders/stock/sku-{sku}")
}

fn customer_account(customer: u64) -> u128 {
    100 + u128::from(customer)
}

/// The pending payment's transfer id, and the ids of its post and void.
fn payment_id(order: u64) -> u128 {
    (1 << 64) | u128::from(order)
}

fn capture_id(order: u64) -> u128 {
    (2 << 64) | u128::from(order)
}

fn void_id(order: u64) -> u128 {
    (3 << 64) | u128::from(order)
}

/// Orders are read by the workers from the plan, by id (a real service reads them from the
/// order row).
struct Book {
    orders: BTreeMap<u64, Order>,
}

/// What the run shares with its workers.
#[derive(Default)]
struct Shared {
    /// The steps after which a worker is to die next, in order.
    kill_after: Mutex<VecDeque<State>>,
    /// (step the worker died after, order) for each kill.
    killed: Mutex<Vec<(State, u64)>>,
    /// Orders a worker took up again after their message came back (a killed worker's, or a
    /// saga slower than the visibility timeout).
    resumed: Mutex<u64>,
    stop: AtomicBool,
}

/// The transaction taking `order` from `from` to the next state, with the step's effect, or
/// (when the effect is refused) the one cancelling it.
async fn step(client: &Client, order: &Order, from: State) -> Result<State, DemoError> {
    let key = order.key();
    let at = |state: State| Condition::value(key.clone(), Compare::Eq, state.name());
    let advance = |to: State| TxnOp::put(key.clone(), to.name());
    let (effect, to) = match from {
        State::Placed => (
            TxnOp::create_transfers(&[Transfer {
                id: payment_id(order.id),
                debit_account_id: customer_account(order.customer),
                credit_account_id: MERCHANT,
                amount: order.amount,
                ledger: LEDGER,
                code: CODE_PAYMENT,
                flags: transfer_flags::PENDING,
                ..Transfer::default()
            }]),
            State::PaymentReserved,
        ),
        State::PaymentReserved => (
            TxnOp::counter(CounterOp::bounded(stock_key(order.sku), -order.quantity, Some(0), None)),
            State::StockReserved,
        ),
        State::StockReserved => (
            TxnOp::enqueue(
                SHIPPING_QUEUE,
                vec![NewMessage::new(order.id.to_string()).dedup_id(key.clone())],
            ),
            State::ShippingRequested,
        ),
        State::ShippingRequested => (
            TxnOp::create_transfers(&[Transfer {
                id: capture_id(order.id),
                pending_id: payment_id(order.id),
                flags: transfer_flags::POST_PENDING_TRANSFER,
                ..Transfer::default()
            }]),
            State::Completed,
        ),
        done => return Ok(done),
    };
    let outcome = client
        .txn()
        .when(at(from))
        .then(effect)
        .then(advance(to))
        .commit()
        .await
        .doing(|| format!("order {}: {} -> {}", order.id, from.name(), to.name()))?;
    match outcome {
        // Done, or another worker moved the order on first: read where it stands.
        TxnOutcome::Committed { .. } => Ok(read_state(client, order.id).await?),
        TxnOutcome::Aborted { op, reason, .. } => {
            let refused = |reason: &TxnOpResult| {
                DemoError::Setup(format!(
                    "order {}: {} -> {} refused at op {op}: {reason:?}",
                    order.id,
                    from.name(),
                    to.name()
                ))
            };
            // Only the refusals the saga compensates: a declined payment, missing stock.
            let declined = matches!(&reason, TxnOpResult::Ledger(f) if f.iter().any(|f| f.result == "exceeds_credits"));
            let out_of_stock = matches!(&reason, TxnOpResult::Counters(c) if matches!(c.first(), Some(CounterOutcome::BoundExceeded { .. })));
            let cancel = match from {
                State::Placed if declined => client.txn().when(at(from)).then(advance(State::CancelledDeclined)),
                State::PaymentReserved if out_of_stock => client
                    .txn()
                    .when(at(from))
                    .then(TxnOp::create_transfers(&[Transfer {
                        id: void_id(order.id),
                        pending_id: payment_id(order.id),
                        flags: transfer_flags::VOID_PENDING_TRANSFER,
                        ..Transfer::default()
                    }]))
                    .then(advance(State::CancelledOutOfStock)),
                _ => return Err(refused(&reason)),
            };
            let cancelled = cancel
                .commit()
                .await
                .doing(|| format!("order {}: cancelling at {}", order.id, from.name()))?;
            // Committed, or its condition no longer held (another worker moved the order on):
            // read where it stands. Refused, the order cannot be compensated here.
            if let TxnOutcome::Aborted { reason, .. } = cancelled {
                return Err(refused(&reason));
            }
            Ok(read_state(client, order.id).await?)
        }
    }
}

async fn read_state(client: &Client, id: u64) -> Result<State, DemoError> {
    let entry = client
        .kv()
        .get(order_key(id))
        .await
        .doing(|| format!("reading order {id}"))?
        .ok_or_else(|| DemoError::Setup(format!("order {id} is gone")))?;
    State::parse(&entry.value).ok_or_else(|| {
        DemoError::Setup(format!(
            "order {id} holds {:?}, not a state",
            String::from_utf8_lossy(&entry.value)
        ))
    })
}

/// Drives one order to its end. `Ok(false)`: the worker is to die here (after `state`'s step),
/// leaving the message unacknowledged.
async fn drive(client: &Client, book: &Book, message: &Message, shared: &Shared) -> Result<bool, DemoError> {
    let id: u64 = std::str::from_utf8(&message.payload)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| DemoError::Setup("a saga message that names no order".into()))?;
    let order = book
        .orders
        .get(&id)
        .ok_or_else(|| DemoError::Setup(format!("order {id} is not in the book")))?;
    let mut state = read_state(client, id).await?;
    if state != State::Placed && message.delivery > 1 {
        *shared.resumed.locked() += 1;
    }
    for _ in 0..STEPS_PER_ORDER_MAX {
        if !state.is_final() {
            state = step(client, order, state).await?;
        }
        {
            let mut kill_after = shared.kill_after.locked();
            if kill_after.front() == Some(&state) {
                kill_after.pop_front();
                shared.killed.locked().push((state, id));
                return Ok(false);
            }
        }
        if state.is_final() {
            client
                .queue(SAGA_QUEUE)
                .ack(&message.receipt)
                .await
                .doing(|| format!("acknowledging order {id}"))?;
            return Ok(true);
        }
    }
    Err(DemoError::Setup(format!(
        "order {id}: still at {} after {STEPS_PER_ORDER_MAX} steps",
        state.name()
    )))
}

/// A saga worker: takes orders from the saga queue and drives them, until it is closed or dies
/// at a kill point (then its thread ends and the run starts another).
async fn work(
    endpoints: Vec<String>,
    book: Arc<Book>,
    shared: Arc<Shared>,
    mut closing: Closing,
) -> Result<(), DemoError> {
    let client = connect(&endpoints).await?;
    let saga = client.queue(SAGA_QUEUE);
    loop {
        let options = ReceiveOptions {
            wait: TICK,
            ..ReceiveOptions::default()
        };
        let messages = tokio::select! {
            received = saga.receive(1, options) => received.doing(|| format!("receiving from {SAGA_QUEUE}"))?,
            () = closing.requested() => return Ok(()),
        };
        for message in &messages {
            if !drive(&client, &book, message, &shared).await? {
                return Ok(());
            }
        }
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
    }
}

fn spawn_worker(n: usize, endpoints: &[String], book: &Arc<Book>, shared: &Arc<Shared>) -> Result<Worker, DemoError> {
    let (endpoints, book, shared) = (endpoints.to_vec(), book.clone(), shared.clone());
    Worker::spawn(format!("saga-worker-{n}"), move |closing| {
        work(endpoints, book, shared, closing)
    })
}

/// Places `order` with its idempotency key and outbox message; `Ok(false)`: it was placed
/// already.
async fn place(client: &Client, order: &Order) -> Result<bool, DemoError> {
    let key = order.key();
    let outcome = client
        .txn()
        .when(Condition::absent(key.clone()))
        .then(TxnOp::put(key.clone(), State::Placed.name()))
        .then(TxnOp::enqueue(
            SAGA_QUEUE,
            vec![NewMessage::new(order.id.to_string()).dedup_id(key.clone())],
        ))
        .commit()
        .await
        .doing(|| format!("placing order {}", order.id))?;
    Ok(outcome.succeeded() && outcome.is_committed())
}

async fn run(demo: &Demo) -> Result<Report, DemoError> {
    let scope = Scope::of(demo.scale());
    let client = demo.connect().await?;
    let book = Arc::new(Book {
        orders: (1..=scope.orders)
            .map(|id| (id, Order::planned(id, scope.customers)))
            .collect(),
    });
    // Customers and the merchant; one customer in five is short of funds.
    let funds = |c: u64| if c % 5 == 4 { LOW_FUNDS } else { FUNDS };
    let mut accounts = vec![Account {
        id: MERCHANT,
        ledger: LEDGER,
        code: CODE_ACCOUNT,
        ..Account::default()
    }];
    accounts.extend((0..scope.customers).map(|c| Account {
        id: customer_account(c),
        ledger: LEDGER,
        code: CODE_ACCOUNT,
        flags: account_flags::DEBITS_MUST_NOT_EXCEED_CREDITS,
        ..Account::default()
    }));
    accounts.push(Account {
        id: 2,
        ledger: LEDGER,
        code: CODE_ACCOUNT,
        ..Account::default()
    });
    let ledger = client.ledger();
    if let Some(failure) = ledger
        .create_accounts(&accounts)
        .await
        .doing(|| "creating the accounts".into())?
        .first()
    {
        return Err(DemoError::Setup(format!(
            "creating account {} failed: {} (an earlier run on this cluster?); run without --endpoints on a temporary cluster",
            accounts.get(failure.index as usize).map_or(0, |a| a.id), failure.result
        )));
    }
    let deposits: Vec<Transfer> = (0..scope.customers)
        .map(|c| Transfer {
            id: (9 << 64) | u128::from(c),
            debit_account_id: 2,
            credit_account_id: customer_account(c),
            amount: funds(c),
            ledger: LEDGER,
            code: CODE_PAYMENT,
            ..Transfer::default()
        })
        .collect();
    ledger
        .create_transfers(&deposits)
        .await
        .doing(|| "funding the customers".into())?;
    let counters: Vec<CounterOp> = (0..SKUS).map(|s| CounterOp::set(stock_key(s), scope.stock)).collect();
    client
        .counters()
        .apply(counters)
        .await
        .doing(|| "stocking the SKUs".into())?;
    for queue in [SAGA_QUEUE, SHIPPING_QUEUE] {
        let options = QueueOptions {
            visibility_timeout: VISIBILITY,
            dedup_window: Duration::from_secs(3600),
            ..QueueOptions::default()
        };
        client
            .queue(queue)
            .create(options)
            .await
            .doing(|| format!("creating {queue}"))?;
    }
    let shared = Arc::new(Shared::default());
    {
        let mut kill_after = shared.kill_after.locked();
        for _ in 0..scope.kill_rounds {
            kill_after.extend([
                State::PaymentReserved,
                State::StockReserved,
                State::ShippingRequested,
                State::Completed,
            ]);
        }
    }
    demo.say(&format!(
        "{} orders from {} customers for {SKUS} SKUs of {} each; {WORKERS} saga workers, one killed after each step \
         in turn ({} kills); an order a killed worker held comes back after {}s",
        scope.orders,
        scope.customers,
        scope.stock,
        scope.kill_rounds * 4,
        VISIBILITY.as_secs()
    ));

    let started = Instant::now();
    let endpoints = demo.endpoints().to_vec();
    let mut spawned = 0;
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        spawned += 1;
        workers.push(spawn_worker(spawned, &endpoints, &book, &shared)?);
    }
    let mut placed = 0u64;
    let mut replaced = 0u64;
    for order in book.orders.values() {
        placed += u64::from(place(&client, order).await?);
        if order.id.is_multiple_of(RETRY_ONE_IN) && place(&client, order).await? {
            return Err(DemoError::Setup(format!("order {} was placed twice", order.id)));
        }
    }
    demo.say(&format!(
        "placed {placed} orders in {:.1}s",
        started.elapsed().as_secs_f64()
    ));

    let mut next_progress = Instant::now();
    let mut kills_seen = 0;
    let completed = loop {
        // A worker that died at a kill point is replaced.
        let mut alive = Vec::new();
        for worker in workers {
            if worker.is_finished() {
                worker.close().await?;
                spawned += 1;
                replaced += 1;
                alive.push(spawn_worker(spawned, &endpoints, &book, &shared)?);
            } else {
                alive.push(worker);
            }
        }
        workers = alive;
        let killed = shared.killed.locked().clone();
        for (state, id) in killed.iter().skip(kills_seen) {
            demo.say(&format!(
                "  killed a saga worker after order {id} reached {}",
                state.name()
            ));
        }
        kills_seen = killed.len();
        let saga = client
            .queue(SAGA_QUEUE)
            .stats(ReadConsistency::Linearizable)
            .await
            .doing(|| format!("reading {SAGA_QUEUE}"))?;
        if saga.messages == 0 && saga.in_flight == 0 {
            break true;
        }
        if started.elapsed() > scope.deadline {
            break false;
        }
        if Instant::now() >= next_progress {
            next_progress = Instant::now() + PROGRESS_EVERY;
            demo.say(&format!(
                "  sagas open {} (in flight {})",
                saga.messages, saga.in_flight
            ));
        }
        tokio::time::sleep(TICK).await;
    };
    shared.stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.close().await?;
    }
    let elapsed = started.elapsed();

    demo.say("checking every order, the stock, the payments and the shipments");
    let mut report = Report::default();
    if !completed {
        report
            .violations
            .push(format!("the sagas did not all end within {:?}", scope.deadline));
    }
    let mut states: BTreeMap<u64, State> = BTreeMap::new();
    for id in book.orders.keys() {
        states.insert(*id, read_state(&client, *id).await?);
    }
    let shipped = drain_shipping(&client).await?;
    let transfers = ledger
        .lookup_transfers(&book.orders.keys().map(|&id| payment_id(id)).collect::<Vec<_>>())
        .await
        .doing(|| "looking up the payments".into())?;
    let pending_status: BTreeMap<u128, String> = transfers
        .into_iter()
        .map(|t| (t.transfer.id, t.pending_status))
        .collect();
    let customers = ledger
        .lookup_accounts(&(0..scope.customers).map(customer_account).collect::<Vec<_>>())
        .await
        .doing(|| "looking up the customers".into())?;
    let stock = client
        .counters()
        .get(
            (0..SKUS).map(|s| stock_key(s).into_bytes()).collect(),
            ReadConsistency::Linearizable,
        )
        .await
        .doing(|| "reading the stock".into())?;
    report.violations.extend(check(
        &book,
        &states,
        &shipped,
        &pending_status,
        &customers,
        scope.stock,
        &stock,
    ));

    let count = |state: State| states.values().filter(|s| **s == state).count();
    report.figure(
        "orders placed",
        format!(
            "{placed} ({} retried placements refused)",
            book.orders.len() as u64 / RETRY_ONE_IN
        ),
    );
    report.figure("completed", count(State::Completed));
    report.figure("cancelled: payment declined", count(State::CancelledDeclined));
    report.figure(
        "cancelled: out of stock (payment voided)",
        count(State::CancelledOutOfStock),
    );
    report.figure("stock left per SKU", format!("{stock:?}"));
    let killed = shared.killed.locked().clone();
    report.figure(
        "workers killed",
        format!(
            "{} of {} planned (after: {})",
            killed.len(),
            scope.kill_rounds * 4,
            killed.iter().map(|(s, _)| s.name()).collect::<Vec<_>>().join(", ")
        ),
    );
    report.figure("orders resumed by another worker", *shared.resumed.locked());
    report.figure("workers started to replace the killed", replaced);
    report.figure("run time", format!("{:.1}s", elapsed.as_secs_f64()));
    Ok(report)
}

/// Every shipping request, received and acknowledged: the order ids, as many times as requested.
async fn drain_shipping(client: &Client) -> Result<Vec<u64>, DemoError> {
    Ok(drain(client, SHIPPING_QUEUE)
        .await?
        .iter()
        .filter_map(|payload| std::str::from_utf8(payload).ok()?.parse().ok())
        .collect())
}

/// Each way the run broke the invariant.
fn check(
    book: &Book,
    states: &BTreeMap<u64, State>,
    shipped: &[u64],
    pending_status: &BTreeMap<u128, String>,
    customers: &[Account],
    stocked: i64,
    stock: &[i64],
) -> Vec<String> {
    let mut violations = Vec::new();
    let mut sold = vec![0i64; SKUS as usize];
    let mut paid: BTreeMap<u128, u128> = BTreeMap::new();
    let mut ships: BTreeMap<u64, usize> = BTreeMap::new();
    for id in shipped {
        *ships.entry(*id).or_default() += 1;
    }
    for (id, order) in &book.orders {
        let state = states.get(id).copied().unwrap_or(State::Placed);
        let status = pending_status.get(&payment_id(*id)).map(String::as_str);
        let times_shipped = ships.get(id).copied().unwrap_or(0);
        match state {
            State::Completed => {
                sold[order.sku as usize] += order.quantity;
                *paid.entry(customer_account(order.customer)).or_default() += order.amount;
                if status != Some("posted") {
                    violations.push(format!("order {id}: completed, its payment is {status:?}"));
                }
                if times_shipped != 1 {
                    violations.push(format!("order {id}: completed, shipped {times_shipped} times"));
                }
            }
            State::CancelledDeclined | State::CancelledOutOfStock => {
                let compensated = match state {
                    State::CancelledDeclined => status.is_none(),
                    _ => status == Some("voided"),
                };
                if !compensated {
                    violations.push(format!("order {id}: {}, its payment is {status:?}", state.name()));
                }
                if times_shipped != 0 {
                    violations.push(format!("order {id}: {}, shipped {times_shipped} times", state.name()));
                }
            }
            open => violations.push(format!("order {id}: left at {}", open.name())),
        }
    }
    for (sku, (&left, &sold)) in stock.iter().zip(&sold).enumerate() {
        if left < 0 || left != stocked - sold {
            violations.push(format!(
                "sku-{sku}: {left} left, {stocked} less {sold} sold is {}",
                stocked - sold
            ));
        }
    }
    for account in customers {
        let want = paid.get(&account.id).copied().unwrap_or(0);
        if account.debits_posted != want || account.debits_pending != 0 {
            violations.push(format!(
                "customer account {}: {} captured and {} still reserved, its completed orders make {want}",
                account.id, account.debits_posted, account.debits_pending
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    const STOCK: i64 = 30;

    #[test]
    fn states_round_trip() {
        for state in State::ALL {
            assert_eq!(State::parse(state.name().as_bytes()), Some(state));
        }
        assert_eq!(State::parse(b"lost"), None);
    }

    fn book() -> Book {
        Book {
            orders: BTreeMap::from([
                (
                    1,
                    Order {
                        id: 1,
                        customer: 0,
                        sku: 0,
                        quantity: 2,
                        amount: 2_000,
                    },
                ),
                (
                    2,
                    Order {
                        id: 2,
                        customer: 0,
                        sku: 1,
                        quantity: 1,
                        amount: 1_000,
                    },
                ),
            ]),
        }
    }

    #[test]
    fn a_consistent_end_holds_and_each_fault_is_found() {
        let book = book();
        let states = BTreeMap::from([(1, State::Completed), (2, State::CancelledOutOfStock)]);
        let status = BTreeMap::from([
            (payment_id(1), "posted".to_string()),
            (payment_id(2), "voided".to_string()),
        ]);
        let customer = Account {
            id: customer_account(0),
            debits_posted: 2_000,
            ..Account::default()
        };
        let stock = [STOCK - 2, STOCK, STOCK];
        assert_eq!(
            check(&book, &states, &[1], &status, &[customer], STOCK, &stock),
            Vec::<String>::new()
        );

        // Shipped twice, and the cancelled one's reservation left.
        let held = Account {
            debits_pending: 1_000,
            ..customer
        };
        let found = check(&book, &states, &[1, 1], &status, &[held], STOCK, &stock);
        assert_eq!(found.len(), 2, "{found:?}");
        // Captured twice.
        let twice = Account {
            debits_posted: 4_000,
            ..customer
        };
        assert_eq!(check(&book, &states, &[1], &status, &[twice], STOCK, &stock).len(), 1);
        // Stuck mid-saga, stock below zero.
        let stuck = BTreeMap::from([(1, State::Completed), (2, State::StockReserved)]);
        assert_eq!(check(&book, &stuck, &[1], &status, &[customer], STOCK, &stock).len(), 1);
        assert_eq!(
            check(&book, &states, &[1], &status, &[customer], STOCK, &[-1, STOCK, STOCK]).len(),
            1
        );
    }
}
