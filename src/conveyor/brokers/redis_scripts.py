"""Lua scripts of the Redis broker: each state change runs as one atomic script.

Every script gets the key prefix as ``ARGV[1]`` and builds its keys from it
(see docs/brokers/redis.md for the layout). Numbers cross the Lua boundary as
strings so that floats keep every digit. A job is ``ready`` (in
``ready:<q>`` and ``age:<q>``), ``delayed`` (in ``delayed:<q>``), ``leased``
(in ``inflight``, counted in ``leased``) or ``dead`` (in ``dead`` and
``dead:<q>``); its hash field ``state`` says which.

Lease deadlines (``inflight`` scores, the ``until`` field) come from the
server's ``TIME``, never from a client, so workers with skewed clocks agree on
when a lease expires. So is the clock that promotes due delayed jobs; the due
times themselves (``eta``) are the clients' (see docs/architecture.md).
"""

from __future__ import annotations

from .base import LEASE_EXPIRED, MANUAL_RETRY

#: Most delayed jobs one lease call promotes per queue (bounds the script's run time).
PROMOTE_BATCH = 1000

_PRELUDE = """
local P = ARGV[1]
local function jkey(id) return P .. ':job:' .. id end

-- The server's clock in epoch seconds, as a string keeping the microseconds.
local function server_now()
  local t = redis.call('TIME')
  return string.format('%d.%06d', t[1], t[2])
end

-- A lease deadline ``vt`` seconds after the server's now.
local function deadline_in(vt)
  local t = redis.call('TIME')
  return string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(vt))
end

-- ready:<q> is scored by -priority; equal scores sort by member, which starts
-- with a fixed-width eta (microseconds) and the enqueue sequence number.
local function make_ready(id, jk, q, eta)
  local f = redis.call('HMGET', jk, 'priority', 'seq')
  local e = math.min(math.max(tonumber(eta), 0), 1e13)
  local rk = string.format('%020.0f', e * 1e6) .. ':' .. string.format('%015.0f', tonumber(f[2]))
    .. ':' .. id
  redis.call('HSET', jk, 'state', 'ready', 'eta', eta, 'token', '', 'until', '', 'rk', rk)
  redis.call('ZADD', P .. ':ready:' .. q, -tonumber(f[1]), rk)
  redis.call('ZADD', P .. ':age:' .. q, eta, id)
end

local function place(id, jk, q, eta, now)
  if tonumber(eta) > now then
    redis.call('HSET', jk, 'state', 'delayed', 'eta', eta, 'token', '', 'until', '', 'rk', '')
    redis.call('ZADD', P .. ':delayed:' .. q, eta, id)
  else
    make_ready(id, jk, q, eta)
  end
end

-- wake[q] = earliest eta placed in q by this script; published once per queue.
local function note(wake, q, eta)
  local old = wake[q]
  if old == nil or tonumber(eta) < tonumber(old) then wake[q] = eta end
end

local function publish(wake)
  for q, eta in pairs(wake) do
    redis.call('PUBLISH', P .. ':wake', eta .. ' ' .. q)
  end
end

-- The queue of a job leased with this token, or nil when the lease was lost.
local function owned(id, token)
  local f = redis.call('HMGET', jkey(id), 'state', 'token', 'queue')
  if f[1] == 'leased' and f[2] == token then return f[3] end
  return nil
end

-- A job leaves the in-flight set, and the set of its lease claim (claimed:<token>,
-- which Redis deletes with its last member).
local function unlease(id, q)
  local token = redis.call('HGET', jkey(id), 'token')
  if token and token ~= '' then redis.call('SREM', P .. ':claimed:' .. token, id) end
  redis.call('ZREM', P .. ':inflight', id)
  redis.call('HINCRBY', P .. ':leased', q, -1)
end

local function undead(id, q)
  redis.call('ZREM', P .. ':dead', id)
  redis.call('ZREM', P .. ':dead:' .. q, id)
end

-- Dead letters chosen by ARGV[3] = 'ids' (ids in ARGV[5..]) or 'all'
-- (ARGV[4] = queue or '', ARGV[5] = batch size); returns the ids.
local function select_dead()
  if ARGV[3] == 'ids' then
    local ids = {}
    for i = 5, #ARGV do ids[#ids + 1] = ARGV[i] end
    return ids
  end
  local zk = P .. ':dead'
  if ARGV[4] ~= '' then zk = zk .. ':' .. ARGV[4] end
  return redis.call('ZRANGE', zk, 0, tonumber(ARGV[5]) - 1)
end

-- Drop an index entry whose job is gone or no longer dead (never expected).
local function drop_stale(id)
  redis.call('ZREM', P .. ':dead', id)
  if ARGV[4] ~= '' then redis.call('ZREM', P .. ':dead:' .. ARGV[4], id) end
end

local function dead_queue(id)
  local f = redis.call('HMGET', jkey(id), 'state', 'queue')
  if f[1] == 'dead' then return f[2] end
  return nil
end
"""

# ARGV: prefix, now, then (id, queue, type, body, priority, eta, created_at) per message.
ENQUEUE = _PRELUDE + """
local now = tonumber(ARGV[2])
local wake = {}
for i = 3, #ARGV, 7 do
  local id, q, eta = ARGV[i], ARGV[i + 1], ARGV[i + 5]
  local jk = jkey(id)
  if redis.call('EXISTS', jk) == 0 then
    local seq = redis.call('INCR', P .. ':seq')
    redis.call('HSET', jk, 'queue', q, 'type', ARGV[i + 2], 'body', ARGV[i + 3],
      'priority', ARGV[i + 4], 'created_at', ARGV[i + 6], 'seq', seq, 'attempts', 0,
      'redelivery', '')
    redis.call('SADD', P .. ':queues', q)
    place(id, jk, q, eta, now)
    note(wake, q, eta)
  end
end
publish(wake)
return 0
"""

_CLAIMS = """
-- A delivery row: {id, queue, type, body, attempts, priority, eta, created_at, redelivery}.
local function row(id, jk, attempts)
  local f = redis.call('HMGET', jk, 'queue', 'type', 'body', 'priority', 'eta', 'created_at',
    'redelivery')
  return {id, f[1], f[2], f[3], tostring(attempts), f[4], f[5], f[6], f[7]}
end

-- The rows of the jobs still leased with this token (claim) whose lease is live by the
-- server's clock, in lease order. claimed:<token> is the set of the ids the claim leased
-- that have not left the in-flight set since.
local function held(token)
  local now, found = tonumber(server_now()), {}
  for _, id in ipairs(redis.call('SMEMBERS', P .. ':claimed:' .. token)) do
    local jk = jkey(id)
    local f = redis.call('HMGET', jk, 'state', 'token', 'until', 'attempts', 'priority', 'eta', 'seq')
    if f[1] == 'leased' and f[2] == token and tonumber(f[3]) >= now then
      found[#found + 1] = {-tonumber(f[5]), tonumber(f[6]), tonumber(f[7]), row(id, jk, f[4])}
    end
  end
  table.sort(found, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    if a[2] ~= b[2] then return a[2] < b[2] end
    return a[3] < b[3]
  end)
  local rows = {}
  for i, h in ipairs(found) do rows[i] = h[4] end
  return rows
end
"""

# ARGV: prefix, visibility timeout, limit, token (the claim), queues... Delayed jobs
# are promoted by the server's clock.
# Returns {deliveries, next due eta per queue ('' when none)}; see row() for a delivery.
# A token that holds live leases (the reply of that call was lost) returns them,
# attempts unchanged, instead of leasing new ones.
LEASE = _PRELUDE + _CLAIMS + """
local vt, limit, token = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local ck = P .. ':claimed:' .. token
local claimed = held(token)
if #claimed > 0 then return {claimed, {}} end
local now, deadline = server_now(), deadline_in(vt)
local cands, nexts = {}, {}
for i = 5, #ARGV do
  local q = ARGV[i]
  local dk = P .. ':delayed:' .. q
  local due = redis.call('ZRANGEBYSCORE', dk, '-inf', now, 'LIMIT', 0, PROMOTE_BATCH)
  for _, id in ipairs(due) do
    redis.call('ZREM', dk, id)
    local jk = jkey(id)
    local eta = redis.call('HGET', jk, 'eta')
    if eta then make_ready(id, jk, q, eta) end
  end
  local head = redis.call('ZRANGE', dk, 0, 0, 'WITHSCORES')
  nexts[#nexts + 1] = head[2] or ''
  local top = redis.call('ZRANGE', P .. ':ready:' .. q, 0, limit - 1, 'WITHSCORES')
  for j = 1, #top, 2 do cands[#cands + 1] = {tonumber(top[j + 1]), top[j], q} end
end
table.sort(cands, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end)
local out = {}
for k = 1, math.min(limit, #cands) do
  local rk, q = cands[k][2], cands[k][3]
  local id = string.sub(rk, 38)
  local jk = jkey(id)
  redis.call('ZREM', P .. ':ready:' .. q, rk)
  redis.call('ZREM', P .. ':age:' .. q, id)
  if redis.call('EXISTS', jk) == 1 then
    local attempts = redis.call('HINCRBY', jk, 'attempts', 1)
    redis.call('HSET', jk, 'state', 'leased', 'token', token, 'until', deadline, 'rk', '')
    redis.call('ZADD', P .. ':inflight', deadline, id)
    redis.call('HINCRBY', P .. ':leased', q, 1)
    out[#out + 1] = row(id, jk, attempts)
    redis.call('SADD', ck, id)
  end
end
-- a safety net only: the set empties as its jobs leave the in-flight set (EXTEND lengthens it)
if #out > 0 then redis.call('PEXPIRE', ck, math.ceil(tonumber(vt) * 1000) + 1000) end
return {out, nexts}
""".replace("PROMOTE_BATCH", str(PROMOTE_BATCH))

# ARGV: prefix, then (id, token) pairs. Returns the ids refused by the token check
# whose job is still stored (one already gone may be this very ack, re-sent by the
# client after a lost reply).
ACK = _PRELUDE + """
local refused = {}
for i = 2, #ARGV, 2 do
  local q = owned(ARGV[i], ARGV[i + 1])
  if q then
    unlease(ARGV[i], q)
    redis.call('DEL', jkey(ARGV[i]))
  elseif redis.call('EXISTS', jkey(ARGV[i])) == 1 then
    refused[#refused + 1] = ARGV[i]
  end
end
return refused
"""

# ARGV: prefix, now, id, token, retry_at, error type, error message, traceback.
# Returns 1 when applied, 0 when the lease-token check refused it (the lease was lost).
NACK = _PRELUDE + """
local id = ARGV[3]
local q = owned(id, ARGV[4])
if not q then return 0 end
local jk = jkey(id)
unlease(id, q)
redis.call('HSET', jk, 'redelivery', '', 'error_type', ARGV[6], 'error_message', ARGV[7],
  'traceback', ARGV[8])
place(id, jk, q, ARGV[5], tonumber(ARGV[2]))
local wake = {}
note(wake, q, ARGV[5])
publish(wake)
return 1
"""

# ARGV: prefix, now, reason, interrupted ('1' or '0'), refunded interruptions, then
# (id, token) pairs. The attempt is given back, except for an interrupted job past
# its refunded interruptions (hash field 'interruptions' counts them).
RELEASE = _PRELUDE + """
local now = tonumber(ARGV[2])
local interrupted, refunded = ARGV[4] == '1', tonumber(ARGV[5])
local wake = {}
for i = 6, #ARGV, 2 do
  local id = ARGV[i]
  local q = owned(id, ARGV[i + 1])
  if q then
    local jk = jkey(id)
    unlease(id, q)
    local count = 0
    if interrupted then count = redis.call('HINCRBY', jk, 'interruptions', 1) end
    if count <= refunded then redis.call('HINCRBY', jk, 'attempts', -1) end
    redis.call('HSET', jk, 'redelivery', ARGV[3])
    local eta = redis.call('HGET', jk, 'eta')
    if tonumber(eta) > now then eta = ARGV[2] end
    make_ready(id, jk, q, eta)
    note(wake, q, eta)
  end
end
publish(wake)
return 0
"""

# ARGV: prefix, now, id, token, reason, error type, error message, traceback.
# Returns 1 when applied, 0 when the lease-token check refused it.
DEAD = _PRELUDE + """
local id = ARGV[3]
local q = owned(id, ARGV[4])
if not q then return 0 end
unlease(id, q)
redis.call('HSET', jkey(id), 'state', 'dead', 'token', '', 'until', '', 'reason', ARGV[5],
  'error_type', ARGV[6], 'error_message', ARGV[7], 'traceback', ARGV[8], 'dead_at', ARGV[2])
redis.call('ZADD', P .. ':dead', ARGV[2], id)
redis.call('ZADD', P .. ':dead:' .. q, ARGV[2], id)
return 1
"""

# ARGV: prefix, visibility timeout, then (id, token) pairs. Returns the ids not renewed.
# A claim set lives at least as long as the leases it lists.
EXTEND = _PRELUDE + """
local deadline = deadline_in(ARGV[2])
local ttl = math.ceil(tonumber(ARGV[2]) * 1000) + 1000
local lost = {}
for i = 3, #ARGV, 2 do
  if owned(ARGV[i], ARGV[i + 1]) then
    redis.call('HSET', jkey(ARGV[i]), 'until', deadline)
    redis.call('ZADD', P .. ':inflight', 'XX', deadline, ARGV[i])
    local ck = P .. ':claimed:' .. ARGV[i + 1]
    if redis.call('PTTL', ck) < ttl then redis.call('PEXPIRE', ck, ttl) end
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""

# ARGV: prefix, token (the claim). Returns what LEASE would return for a claim that holds
# live leases (see held()), without ever leasing.
RECLAIM = _PRELUDE + _CLAIMS + """
return held(ARGV[2])
"""

# ARGV: prefix, batch size. Returns the ids put back (at most one batch). Expiry is
# judged by the server's clock; a rescued job keeps its eta (it was due when leased).
RESCUE = _PRELUDE + """
local ids = redis.call('ZRANGEBYSCORE', P .. ':inflight', '-inf', '(' .. server_now(),
  'LIMIT', 0, tonumber(ARGV[2]))
local back, wake = {}, {}
for _, id in ipairs(ids) do
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'state', 'queue')
  if f[1] == 'leased' then
    unlease(id, f[2])
    redis.call('HSET', jk, 'redelivery', '@LEASE_EXPIRED@')
    local eta = redis.call('HGET', jk, 'eta')
    make_ready(id, jk, f[2], eta)
    note(wake, f[2], eta)
    back[#back + 1] = id
  else
    redis.call('ZREM', P .. ':inflight', id)
  end
end
publish(wake)
return {back, #ids}
""".replace("@LEASE_EXPIRED@", LEASE_EXPIRED)

# ARGV: prefix, now, selection (see select_dead). Returns {moved ids, scanned}.
DLQ_RETRY = _PRELUDE + """
local ids = select_dead()
local moved, wake = {}, {}
for _, id in ipairs(ids) do
  local q = dead_queue(id)
  if q then
    local jk = jkey(id)
    undead(id, q)
    redis.call('HSET', jk, 'attempts', 0, 'interruptions', 0, 'redelivery', '@MANUAL_RETRY@', 'reason', '',
      'error_type', '', 'error_message', '', 'traceback', '', 'dead_at', '')
    make_ready(id, jk, q, ARGV[2])
    note(wake, q, ARGV[2])
    moved[#moved + 1] = id
  elseif ARGV[3] == 'all' then
    drop_stale(id)
  end
end
publish(wake)
return {moved, #ids}
""".replace("@MANUAL_RETRY@", MANUAL_RETRY)

# ARGV: prefix, now, selection (see select_dead). Returns {deleted ids, scanned}.
DLQ_PURGE = _PRELUDE + """
local ids = select_dead()
local gone = {}
for _, id in ipairs(ids) do
  local q = dead_queue(id)
  if q then
    undead(id, q)
    redis.call('DEL', jkey(id))
    gone[#gone + 1] = id
  elseif ARGV[3] == 'all' then
    drop_stale(id)
  end
end
return {gone, #ids}
"""

_LETTERS = """
-- The dead letters among ids, in order; each row is {id, queue, type, body, attempts,
-- reason, error type, error message, traceback, dead_at, created_at}.
local function letters(ids)
  local rows = {}
  for _, id in ipairs(ids) do
    local f = redis.call('HMGET', jkey(id), 'state', 'queue', 'type', 'body', 'attempts', 'reason',
      'error_type', 'error_message', 'traceback', 'dead_at', 'created_at')
    if f[1] == 'dead' then
      rows[#rows + 1] = {id, f[2], f[3], f[4], f[5], f[6] or '', f[7] or '', f[8] or '',
        f[9] or '', f[10] or '0', f[11] or '0'}
    end
  end
  return rows
end
"""

# ARGV: prefix, then ids.
DLQ_GET = _PRELUDE + _LETTERS + """
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
return letters(ids)
"""

# ARGV: prefix, 'age', dead_before, batch | 'count', queue, keep, batch.
# Deletes at most one batch; returns how many.
DLQ_PRUNE = _PRELUDE + """
local ids
if ARGV[2] == 'age' then
  ids = redis.call('ZRANGEBYSCORE', P .. ':dead', '-inf', '(' .. ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))
else
  local zk = P .. ':dead:' .. ARGV[3]
  local extra = redis.call('ZCARD', zk) - tonumber(ARGV[4])
  if extra <= 0 then return 0 end
  ids = redis.call('ZRANGE', zk, 0, math.min(extra, tonumber(ARGV[5])) - 1)
end
local gone = 0
for _, id in ipairs(ids) do
  local q = dead_queue(id)
  if q then
    undead(id, q)
    redis.call('DEL', jkey(id))
    gone = gone + 1
  else
    redis.call('ZREM', P .. ':dead', id)
    if ARGV[2] ~= 'age' then redis.call('ZREM', P .. ':dead:' .. ARGV[3], id) end
  end
end
return gone
"""

# ARGV: prefix, lock name, owner, ttl in ms. Expiry is Redis's own key TTL.
LOCK_ACQUIRE = """
local k = ARGV[1] .. ':lock:' .. ARGV[2]
local holder = redis.call('GET', k)
if holder and holder ~= ARGV[3] then return 0 end
redis.call('SET', k, ARGV[3], 'PX', ARGV[4])
return 1
"""

# ARGV: prefix, lock name, owner.
LOCK_RELEASE = """
local k = ARGV[1] .. ':lock:' .. ARGV[2]
if redis.call('GET', k) == ARGV[3] then redis.call('DEL', k) end
return 0
"""
