//! What the server teaches a language model: the instructions sent at
//! initialize and the `safe_patterns` prompt / `baton://guide` resource.

/// Sent as `instructions` at initialize: short, because clients put it in
/// the model's context on every turn.
pub const INSTRUCTIONS: &str = "\
Baton coordinates you with other agents that read and write the same things. \
Every race becomes an explicit answer (a lock grant with a fence token, a version conflict with the current value) instead of a silent lost update.

Safe patterns:
1. Lock, read, write with fence, release: lock_acquire(keys, read=true) -> lock_id, fence_token, values (no state_get needed); state_put/state_patch with fence {key, token} and, on the last write, release: lock_id (or lock_release). \
Take every key one piece of work needs in ONE lock_acquire call.
2. Optimistic update, no lock: state_get -> value, version; compute; state_put(if_version=version) or state_patch(if_version=version). \
On CONCURRENT_MODIFICATION re-read and redo the change (never resend the same write).
3. Counters: counter_add (atomic; min/max bounds) instead of read-modify-write.
4. Shared limits: quota_reserve before a costly call, then quota_commit the actual spend; rate_take before each call to a rate-limited API; \
semaphore_acquire a permit before using one of N shared slots, lock_release it after.
5. Shared credential: once_get before refreshing it; refresh ONLY if you got status=claimed, then once_fulfil (FENCED -> your claim expired: do not publish).
6. Queues: queue_claim -> work -> queue_ack with the claim_token (FENCED on ack -> your claim expired and the item was redelivered: do not repeat side effects).

Errors: CONCURRENT_MODIFICATION -> re-read and redo, or wait retry_after_ms for a lock; FENCED -> you no longer hold the lock: stop writing, acquire again, re-read; \
DEADLOCK -> release and take all keys in one call; QUOTA_EXCEEDED / RATE_LIMITED -> do not make the call: wait retry_after_ms; \
UNAVAILABLE -> Baton is not reachable (start it with `baton serve`).

Your session lives as long as this MCP connection; locks without ttl_ms end with it. \
If a result starts with LEASE LOST, a lock or your session ended: stop writing under it, acquire again and re-read. \
Unsure what you hold (e.g. after your context was compacted)? Call held or lock_status.";

/// The longer guide: prompt `safe_patterns` and resource `baton://guide`.
pub const GUIDE: &str = "\
# Coordinating through Baton

You share state with other agents. Two agents that read a value, change it and write it back will silently lose one of the two changes unless the write is conditional or made under a lock. Baton makes every such race explicit.

## Pattern 1: lock -> read -> write with fence -> release
Use it when the work takes several steps, touches several keys, or has side effects outside Baton.
1. `lock_acquire {\"keys\": [\"inventory/sku-1\"], \"wait_ms\": 10000, \"read\": true}` -> `lock_id`, `fence_token`, `values`.
   Take every key the work needs in this ONE call (all or nothing: no deadlock).
2. With `read`, `values` holds each locked key that exists (`value`, `version`) as of the grant; agents that lock
   before they write cannot change it until you release. Without `read`: `state_get {\"key\": \"inventory/sku-1\"}` -> `value`, `version`.
3. `state_put {\"key\": \"inventory/sku-1\", \"value\": {...}, \"fence\": {\"key\": \"inventory/sku-1\", \"token\": <fence_token>}}`.
   The fence makes a late write from a lock you lost fail with FENCED instead of overwriting someone else's work.
4. Release as soon as you are done: add `\"release\": <lock_id>` to your last write (state_put, state_patch, state_delete, state_txn, counter_add)
   and the lock is released together with it, in one step; if that write is refused you still hold the lock. Or call `lock_release {\"lock_id\": <lock_id>}`.

## Pattern 2: read -> put/patch with if_version -> retry on conflict
Use it for a quick change to one key; no lock needed.
1. `state_get` -> `value`, `version` (NOT_FOUND: the key does not exist; create it with `if_version: 0`).
2. Compute the new value from the value you read.
3. `state_put {\"key\", \"value\", \"if_version\": <version>}` (replace the whole value) or
   `state_patch {\"key\", \"merge\": {\"field\": ...}, \"if_version\": <version>}` (change one field).
4. CONCURRENT_MODIFICATION: someone wrote first. `details.current_value` and `details.current_version` hold what is there now:
   redo your change on that value and write again with the new version. Repeat until it succeeds.

## Counters and pools
`counter_add {\"key\", \"delta\": 1}` is atomic: no read-modify-write, no lost increment. With `min`/`max` it refuses (QUOTA_EXCEEDED) rather than cross a bound: `delta: -1, min: 0` takes a slot from a pool only if one is free.

## Shared quotas: reserve before a costly call, commit the actual after
1. `quota_reserve {\"quota\": \"llm/tokens-per-day\", \"amount\": 4000, \"ttl_ms\": 300000}` -> `reservation_id` (the most the call may spend).
2. Make the costly call only if the reservation succeeded. QUOTA_EXCEEDED: do not make it; wait `retry_after_ms` and reserve again, or reserve less.
3. `quota_commit {\"reservation_id\", \"actual\": 3120}` with what it really spent (the rest returns), or `quota_release` if it spent nothing.

## Shared rate limits: take before calling
`rate_take {\"bucket\": \"api/openai\", \"rate_per_sec\": 50, \"burst\": 10}` before EACH call to the API; every agent uses the same bucket, rate and burst.
RATE_LIMITED: do not call yet; wait `retry_after_ms` (exact) and take again, or pass `wait_ms` to queue for the tokens.

## Pools of N slots: semaphores
`semaphore_acquire {\"key\": \"gpu/pool\", \"capacity\": 3}` -> `lock_id` before using one of 3 GPUs; `lock_release {\"lock_id\"}` right after.
CONCURRENT_MODIFICATION: no permit free; wait `retry_after_ms` or pass `wait_ms`.

## A shared credential: refresh once, not once per agent
1. `once_get {\"key\": \"cred/token\", \"max_age_ms\": 600000, \"wait_ms\": 20000}` before using or refreshing it.
2. `status: fresh` -> use `value`. `status: claimed` -> you alone refresh it: get the new credential, then
   `once_fulfil {\"key\": \"cred/token\", \"claim_id\", \"value\"}`; the waiting agents get it. If the refresh fails, `once_abandon`.
3. Never refresh without the claim. FENCED on once_fulfil: your claim expired and someone else may have refreshed: do not publish or use your value; once_get again.

## Work queues: one worker per item
`queue_enqueue {\"queue\", \"item\"}` hands work over. A worker: `queue_claim {\"queue\", \"visibility_ms\"}` -> `item_id`, `claim_token`, `item`;
do the work; `queue_ack {\"queue\", \"item_id\", \"claim_token\"}` (or `queue_nack` to give it back).
FENCED on ack: your claim expired and the item was redelivered to another worker: do not repeat its side effects. `attempt` > 1 on a claim: an earlier worker may have done part of it.

## Several keys at once
`state_txn` runs `success` ops only if every compare holds, else `failure` ops; all or nothing.

## Retries
Pass an `idempotency_key` (any unique string) with a write you may retry: a retry after a timeout or UNAVAILABLE is then never applied twice.

## Losing a lease
Your session is kept alive while this MCP connection lives; locks without `ttl_ms` end with it, and locks with `ttl_ms` must be renewed with `lock_renew`.
If a tool result starts with `LEASE LOST`, a lock or your session ended (expired, killed): its fence token is dead.
Stop writing under it, acquire the lock again, re-read the state, and redo the work. `held` lists what you hold now; `lock_status` answers \"do I still hold X?\" cheaply.

## Errors and what to do
| code | meaning | do |
|---|---|---|
| CONCURRENT_MODIFICATION | version conflict, or the lock is held by someone else | re-read and redo; for a lock wait `retry_after_ms` or pass `wait_ms` |
| FENCED | your lock, fence, session, claim or reservation is no longer current | stop writing; acquire again; re-read; never repeat a redelivered item's side effects |
| DEADLOCK | waiting would close a cycle | release, then take all keys in one call |
| QUOTA_EXCEEDED | a counter bound or a quota would be crossed | do not make the costly call; take less or wait `retry_after_ms` |
| RATE_LIMITED | the shared rate limit has no tokens now | do not call the API yet; wait `retry_after_ms` or pass `wait_ms` |
| NOT_FOUND | no such key, lock or session | check the name; create the key |
| INVALID_ARGUMENT | bad input; the message names the field | fix the field; nothing was applied |
| UNAVAILABLE | Baton is not reachable or cannot write | start `baton serve`; retry with the same idempotency_key |
";
