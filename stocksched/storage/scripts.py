"""The Lua scripts of the run path: each is one atomic step, one round trip.

A scheduled run costs Redis two round trips for its bookkeeping (issue 11): ``CLAIM``
(slot claim, running lease, in-flight record, job marked running) before the body, and
``RECORD`` (job's runtime fields, history entry, lease released, in-flight record
dropped, slot marked done) after it, the latter fenced by the run's lease token. The
keys are built in ``stocksched.storage.keys``; the callers are ``leases.LeaseManager``
(claims) and ``jobs.JobRecords`` (records).

Each script's keys are one job's, all in the job's hash slot (``keys.job_tag``), followed,
on a single Redis, by the global keys it also keeps in step (indexes, projections). On a
Redis Cluster the callers pass the job's keys only, and write the global keys in a command
of their own just after (one more round trip there): the job's keys are the truth, the
global ones are repaired at reconcile or by the crash scan.

A job's runtime fields live in its state hash (``keys.job_state_key``) next to the spec
JSON; ``keys.job_runtime_key`` is their projection for the gauges, a JSON array
``["status", last_run, last_success]`` of Unix seconds that the scripts rewrite in place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

from stocksched.storage import keys

#: One script call: its ``keys`` and ``args``.
Call = dict[str, Sequence[str | int | bytes]]


def evalsha_many(
    client: redis.Redis,
    script: str,
    calls: Sequence[Mapping[str, Sequence[str | int | bytes]]],
    raise_on_error: bool = True,
) -> list[Any]:
    """``script`` once per call, in one pipeline, by its SHA.

    redis-py's own script pipelining asks SCRIPT EXISTS first: a second round trip every
    time. A Redis that lost its scripts (restarted, SCRIPT FLUSH) gets it loaded and the
    batch resent, so every script of the batch must be safe to run twice (the claim is:
    a claim resent by its owner is a success; so is a record, answered 'done'). Redis
    errors propagate (redis-py's); with ``raise_on_error=False`` a call Redis refused
    (out of memory, read-only replica) has its error in its place instead, so the other
    calls' answers are not lost with it.
    """
    sha = hashlib.sha1(script.encode()).hexdigest()
    for attempt in (1, 2):
        with client.pipeline(transaction=False) as pipe:
            for c in calls:
                pipe.evalsha(sha, len(c["keys"]), *c["keys"], *c["args"])
            replies = pipe.execute(raise_on_error=False)
        if attempt == 1 and any(isinstance(r, NoScriptError) for r in replies):
            client.script_load(script)
            continue
        for reply in replies:
            if raise_on_error and isinstance(reply, Exception):
                raise reply
        break
    return list(replies)


# KEYS: slot, running, inflight, job record, job state (the job's hash slot), then on a
#       single Redis: inflight index, paused set, runtime projection (``GLOBAL_KEYS``)
# ARGV: token, run_id, lease_ms, slot_ttl_ms, record json, job_id, take_slot ("1"/"0"),
#       honour_pause ("1"/"0"), mark ("next": running with next_run ARGV[10]; "keep":
#       running, next_run unchanged; "": do not mark), next_run (ISO, "" for none)
# A retry by the same owner (redis-py resends a script after a timeout) is a success.
# Without the global keys (a cluster) the pause is read from the record, and the caller
# writes the index and the projection (``PROJECT``) after a claim.
CLAIM = """
local global = #KEYS > 5
local function mark()
  if ARGV[9] == '' or redis.call('EXISTS', KEYS[4]) == 0 then
    return
  end
  if ARGV[9] == 'next' then
    redis.call('HSET', KEYS[5], 'status', 'running', 'next_run', ARGV[10])
  else
    redis.call('HSET', KEYS[5], 'status', 'running')
  end
  local p = global and redis.call('HGET', KEYS[8], ARGV[6])
  if p then
    redis.call('HSET', KEYS[8], ARGV[6], (string.gsub(p, '^%["[^"]*"', '["running"', 1)))
  end
end
local function paused()
  if global then
    return redis.call('SISMEMBER', KEYS[7], ARGV[6]) == 1
  end
  local raw = redis.call('GET', KEYS[4])
  return raw and cjson.decode(raw)['paused'] == true
end
if redis.call('HGET', KEYS[2], 'owner') == ARGV[1] then
  mark()
  return {'claimed', ''}
end
if ARGV[8] == '1' and paused() then
  return {'paused', ''}
end
local slot = redis.call('GET', KEYS[1])
if ARGV[7] == '1' and slot and slot ~= ARGV[1] then
  return {'slot_taken', ''}
end
local holder = redis.call('HGET', KEYS[2], 'run_id')
if ARGV[7] == '1' and not slot then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
end
if holder then
  return {'job_busy', holder}
end
redis.call('HSET', KEYS[2], 'owner', ARGV[1], 'run_id', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[5])
if global then
  redis.call('SADD', KEYS[6], ARGV[6])
end
mark()
return {'claimed', ''}
"""


def claim_keys(job_id: str, run_id: str, *, cluster: bool) -> list[str | int]:
    """``CLAIM``'s keys: the job's, then (a single Redis) the global ones."""
    job_keys: list[str | int] = [
        keys.slot_key(run_id),
        keys.running_key(job_id),
        keys.inflight_key(job_id),
        keys.job_key(job_id),
        keys.job_state_key(job_id),
    ]
    if not cluster:
        job_keys += [keys.inflight_index_key(), keys.paused_index_key(), keys.job_runtime_key()]
    return job_keys


# KEYS: slot keys (of one job: one hash slot). ARGV: token, slot_ttl_ms, owner prefix
# ("{replica}/{incarnation}."). Per key 1 when the slot is now ours (newly, or already
# by this process), else 0.
CLAIM_SLOTS = """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if not v then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    out[i] = 1
  elseif string.sub(v, 1, string.len(ARGV[3])) == ARGV[3] then
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# KEYS: running. ARGV: token, lease_ms
EXTEND = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: inflight, running[, inflight index: a single Redis]. ARGV: run_id, job_id, token
# The end of a run in one step: record gone and lease gone, never one without the other.
# (On a cluster the crash scan drops the index entry of a job with no records left.)
FINISH_RUN = """
local n = redis.call('HDEL', KEYS[1], ARGV[1])
if KEYS[3] and redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[2])
end
if redis.call('HGET', KEYS[2], 'owner') == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
return n
"""

# KEYS: running, slot, inflight, job record, job state, run history stream (the job's
#       hash slot), then on a single Redis: inflight index, runtime projection
# ARGV: token, run_id, job_id, status, last_run (ISO), last_run (Unix s), last_success
#       (ISO, "" when the run failed), last_success (Unix s, ""), last_result (JSON),
#       history maxlen, then the history entry's field/value pairs
# Returns 'recorded'; 'unknown' (the job left the config: history only); 'done' (this
# write landed already: a retry after a timeout); 'lost' (the lease is not ours:
# nothing written, another replica recorded the run as interrupted). 'done:' is
# ``fence.DONE_PREFIX``. Without the global keys (a cluster) the caller writes the
# projection after a 'recorded' (``PROJECT``).
RECORD = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  if redis.call('GET', KEYS[2]) == 'done:' .. ARGV[1] then
    return 'done'
  end
  return 'lost'
end
local out = 'unknown'
if redis.call('EXISTS', KEYS[4]) == 1 then
  local fields = {'status', ARGV[4], 'last_run', ARGV[5], 'last_result', ARGV[9]}
  local success = ARGV[8]
  if ARGV[7] ~= '' then
    fields[#fields + 1] = 'last_success'
    fields[#fields + 1] = ARGV[7]
  else
    local p = KEYS[8] and redis.call('HGET', KEYS[8], ARGV[3])
    success = p and string.match(p, ',%s*([^,%s%]]+)%s*%]$')
  end
  redis.call('HSET', KEYS[5], unpack(fields))
  if success and KEYS[8] then  -- a missing projection is rebuilt at reconcile
    local projected = '["' .. ARGV[4] .. '", ' .. ARGV[6] .. ', ' .. success .. ']'
    redis.call('HSET', KEYS[8], ARGV[3], projected)
  end
  out = 'recorded'
end
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[10], '*', unpack(ARGV, 11))
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[3], ARGV[2])
if KEYS[7] and redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('SREM', KEYS[7], ARGV[3])
end
redis.call('SET', KEYS[2], 'done:' .. ARGV[1], 'KEEPTTL')
return out
"""


def record_keys(job_id: str, run_id: str, *, cluster: bool) -> list[str]:
    """``RECORD``'s keys: the job's, then (a single Redis) the global ones."""
    job_keys = [
        keys.running_key(job_id),
        keys.slot_key(run_id),
        keys.inflight_key(job_id),
        keys.job_key(job_id),
        keys.job_state_key(job_id),
        keys.runs_key(job_id),
    ]
    if not cluster:
        job_keys += [keys.inflight_index_key(), keys.job_runtime_key()]
    return job_keys


# KEYS: runtime projection. ARGV: job_id, status, last_run (Unix s, "" keeps it),
#       last_success (Unix s, "" keeps it)
# A cluster's projection write after a claim or a record (there the global hash is in
# another slot than the job): the entry is rewritten with what is known, or left alone
# when the run times are not (a missing entry is rebuilt from the records at reconcile).
PROJECT = """
local run, success = ARGV[3], ARGV[4]
local p = redis.call('HGET', KEYS[1], ARGV[1])
if p then
  local r, s = string.match(p, ',%s*([^,%s]+)%s*,%s*([^,%s%]]+)%s*%]$')
  if run == '' then run = r end
  if success == '' then success = s end
end
if not run or not success or run == '' or success == '' then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], '["' .. ARGV[2] .. '", ' .. run .. ', ' .. success .. ']')
return 1
"""

# KEYS: job record, job state, tombstone (the job's hash slot), then on a single Redis:
#       job index, runtime projection, paused set
# ARGV: job_id, record json, paused ("1"/"0"), projection json, then the state's
#       field/value pairs
# 1 when the record is new (a replica that created it first keeps it, and its
# created_at: 0); the tombstone goes in the same step. Without the global keys (a
# cluster) the caller writes the index entry and projections after a 1.
CREATE = """
if not redis.call('SET', KEYS[1], ARGV[2], 'NX') then
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 5))
redis.call('DEL', KEYS[3])
if KEYS[4] then
  redis.call('SADD', KEYS[4], ARGV[1])
  redis.call('HSET', KEYS[5], ARGV[1], ARGV[4])
  if ARGV[3] == '1' then
    redis.call('SADD', KEYS[6], ARGV[1])
  end
end
return 1
"""


def create_keys(job_id: str, *, cluster: bool) -> list[str]:
    """``CREATE``'s keys: the job's, then (a single Redis) the global ones."""
    job_keys = [keys.job_key(job_id), keys.job_state_key(job_id), keys.removed_job_key(job_id)]
    if not cluster:
        job_keys += [keys.job_index_key(), keys.job_runtime_key(), keys.paused_index_key()]
    return job_keys


# KEYS: job state hashes. Returns their runtime fields, five per key, in order (nil
# where a field is missing), so 10,000 records' states cost one reply.
READ_STATES = """
local out = {}
for _, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 'status', 'next_run', 'last_run', 'last_success',
                       'last_result')
  for j = 1, 5 do
    out[#out + 1] = v[j]
  end
end
return out
"""
