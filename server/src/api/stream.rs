//! The stream service: topics, produce, fetch (long-poll), consumer groups and offsets.

use std::time::Duration;

use basalt_client::pb;
use basalt_client::pb::stream_server::Stream;
use basalt_client::ErrorCode;
use basalt_storage::apply::group::committed;
use basalt_storage::apply::queue::check_name;
use basalt_storage::apply::stream::{describe, fetch, list_topics, offset_for_time, partition_state};
use basalt_storage::command::{GroupOp, Op, Response, StreamOp};
use basalt_storage::limits::{FETCH_RECORDS_MAX, FETCH_REPLY_BYTES_MAX};
use basalt_storage::stream::{Assignor, GroupView, ProduceRecord, Produced, TopicConfig, TrimRule};
use tonic::{Request, Response as GrpcResponse, Status};

use super::{op_error_status, status, storage_status, unexpected_result, Api};
use crate::limits::{FETCH_BYTES_DEFAULT, FETCH_RECORDS_DEFAULT, SESSION_TIMEOUT_DEFAULT_MS};

/// A produce as the state machine takes it (the request's header aside).
pub(super) fn produce_op(r: pb::ProduceRequest) -> Op {
    let records = r
        .records
        .into_iter()
        .map(|rec| ProduceRecord {
            partition: rec.partition,
            key: rec.key,
            value: rec.value,
            headers: rec.headers.into_iter().map(|h| (h.key, h.value)).collect(),
            sequence: rec.sequence,
        })
        .collect();
    Op::Stream(StreamOp::Produce {
        topic: r.topic,
        records,
        producer: r.producer_id,
    })
}

/// A trim as the state machine takes it (the request's header aside).
pub(super) fn trim_op(r: pb::TrimRequest) -> Result<Op, Status> {
    let rule = match r.rule {
        Some(pb::trim_request::Rule::MaxLen(keep)) => TrimRule::MaxLen(keep),
        Some(pb::trim_request::Rule::MinId(id)) => TrimRule::MinId {
            timestamp_ms: id.timestamp_ms,
            offset: id.offset,
        },
        None => {
            return Err(status(
                ErrorCode::InvalidArgument,
                "a trim needs a rule: max_len or min_id",
            ))
        }
    };
    Ok(Op::Stream(StreamOp::Trim {
        topic: r.topic,
        partition: r.partition,
        rule,
        newer_kept: r.newer_kept,
        limit: r.limit,
    }))
}

pub(super) fn trimmed_reply(response: Response) -> Result<pb::TrimResponse, Status> {
    match response {
        Response::Trimmed { removed } => Ok(pb::TrimResponse { removed }),
        other => Err(unexpected_result(&other)),
    }
}

fn produce_response(outcomes: impl IntoIterator<Item = (Produced, u64)>) -> pb::ProduceResponse {
    pb::ProduceResponse {
        outcomes: outcomes
            .into_iter()
            .map(|(p, timestamp_ms)| pb::ProduceOutcome {
                partition: p.partition,
                offset: p.offset,
                duplicate: p.duplicate,
                timestamp_ms,
            })
            .collect(),
    }
}

pub(super) fn produced_reply(response: Response) -> Result<pb::ProduceResponse, Status> {
    match response {
        // An older build's saved answer has no stamps: 0, as for a batch retention removed.
        Response::Produced(outcomes) => Ok(produce_response(outcomes.into_iter().map(|p| (p, 0)))),
        Response::ProducedStamped(outcomes) => Ok(produce_response(outcomes)),
        other => Err(unexpected_result(&other)),
    }
}

fn group_response(view: GroupView) -> pb::GroupResponse {
    pb::GroupResponse {
        generation: view.generation,
        assigned: view
            .assigned
            .into_iter()
            .map(|(topic, partition)| pb::TopicPartition { topic, partition })
            .collect(),
        members: view.members,
    }
}

fn group_reply(response: Response) -> Result<GrpcResponse<pb::GroupResponse>, Status> {
    match response {
        Response::Group(view) => Ok(GrpcResponse::new(group_response(view))),
        other => Err(unexpected_result(&other)),
    }
}

#[tonic::async_trait]
impl Stream for Api {
    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<GrpcResponse<pb::CreateTopicResponse>, Status> {
        let r = request.into_inner();
        let op = Op::Stream(StreamOp::CreateTopic {
            topic: r.topic,
            config: TopicConfig {
                partitions: r.partitions,
                retention_ms: (r.retention_ms > 0).then_some(r.retention_ms),
                retention_bytes: (r.retention_bytes > 0).then_some(r.retention_bytes),
                mirror: r.mirror,
            },
        });
        match self.write(r.header, op).await? {
            Response::TopicCreated { created } => Ok(GrpcResponse::new(pb::CreateTopicResponse { created })),
            other => Err(unexpected_result(&other)),
        }
    }

    async fn describe_topic(
        &self,
        request: Request<pb::TopicRequest>,
    ) -> Result<GrpcResponse<pb::TopicResponse>, Status> {
        let r = request.into_inner();
        check_name("topic name", &r.topic).map_err(|e| op_error_status(&e))?;
        self.read_barrier(r.stale).await?;
        // One view: a produce or a retention trim across partitions is seen whole or not at all.
        let (config, partitions) = describe(&self.store, &r.topic)
            .map_err(storage_status)?
            .map_err(|e| op_error_status(&e))?;
        let partition_info = (0..)
            .zip(partitions)
            .map(|(partition, state)| pb::PartitionInfo {
                partition,
                log_start: state.start_offset,
                high_watermark: state.next_offset,
                bytes: state.bytes,
            })
            .collect();
        Ok(GrpcResponse::new(pb::TopicResponse {
            partitions: config.partitions,
            retention_ms: config.retention_ms.unwrap_or(0),
            retention_bytes: config.retention_bytes.unwrap_or(0),
            mirror: config.mirror,
            partition_info,
        }))
    }

    async fn produce(&self, request: Request<pb::ProduceRequest>) -> Result<GrpcResponse<pb::ProduceResponse>, Status> {
        let mut r = request.into_inner();
        let header = r.header.take();
        Ok(GrpcResponse::new(produced_reply(
            self.write(header, produce_op(r)).await?,
        )?))
    }

    async fn fetch(&self, request: Request<pb::FetchRequest>) -> Result<GrpcResponse<pb::FetchResponse>, Status> {
        let r = request.into_inner();
        check_name("topic name", &r.topic).map_err(|e| op_error_status(&e))?;
        if r.max_records > FETCH_RECORDS_MAX {
            return Err(status(
                ErrorCode::OutOfRange,
                format!("max_records must be at most {FETCH_RECORDS_MAX}, got {}", r.max_records),
            ));
        }
        self.read_barrier(r.stale).await?;
        // Bad offsets answer at once; only "nothing yet past this offset" waits.
        let at_end = |api: &Api| -> Result<bool, Status> {
            let state = partition_state(&api.store, &r.topic, r.partition)
                .map_err(storage_status)?
                .map_err(|e| op_error_status(&e))?;
            Ok(r.offset == state.next_offset)
        };
        if at_end(self)? && r.wait_ms > 0 {
            self.wait_until(Duration::from_millis(r.wait_ms), || at_end(self).map(|end| !end))
                .await?;
        }
        let max_records = if r.max_records == 0 {
            FETCH_RECORDS_DEFAULT
        } else {
            r.max_records
        };
        let max_bytes = if r.max_bytes == 0 {
            FETCH_BYTES_DEFAULT
        } else {
            r.max_bytes.min(FETCH_REPLY_BYTES_MAX)
        };
        let fetched = fetch(
            &self.store.view(),
            &r.topic,
            r.partition,
            r.offset,
            max_records,
            max_bytes,
        )
        .map_err(storage_status)?
        .map_err(|e| op_error_status(&e))?;
        Ok(GrpcResponse::new(pb::FetchResponse {
            records: fetched
                .records
                .into_iter()
                .map(|f| pb::StreamRecord {
                    offset: f.offset,
                    timestamp_ms: f.timestamp_ms,
                    key: f.record.key,
                    value: f.record.value,
                    headers: f
                        .record
                        .headers
                        .into_iter()
                        .map(|(key, value)| pb::Header { key, value })
                        .collect(),
                })
                .collect(),
            high_watermark: fetched.high_watermark,
            log_start: fetched.log_start,
        }))
    }

    async fn join_group(
        &self,
        request: Request<pb::JoinGroupRequest>,
    ) -> Result<GrpcResponse<pb::GroupResponse>, Status> {
        let r = request.into_inner();
        let assignor = match pb::join_group_request::Assignor::try_from(r.assignor) {
            Ok(pb::join_group_request::Assignor::Range) => Assignor::Range,
            Ok(pb::join_group_request::Assignor::Sticky) => Assignor::Sticky,
            Err(_) => {
                return Err(status(
                    ErrorCode::InvalidArgument,
                    format!("unknown assignor {}", r.assignor),
                ))
            }
        };
        let op = Op::Group(GroupOp::Join {
            group: r.group,
            member: r.member,
            topics: r.topics,
            session_timeout_ms: if r.session_timeout_ms == 0 {
                SESSION_TIMEOUT_DEFAULT_MS
            } else {
                r.session_timeout_ms
            },
            assignor,
        });
        group_reply(self.write(r.header, op).await?)
    }

    async fn heartbeat(
        &self,
        request: Request<pb::GroupMemberRequest>,
    ) -> Result<GrpcResponse<pb::GroupResponse>, Status> {
        let r = request.into_inner();
        let op = Op::Group(GroupOp::Heartbeat {
            group: r.group,
            member: r.member,
        });
        group_reply(self.write(r.header, op).await?)
    }

    async fn leave_group(
        &self,
        request: Request<pb::GroupMemberRequest>,
    ) -> Result<GrpcResponse<pb::LeaveGroupResponse>, Status> {
        let r = request.into_inner();
        let op = Op::Group(GroupOp::Leave {
            group: r.group,
            member: r.member,
        });
        match self.write(r.header, op).await? {
            Response::GroupLeft { was_member } => Ok(GrpcResponse::new(pb::LeaveGroupResponse { was_member })),
            other => Err(unexpected_result(&other)),
        }
    }

    async fn commit_offsets(
        &self,
        request: Request<pb::CommitOffsetsRequest>,
    ) -> Result<GrpcResponse<pb::CommitOffsetsResponse>, Status> {
        let r = request.into_inner();
        let op = Op::Group(GroupOp::Commit {
            group: r.group,
            member: r.member,
            generation: r.generation,
            offsets: r
                .offsets
                .into_iter()
                .map(|o| (o.topic, o.partition, o.offset))
                .collect(),
        });
        match self.write(r.header, op).await? {
            Response::OffsetsCommitted => Ok(GrpcResponse::new(pb::CommitOffsetsResponse {})),
            other => Err(unexpected_result(&other)),
        }
    }

    async fn committed(
        &self,
        request: Request<pb::CommittedRequest>,
    ) -> Result<GrpcResponse<pb::CommittedResponse>, Status> {
        let r = request.into_inner();
        check_name("group name", &r.group).map_err(|e| op_error_status(&e))?;
        check_name("topic name", &r.topic).map_err(|e| op_error_status(&e))?;
        self.read_barrier(r.stale).await?;
        let offsets = committed(&self.store.view(), &r.group, &r.topic).map_err(storage_status)?;
        Ok(GrpcResponse::new(pb::CommittedResponse {
            offsets: offsets
                .into_iter()
                .map(|(partition, offset)| pb::CommittedOffset {
                    topic: r.topic.clone(),
                    partition,
                    offset,
                })
                .collect(),
        }))
    }

    async fn trim(&self, request: Request<pb::TrimRequest>) -> Result<GrpcResponse<pb::TrimResponse>, Status> {
        let r = request.into_inner();
        let header = r.header.clone();
        let op = trim_op(r)?;
        Ok(GrpcResponse::new(trimmed_reply(self.write(header, op).await?)?))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<GrpcResponse<pb::DeleteTopicResponse>, Status> {
        let r = request.into_inner();
        let op = Op::Stream(StreamOp::DeleteTopic { topic: r.topic });
        match self.write(r.header, op).await? {
            Response::TopicDeleted { finished } => Ok(GrpcResponse::new(pb::DeleteTopicResponse { finished })),
            other => Err(unexpected_result(&other)),
        }
    }

    async fn list_topics(
        &self,
        request: Request<pb::ListTopicsRequest>,
    ) -> Result<GrpcResponse<pb::ListTopicsResponse>, Status> {
        let r = request.into_inner();
        if !r.after.is_empty() {
            check_name("topic name", &r.after).map_err(|e| op_error_status(&e))?;
        }
        self.read_barrier(r.stale).await?;
        let limit = if r.limit == 0 { u32::MAX } else { r.limit };
        let (topics, more) = list_topics(&self.store, &r.after, limit).map_err(storage_status)?;
        Ok(GrpcResponse::new(pb::ListTopicsResponse {
            topics: topics
                .into_iter()
                .map(|(name, config)| pb::TopicListing {
                    name,
                    partitions: config.partitions,
                    retention_ms: config.retention_ms.unwrap_or(0),
                    retention_bytes: config.retention_bytes.unwrap_or(0),
                    mirror: config.mirror,
                })
                .collect(),
            more,
        }))
    }

    async fn offset_for_time(
        &self,
        request: Request<pb::OffsetForTimeRequest>,
    ) -> Result<GrpcResponse<pb::OffsetForTimeResponse>, Status> {
        let r = request.into_inner();
        check_name("topic name", &r.topic).map_err(|e| op_error_status(&e))?;
        self.read_barrier(r.stale).await?;
        // One view: the bounds and the search see the same batches.
        let view = self.store.view();
        let state = partition_state(&view, &r.topic, r.partition)
            .map_err(storage_status)?
            .map_err(|e| op_error_status(&e))?;
        let found = offset_for_time(&view, &r.topic, r.partition, r.timestamp_ms)
            .map_err(storage_status)?
            .map_err(|e| op_error_status(&e))?;
        Ok(GrpcResponse::new(pb::OffsetForTimeResponse {
            found: found.is_some(),
            offset: found.map_or(state.next_offset, |(offset, _)| offset),
            timestamp_ms: found.map_or(0, |(_, stamp)| stamp),
            high_watermark: state.next_offset,
        }))
    }
}
