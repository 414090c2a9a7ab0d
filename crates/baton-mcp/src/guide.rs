//! What the server teaches a language model: the instructions sent at
//! initialize and the `safe_patterns` prompt / `baton://guide` resource.

/// Sent as `instructions` at initialize: short, because clients put it in
/// the model's context on every turn.
pub const INSTRUCTIONS: &str = "\
Baton coordinates you with other agents that read and write the same things. \
Every race becomes an explicit answer (a lock grant with a fence token, a version conflict with the current value) instead of a silent lost update.

Safe patterns:
1. Lock, read, write with fence, release: lock_acquire(keys) -> fence_token; state_get; state_put/state_patch with fence {key, token}; lock_release. \
Take every key one piece of work needs in ONE lock_acquire call.
2. Optimistic update, no lock: state_get -> value, version; compute; state_put(if_version=version) or state_patch(if_version=version). \
On CONCURRENT_MODIFICATION re-read and redo the change (never resend the same write).
3. Counters: counter_add (atomic; min/max bounds) instead of read-modify-write.

Errors: CONCURRENT_MODIFICATION -> re-read and redo, or wait retry_after_ms for a lock; FENCED -> you no longer hold the lock: stop writing, acquire again, re-read; \
DEADLOCK -> release and take all keys in one call; UNAVAILABLE -> Baton is not reachable (start it with `baton serve`).

Your session lives as long as this MCP connection; locks without ttl_ms end with it. \
If a result starts with LEASE LOST, a lock or your session ended: stop writing under it, acquire again and re-read. \
Unsure what you hold (e.g. after your context was compacted)? Call held or lock_status.";

/// The longer guide: prompt `safe_patterns` and resource `baton://guide`.
pub const GUIDE: &str = "\
# Coordinating through Baton

You share state with other agents. Two agents that read a value, change it and write it back will silently lose one of the two changes unless the write is conditional or made under a lock. Baton makes every such race explicit.

## Pattern 1: lock -> read -> write with fence -> release
Use it when the work takes several steps, touches several keys, or has side effects outside Baton.
1. `lock_acquire {\"keys\": [\"inventory/sku-1\"], \"wait_ms\": 10000}` -> `lock_id`, `fence_token`.
   Take every key the work needs in this ONE call (all or nothing: no deadlock).
2. `state_get {\"key\": \"inventory/sku-1\"}` -> `value`, `version`.
3. `state_put {\"key\": \"inventory/sku-1\", \"value\": {...}, \"fence\": {\"key\": \"inventory/sku-1\", \"token\": <fence_token>}}`.
   The fence makes a late write from a lock you lost fail with FENCED instead of overwriting someone else's work.
4. `lock_release {\"lock_id\": <lock_id>}` as soon as you are done.

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
| FENCED | your lock, fence or session is no longer current | stop writing; acquire again; re-read |
| DEADLOCK | waiting would close a cycle | release, then take all keys in one call |
| QUOTA_EXCEEDED | a counter bound would be crossed | take less or wait |
| NOT_FOUND | no such key, lock or session | check the name; create the key |
| INVALID_ARGUMENT | bad input; the message names the field | fix the field; nothing was applied |
| UNAVAILABLE | Baton is not reachable or cannot write | start `baton serve`; retry with the same idempotency_key |
";
