"""The Redis store's demonstrations and versions: a capped stream per task read by the
learners' consumer group, and the learned versions they publish.

Every key here carries the task as its hash tag in cluster mode (``RedisStore.tk``): the
append-once script touches the stream and its seen-marker together, and a version's blob and
the ``latest`` pointer move together, so they must live in one slot."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError, SlotNotCoveredError

from cascade.store.base import LeaseLostError
from cascade.store.redis_base import RedisBase, node_url

log = logging.getLogger(__name__)

GROUP = "learners"

#: How long an appended demonstration is remembered as added (the window in which the outbox
#: may retry one whose first attempt timed out after Redis had served it: an outage's length).
DEMO_SEEN_TTL_S = 86_400

#: On a cluster, how long an append waits for a replica to confirm it, and how often a master's
#: replica count is looked up again.
REPLICA_WAIT_MS = 100
REPLICA_RECHECK_S = 5.0

#: Append a demonstration unless it was appended before. The seen path writes too (the
#: marker's TTL): on a cluster, the WAIT that follows then covers the first append as well,
#: whichever connection made it (a replica applies the master's writes in order).
_APPEND_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then
  return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'd', ARGV[1])
end
redis.call('EXPIRE', KEYS[2], ARGV[3])
return false
"""

#: Store a version and point ``latest`` at it (never back: a slower publisher of an older
#: number loses), dropping the one ``keep`` behind, atomically in one slot; refused when the
#: publisher (ARGV[4], if any) no longer holds the task's lease (KEYS[4]).
_PUT_VERSION = """
if ARGV[4] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[4] then
  return redis.error_reply('LEASELOST the learner lost the task lease')
end
redis.call('SET', KEYS[1], ARGV[1])
local latest = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) > latest then
  redis.call('SET', KEYS[2], ARGV[2])
end
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[3])
end
return 1
"""


#: Renew the lease if it is still ARGV[3]; or, without a token, take it if free (or held by
#: an earlier process of the same name) under a new epoch. PX: milliseconds.
_LEASE = """
local cur = redis.call('GET', KEYS[1])
if ARGV[3] ~= '' then
  if cur == ARGV[3] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return cur
  end
  return false
end
if (not cur) or string.sub(cur, 1, #ARGV[1] + 1) == ARGV[1] .. '#' then
  local token = ARGV[1] .. '#' .. redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
  return token
end
return false
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class NotReplicatedError(RedisError):
    """A master took a demonstration but no replica confirmed it in time: retried."""


def _id_tuple(i: str) -> tuple[int, int]:
    ms, _, seq = i.partition("-")
    return int(ms), int(seq or 0)


class RedisDemos(RedisBase):
    """Demonstrations and versions, on ``RedisBase``'s clients, keys and outbox."""

    @property
    def demos_dropped(self) -> int:
        return self._outbox.dropped

    @property
    def demos_buffered(self) -> int:
        return len(self._outbox)

    def _demo_keys(self, task: str, data: str) -> list[str]:
        digest = hashlib.sha256(data.encode()).hexdigest()[:32]
        return [self.tk("demos", task), self.tk("demoseen", task, digest)]

    async def _xadd_demo(self, task: str, data: str, client: aioredis.Redis | None = None) -> None:
        """Append once: the script adds the entry only if this exact demonstration (it carries
        its request id and a timestamp) was not added before, so a retry after a timeout that
        Redis had in fact served (the outbox flushing it later) cannot write it twice."""
        keys = self._demo_keys(task, data)
        if self.cluster:
            await self._xadd_replicated(keys, data, client or self.slow)
            return
        await (client or self.slow).eval(
            _APPEND_ONCE, 2, *keys, data, self.demo_maxlen, DEMO_SEEN_TTL_S
        )

    async def _xadd_replicated(self, keys: list[str], data: str, cluster: Any) -> None:
        """On a cluster: append on the slot's master and WAIT, on the same connection, until
        a replica has it too. Replication is asynchronous: a master killed right after it
        acknowledged a write takes the write with it when its replica is promoted. A write no
        replica confirmed raises, so the outbox keeps it and retries (a no-op where it did
        survive: the seen-marker travels with the entry). A master with no replica is only
        appended to: there is nothing to wait for."""
        try:
            node = cluster.get_node_from_key(keys[0])
        except SlotNotCoveredError:  # no command has gone through this client yet
            await cluster.initialize()
            node = cluster.get_node_from_key(keys[0])
        client = self._node_client(node.host, node.port, cluster is self.fast)
        try:
            replicas = await self._replica_count(node.name, client)
            async with client.pipeline(transaction=False) as pipe:
                pipe.eval(_APPEND_ONCE, 2, *keys, data, self.demo_maxlen, DEMO_SEEN_TTL_S)
                if replicas:
                    pipe.execute_command("WAIT", 1, REPLICA_WAIT_MS)
                res = await pipe.execute()
        except (RedisError, OSError):
            # a moved slot (failover, resharding) or a dead master: refresh the cluster's
            # map so the outbox's retry goes to the slot's new master
            with contextlib.suppress(Exception):
                await cluster.nodes_manager.initialize()
            raise
        if replicas and int(res[1]) < 1:
            raise NotReplicatedError(f"no replica of {node.name} confirmed a demonstration")

    def _node_client(self, host: str, port: int, fast: bool) -> aioredis.Redis:
        key = (host, port, fast)
        if key not in self._nodes:
            connect = self.socket_timeout_s if fast else 1.0
            self._nodes[key] = aioredis.Redis.from_url(
                node_url(self.url, host, port),
                socket_timeout=connect + REPLICA_WAIT_MS / 1000 if fast else 10.0,
                socket_connect_timeout=connect,
            )
        return self._nodes[key]

    async def _replica_count(self, name: str, client: aioredis.Redis) -> int:
        """Connected replicas of a master (ROLE), remembered for a few seconds."""
        now = time.monotonic()
        seen = self._replicas.get(name)
        if seen is None or now - seen[1] > REPLICA_RECHECK_S:
            role = await client.execute_command("ROLE")
            count = len(role[2]) if role and role[0] in (b"master", "master") else 0
            seen = self._replicas[name] = (count, now)
        return seen[0]

    async def append_demo(self, task: str, demo: dict[str, Any]) -> None:
        data = json.dumps(demo, ensure_ascii=False, separators=(",", ":"))
        if not self._outbox:
            # the fast client: a stopped Redis costs this request one short timeout, not the
            # slow client's retries; the outbox retries what timed out, at most once in effect
            ok, stored = await self._try_fast(lambda: self._append_fast(task, data))
            if ok and stored:
                return
            log.warning(
                "demonstration buffered: %s",
                "Redis unavailable" if not ok else "no replica confirmed it",
            )
        self._outbox.push(task, data)
        await asyncio.to_thread(self._outbox.save)

    async def _append_fast(self, task: str, data: str) -> bool:
        """False where the master took it but no replica confirmed it: a lagging replica is
        no outage, so it must not open the hot path's breaker (the cache would go unread)."""
        try:
            await self._xadd_demo(task, data, self.fast)
        except NotReplicatedError:
            return False
        return True

    async def _flush_outbox(self) -> None:
        sent = 0
        while self._outbox:
            try:
                await self._xadd_demo(*self._outbox.peek())
            except (RedisError, OSError):
                self.errors += 1
                break
            self._outbox.pop()
            sent += 1
        if sent:
            log.info("flushed %d buffered demonstrations to Redis", sent)
            await asyncio.to_thread(self._outbox.save)

    async def _ensure_group(self, task: str) -> None:
        if task in self._groups:
            return
        try:
            await self.slow.xgroup_create(self.tk("demos", task), GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._groups.add(task)

    async def resume_demos(self, task: str, consumer: str, applied_id: str | None) -> None:
        """Take over every pending demonstration (one learner by design), acknowledge those the
        resumed version already holds, and deliver the rest before anything new."""
        await self._ensure_group(task)
        stream = self.tk("demos", task)
        start = "0-0"
        while True:
            res = await self.slow.xautoclaim(
                stream, GROUP, consumer, min_idle_time=0, start_id=start, count=1000
            )
            start = res[0].decode() if isinstance(res[0], bytes) else res[0]
            if start == "0-0":
                break
        if applied_id:
            done = []
            for entry in await self.slow.xpending_range(
                stream, GROUP, "-", "+", 1_000_000, consumername=consumer
            ):
                mid = entry["message_id"]
                mid = mid.decode() if isinstance(mid, bytes) else mid
                if _id_tuple(mid) <= _id_tuple(applied_id):
                    done.append(mid)
            for i in range(0, len(done), 1000):
                await self.slow.xack(stream, GROUP, *done[i : i + 1000])
        # consumers left by learners that are gone (each process has its own name) hold
        # nothing now: drop them so the group does not grow with every restart
        for c in await self.slow.xinfo_consumers(stream, GROUP):
            name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
            if name != consumer and int(c.get("pending", 0)) == 0:
                await self.slow.xgroup_delconsumer(stream, GROUP, name)
        self._pending_cursor[task] = "0-0"

    async def read_demos(
        self, task: str, consumer: str, count: int, block_ms: int
    ) -> list[tuple[str, dict[str, Any]]]:
        await self._ensure_group(task)
        stream = self.tk("demos", task)
        cursor = self._pending_cursor.get(task)
        if cursor is not None:
            res = await self.slow.xreadgroup(GROUP, consumer, {stream: cursor}, count=count)
            entries = res[0][1] if res else []
            if entries:
                last = entries[-1][0]
                self._pending_cursor[task] = last.decode() if isinstance(last, bytes) else last
                return await self._decoded(task, entries)
            del self._pending_cursor[task]
        res = await self.slow.xreadgroup(
            GROUP, consumer, {stream: ">"}, count=count, block=block_ms or None
        )
        return await self._decoded(task, res[0][1]) if res else []

    async def _decoded(self, task: str, entries: list[Any]) -> list[tuple[str, dict[str, Any]]]:
        out, gone = _decode_entries(entries)
        if gone:  # trimmed from the stream while pending: nothing left to learn from
            await self.ack_demos(task, gone)
        return out

    async def history(
        self, task: str, after: str | None, upto: str, count: int
    ) -> list[tuple[str, dict[str, Any]]]:
        start = f"({after}" if after else "-"
        entries = await self.slow.xrange(self.tk("demos", task), start, upto, count=count)
        return _decode_entries(entries)[0]

    async def ack_demos(self, task: str, ids: list[str]) -> None:
        stream = self.tk("demos", task)
        for i in range(0, len(ids), 1000):
            await self.slow.xack(stream, GROUP, *ids[i : i + 1000])

    async def demo_lag(self, task: str) -> int:
        stream = self.tk("demos", task)
        try:
            groups = await self.slow.xinfo_groups(stream)
        except ResponseError:
            return 0
        for g in groups:
            if g["name"] in (GROUP, GROUP.encode()):
                lag = g.get("lag") or 0
                return int(g.get("pending", 0)) + int(lag)
        return int(await self.slow.xlen(stream))

    async def put_version(
        self, task: str, blob: bytes, keep: int = 5, owner: str | None = None
    ) -> int:
        number = int(await self.slow.incr(self.tk("ver", task, "seq")))
        try:
            await self.slow.eval(
                _PUT_VERSION,
                4,
                self.tk("ver", task, number),
                self.tk("ver", task, "latest"),
                self.tk("ver", task, number - keep),
                self.tk("lease", task),
                blob,
                number,
                int(number > keep),
                owner or "",
            )
        except ResponseError as e:
            if "LEASELOST" in str(e):
                raise LeaseLostError(f"learner {owner} no longer holds task {task}") from None
            raise
        return number

    # ------------------------------------------------------------------ learner leases

    async def task_lease(
        self, task: str, owner: str, ttl_s: float, token: str | None = None
    ) -> str | None:
        keys = (self.tk("lease", task), self.tk("lease", task, "epoch"))
        got = await self.slow.eval(_LEASE, 2, *keys, owner, int(ttl_s * 1000), token or "")
        return got.decode() if isinstance(got, bytes) else got or None

    async def task_release(self, task: str, token: str) -> None:
        await self.slow.eval(_RELEASE, 1, self.tk("lease", task), token)

    async def task_owner(self, task: str) -> str | None:
        raw = await self.slow.get(self.tk("lease", task))
        return raw.decode().rpartition("#")[0] if raw else None

    async def learners_alive(self, member: str, ttl_s: float) -> int:
        key, now = self.k("learners"), time.time()
        async with self.slow.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {member: now})
            pipe.zremrangebyscore(key, "-inf", now - ttl_s)
            pipe.zcard(key)
            return int((await pipe.execute())[-1])

    async def latest_version(self, task: str) -> int:
        raw = await self.slow.get(self.tk("ver", task, "latest"))
        return int(raw) if raw else 0

    async def get_version(self, task: str, number: int) -> bytes | None:
        raw = await self.slow.get(self.tk("ver", task, number))
        return bytes(raw) if raw is not None else None


def _decode_entries(entries: list[Any]) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    out, gone = [], []
    for mid, fields in entries:
        mid = mid.decode() if isinstance(mid, bytes) else mid
        if not fields:
            gone.append(mid)
            continue
        raw = fields.get(b"d") or fields.get("d")
        out.append((mid, json.loads(raw)))
    return out, gone
