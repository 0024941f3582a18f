//! The KV service.

use basalt_client::pb;
use basalt_client::pb::kv_server::Kv;
use basalt_client::ErrorCode;
use basalt_storage::command::{Op, Response};
use basalt_storage::limits::SCAN_LIMIT_MAX;
use basalt_storage::state::{KeyRange, KvRecord, StoreRead, Table};
use tonic::{Request, Response as GrpcResponse, Status};

use super::{expect_of, status, storage_status, unexpected_result, Api};

#[tonic::async_trait]
impl Kv for Api {
    async fn put(&self, request: Request<pb::KvPutRequest>) -> Result<GrpcResponse<pb::KvPutResponse>, Status> {
        let r = request.into_inner();
        let op = Op::KvPut {
            key: r.key,
            value: r.value,
            ttl_ms: (r.ttl_ms > 0).then_some(r.ttl_ms),
            expect: expect_of(r.expect)?,
        };
        let reply = match self.write(r.header, op).await? {
            Response::KvPut {
                revision,
                prev_revision,
            } => pb::KvPutResponse {
                succeeded: true,
                revision,
                prev_revision,
                current_revision: None,
            },
            Response::KvConditionFailed { current } => pb::KvPutResponse {
                current_revision: current,
                ..Default::default()
            },
            other => return Err(unexpected_result(&other)),
        };
        Ok(GrpcResponse::new(reply))
    }

    async fn get(&self, request: Request<pb::KvGetRequest>) -> Result<GrpcResponse<pb::KvGetResponse>, Status> {
        let r = request.into_inner();
        Self::check_key(&r.key)?;
        self.read_barrier(r.stale).await?;
        let now_ms = self.clock.now().physical_ms();
        let record = match self.store.get(Table::Kv, &r.key).map_err(storage_status)? {
            None => None,
            Some(bytes) => Some(KvRecord::decode(&bytes).map_err(|e| status(ErrorCode::CorruptValue, e.to_string()))?),
        };
        let reply = match record.filter(|rec| rec.is_live_at(now_ms)) {
            None => pb::KvGetResponse::default(),
            Some(rec) => pb::KvGetResponse {
                found: true,
                value: rec.value,
                create_revision: rec.create_revision,
                mod_revision: rec.mod_revision,
                version: rec.version,
                expires_at_ms: rec.expires_at_ms.unwrap_or(0),
            },
        };
        Ok(GrpcResponse::new(reply))
    }

    async fn delete(
        &self,
        request: Request<pb::KvDeleteRequest>,
    ) -> Result<GrpcResponse<pb::KvDeleteResponse>, Status> {
        let r = request.into_inner();
        let op = Op::KvDelete {
            key: r.key,
            expect: expect_of(r.expect)?,
        };
        let reply = match self.write(r.header, op).await? {
            Response::KvDelete { revision, deleted } => pb::KvDeleteResponse {
                succeeded: true,
                deleted,
                revision,
                current_revision: None,
            },
            Response::KvConditionFailed { current } => pb::KvDeleteResponse {
                current_revision: current,
                ..Default::default()
            },
            other => return Err(unexpected_result(&other)),
        };
        Ok(GrpcResponse::new(reply))
    }

    async fn scan(&self, request: Request<pb::KvScanRequest>) -> Result<GrpcResponse<pb::KvScanResponse>, Status> {
        let r = request.into_inner();
        if r.limit > SCAN_LIMIT_MAX {
            return Err(status(
                ErrorCode::InvalidArgument,
                format!("limit {} exceeds {SCAN_LIMIT_MAX}", r.limit),
            ));
        }
        let limit = if r.limit == 0 { 1000 } else { r.limit } as usize;
        self.read_barrier(r.stale).await?;
        let now_ms = self.clock.now().physical_ms();
        let mut from = if r.start_after.is_empty() {
            r.prefix.clone()
        } else {
            r.start_after.clone()
        };
        let mut items = Vec::new();
        let mut more = false;
        'pages: loop {
            let range = KeyRange::prefix_from(&r.prefix, from.clone());
            let page = self.store.scan(Table::Kv, &range, limit + 1).map_err(storage_status)?;
            let page_len = page.len();
            for (key, bytes) in page {
                if !key.starts_with(&r.prefix) {
                    break 'pages;
                }
                if key == r.start_after {
                    continue;
                }
                let rec = KvRecord::decode(&bytes).map_err(|e| status(ErrorCode::CorruptValue, e.to_string()))?;
                if !rec.is_live_at(now_ms) {
                    continue;
                }
                if items.len() == limit {
                    more = true;
                    break 'pages;
                }
                from = key.clone();
                items.push(pb::KeyValue {
                    key,
                    value: rec.value,
                    mod_revision: rec.mod_revision,
                });
            }
            if page_len <= limit {
                break;
            }
            from.push(0);
        }
        Ok(GrpcResponse::new(pb::KvScanResponse { items, more }))
    }
}
