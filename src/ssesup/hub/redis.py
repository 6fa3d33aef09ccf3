"""The hub's Redis Streams engine: history shared by every process and host that uses one Redis.

Owns: one Redis stream per channel (key ``<prefix>ch:<channel>``), the epoch key (``<prefix>epoch``),
each event loop's two clients (a pool of at most ``connections`` for appends and reads, where a call
waits for a free connection, and one connection of its own for the loop's blocking ``XREAD``), and
turning Redis failures into :class:`~ssesup.hub.backend.HubUnavailable`. Does not own fan-out,
mailboxes or back-off (``ssesup.hub``). Needs redis-py (``ssesup[redis]``) and Redis >= 7.0.

* ``append`` is one round trip, a script: ``XADD ... MAXLEN ~ <history_size>``, then ``XTRIM ... MINID ~``
  (the new entry's time less ``history_ttl``, on Redis's clock), then ``PEXPIRE`` to ``history_ttl``:
  a channel nobody publishes to is gone from Redis once its newest event is older than the age bound.
  The entry keeps the id of the entry before it (field ``p``), so a read knows exactly whether events
  after an id were trimmed: they were when the oldest entry left follows another entry than the one
  asked for. The first entry of a new stream keeps the horizon instead (field ``h``, its time less the
  age bound): an earlier stream of the channel, expired, held only positions before it. A read of a
  channel with no stream answers the same from Redis's time: an id before the horizon may have lost
  events (``expired``), one after Redis's time was never given (``unknown``). The stream entry id
  (``ms-seq``) is the position. Appends are never retried: a publish that fails raises, and one that
  was acknowledged was stored once.
* ``read`` is ``XRANGE`` after the position (exclusive), with the oldest and newest entries, in one
  round trip. ``append`` also notes the channel in the log of changes (``<prefix>changes``, one stream,
  about CHANGES_KEPT entries); ``wait`` is ``XREAD BLOCK`` over that log and a wake-up key of the loop's
  own (``<prefix>wake:<token>``), then ``XREAD`` of the channels it named that the loop follows: a
  publish costs each loop's reader what it finds, not every channel the loop follows (1,000 streams of
  16 channels each made every read cover 16,000 keys). A small entry (fields up to CARRIED_MAX bytes)
  is carried by the log itself, so the reader takes it from there, in the same round trip: it reads a
  channel only for big entries, channels followed since its last read, and a channel whose carried
  entries do not follow on from the reader's cursor (each entry names the one before it).
* Presence: each event loop (a member) has a hash per channel it has streams on
  (``<prefix>presence:<member>:<channel>``: user -> open streams) and the set of those channels
  (``<prefix>presence:<member>``); one sorted set holds the members by the time their TTL runs out
  (``<prefix>presence:members``). A write is one script: HSET and HDEL of the (channel, user) pairs that
  changed, and the member's time in the sorted set (the heartbeat: one key, whatever the member's
  channels). A read is one script too: the channel's hash of each member whose time has not passed, so it
  costs the members and the channel's users. A member whose time passed is ignored, and its records are
  deleted by whichever call finds it, PRESENCE_SWEEP per call; every record also expires PRESENCE_KEPT
  after its last write, refreshed by its member every PRESENCE_REFRESH (``ssesup.hub.presence``).
* The epoch is a random token kept in Redis: a flushed Redis (or a new one) has another, so ids from
  before are refused with a gap. Deleting one channel's key by hand is not noticed.
* A run's record is a hash, ``<prefix>run:<channel>`` (status, the running process's token, where the run
  starts, its bounds, the bytes its stream holds, its end), made with the run's start only where no
  active one is (one script: one winner across processes). ``append`` reads it: a run's stream is
  trimmed by the run's bounds (exactly, oldest first, by count and by the bytes of its events' fields),
  never by age, and expires ``ttl`` after its newest event once the run ended. While it is active the
  record expires after RUN_LEASE unless the running process renews it (``renew_runs``, every few
  seconds), so a process that died without a drain leaves no active run behind for longer; the stream
  then expires ``ttl`` after that. A run's end is an entry with the field ``x`` (its status).
* Every call has a deadline of ssesup's own (``anyio.fail_after``), not redis-py's ``socket_timeout``:
  with a socket timeout, redis-py writes each command through ``asyncio.wait_for``, which before Python
  3.12 swallows a cancellation that arrives as the write completes. A publish or a join then returned
  as if never cancelled, and a reader cancelled at loop teardown kept reading, so ``asyncio.run`` never
  returned. An anyio deadline is level-triggered: it is delivered until the call has ended.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
from anyio.lowlevel import RunVar

from ssesup.events import Event
from ssesup.hub.backend import Backend, Entry, History, HubUnavailable, RunBounds, RunEnd, RunRecord
from ssesup.hub.ids import MAX_PART, Position

_T = TypeVar("_T")

# Entries one XREAD takes per channel; more are read by the next call.
READ_COUNT = 1000
# Channels one XREAD reads at most (a read of every channel a loop follows is split in calls of this many).
READ_KEYS = 1000
# Seconds a call may take (a blocking XREAD: its block time and this) before Redis counts as unreachable.
CALL_TIMEOUT = 5.0
CONNECT_TIMEOUT = 2.0
# Connections of each event loop's pool (publishes, joins, history reads): a call that finds them all
# busy waits for one, within its deadline. The loop's reader has one more of its own.
CONNECTIONS = 16
# Entries the log of changes keeps (about: MAXLEN ~). A reader behind it by more reads every channel.
CHANGES_KEPT = 10_000
# Bytes of an entry's fields up to which the log of changes carries the entry itself (its id ``i`` and
# its fields, upper-cased): a reader then needs no second read for it. The log holds at most about
# CHANGES_KEPT of them (20 MiB at this size); bigger entries are read from their channel.
CARRIED_MAX = 2048
# Seconds a loop's reader lets pass between blocking reads that find something: under a steady flow of
# publishes each read then takes what a few milliseconds brought, instead of one round trip per event.
# An event that arrives after a quiet spell is read at once.
GATHER = 0.005
LAST_POSITION = (MAX_PART, MAX_PART)  # the largest stream id
# Seconds an active run's record lives unless the running process renews it (it does every third of it).
RUN_LEASE = 15.0


class RunLost(RuntimeError):
    """A run's record is another run's now (this one's lapsed: its process could not renew it)."""


# KEYS[1]: the channel's stream, KEYS[2]: the log of changes, KEYS[3]: the channel's run record; ARGV:
# history_size, history_ttl in ms, the channel's name, a run's token and status (the run's end; else
# empty), the event's fields. The entry keeps the id of the one before it (p); the first entry of a
# stream that did not exist also keeps the horizon (h): every position before it may have been in an
# earlier stream of the channel, expired. A run's end also has its status (x). On a run's channel the
# run's bounds apply (see the module's docstring); a run's end on a channel another run has now is not
# written (nil). The log gets the channel's name (c), the id of the log's entry before (p: a reader
# that finds another one than its cursor missed some) and, when the entry is small, the entry itself
# (its id i, its fields upper-cased: P is the id of the channel's entry before it).
_APPEND_SOURCE = """
local function size(flat)
  local n = 0
  for i = 1, #flat, 2 do
    local k = flat[i]
    if k == 'd' or k == 'e' or k == 'c' or k == 'r' then n = n + #flat[i + 1] end
  end
  return n
end
local run = redis.call('HMGET', KEYS[3], 'status', 'token', 'max_events', 'max_bytes', 'ttl', 'lease')
local ending = ARGV[4] ~= ''
if ending and run[1] and run[2] ~= ARGV[4] then return false end
local previous = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local fields
if previous[1] then
  fields = {'p', previous[1][1]}
else
  local t = redis.call('TIME')
  local horizon = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[2])
  fields = {'p', '0-0', 'h', string.format('%d-0', horizon)}
end
if ending then
  table.insert(fields, 'x')
  table.insert(fields, ARGV[5])
end
for i = 6, #ARGV do table.insert(fields, ARGV[i]) end
local id
if run[1] then
  id = redis.call('XADD', KEYS[1], '*', unpack(fields))
  local bytes = redis.call('HINCRBY', KEYS[3], 'bytes', size(fields))
  local length = redis.call('XLEN', KEYS[1])
  local max_events, max_bytes = tonumber(run[3]), tonumber(run[4])
  while length > 1 and (length > max_events or bytes > max_bytes) do
    local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 2)
    redis.call('XTRIM', KEYS[1], 'MINID', oldest[2][1])
    bytes = redis.call('HINCRBY', KEYS[3], 'bytes', -size(oldest[1][2]))
    length = length - 1
  end
  local status = run[1]
  if ending and status == 'active' then
    redis.call('HSET', KEYS[3], 'status', ARGV[5], 'end', id)
    status = ARGV[5]
  end
  if status == 'active' then
    redis.call('PEXPIRE', KEYS[1], tonumber(run[5]) + tonumber(run[6]))
  else
    redis.call('PEXPIRE', KEYS[1], run[5])
    redis.call('PEXPIRE', KEYS[3], run[5])
  end
else
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
  local ms = tonumber(string.match(id, '^(%d+)'))
  redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d', ms - tonumber(ARGV[2])))
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local logged = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local before = '0-0'
if logged[1] then before = logged[1][1] end
local noted = {'c', ARGV[3], 'p', before}
local carried = 0
for i = 2, #fields, 2 do carried = carried + #fields[i] end
if carried <= CARRIED_MAX then
  table.insert(noted, 'i')
  table.insert(noted, id)
  for i = 1, #fields do
    if i % 2 == 1 then table.insert(noted, string.upper(fields[i])) else table.insert(noted, fields[i]) end
  end
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', CHANGES_KEPT, '*', unpack(noted))
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return id
"""

_APPEND = _APPEND_SOURCE.replace("CHANGES_KEPT", str(CHANGES_KEPT)).replace("CARRIED_MAX", str(CARRIED_MAX))

# KEYS[1]: the channel's stream. Its last entry's id, or, when it has none, a position before every id
# it will give (Redis's time less a millisecond): read and decided in one step.
_LAST = """
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if newest[1] then return newest[1][1] end
local t = redis.call('TIME')
return string.format('%d-0', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - 1)
"""

# Presence. A member's records are kept this long past their last write or refresh (a safety net: a
# member whose TTL ran out is removed by whoever finds it, PRESENCE_SWEEP records per call), and each
# live member refreshes them every PRESENCE_REFRESH (one heartbeat in so many; the others touch no record).
PRESENCE_KEPT = 3600.0
PRESENCE_REFRESH = 1200.0
PRESENCE_SWEEP = 1000
# (channel, user) pairs one script writes at most: a member's whole state goes in calls of this many.
PRESENCE_PAIRS_PER_CALL = 10_000
# Fields one HSET or HDEL of a script takes at most (Lua's unpack is bounded).
_PRESENCE_UNPACK = 1000

# The members whose TTL passed (their time <= now in KEYS[1]) lose up to PRESENCE_SWEEP records, from
# their own set of the channels they have records of; a member with none left leaves the sorted set.
_PRESENCE_SWEEP_SOURCE = """
local function sweep(members, prefix, now)
  local budget = PRESENCE_SWEEP
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', members, '-inf', now, 'LIMIT', 0, 16)) do
    local index = prefix .. gone
    local channels = redis.call('SPOP', index, budget)
    for _, channel in ipairs(channels) do redis.call('DEL', index .. ':' .. channel) end
    budget = budget - #channels
    if redis.call('EXISTS', index) == 0 then redis.call('ZREM', members, gone) end
    if budget <= 0 then return end
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1]: the sorted set of members by the time (ms, Redis's clock) their TTL runs out. ARGV: the prefix
# of members' keys, the member, the TTL in ms, PRESENCE_KEPT in ms, flags ('r': replace the member's
# records, 'k': refresh their safety expiry), then per channel: its name, n, and n pairs of user and open
# streams ('0': the pair is gone). A member's records: a hash per channel (``<prefix><member>:<channel>``,
# user -> open streams) and the set of those channels (``<prefix><member>``). Without 'r', a member whose
# TTL ran out (or that is not in the set) is not written: 0.
_PRESENCE_WRITE = (
    _PRESENCE_SWEEP_SOURCE
    + """
local members, prefix, member, kept = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[4])
local index = prefix .. member
local base = index .. ':'
if string.find(ARGV[5], 'r', 1, true) then
  for _, channel in ipairs(redis.call('SMEMBERS', index)) do redis.call('DEL', base .. channel) end
  redis.call('DEL', index)
else
  local expires = redis.call('ZSCORE', members, member)
  if not expires or tonumber(expires) <= now then return 0 end
end
local i = 6
while i <= #ARGV do
  local channel, n = ARGV[i], tonumber(ARGV[i + 1])
  local key = base .. channel
  local set, gone = {}, {}
  for j = i + 2, i + 2 * n, 2 do
    if ARGV[j + 1] == '0' then gone[#gone + 1] = ARGV[j] else set[#set + 1] = ARGV[j]; set[#set + 1] = ARGV[j + 1] end
    if #set >= UNPACK then redis.call('HSET', key, unpack(set)); set = {} end
    if #gone >= UNPACK then redis.call('HDEL', key, unpack(gone)); gone = {} end
  end
  if #set > 0 then redis.call('HSET', key, unpack(set)) end
  if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
  if redis.call('EXISTS', key) == 1 then
    redis.call('PEXPIRE', key, kept)
    redis.call('SADD', index, channel)
  else
    redis.call('SREM', index, channel)
  end
  i = i + 2 + 2 * n
end
if string.find(ARGV[5], 'k', 1, true) then
  for _, channel in ipairs(redis.call('SMEMBERS', index)) do redis.call('PEXPIRE', base .. channel, kept) end
end
redis.call('PEXPIRE', index, kept)
redis.call('ZADD', members, now + tonumber(ARGV[3]), member)
redis.call('PEXPIRE', members, kept)
sweep(members, prefix, now)
return 1
"""
)

# KEYS[1]: the sorted set of members. ARGV: the prefix of members' keys, the channel. The channel's hash
# of every member whose TTL has not run out (keys are named from the set: the hub runs on one Redis, not
# a cluster), each as a JSON array of user and open streams, alternately (one string to parse, not a
# reply of two per user): the members and the channel's users, not every record.
_PRESENCE_READ = (
    _PRESENCE_SWEEP_SOURCE
    + """
sweep(KEYS[1], ARGV[1], now)
local found = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], string.format('(%d', now), '+inf')) do
  local record = redis.call('HGETALL', ARGV[1] .. member .. ':' .. ARGV[2])
  if record[1] then found[#found + 1] = cjson.encode(record) end
end
return found
"""
)

# KEYS[1]: the sorted set of members. ARGV: the prefix of members' keys, the member. Every record of it.
_PRESENCE_LEAVE = """
local index = ARGV[1] .. ARGV[2]
for _, channel in ipairs(redis.call('SMEMBERS', index)) do redis.call('DEL', index .. ':' .. channel) end
redis.call('DEL', index)
redis.call('ZREM', KEYS[1], ARGV[2])
return 1
"""


def _presence_script(source: str) -> str:
    return source.replace("PRESENCE_SWEEP", str(PRESENCE_SWEEP)).replace("UNPACK", str(_PRESENCE_UNPACK))


# KEYS[1]: the run's record, KEYS[2]: the channel's stream; ARGV: the run's token, max_events,
# max_bytes, ttl in ms, lease in ms. Nil when a run is active on the channel; else the record of the
# new one, and the position every event of the run follows (the stream's last id, or Redis's time
# less a millisecond). What the stream holds already is kept within the run's count, and its bytes
# count against the run's bound.
_START_RUN = """
if redis.call('HGET', KEYS[1], 'status') == 'active' then return false end
local bytes = 0
redis.call('XTRIM', KEYS[2], 'MAXLEN', ARGV[2])
local held = redis.call('XRANGE', KEYS[2], '-', '+')
for _, entry in ipairs(held) do
  local flat = entry[2]
  for i = 1, #flat, 2 do
    local k = flat[i]
    if k == 'd' or k == 'e' or k == 'c' or k == 'r' then bytes = bytes + #flat[i + 1] end
  end
end
local start
if held[#held] then
  start = held[#held][1]
else
  local t = redis.call('TIME')
  start = string.format('%d-0', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - 1)
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'status', 'active', 'token', ARGV[1], 'start', start, 'max_events', ARGV[2],
  'max_bytes', ARGV[3], 'ttl', ARGV[4], 'lease', ARGV[5], 'bytes', bytes)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if held[1] then redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]) + tonumber(ARGV[5])) end
return start
"""

# KEYS: each run's record and stream, in pairs; ARGV: each run's token. Renews the records (and keeps
# the streams) of the runs still active under these tokens; returns the indexes (from 1) of the others.
_RENEW_RUNS = """
local lost = {}
for i = 1, #ARGV do
  local record, stream = KEYS[2 * i - 1], KEYS[2 * i]
  local run = redis.call('HMGET', record, 'status', 'token', 'ttl', 'lease')
  if run[1] == 'active' and run[2] == ARGV[i] then
    redis.call('PEXPIRE', record, run[4])
    redis.call('PEXPIRE', stream, tonumber(run[3]) + tonumber(run[4]))
  else
    table.insert(lost, i)
  end
end
return lost
"""

# KEYS[1]: the channel's stream, KEYS[2]: its run record. _LAST's answer and the record's status, start
# and end, read in one step.
_LAST_RUN = (
    "local last = (function()"
    + _LAST
    + "end)()\nlocal run = redis.call('HMGET', KEYS[2], 'status', 'start', 'end')\n"
    + "return {last, run[1], run[2], run[3]}\n"
)

_FIELDS = ((b"d", "data"), (b"e", "event"), (b"c", "comment"))


def _redis() -> Any:
    try:
        import redis.asyncio
        import redis.exceptions
    except ImportError:
        raise ImportError("Hub('redis://...') needs redis-py: pip install 'ssesup[redis]'") from None
    return redis


def redis_id(position: Position) -> str:
    return f"{position[0]}-{position[1]}"


def parse_redis_id(raw: bytes | str) -> Position:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _fields(event: Event) -> list[str]:
    flat = []
    for key, name in _FIELDS:
        value = getattr(event, name)
        if value is not None:
            flat += [key.decode(), value]
    if event.retry is not None:
        flat += ["r", str(event.retry)]
    return flat


def _entry(raw_id: bytes, fields: Mapping[bytes, bytes], previous: Position | None = None) -> Entry:
    """The entry of a stream's entry: a run's end (field ``x``) or an event."""
    kind = RunEnd if b"x" in fields else Entry
    return kind(parse_redis_id(raw_id), _event(fields), previous)


def _record(status: bytes | None, start: bytes | None, end: bytes | None) -> RunRecord | None:
    """A run's record from its hash's fields (``None``: no record)."""
    if not status or not start:
        return None
    return RunRecord(status.decode(), parse_redis_id(start), None if not end else parse_redis_id(end))


def _event(fields: Mapping[bytes, bytes]) -> Event:
    values = {name: fields[key].decode() for key, name in _FIELDS if key in fields}
    retry = fields.get(b"r")
    return Event(
        values.get("data"),
        event=values.get("event"),
        comment=values.get("comment"),
        retry=None if retry is None else int(retry),
    )


def _carried_fields(fields: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
    """The fields of a channel's entry carried by the log of changes (upper-cased there)."""
    return {key.lower(): value for key, value in fields.items() if key.isupper()}


def _follows_on(
    cursors: Mapping[str, Position], carried: list[tuple[str, Entry]]
) -> tuple[list[tuple[str, Entry]], set[str]]:
    """The ``carried`` entries (in the log's order) that follow the cursors, and the channels to read
    instead: those with an entry that does not follow the one before it (its ``previous``), whose
    entries the log did not all carry to this reader (it followed the channel since)."""
    expected: dict[str, Position] = {}
    broken: set[str] = set()
    kept = []
    for item in carried:
        channel, entry = item
        if channel in broken:
            continue
        last = expected.get(channel) or cursors[channel]
        if entry.position <= last:
            continue
        if entry.previous != last:
            broken.add(channel)
            continue
        expected[channel] = entry.position
        kept.append(item)
    return [item for item in kept if item[0] not in broken], broken


class _LoopClients:
    """One event loop's clients: redis-py's asyncio connections belong to the loop that made them. The
    pool holds at most ``connections``; a call that finds them all busy waits for one (under its
    deadline), where redis-py's own pool raises ``MaxConnectionsError``."""

    def __init__(self, url: str, connections: int) -> None:
        redis = _redis()
        no_retry = redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0)
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=connections, timeout=None, retry=no_retry
        )
        self.pool = redis.asyncio.Redis.from_pool(pool)
        self.reader = redis.asyncio.Redis.from_url(url, retry=no_retry, single_connection_client=True)
        for client in (self.pool, self.reader):
            # Set on the pool the connections are made from (lazily), where a URL's ``?socket_timeout=``
            # cannot win over it: no socket timeout (redis-py's default is 5 s); the deadlines are
            # RedisBackend._run's (see the module's docstring).
            client.connection_pool.connection_kwargs.update(socket_timeout=None, socket_connect_timeout=CONNECT_TIMEOUT)
        self.append = self.pool.register_script(_APPEND)
        self.last = self.pool.register_script(_LAST)
        self.presence_write = self.pool.register_script(_presence_script(_PRESENCE_WRITE))
        self.presence_read = self.pool.register_script(_presence_script(_PRESENCE_READ))
        self.presence_leave = self.pool.register_script(_PRESENCE_LEAVE)
        # When each presence member of the loop last refreshed its records' safety expiry.
        self.presence_refreshed: dict[str, float] = {}
        self.start_run = self.pool.register_script(_START_RUN)
        self.last_run = self.pool.register_script(_LAST_RUN)
        self.renew_runs = self.pool.register_script(_RENEW_RUNS)
        self.wake_key = ""
        self.wake_cursor = "0-0"
        # The reader's place in the log of changes (None: not read yet, or lost: read every channel).
        self.changes_cursor: str | None = None
        # Channels followed since the reader's last read (read at its next, whatever the log says).
        self.fresh: set[str] = set()
        self.looks = 0  # the reader's calls of wait, and the answers of its blocking reads
        self.answered = float("-inf")  # when the reader's last blocking read found something (loop clock)
        self.everything = False  # more were followed than ``fresh`` keeps: the next read reads every channel


class RedisBackend(Backend):
    """History in Redis Streams at ``url``: about ``history_size`` events per channel (``MAXLEN ~``),
    trimmed past ``history_ttl`` seconds (``MINID ~``)."""

    name = "redis"

    def __init__(
        self,
        url: str,
        history_size: int,
        history_ttl: float,
        *,
        prefix: str = "ssesup:",
        connections: int = CONNECTIONS,
    ) -> None:
        self._errors = _redis().exceptions
        self.url = url
        self.connections = connections
        self.history_size = history_size
        self.history_ttl_ms = int(history_ttl * 1000)
        self.prefix = prefix
        self._stream_prefix = f"{prefix}ch:"
        self._epoch_key = f"{prefix}epoch"
        self._changes_key = f"{prefix}changes"
        self._members_key = f"{prefix}presence:members"
        self._member_prefix = f"{prefix}presence:"
        self._run_prefix = f"{prefix}run:"
        self.run_lease: float = RUN_LEASE
        self._where = _where(url)
        self._clients: RunVar[_LoopClients | None] = RunVar(f"ssesup.hub.redis.{id(self)}", default=None)

    def _loop(self) -> _LoopClients:
        clients = self._clients.get()
        if clients is None:
            clients = _LoopClients(self.url, self.connections)
            clients.wake_key = f"{self.prefix}wake:{secrets.token_hex(8)}"
            self._clients.set(clients)
        return clients

    def _unavailable(self, exc: BaseException) -> HubUnavailable:
        return HubUnavailable(f"the hub's Redis at {self._where} is unreachable: {exc.__class__.__name__}: {exc}")

    def _key(self, channel: str) -> str:
        return self._stream_prefix + channel

    async def _run(self, fn: Callable[[], Awaitable[_T]], timeout: float = CALL_TIMEOUT) -> _T:
        errors = self._errors
        try:
            with anyio.fail_after(timeout):  # TimeoutError, an OSError, when it passes
                return await fn()
        except (errors.ConnectionError, errors.TimeoutError, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def epoch(self) -> str:
        clients = self._loop()

        async def fetch() -> bytes:
            async with clients.pool.pipeline(transaction=False) as pipe:
                pipe.set(self._epoch_key, secrets.token_hex(6), nx=True)
                pipe.get(self._epoch_key)
                results: list[bytes] = await pipe.execute()
                return results[1]

        return (await self._run(fetch)).decode()

    async def append(self, channel: str, event: Event) -> Position:
        clients = self._loop()
        args = [self.history_size, self.history_ttl_ms, channel, "", "", *_fields(event)]
        keys = [self._key(channel), self._changes_key, self._run_key(channel)]
        return parse_redis_id(await self._run(lambda: clients.append(keys=keys, args=args)))

    # -- runs ----------------------------------------------------------------------------------------

    def _run_key(self, channel: str) -> str:
        return self._run_prefix + channel

    async def start_run(self, channel: str, token: str, bounds: RunBounds) -> Position | None:
        clients = self._loop()
        keys = [self._run_key(channel), self._key(channel)]
        args = [token, bounds.max_events, bounds.max_bytes, int(bounds.ttl * 1000), int(self.run_lease * 1000)]
        start = await self._run(lambda: clients.start_run(keys=keys, args=args))
        return None if start is None else parse_redis_id(start)

    async def end_run(self, channel: str, token: str, status: str, event: Event) -> Position:
        clients = self._loop()
        args = [self.history_size, self.history_ttl_ms, channel, token, status, *_fields(event)]
        keys = [self._key(channel), self._changes_key, self._run_key(channel)]
        written = await self._run(lambda: clients.append(keys=keys, args=args))
        if written is None:
            raise RunLost(f"the channel {channel!r} has another run now: this run's end was not written")
        return parse_redis_id(written)

    async def runs(self, channels: Sequence[str]) -> list[RunRecord | None]:
        clients = self._loop()

        async def fetch() -> list[list[bytes | None]]:
            async with clients.pool.pipeline(transaction=False) as pipe:
                for channel in channels:
                    pipe.hmget(self._run_key(channel), "status", "start", "end")
                results: list[list[bytes | None]] = await pipe.execute()
                return results

        return [_record(status, start, end) for status, start, end in await self._run(fetch)]

    async def last_run(self, channel: str) -> tuple[Position, RunRecord | None]:
        clients = self._loop()
        keys = [self._key(channel), self._run_key(channel)]
        last, status, start, end = await self._run(lambda: clients.last_run(keys=keys))
        return parse_redis_id(last), _record(status, start, end)

    async def renew_runs(self, tokens: Mapping[str, str]) -> list[str]:
        if not tokens:
            return []
        clients = self._loop()
        channels = list(tokens)
        keys = [key for channel in channels for key in (self._run_key(channel), self._key(channel))]
        args = [tokens[channel] for channel in channels]
        lost = await self._run(lambda: clients.renew_runs(keys=keys, args=args))
        return [channels[int(index) - 1] for index in lost]

    async def read(self, channel: str, after: Position, limit: int) -> History:
        clients = self._loop()
        key = self._key(channel)

        async def fetch() -> list[Any]:
            async with clients.pool.pipeline(transaction=False) as pipe:
                pipe.time()
                pipe.xrange(key, "-", "+", count=1)
                pipe.xrevrange(key, "+", "-", count=1)
                if after != LAST_POSITION:  # nothing follows the largest id (and Redis refuses "(" before it)
                    pipe.xrange(key, f"({redis_id(after)}", "+", count=limit)
                results: list[Any] = await pipe.execute()
                return results

        (seconds, micros), oldest, newest, *found = await self._run(fetch)
        if not newest:
            # No stream (it expired, or never was): events up to the horizon may have been; none since.
            now_ms = seconds * 1000 + micros // 1000
            horizon = (max(0, now_ms - self.history_ttl_ms), 0)
            return History([], after < horizon, (now_ms, MAX_PART), horizon)
        fields = oldest[0][1]
        floor = parse_redis_id(fields[b"h"] if b"h" in fields else fields[b"p"])
        entries = [_entry(raw_id, fields) for raw_id, fields in (found[0] if found else [])]
        newest_id, newest_fields = newest[0]
        ended = _entry(newest_id, newest_fields) if b"x" in newest_fields else None
        return History(entries, floor > after, parse_redis_id(newest_id), floor, ended)

    async def last(self, channel: str) -> Position:
        clients = self._loop()
        return parse_redis_id(await self._run(lambda: clients.last(keys=[self._key(channel)])))

    async def wait(self, cursors: Mapping[str, Position], timeout: float) -> list[tuple[str, Entry]]:
        """What follows the cursors, from the channels that changed: the loop's reader blocks on the log
        of changes (one stream that every append notes its channel in) and its wake-up key, then reads
        the channels it follows that the log named, and those followed since its last call. Every
        channel is read only on the first call, after a failure, or when the log was trimmed past the
        reader's place in it. So a publish costs the reader what it finds, not the channels it follows."""
        clients = self._loop()
        clients.looks += 1  # (and again once its read answers: see looks)
        try:
            if clients.changes_cursor is None:
                # Where the log is now first, then every channel: what is appended after that, the log names.
                newest = await self._run(lambda: clients.reader.xrevrange(self._changes_key, "+", "-", count=1))
                clients.changes_cursor = newest[0][0].decode() if newest else "0-0"
                clients.fresh.clear()
                clients.everything = False
                found = await self._read_channels(clients, cursors, list(cursors))
                if found:
                    return found
            since = anyio.current_time() - clients.answered
            if since < GATHER:  # busy: what comes meanwhile is taken in the same read
                await anyio.sleep(GATHER - since)
            streams = {self._changes_key: clients.changes_cursor, clients.wake_key: clients.wake_cursor}
            answer = await self._run(
                lambda: clients.reader.xread(streams, count=READ_COUNT, block=max(1, int(timeout * 1000))),
                timeout + CALL_TIMEOUT,
            )
            clients.looks += 1
            if answer:
                clients.answered = anyio.current_time()
            changed, clients.fresh = clients.fresh, set()
            everything, clients.everything = clients.everything, False
            carried: list[tuple[str, Entry]] = []
            for raw_key, items in answer.items() if isinstance(answer, dict) else answer:
                if raw_key.decode() == clients.wake_key:
                    clients.wake_cursor = items[-1][0].decode()
                    continue
                before = items[0][1].get(b"p")
                if before is not None and parse_redis_id(before) > parse_redis_id(clients.changes_cursor):
                    everything = True  # the log was trimmed past the reader's place: what it dropped is unknown
                for _, fields in items:
                    channel = fields[b"c"].decode()
                    if channel not in cursors or channel in changed:
                        continue
                    if b"i" in fields:
                        entry = _carried_fields(fields)
                        item = (channel, _entry(fields[b"i"], entry, parse_redis_id(entry[b"p"])))
                        carried.append(item)
                    else:
                        changed.add(channel)  # too big to be carried: read from its channel
                clients.changes_cursor = items[-1][0].decode()
            if everything:
                return await self._read_channels(clients, cursors, list(cursors))
            found, broken = _follows_on(cursors, carried)
            changed |= broken
            if changed:  # (what a read of the channel gives, it gives whole)
                found = [item for item in found if item[0] not in changed]
            channels = [channel for channel in changed if channel in cursors]
            if channels:
                found += await self._read_channels(clients, cursors, channels)
            return found
        except HubUnavailable:
            clients.changes_cursor = None  # back, the reader reads every channel once
            raise

    async def _read_channels(
        self, clients: _LoopClients, cursors: Mapping[str, Position], channels: list[str]
    ) -> list[tuple[str, Entry]]:
        """The entries after the cursors of ``channels`` (up to READ_COUNT each), without blocking."""
        entries: list[tuple[str, Entry]] = []
        skip = len(self._stream_prefix)
        for start in range(0, len(channels), READ_KEYS):
            streams = {
                self._key(channel): redis_id(cursor)
                for channel in channels[start : start + READ_KEYS]
                if (cursor := cursors.get(channel)) is not None  # (one may have left meanwhile)
            }
            found = await self._run(partial(clients.reader.xread, streams, count=READ_COUNT))
            for raw_key, items in found.items() if isinstance(found, dict) else found:
                channel = raw_key.decode()[skip:]
                entries.extend(
                    (channel, _entry(raw_id, fields, parse_redis_id(fields[b"p"]))) for raw_id, fields in items
                )
        return entries

    def looks(self) -> int | None:
        return self._loop().looks

    def followed(self, channel: str) -> None:
        clients = self._loop()
        if len(clients.fresh) < READ_KEYS:
            clients.fresh.add(channel)
        else:  # many joins before the reader's next read: it reads every channel then (bounded memory)
            clients.fresh.clear()
            clients.everything = True

    async def wake(self) -> None:
        clients = self._loop()

        async def poke() -> None:
            async with clients.pool.pipeline(transaction=False) as pipe:
                pipe.xadd(clients.wake_key, {"w": "1"}, maxlen=1, approximate=False)
                pipe.pexpire(clients.wake_key, 60_000)
                await pipe.execute()

        await self._run(poke)

    async def presence_write(
        self, member: str, changed: Mapping[str, Mapping[str, int]], ttl: float, *, replace: bool = False
    ) -> bool:
        clients = self._loop()
        now = anyio.current_time()
        refreshed = clients.presence_refreshed.get(member)
        refresh = not replace and (refreshed is None or now - refreshed >= PRESENCE_REFRESH)
        flags = ("r" if replace else "") + ("k" if refresh else "")
        head: list[Any] = [self._member_prefix, member, max(1, int(ttl * 1000)), int(PRESENCE_KEPT * 1000)]
        keys = [self._members_key]
        for number, pairs in enumerate(_presence_pairs(changed)):
            # The calls after the first add to what it wrote (it made the member live, or replaced it).
            args = [*head, flags if number == 0 else "", *pairs]
            if not await self._run(partial(clients.presence_write, keys=keys, args=args)):
                return False
        if flags:
            clients.presence_refreshed[member] = now
        return True

    async def presence_leave(self, member: str) -> None:
        clients = self._loop()
        clients.presence_refreshed.pop(member, None)
        args = [self._member_prefix, member]
        await self._run(lambda: clients.presence_leave(keys=[self._members_key], args=args))

    async def presence(self, channel: str) -> list[dict[str, int]]:
        clients = self._loop()
        found = await self._run(
            lambda: clients.presence_read(keys=[self._members_key], args=[self._member_prefix, channel])
        )
        records = []
        for raw in found:
            # Lua's cjson writes a user's bytes as they are: decoded as they were encoded.
            flat = json.loads(raw.decode("utf-8", "surrogatepass"))
            records.append(dict(zip(flat[::2], map(int, flat[1::2]), strict=True)))
        return records

    async def close(self) -> None:
        clients = self._clients.get()
        if clients is None:
            return
        self._clients.set(None)
        for client in (clients.reader, clients.pool):
            with contextlib.suppress(self._errors.RedisError, OSError):  # closing what is already gone
                await client.aclose()


def _presence_pairs(changed: Mapping[str, Mapping[str, int]]) -> list[list[Any]]:
    """The arguments of the presence writes of ``changed``: per channel its name, n and n pairs of user and
    open streams, in calls of PRESENCE_PAIRS_PER_CALL pairs at most (one call, empty, for none)."""
    calls: list[list[Any]] = []
    args: list[Any] = []
    pairs = 0
    for channel, users in changed.items():
        header = -1
        for user, count in users.items():
            if pairs == PRESENCE_PAIRS_PER_CALL:
                calls.append(args)
                args, header, pairs = [], -1, 0
            if header < 0:
                header = len(args) + 1
                args += [channel, 0]
            args[header] += 1
            args += [user.encode("utf-8", "surrogatepass"), count]
            pairs += 1
    calls.append(args)
    return calls


def _where(url: str) -> str:
    """The server's address, without the credentials a URL may carry."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
