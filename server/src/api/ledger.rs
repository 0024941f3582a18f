//! The ledger service: batched account and transfer creation, lookups and account queries.

use basalt_client::pb;
use basalt_client::pb::ledger_server::Ledger;
use basalt_client::ErrorCode;
use basalt_storage::apply::check_batch;
use basalt_storage::apply::ledger::{
    get_account_balances, get_account_transfers, lookup_accounts, lookup_transfers, StoredTransfer,
};
use basalt_storage::command::{LedgerOp, Op, Response};
use basalt_storage::ledger::{Account, AccountBalance, AccountFilter, PendingStatus, Transfer};
use basalt_storage::limits::BATCH_ITEMS_MAX;
use tonic::{Request, Response as GrpcResponse, Status};

use super::{op_error_status, status, storage_status, unexpected_result, Api};

fn invalid(message: String) -> Status {
    status(ErrorCode::InvalidArgument, message)
}

pub(super) fn u128_of(bytes: &[u8], field: &str) -> Result<u128, Status> {
    if bytes.is_empty() {
        return Ok(0);
    }
    let array: [u8; 16] = bytes.try_into().map_err(|_| {
        invalid(format!(
            "{field} must be 16 bytes (big-endian u128) or empty, got {}",
            bytes.len()
        ))
    })?;
    Ok(u128::from_be_bytes(array))
}

fn bytes_of(value: u128) -> Vec<u8> {
    value.to_be_bytes().to_vec()
}

fn u16_of(value: u32, field: &str) -> Result<u16, Status> {
    u16::try_from(value).map_err(|_| invalid(format!("{field} {value} does not fit in 16 bits")))
}

pub(super) fn account_of(a: pb::Account) -> Result<Account, Status> {
    Ok(Account {
        id: u128_of(&a.id, "id")?,
        debits_pending: u128_of(&a.debits_pending, "debits_pending")?,
        debits_posted: u128_of(&a.debits_posted, "debits_posted")?,
        credits_pending: u128_of(&a.credits_pending, "credits_pending")?,
        credits_posted: u128_of(&a.credits_posted, "credits_posted")?,
        user_data_128: u128_of(&a.user_data_128, "user_data_128")?,
        user_data_64: a.user_data_64,
        user_data_32: a.user_data_32,
        ledger: a.ledger,
        code: u16_of(a.code, "code")?,
        flags: u16_of(a.flags, "flags")?,
        timestamp: a.timestamp,
    })
}

fn pb_account(a: Account) -> pb::Account {
    pb::Account {
        id: bytes_of(a.id),
        debits_pending: bytes_of(a.debits_pending),
        debits_posted: bytes_of(a.debits_posted),
        credits_pending: bytes_of(a.credits_pending),
        credits_posted: bytes_of(a.credits_posted),
        user_data_128: bytes_of(a.user_data_128),
        user_data_64: a.user_data_64,
        user_data_32: a.user_data_32,
        ledger: a.ledger,
        code: a.code.into(),
        flags: a.flags.into(),
        timestamp: a.timestamp,
    }
}

pub(super) fn transfer_of(t: pb::Transfer) -> Result<Transfer, Status> {
    Ok(Transfer {
        id: u128_of(&t.id, "id")?,
        debit_account_id: u128_of(&t.debit_account_id, "debit_account_id")?,
        credit_account_id: u128_of(&t.credit_account_id, "credit_account_id")?,
        amount: u128_of(&t.amount, "amount")?,
        pending_id: u128_of(&t.pending_id, "pending_id")?,
        user_data_128: u128_of(&t.user_data_128, "user_data_128")?,
        user_data_64: t.user_data_64,
        user_data_32: t.user_data_32,
        timeout: t.timeout,
        ledger: t.ledger,
        code: u16_of(t.code, "code")?,
        flags: u16_of(t.flags, "flags")?,
        timestamp: t.timestamp,
    })
}

fn pb_transfer(t: Transfer, status: Option<PendingStatus>) -> pb::Transfer {
    pb::Transfer {
        id: bytes_of(t.id),
        debit_account_id: bytes_of(t.debit_account_id),
        credit_account_id: bytes_of(t.credit_account_id),
        amount: bytes_of(t.amount),
        pending_id: bytes_of(t.pending_id),
        user_data_128: bytes_of(t.user_data_128),
        user_data_64: t.user_data_64,
        user_data_32: t.user_data_32,
        timeout: t.timeout,
        ledger: t.ledger,
        code: t.code.into(),
        flags: t.flags.into(),
        timestamp: t.timestamp,
        pending_status: match status {
            None => "",
            Some(PendingStatus::Pending) => "pending",
            Some(PendingStatus::Posted) => "posted",
            Some(PendingStatus::Voided) => "voided",
            Some(PendingStatus::Expired) => "expired",
        }
        .to_string(),
    }
}

fn pb_balance(b: AccountBalance) -> pb::AccountBalance {
    pb::AccountBalance {
        debits_pending: bytes_of(b.debits_pending),
        debits_posted: bytes_of(b.debits_posted),
        credits_pending: bytes_of(b.credits_pending),
        credits_posted: bytes_of(b.credits_posted),
        timestamp: b.timestamp,
    }
}

fn filter_of(f: &pb::AccountFilter) -> Result<AccountFilter, Status> {
    let account_id = u128_of(&f.account_id, "account_id")?;
    if account_id == 0 {
        return Err(invalid("account_id must not be zero".into()));
    }
    if f.limit == 0 || f.limit as usize > BATCH_ITEMS_MAX {
        return Err(status(
            ErrorCode::OutOfRange,
            format!("limit must be 1..={BATCH_ITEMS_MAX}, got {}", f.limit),
        ));
    }
    Ok(AccountFilter {
        account_id,
        timestamp_min: f.timestamp_min,
        timestamp_max: f.timestamp_max,
        limit: f.limit,
        debits: f.debits,
        credits: f.credits,
        reversed: f.reversed,
    })
}

/// The failed events of an account or transfer batch.
pub(super) fn created_reply(response: Response) -> Result<pb::CreateResponse, Status> {
    match response {
        Response::AccountResults(f) => Ok(failures(f)),
        Response::TransferResults(f) => Ok(failures(f)),
        other => Err(unexpected_result(&other)),
    }
}

fn failures<R: std::fmt::Display>(failures: Vec<(u32, R)>) -> pb::CreateResponse {
    pb::CreateResponse {
        failures: failures
            .into_iter()
            .map(|(index, result)| pb::EventResult {
                index,
                result: result.to_string(),
            })
            .collect(),
    }
}

impl Api {
    fn lookup_ids(&self, r: &pb::LookupRequest) -> Result<Vec<u128>, Status> {
        check_batch(r.ids.len()).map_err(|e| op_error_status(&e))?;
        r.ids.iter().map(|id| u128_of(id, "id")).collect()
    }
}

#[tonic::async_trait]
impl Ledger for Api {
    async fn create_accounts(
        &self,
        request: Request<pb::CreateAccountsRequest>,
    ) -> Result<GrpcResponse<pb::CreateResponse>, Status> {
        let r = request.into_inner();
        let accounts = r.accounts.into_iter().map(account_of).collect::<Result<_, _>>()?;
        let response = self
            .write(r.header, Op::Ledger(LedgerOp::CreateAccounts { accounts }))
            .await?;
        Ok(GrpcResponse::new(created_reply(response)?))
    }

    async fn create_transfers(
        &self,
        request: Request<pb::CreateTransfersRequest>,
    ) -> Result<GrpcResponse<pb::CreateResponse>, Status> {
        let r = request.into_inner();
        let transfers = r.transfers.into_iter().map(transfer_of).collect::<Result<_, _>>()?;
        let response = self
            .write(r.header, Op::Ledger(LedgerOp::CreateTransfers { transfers }))
            .await?;
        Ok(GrpcResponse::new(created_reply(response)?))
    }

    async fn lookup_accounts(
        &self,
        request: Request<pb::LookupRequest>,
    ) -> Result<GrpcResponse<pb::AccountsResponse>, Status> {
        let r = request.into_inner();
        let ids = self.lookup_ids(&r)?;
        self.read_barrier(r.stale).await?;
        let accounts = lookup_accounts(&self.store.view(), &ids).map_err(storage_status)?;
        Ok(GrpcResponse::new(pb::AccountsResponse {
            accounts: accounts.into_iter().map(pb_account).collect(),
        }))
    }

    async fn lookup_transfers(
        &self,
        request: Request<pb::LookupRequest>,
    ) -> Result<GrpcResponse<pb::TransfersResponse>, Status> {
        let r = request.into_inner();
        let ids = self.lookup_ids(&r)?;
        self.read_barrier(r.stale).await?;
        let transfers = lookup_transfers(&self.store.view(), &ids).map_err(storage_status)?;
        Ok(GrpcResponse::new(pb::TransfersResponse {
            transfers: transfers
                .into_iter()
                .map(|StoredTransfer { transfer, status }| pb_transfer(transfer, status))
                .collect(),
        }))
    }

    async fn get_account_transfers(
        &self,
        request: Request<pb::AccountFilter>,
    ) -> Result<GrpcResponse<pb::TransfersResponse>, Status> {
        let r = request.into_inner();
        let filter = filter_of(&r)?;
        self.read_barrier(r.stale).await?;
        let transfers = get_account_transfers(&self.store.view(), &filter).map_err(storage_status)?;
        Ok(GrpcResponse::new(pb::TransfersResponse {
            transfers: transfers.into_iter().map(|t| pb_transfer(t, None)).collect(),
        }))
    }

    async fn get_account_balances(
        &self,
        request: Request<pb::AccountFilter>,
    ) -> Result<GrpcResponse<pb::BalancesResponse>, Status> {
        let r = request.into_inner();
        let filter = filter_of(&r)?;
        self.read_barrier(r.stale).await?;
        let balances = get_account_balances(&self.store.view(), &filter).map_err(storage_status)?;
        Ok(GrpcResponse::new(pb::BalancesResponse {
            balances: balances.into_iter().map(pb_balance).collect(),
        }))
    }
}
