//! The MCP server handler: one per MCP connection. Tools call the same
//! `baton_client` functions the CLI uses; this file only maps arguments to
//! those calls and answers to short summaries.

use std::sync::Arc;

use baton_client::{
    BucketInfo, Client, LockRequest, LockState, OnceRequest, OnceResult, PatchRequest, PutOptions,
    QueueClaim, QuotaInfo, RateRequest, SemaphoreRequest, SettleResult, Txn,
};
use baton_core::reply::{EndReason, LockStatus};
use baton_core::{Error, ErrorCode};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, GetPromptRequestParams, GetPromptResponse,
    GetPromptResult, Implementation, InitializeRequestParams, InitializeResult, ListPromptsResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, Prompt, PromptMessage,
    ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
    ResourceContents, Role, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{Value, json};

use crate::McpConfig;
use crate::guide::{GUIDE, INSTRUCTIONS};
use crate::http_streams::Streams;
use crate::reply::{Done, tool_result};
use crate::session::{Connection, HeldLock, holdings};
use crate::tools::{self, *};

const HELD_URI: &str = "baton://held";
const GUIDE_URI: &str = "baton://guide";
const PROMPT_NAME: &str = "safe_patterns";
/// Tracked locks `held` checks with the server at most.
const MAX_LOCKS_CHECKED: usize = 256;

/// Baton's MCP server for one connection.
pub struct BatonMcp {
    connection: Arc<Connection>,
    tools: Vec<Tool>,
}

impl BatonMcp {
    pub fn new(config: Arc<McpConfig>) -> BatonMcp {
        BatonMcp {
            connection: Connection::new(config, None),
            tools: tools::all(),
        }
    }

    /// For one MCP-over-HTTP session: gone when its event streams are.
    pub(crate) fn new_http(config: Arc<McpConfig>, streams: Arc<Streams>) -> BatonMcp {
        BatonMcp {
            connection: Connection::new(config, Some(streams)),
            tools: tools::all(),
        }
    }

    /// The Baton side of this connection (its session, its locks).
    pub fn connection(&self) -> &Arc<Connection> {
        &self.connection
    }

    /// Runs one tool and builds its MCP result; never a protocol error for
    /// anything the agent can fix.
    pub async fn call(&self, name: &str, arguments: Value) -> rmcp::model::CallToolResult {
        let outcome = self.dispatch(name, arguments).await;
        if let Err(error) = &outcome {
            self.connection.check_session_after(error).await;
        }
        tool_result(name, outcome, self.connection.take_notices())
    }

    async fn dispatch(&self, name: &str, args: Value) -> Result<Done, Error> {
        let limits = &self.connection.config().limits;
        match name {
            "session_info" => {
                parse::<NoArgs>(args, limits)?;
                self.session_info().await
            }
            "lock_acquire" => self.lock_acquire(parse(args, limits)?).await,
            "lock_release" => self.lock_release(parse(args, limits)?).await,
            "lock_renew" => self.lock_renew(parse(args, limits)?).await,
            "lock_status" => self.lock_status(parse(args, limits)?).await,
            "locks_list" => self.locks_list(parse(args, limits)?).await,
            "fence_check" => self.fence_check(parse(args, limits)?).await,
            "state_get" => self.state_get(parse(args, limits)?).await,
            "state_put" => self.state_put(parse(args, limits)?).await,
            "state_patch" => self.state_patch(parse(args, limits)?).await,
            "state_delete" => self.state_delete(parse(args, limits)?).await,
            "state_list" => self.state_list(parse(args, limits)?).await,
            "state_history" => self.state_history(parse(args, limits)?).await,
            "state_txn" => self.state_txn(parse(args, limits)?).await,
            "counter_add" => self.counter_add(parse(args, limits)?).await,
            "semaphore_acquire" => self.semaphore_acquire(parse(args, limits)?).await,
            "quota_set" => self.quota_set(parse(args, limits)?).await,
            "quota_get" => self.quota_get(parse(args, limits)?).await,
            "quota_reserve" => self.quota_reserve(parse(args, limits)?).await,
            "quota_commit" => self.quota_commit(parse(args, limits)?).await,
            "quota_release" => self.quota_release(parse(args, limits)?).await,
            "rate_take" => self.rate_take(parse(args, limits)?).await,
            "rate_status" => self.rate_status(parse(args, limits)?).await,
            "once_get" => self.once_get(parse(args, limits)?).await,
            "once_fulfil" => self.once_fulfil(parse(args, limits)?).await,
            "once_abandon" => self.once_abandon(parse(args, limits)?).await,
            "queue_enqueue" => self.queue_enqueue(parse(args, limits)?).await,
            "queue_claim" => self.queue_claim(parse(args, limits)?).await,
            "queue_ack" => self.queue_ack(parse(args, limits)?).await,
            "queue_nack" => self.queue_nack(parse(args, limits)?).await,
            "queue_status" => self.queue_status(parse(args, limits)?).await,
            "events_recent" => self.events_recent(parse(args, limits)?).await,
            "held" => {
                parse::<NoArgs>(args, limits)?;
                self.held().await
            }
            other => Err(Error::invalid(
                "name",
                format!("there is no tool {other:?}; tools/list names them"),
            )),
        }
    }

    async fn client(&self) -> Result<Client, Error> {
        self.connection.client().await
    }

    /// The session client with a mutation's fence and idempotency key.
    async fn writer(
        &self,
        fence: &Option<FenceArg>,
        idempotency_key: &Option<String>,
    ) -> Result<Client, Error> {
        let mut client = self.client().await?;
        if let Some(fence) = fence {
            client = client.with_fence(fence.key.clone(), fence.token);
        }
        if let Some(key) = idempotency_key {
            client = client.with_idempotency_key(key.clone());
        }
        Ok(client)
    }

    /// The writer of a state mutation that may release a held lock.
    async fn state_writer(
        &self,
        fence: &Option<FenceArg>,
        idempotency_key: &Option<String>,
        release: Option<u64>,
    ) -> Result<Client, Error> {
        let client = self.writer(fence, idempotency_key).await?;
        Ok(match release {
            Some(lock_id) => client.with_release(lock_id),
            None => client,
        })
    }

    /// After a write that released a lock: stop tracking it, and say so.
    fn released(&self, released_lock_id: Option<u64>) -> String {
        match released_lock_id {
            Some(lock_id) => {
                self.connection.untrack_lock(lock_id);
                format!(" Released lock {lock_id} with it.")
            }
            None => String::new(),
        }
    }

    // ---- sessions and what this agent holds ----

    async fn session_info(&self) -> Result<Done, Error> {
        self.client().await?;
        let session = self.connection.session_info().await;
        let summary = match &session {
            Some(s) => format!(
                "You are agent {:?}, Baton session {} (kept alive while this MCP connection lives; TTL {} ms), holding {} lock(s).",
                s.agent,
                s.session_id,
                s.ttl_ms,
                self.connection.held().len()
            ),
            None => "No Baton session is open.".to_string(),
        };
        Done::new(holdings(&self.connection, session.as_ref()), summary)
    }

    async fn held(&self) -> Result<Done, Error> {
        self.client().await?;
        self.connection.verify_locks(MAX_LOCKS_CHECKED).await;
        let session = self.connection.session_info().await;
        let locks = self.connection.held();
        let summary = if locks.is_empty() {
            "You hold no locks.".to_string()
        } else {
            let list: Vec<String> = locks.iter().map(describe_lock).collect();
            format!("You hold {} lock(s): {}.", locks.len(), list.join("; "))
        };
        Done::new(holdings(&self.connection, session.as_ref()), summary)
    }

    // ---- locks and fencing ----

    async fn lock_acquire(&self, args: LockAcquireArgs) -> Result<Done, Error> {
        let client = self.writer(&None, &args.idempotency_key).await?;
        let mut request = match args.mode {
            ModeArg::Exclusive => LockRequest::exclusive(args.keys),
            ModeArg::Shared => LockRequest::shared(args.keys),
        }
        .wait_ms(args.wait_ms)
        .lock_delay_ms(args.lock_delay_ms);
        if let Some(ttl_ms) = args.ttl_ms {
            request = request.ttl_ms(ttl_ms);
        }
        if args.read {
            request = request.read();
        }
        let info = client.lock_acquire(&request).await?;
        let summary = if info.status == LockStatus::Held {
            let lock = HeldLock::from_info(&info, args.ttl_ms.is_some());
            let fence = match (info.fence_token, info.keys.first()) {
                (Some(token), Some(key)) => format!(
                    " Pass \"fence\": {{\"key\": {key:?}, \"token\": {token}}} with every write under it."
                ),
                _ => String::new(),
            };
            let renew = if lock.own_ttl {
                " It has its own TTL: lock_renew it before it expires."
            } else {
                " It lasts as long as this connection."
            };
            let values = match &info.values {
                Some(values) => format!(
                    " values holds the {} locked key(s) that exist, as of the grant; the others do not exist.",
                    values.len()
                ),
                None => String::new(),
            };
            let text = format!(
                "Holding {}.{fence}{renew}{values} When done, pass \"release\": {id} with your last write, or call lock_release {{\"lock_id\": {id}}}.",
                describe_lock(&lock),
                id = info.lock_id
            );
            self.connection.track_lock(lock);
            text
        } else {
            format!(
                "Lock {} is queued, not held yet; do not write to {:?}.",
                info.lock_id, info.keys
            )
        };
        Done::new(info, summary)
    }

    async fn lock_release(&self, args: LockIdArgs) -> Result<Done, Error> {
        let client = self.client().await?;
        let result = client.lock_release(args.lock_id).await?;
        let ended_before = !result.released
            && !matches!(result.outcome, EndReason::Released | EndReason::Cancelled);
        if ended_before {
            // It ended before we let it go: that is a lost lease to report.
            self.connection
                .lock_lost(args.lock_id, result.outcome.as_str(), result.ended_at);
        }
        self.connection.untrack_lock(args.lock_id);
        let summary = if result.released {
            format!("Released lock {}.", args.lock_id)
        } else {
            format!(
                "Lock {} had already ended ({}); nothing to release.",
                args.lock_id,
                result.outcome.as_str()
            )
        };
        Done::new(result, summary)
    }

    async fn lock_renew(&self, args: LockRenewArgs) -> Result<Done, Error> {
        let client = self.client().await?;
        match client.lock_renew(args.lock_id, args.ttl_ms).await {
            Ok(info) => {
                let own_ttl = self
                    .connection
                    .held()
                    .iter()
                    .find(|l| l.lock_id == info.lock_id)
                    .is_none_or(|l| l.own_ttl);
                let lock = HeldLock::from_info(&info, own_ttl);
                let summary = format!("Renewed {}.", describe_lock(&lock));
                self.connection.track_lock(lock);
                Done::new(info, summary)
            }
            Err(error) => {
                if error.code == ErrorCode::Fenced {
                    let status = ended_status(&error);
                    self.connection.lock_lost(args.lock_id, &status, None);
                }
                Err(error)
            }
        }
    }

    async fn lock_status(&self, args: LockStatusArgs) -> Result<Done, Error> {
        let client = self.client().await?;
        let my_session = client.session();
        if let Some(key) = args.key {
            let info = client.key_locks(&key).await?;
            let mine: Vec<_> = info
                .holders
                .iter()
                .filter(|h| h.session.is_some() && h.session == my_session)
                .cloned()
                .collect();
            let held = !mine.is_empty();
            let summary = if let Some(lock) = mine.first() {
                format!(
                    "Yes: you hold {key:?} (lock {}, fence_token {}).",
                    lock.lock_id,
                    lock.fence_token
                        .map_or("none".to_string(), |t| t.to_string())
                )
            } else if info.holders.is_empty() {
                format!("No: you do not hold {key:?}; nobody holds it now.")
            } else {
                let agents: Vec<&str> = info.holders.iter().map(|h| h.agent.as_str()).collect();
                format!("No: you do not hold {key:?}; it is held by {agents:?}.")
            };
            let result = json!({
                "key": key,
                "held": held,
                "my_locks": mine,
                "holders": info.holders.len(),
                "waiters": info.waiters.len(),
                "last_fence_token": info.last_fence_token,
            });
            return Done::new(result, summary);
        }
        let lock_id = args.lock_id.unwrap_or_default();
        let state = match client.lock_state(lock_id).await {
            Ok(state) => state,
            Err(error) => {
                if error.code == ErrorCode::NotFound {
                    self.connection
                        .lock_lost(lock_id, "unknown to the server", None);
                }
                return Err(error);
            }
        };
        let (result, summary) = match state {
            LockState::Live(info) => {
                let held = info.status == LockStatus::Held;
                let mine = info.session.is_some() && info.session == my_session;
                let summary = if held {
                    format!(
                        "Yes: lock {lock_id} is held (fence_token {}), {}.",
                        info.fence_token
                            .map_or("none".to_string(), |t| t.to_string()),
                        if mine {
                            "by you"
                        } else {
                            "but not by this session"
                        }
                    )
                } else {
                    format!("No: lock {lock_id} is still waiting in the queue.")
                };
                (
                    json!({"lock_id": lock_id, "held": held, "mine": mine, "lock": info}),
                    summary,
                )
            }
            LockState::Ended {
                status, ended_at, ..
            } => {
                if !matches!(status, EndReason::Released | EndReason::Cancelled) {
                    self.connection
                        .lock_lost(lock_id, status.as_str(), Some(ended_at));
                } else {
                    self.connection.untrack_lock(lock_id);
                }
                (
                    json!({"lock_id": lock_id, "held": false, "status": status, "ended_at": ended_at}),
                    format!(
                        "No: lock {lock_id} ended ({}). Do not write under it; acquire again if you need it.",
                        status.as_str()
                    ),
                )
            }
        };
        Done::new(result, summary)
    }

    async fn locks_list(&self, args: LocksListArgs) -> Result<Done, Error> {
        let client = self.client().await?;
        let keys = client.lock_list(&args.prefix, args.limit).await?;
        let summary = format!(
            "{} key(s) under {:?} are locked or awaited.",
            keys.len(),
            args.prefix
        );
        Done::new(json!({ "keys": keys }), summary)
    }

    async fn fence_check(&self, args: FenceCheckArgs) -> Result<Done, Error> {
        let client = self.client().await?;
        let check = client.fence_check(&args.key, args.token).await?;
        let summary = if check.valid {
            format!("Fence token {} is current for {:?}.", args.token, args.key)
        } else {
            format!(
                "Fence token {} is NOT current for {:?} (current: {:?}): writes with it are refused.",
                args.token, args.key, check.current_tokens
            )
        };
        Done::new(check, summary)
    }

    // ---- versioned state ----

    async fn state_get(&self, args: KeyArgs) -> Result<Done, Error> {
        let client = self.client().await?;
        let got = client.kv_get(&args.key).await?;
        let summary = format!(
            "{:?} is at version {}. To change it, write with if_version {}.",
            args.key, got.entry.version, got.entry.version
        );
        Done::new(got, summary)
    }

    async fn state_put(&self, args: StatePutArgs) -> Result<Done, Error> {
        let client = self
            .state_writer(&args.fence, &args.idempotency_key, args.release)
            .await?;
        let options = PutOptions {
            if_version: args.if_version,
            if_absent: args.if_absent,
            ttl_ms: args.ttl_ms,
        };
        let written = client.kv_put(&args.key, &args.value, options).await?;
        let summary = written_summary(&args.key, written.version, written.previous_version)
            + &self.released(written.released_lock_id);
        Done::new(written, summary)
    }

    async fn state_patch(&self, args: StatePatchArgs) -> Result<Done, Error> {
        let client = self
            .state_writer(&args.fence, &args.idempotency_key, args.release)
            .await?;
        let patch = match (args.merge, args.json_patch) {
            (Some(merge), _) => PatchRequest::Merge(merge),
            (None, Some(ops)) => PatchRequest::JsonPatch(Value::Array(ops)),
            (None, None) => return Err(Error::invalid("merge", "give merge or json_patch")),
        };
        let written = client.kv_patch(&args.key, &patch, args.if_version).await?;
        let summary = written_summary(&args.key, written.version, written.previous_version)
            + &self.released(written.released_lock_id);
        Done::new(written, summary)
    }

    async fn state_delete(&self, args: StateDeleteArgs) -> Result<Done, Error> {
        let client = self
            .state_writer(&args.fence, &args.idempotency_key, args.release)
            .await?;
        let deleted = client.kv_delete(&args.key, args.if_version).await?;
        let summary = if deleted.deleted {
            format!("Deleted {:?}.", args.key)
        } else {
            format!("{:?} did not exist; nothing deleted.", args.key)
        } + &self.released(deleted.released_lock_id);
        Done::new(deleted, summary)
    }

    async fn state_list(&self, args: StateListArgs) -> Result<Done, Error> {
        let client = self.client().await?;
        let list = client
            .kv_list(&args.prefix, args.after.as_deref(), args.limit)
            .await?;
        let more = match &list.next_after {
            Some(after) => format!(" More: call again with after {after:?}."),
            None => String::new(),
        };
        let summary = format!(
            "{} key(s) under {:?}.{more}",
            list.entries.len(),
            args.prefix
        );
        Done::new(list, summary)
    }

    async fn state_history(&self, args: StateHistoryArgs) -> Result<Done, Error> {
        let client = self.client().await?;
        let history = client.kv_history(&args.key, args.limit).await?;
        let summary = format!(
            "{} recent version(s) of {:?}, newest first.",
            history.versions.len(),
            args.key
        );
        Done::new(history, summary)
    }

    async fn state_txn(&self, args: StateTxnArgs) -> Result<Done, Error> {
        let body = json!({
            "compares": args.compares,
            "success": args.success,
            "failure": args.failure,
        });
        let txn: Txn = serde_path_to_error::deserialize(body).map_err(|error| {
            let path = error.path().to_string();
            Error::invalid(&path, error.into_inner())
        })?;
        let client = self
            .state_writer(&args.fence, &args.idempotency_key, args.release)
            .await?;
        let result = client.txn(&txn).await?;
        let summary = if result.succeeded {
            format!(
                "Every compare held: the success ops ran ({} result(s)).",
                result.results.len()
            )
        } else {
            format!(
                "A compare failed: the failure ops ran instead ({} result(s)).{}",
                result.results.len(),
                if args.release.is_some() {
                    " The lock was NOT released: you still hold it."
                } else {
                    ""
                }
            )
        } + &self.released(result.released_lock_id);
        Done::new(result, summary)
    }

    async fn counter_add(&self, args: CounterAddArgs) -> Result<Done, Error> {
        let client = self
            .state_writer(&args.fence, &args.idempotency_key, args.release)
            .await?;
        let counter = client
            .counter_add(&args.key, args.delta, args.min, args.max)
            .await?;
        let summary = format!("{:?} is now {}.", args.key, counter.value)
            + &self.released(counter.released_lock_id);
        Done::new(counter, summary)
    }

    // ---- semaphores ----

    async fn semaphore_acquire(&self, args: SemaphoreAcquireArgs) -> Result<Done, Error> {
        let client = self.writer(&args.fence, &args.idempotency_key).await?;
        let mut request =
            SemaphoreRequest::new(&args.key, args.permits, args.capacity).wait_ms(args.wait_ms);
        if let Some(ttl_ms) = args.ttl_ms {
            request = request.ttl_ms(ttl_ms);
        }
        let info = client.semaphore_acquire(&request).await?;
        let permits = info.permits.unwrap_or(args.permits);
        let summary = if info.status == LockStatus::Held {
            let lock = HeldLock::from_info(&info, args.ttl_ms.is_some());
            let renew = if lock.own_ttl {
                " It has its own TTL: lock_renew it before it expires."
            } else {
                " It lasts as long as this connection."
            };
            let text = format!(
                "Holding {permits} of {} permit(s) of {:?} as lock {} (fence_token {}).{renew} Give the permits back with lock_release {{\"lock_id\": {}}} as soon as you are done.",
                args.capacity,
                args.key,
                info.lock_id,
                info.fence_token
                    .map_or("none".to_string(), |t| t.to_string()),
                info.lock_id
            );
            self.connection.track_lock(lock);
            text
        } else {
            format!(
                "Lock {} for {permits} permit(s) of {:?} is queued, not held yet; do not use the slot.",
                info.lock_id, args.key
            )
        };
        Done::new(info, summary)
    }

    // ---- quotas ----

    async fn quota_set(&self, args: QuotaSetArgs) -> Result<Done, Error> {
        let client = self.writer(&args.fence, &args.idempotency_key).await?;
        let quota = client
            .quota_set(&args.quota, args.capacity, args.reset_used)
            .await?;
        let summary = quota_summary(&quota);
        Done::new(quota, summary)
    }

    async fn quota_get(&self, args: QuotaArgs) -> Result<Done, Error> {
        let client = self.client().await?;
        let quota = client.quota_get(&args.quota).await?;
        let summary = quota_summary(&quota);
        Done::new(quota, summary)
    }

    async fn quota_reserve(&self, args: QuotaReserveArgs) -> Result<Done, Error> {
        let client = self.writer(&args.fence, &args.idempotency_key).await?;
        let reservation = client
            .quota_reserve(&args.quota, args.amount, args.ttl_ms)
            .await?;
        let summary = format!(
            "Reserved {} of {:?} (reservation {}; {} left for others). Make the call now, then quota_commit {{\"reservation_id\": {}, \"actual\": <what it spent>}}, or quota_release it if you spent nothing; unsettled, it returns to the pool at expires_at.",
            reservation.amount,
            reservation.quota,
            reservation.reservation_id,
            reservation.available,
            reservation.reservation_id
        );
        Done::new(reservation, summary)
    }

    async fn quota_commit(&self, args: QuotaCommitArgs) -> Result<Done, Error> {
        let client = self.writer(&args.fence, &args.idempotency_key).await?;
        let settled = client
            .quota_commit(args.reservation_id, args.actual)
            .await?;
        let summary = settle_summary(&settled);
        Done::new(settled, summary)
    }

    async fn quota_release(&self, args: QuotaReleaseArgs) -> Result<Done, Error> {
        let client = self.client().await?;
        let settled = client.quota_release(args.reservation_id).await?;
        let summary = settle_summary(&settled);
        Done::new(settled, summary)
    }

    // ---- rate limits ----

    async fn rate_take(&self, args: RateTakeArgs) -> Result<Done, Error> {
        let client = self.writer(&args.fence, &args.idempotency_key).await?;
        let request = RateRequest::new(&args.bucket, args.rate_per_sec, args.burst)
            .tokens(args.tokens)
            .wait_ms(args.wait_ms);
        let taken = client.rate_take(&request).await?;
        let summary = format!(
            "Took {} token(s) from {:?} ({} left): make the call now.",
            taken.taken, taken.bucket, taken.remaining
        );
        Done::new(taken, summary)
    }

    async fn rate_status(&self, args: BucketArgs) -> Result<Done, Error> {
        let client = self.client().await?;
        let bucket = client.bucket(&args.bucket).await?;
        let summary = bucket_summary(&bucket);
        Done::new(bucket, summary)
    }

    // ---- once (single-flight refresh) ----

    async fn once_get(&self, args: OnceGetArgs) -> Result<Done, Error> {
        let client = self.writer(&args.fence, &args.idempotency_key).await?;
        let request =
            OnceRequest::new(&args.key, args.max_age_ms, args.claim_ttl_ms).wait_ms(args.wait_ms);
        let once = client.once(&request).await?;
        let summary = once_summary(&once);
        Done::new(once, summary)
    }

    async fn once_fulfil(&self, args: OnceFulfilArgs) -> Result<Done, Error> {
        let client = self.writer(&args.fence, &args.idempotency_key).await?;
        let once = client
            .once_fulfil(&args.key, args.claim_id, &args.value)
            .await?;
        let summary = format!(
            "Published {:?} (version {}): every agent waiting in once_get has it now.",
            once.key,
            once.version.unwrap_or_default()
        );
        Done::new(once, summary)
    }

    async fn once_abandon(&self, args: OnceAbandonArgs) -> Result<Done, Error> {
        let client = self.writer(&args.fence, &args.idempotency_key).await?;
        client.once_abandon(&args.key, args.claim_id).await?;
        let summary = format!(
            "Gave up claim {} on {:?}: the next waiting agent gets the claim.",
            args.claim_id, args.key
        );
        Done::new(json!({}), summary)
    }

    // ---- queues ----

    async fn queue_enqueue(&self, args: QueueEnqueueArgs) -> Result<Done, Error> {
        let client = self.writer(&args.fence, &args.idempotency_key).await?;
        let enqueued = client
            .queue_enqueue(&args.queue, &args.item, args.max_attempts)
            .await?;
        let summary = format!(
            "Enqueued item {} on {:?} ({} ready).",
            enqueued.item_id, enqueued.queue, enqueued.depth
        );
        Done::new(enqueued, summary)
    }

    async fn queue_claim(&self, args: QueueClaimArgs) -> Result<Done, Error> {
        let client = self.writer(&args.fence, &args.idempotency_key).await?;
        let claim = client.queue_claim(&args.queue, args.visibility_ms).await?;
        let summary = match &claim {
            QueueClaim::Item(item) => {
                let retry = if item.attempt > 1 {
                    " An earlier delivery did not finish: check whether its side effects already happened before repeating them."
                } else {
                    ""
                };
                format!(
                    "Claimed item {} of {:?} (attempt {} of {}) for {} ms.{retry} Do the work, then queue_ack {{\"queue\": {:?}, \"item_id\": {}, \"claim_token\": {}}} (or queue_nack to give it back).",
                    item.item_id,
                    item.queue,
                    item.attempt,
                    item.max_attempts,
                    args.visibility_ms,
                    item.queue,
                    item.item_id,
                    item.claim_token
                )
            }
            QueueClaim::Empty(empty) => format!(
                "Nothing ready in {:?} ({} in flight, {} delayed).",
                empty.queue, empty.in_flight, empty.delayed
            ),
        };
        Done::new(claim, summary)
    }

    async fn queue_ack(&self, args: QueueSettleArgs) -> Result<Done, Error> {
        let client = self.writer(&args.fence, &args.idempotency_key).await?;
        let settled = client
            .queue_ack(&args.queue, args.item_id, args.claim_token)
            .await?;
        let summary = format!(
            "Item {} of {:?} is done ({}): it left the queue.",
            settled.item_id, settled.queue, settled.outcome
        );
        Done::new(settled, summary)
    }

    async fn queue_nack(&self, args: QueueNackArgs) -> Result<Done, Error> {
        let client = self.writer(&args.fence, &args.idempotency_key).await?;
        let settled = client
            .queue_nack(&args.queue, args.item_id, args.claim_token, args.delay_ms)
            .await?;
        let summary = format!(
            "Item {} of {:?} given back: {}.",
            settled.item_id, settled.queue, settled.outcome
        );
        Done::new(settled, summary)
    }

    async fn queue_status(&self, args: QueueArgs) -> Result<Done, Error> {
        let client = self.client().await?;
        let status = client.queue_status(&args.queue).await?;
        let summary = format!(
            "{:?}: {} ready, {} in flight, {} delayed, {} dead-lettered.",
            status.queue, status.ready, status.in_flight, status.delayed, status.dead_lettered
        );
        Done::new(status, summary)
    }

    // ---- events ----

    async fn events_recent(&self, args: EventsArgs) -> Result<Done, Error> {
        let client = self.client().await?;
        let page = client
            .events(&args.prefix, args.from_revision, args.limit)
            .await?;
        let summary = format!(
            "{} event(s) under {:?}; continue with from_revision {}.",
            page.events.len(),
            args.prefix,
            page.next_revision
        );
        Done::new(page, summary)
    }

    // ---- resources ----

    async fn read_held(&self) -> Result<String, Error> {
        self.client().await?;
        self.connection.verify_locks(MAX_LOCKS_CHECKED).await;
        let session = self.connection.session_info().await;
        let mut value = holdings(&self.connection, session.as_ref());
        let notices = self.connection.take_notices();
        if !notices.is_empty() {
            value["lease_lost"] = serde_json::to_value(notices).unwrap_or(Value::Null);
        }
        Ok(serde_json::to_string_pretty(&value).unwrap_or_default())
    }
}

fn describe_lock(lock: &HeldLock) -> String {
    let mode = match lock.mode {
        baton_core::LockMode::Exclusive => "exclusive",
        baton_core::LockMode::Shared => "shared",
    };
    let permits = lock
        .permits
        .map_or_else(String::new, |n| format!(", {n} permit(s)"));
    let fence = lock
        .fence_token
        .map_or_else(String::new, |t| format!(", fence_token {t}"));
    format!(
        "lock {} on {:?} ({mode}{permits}{fence})",
        lock.lock_id, lock.keys
    )
}

fn quota_summary(quota: &QuotaInfo) -> String {
    format!(
        "Quota {:?}: {} of {} available (used {}, reserved {} in {} live reservation(s)).",
        quota.quota,
        quota.available,
        quota.capacity,
        quota.used,
        quota.reserved,
        quota.reservations
    )
}

fn settle_summary(settled: &SettleResult) -> String {
    match (settled.settled, settled.outcome.as_str()) {
        (true, "committed") => format!(
            "Reservation {} committed: {} used, {} returned to the pool.",
            settled.reservation_id, settled.committed, settled.returned
        ),
        (true, outcome) => format!(
            "Reservation {} {outcome}: {} returned to the pool.",
            settled.reservation_id, settled.returned
        ),
        (false, outcome) => format!(
            "Reservation {} had already ended ({outcome}); nothing to do.",
            settled.reservation_id
        ),
    }
}

fn bucket_summary(bucket: &BucketInfo) -> String {
    let spenders: Vec<String> = bucket
        .usage
        .iter()
        .take(3)
        .map(|u| format!("{:?} {}", u.agent, u.tokens))
        .collect();
    let spent = if spenders.is_empty() {
        "nobody has taken from it yet".to_string()
    } else {
        format!("top spenders: {}", spenders.join(", "))
    };
    format!(
        "Bucket {:?}: {} of {} tokens now, refills {}/s; {spent}.",
        bucket.bucket, bucket.available, bucket.burst, bucket.rate_per_sec
    )
}

fn once_summary(once: &OnceResult) -> String {
    match once.status.as_str() {
        "fresh" => format!(
            "{:?} is fresh (version {}, {} ms old): use `value`; do NOT refresh it.",
            once.key,
            once.version.unwrap_or_default(),
            once.age_ms.unwrap_or_default()
        ),
        "claimed" => format!(
            "You hold the refresh claim for {:?} (claim_id {}). Refresh the value now, then once_fulfil {{\"key\": {:?}, \"claim_id\": {}, \"value\": <new value>}} before expires_at; if the refresh fails, once_abandon it.",
            once.key,
            once.claim_id.unwrap_or_default(),
            once.key,
            once.claim_id.unwrap_or_default()
        ),
        other => format!(
            "{:?} is {other}: another agent is refreshing it; call once_get again with wait_ms to get its value. Do not refresh it yourself.",
            once.key
        ),
    }
}

fn written_summary(key: &str, version: u64, previous: Option<u64>) -> String {
    match previous {
        Some(previous) => format!("Wrote {key:?}: version {previous} -> {version}."),
        None => format!("Created {key:?} at version {version}."),
    }
}

/// The end reason in a FENCED error's details, e.g. `expired`.
fn ended_status(error: &Error) -> String {
    error
        .details
        .as_ref()
        .and_then(|d| d.get("status"))
        .and_then(Value::as_str)
        .unwrap_or("ended")
        .to_string()
}

impl ServerHandler for BatonMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_prompts()
                .build(),
        )
        .with_server_info(
            Implementation::new("baton", env!("CARGO_PKG_VERSION"))
                .with_title("Baton: locks, fencing and versioned state for agents"),
        )
        .with_protocol_version(ProtocolVersion::V_2025_11_25)
        .with_instructions(INSTRUCTIONS)
    }

    /// Only the revisions with an `initialize` handshake: a Baton session
    /// lives as long as an MCP connection, which the stateless 2026-07-28
    /// revision no longer has.
    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        std::borrow::Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25))
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        // Over HTTP, a `Baton-Agent` header on initialize names the agent.
        let header_agent = context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.headers.get("baton-agent"))
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        self.connection
            .set_agent(header_agent.as_deref(), &request.client_info.name);
        tracing::info!(
            agent = self.connection.agent(),
            client = %request.client_info.name,
            "MCP client connected"
        );
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.tools.clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        if let Some(session) = context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.headers.get("mcp-session-id"))
            .and_then(|value| value.to_str().ok())
        {
            self.connection.set_mcp_session(session);
        }
        if self.get_tool(&request.name).is_none() {
            return Err(McpError::invalid_params(
                format!("there is no tool {:?}; tools/list names them", request.name),
                None,
            ));
        }
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        Ok(self.call(&request.name, arguments).await.into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new(HELD_URI, "held")
                .with_title("What this agent holds")
                .with_description(
                    "The locks this agent's session holds now (checked with the server), with keys and fence tokens; read it after your context was compacted.",
                )
                .with_mime_type("application/json"),
            Resource::new(GUIDE_URI, "guide")
                .with_title("Safe coordination patterns")
                .with_description(
                    "How to coordinate through Baton: lock -> read -> write with fence -> release; read -> write with if_version -> retry on conflict; quotas, rate limits, semaphores, single-flight refresh and queues; what each error means.",
                )
                .with_mime_type("text/markdown"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let contents = match request.uri.as_str() {
            HELD_URI => {
                let text = self.read_held().await.map_err(|e| {
                    McpError::internal_error(
                        crate::reply::error_text("held", &e),
                        serde_json::to_value(&e).ok(),
                    )
                })?;
                ResourceContents::text(text, HELD_URI).with_mime_type("application/json")
            }
            GUIDE_URI => ResourceContents::text(GUIDE, GUIDE_URI).with_mime_type("text/markdown"),
            other => {
                return Err(McpError::resource_not_found(
                    format!("no resource {other:?}; Baton offers {HELD_URI} and {GUIDE_URI}"),
                    None,
                ));
            }
        };
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        Ok(ListPromptsResult::with_all_items(vec![Prompt::new(
            PROMPT_NAME,
            Some("How to coordinate safely with other agents through Baton's tools"),
            None,
        )]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        if request.name != PROMPT_NAME {
            return Err(McpError::invalid_params(
                format!("no prompt {:?}; Baton offers {PROMPT_NAME:?}", request.name),
                None,
            ));
        }
        Ok(
            GetPromptResult::new(vec![PromptMessage::new_text(Role::User, GUIDE)])
                .with_description("Safe coordination patterns with Baton")
                .into(),
        )
    }
}
