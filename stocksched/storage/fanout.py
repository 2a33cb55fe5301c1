"""A fanned-out run's Redis structures: one stream per run, read by one consumer group.

The replica that claimed the slot (the owner) ``publish``-es the run: its ``meta`` hash
(what a replica needs to fetch for it: the job's spec, the window, the deadline and the
lease token that fences its writes), one ``tickers`` stream entry per ticker and the
consumer group every replica reads with (``XREADGROUP``, one consumer per replica), in
one transaction; then the run's member in the global index, which every replica polls.

A replica ``take``-s an entry, fetches and stores the ticker, and ``complete``-s it: its
outcome goes into the ``done`` hash and the entry is acknowledged (``XACK``) in one
script, which does nothing once the run is finished (so a late replica leaves no key
behind). An entry a replica took and never completed (it died) stays pending; after
``reclaim_idle_ms`` any replica ``reclaim``-s it (``XAUTOCLAIM``). An entry delivered
more than ``max_deliveries`` times is not handed out again: it goes to the run's ``dead``
hash, acknowledged, and counts as that ticker's failure (a ticker that crashes every
replica that takes it must not go round for ever).

Every key of a run carries the job's hash tag (``keys.fanout_key``), so each step is one
transaction or script in one Cluster slot. The index is global: it is written apart
from the run's keys (after ``publish``, before ``finish`` deletes them), and a member
whose ``meta`` is gone is dropped by the reader that finds it. Every run key expires a
minute after the run's deadline (a day after its start without one), so an owner that
dies leaves nothing behind for long.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter, storage_errors

GROUP = "replicas"
MAX_DELIVERIES = 3  # an entry handed out more often than this is dead-lettered
EXPIRY_MARGIN_MS = 60_000  # run keys outlive the deadline by this much
NO_DEADLINE_TTL_MS = 24 * 3600 * 1000

# KEYS: meta, done, stream. ARGV: group, entry id, ticker, outcome JSON.
# Records one ticker's outcome and acknowledges its entry; 0 (nothing written) if the
# run is finished.
_COMPLETE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
return 1
"""

# KEYS: meta, stream, dead. ARGV: group, consumer, min idle ms, count, max deliveries.
# Claims (XAUTOCLAIM) up to count entries idle that long, scanning the whole pending
# list; one delivered more than max deliveries times is dead-lettered and acknowledged
# instead. Returns {id, ticker, ...} of the entries claimed.
_RECLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local out = {}
local cursor = '0-0'
repeat
  local r = redis.call('XAUTOCLAIM', KEYS[2], ARGV[1], ARGV[2], ARGV[3], cursor,
                       'COUNT', ARGV[4])
  cursor = r[1]
  for _, entry in ipairs(r[2]) do
    local id, fields, ticker = entry[1], entry[2], ''
    for i = 1, #fields, 2 do
      if fields[i] == 'ticker' then ticker = fields[i + 1] end
    end
    local p = redis.call('XPENDING', KEYS[2], ARGV[1], id, id, 1)
    local n = p[1] and tonumber(p[1][4]) or 0
    if n > tonumber(ARGV[5]) then
      redis.call('HSET', KEYS[3], ticker, string.format(
        'dead-lettered: handed out %d times, never stored (the replicas that took it '
        .. 'stopped or crashed)', n - 1))
      redis.call('XACK', KEYS[2], ARGV[1], id)
    else
      out[#out + 1] = id
      out[#out + 1] = ticker
    end
  end
until cursor == '0-0' or #out >= tonumber(ARGV[4])
return out
"""


@dataclass(frozen=True)
class FanoutRun:
    """What every replica needs to work for one fanned-out run (its ``meta`` hash)."""

    job_id: str
    run_id: str
    spec_json: str  # the job's JobSpec.to_json, as the owner runs it
    start: str  # the run's window, ISO dates, as the owner computed them
    end: str
    deadline: float | None  # Unix seconds (the owner's timeout); None: no timeout
    owner: str  # the owner's replica id: it works on its run itself
    token: str  # the lease token fencing the run's writes ("" when not fenced)
    total: int  # tickers in the run

    def key(self, part: str) -> str:
        return keys.fanout_key(self.job_id, self.run_id, part)

    @property
    def member(self) -> str:
        """The run's member of the index."""
        return f"{self.job_id} {self.run_id}"

    def expires_ms(self, now_ms: int) -> int:
        if self.deadline is None:
            return now_ms + NO_DEADLINE_TTL_MS
        return int(self.deadline * 1000) + EXPIRY_MARGIN_MS

    def to_fields(self) -> dict[str, str]:
        return {
            "job_id": self.job_id,
            "run_id": self.run_id,
            "spec": self.spec_json,
            "start": self.start,
            "end": self.end,
            "deadline": "" if self.deadline is None else repr(self.deadline),
            "owner": self.owner,
            "token": self.token,
            "total": str(self.total),
        }

    @classmethod
    def from_fields(cls, f: dict[str, str]) -> FanoutRun:
        return cls(
            job_id=f["job_id"],
            run_id=f["run_id"],
            spec_json=f["spec"],
            start=f["start"],
            end=f["end"],
            deadline=float(f["deadline"]) if f.get("deadline") else None,
            owner=f.get("owner", ""),
            token=f.get("token", ""),
            total=int(f.get("total") or 0),
        )


@dataclass(frozen=True)
class Entry:
    """One ticker handed to this replica: its stream entry id and the ticker."""

    id: str
    ticker: str


class FanoutStore:
    """The fanned-out runs' keys; every method raises ``StorageError`` when Redis fails."""

    def __init__(
        self,
        adapter: RedisAdapter,
        *,
        reclaim_idle_ms: int,
        max_deliveries: int = MAX_DELIVERIES,
    ) -> None:
        self._r = adapter.client
        self.reclaim_idle_ms = reclaim_idle_ms
        self.max_deliveries = max_deliveries
        self._complete = self._r.register_script(_COMPLETE)
        self._reclaim = self._r.register_script(_RECLAIM)

    def publish(self, run: FanoutRun, tickers: Sequence[str]) -> None:
        """Put the run's tickers on its stream (with its group and meta), then index it."""
        expires = run.expires_ms(int(time.time() * 1000))
        stream = run.key("tickers")
        with storage_errors("MULTI fanout publish", stream):
            pipe = self._r.pipeline(transaction=True)
            fields = run.to_fields()
            pipe.hset(run.key("meta"), mapping={k: fields[k] for k in fields})
            pipe.xgroup_create(stream, GROUP, id="0", mkstream=True)
            for ticker in tickers:
                pipe.xadd(stream, {"ticker": ticker})
            for part in keys.FANOUT_PARTS:
                pipe.pexpireat(run.key(part), expires)
            pipe.execute()
        with storage_errors("ZADD", keys.fanout_index_key()):
            self._r.zadd(keys.fanout_index_key(), {run.member: expires})

    def active(self) -> list[FanoutRun]:
        """The fanned-out runs in progress (stale index members are dropped)."""
        return self.runs(self.members())

    def members(self) -> list[str]:
        """The index's members of runs in progress: one read (a replica polls it while
        idle); members past their expiry are dropped when found."""
        index = keys.fanout_index_key()
        with storage_errors("ZRANGE", index):
            scored = self._r.zrange(index, 0, -1, withscores=True)
        now_ms = time.time() * 1000
        expired = [str(m) for m, score in scored if score < now_ms]
        if expired:  # an owner died and its keys expired
            with storage_errors("ZREM", index):
                self._r.zrem(index, *expired)
        return [str(m) for m, score in scored if score >= now_ms]

    def runs(self, members: Sequence[str]) -> list[FanoutRun]:
        """The runs of these index members; a member whose ``meta`` is gone is dropped."""
        index = keys.fanout_index_key()
        if not members:
            return []
        metas = [keys.fanout_key(*_split(m), "meta") for m in members]
        with storage_errors("HGETALL", metas[0]):
            pipe = self._r.pipeline(transaction=False)
            for meta in metas:
                pipe.hgetall(meta)
            found: list[dict[str, str]] = pipe.execute()
        stale = [m for m, f in zip(members, found, strict=True) if not f]
        if stale:
            with storage_errors("ZREM", index):
                self._r.zrem(index, *stale)
        return [FanoutRun.from_fields(f) for f in found if f]

    def take(self, run: FanoutRun, consumer: str, count: int = 1) -> list[Entry] | None:
        """Up to ``count`` entries never handed out before; None once the run is gone."""
        stream = run.key("tickers")
        with storage_errors("XREADGROUP", stream):
            try:
                reply = self._r.xreadgroup(GROUP, consumer, {stream: ">"}, count=count)
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    return None  # finished: its keys are deleted
                raise
        return [
            Entry(str(entry_id), str(fields.get("ticker", "")))
            for _stream, entries in reply or []
            for entry_id, fields in entries
        ]

    def reclaim(self, run: FanoutRun, consumer: str, count: int = 1) -> list[Entry]:
        """Up to ``count`` entries left pending ``reclaim_idle_ms`` by another consumer
        (dead-lettering those handed out more than ``max_deliveries`` times)."""
        stream = run.key("tickers")
        with storage_errors("EVALSHA fanout reclaim", stream):
            flat = self._reclaim(
                keys=[run.key("meta"), stream, run.key("dead")],
                args=[GROUP, consumer, self.reclaim_idle_ms, count, self.max_deliveries],
            )
        return [Entry(str(flat[i]), str(flat[i + 1])) for i in range(0, len(flat), 2)]

    def complete(self, run: FanoutRun, entry: Entry, outcome_json: str) -> bool:
        """Record the ticker's outcome and acknowledge its entry; False if the run is over."""
        stream = run.key("tickers")
        with storage_errors("EVALSHA fanout complete", stream):
            done = self._complete(
                keys=[run.key("meta"), run.key("done"), stream],
                args=[GROUP, entry.id, entry.ticker, outcome_json],
            )
        return bool(done)

    def counts(self, run: FanoutRun) -> int:
        """Tickers of the run accounted for: completed or dead-lettered."""
        with storage_errors("HLEN", run.key("done")):
            pipe = self._r.pipeline(transaction=False)
            pipe.hlen(run.key("done"))
            pipe.hlen(run.key("dead"))
            done, dead = pipe.execute()
        return int(done) + int(dead)

    def results(self, run: FanoutRun) -> tuple[dict[str, str], dict[str, str]]:
        """(ticker -> outcome JSON, ticker -> why it was dead-lettered)."""
        with storage_errors("HGETALL", run.key("done")):
            pipe = self._r.pipeline(transaction=False)
            pipe.hgetall(run.key("done"))
            pipe.hgetall(run.key("dead"))
            done, dead = pipe.execute()
        return dict(done), dict(dead)

    def holds_lease(self, run: FanoutRun) -> bool:
        """The run still holds its job's lease (an unfenced run always does)."""
        if not run.token:
            return True
        lease = keys.running_key(run.job_id)
        with storage_errors("HGET", lease):
            return bool(self._r.hget(lease, "owner") == run.token)

    def finish(self, run: FanoutRun) -> None:
        """Unindex the run and delete its keys: late replicas then write nothing."""
        with storage_errors("ZREM", keys.fanout_index_key()):
            self._r.zrem(keys.fanout_index_key(), run.member)
        with storage_errors("DEL", run.key("meta")):
            self._r.delete(*(run.key(part) for part in keys.FANOUT_PARTS))


def _split(member: str) -> tuple[str, str]:
    """(job id, run id) of an index member."""
    job_id, _, run_id = member.partition(" ")
    return job_id, run_id
