"""Lua scripts: the stream operations that must check and change state atomically.

Each script touches one stream key (``KEYS[1]``), so it works on a single node and
on Redis Cluster alike. Scripts return raw RESP values, parsed by the transport.
"""

from __future__ import annotations

__all__ = ["ADD", "CLAIM_ONE", "FORGET_IDLE_CONSUMERS", "OWN_PENDING", "RECLAIM", "RELEASE", "TOUCH", "TRIM"]

# Shared helpers: stream ids compared as (milliseconds, sequence) numbers.
_IDS = """
local function parse_id(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local function id_less(a, b)
  local ams, aseq = parse_id(a)
  local bms, bseq = parse_id(b)
  if ams ~= bms then return ams < bms end
  return aseq < bseq
end
local function id_after(id)
  local ms, seq = parse_id(id)
  return string.format('%.0f-%.0f', ms, seq + 1)
end
local function as_map(flat)
  local map = {}
  for i = 1, #flat, 2 do map[flat[i]] = flat[i + 1] end
  return map
end
"""

# Append entries to stream KEYS[1]: ARGV[1] is an expiry in seconds (0: none), then
# for each entry the number of its field/value items followed by them. Returns the
# stream's length (for the trim check). One script call replaces MULTI/XADD.../EXEC
# for the usual single-stream publish.
ADD = """
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
if tonumber(ARGV[1]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return redis.call('XLEN', KEYS[1])
"""

# Trim KEYS[1] down to ARGV[1] entries. ARGV[2] is the policy:
#   "safe":   never remove an entry some group still needs (pending, or not yet read
#             by the group); stop short of the cap instead.
#   "maxlen": remove down to the cap, and count the removed entries some group had
#             not read yet (lost to it) or had read but not acknowledged yet (lost if
#             that consumer dies before it acknowledges).
# Returns {removed, kept_over_cap, removed_unread, removed_unacknowledged}. The work done is proportional to
# the number of groups plus the entries removed, so calling it on every publish while
# a stuck group keeps the stream over its cap stays cheap.
TRIM = (
    _IDS
    + """
local key = KEYS[1]
local maxlen = tonumber(ARGV[1])
local policy = ARGV[2]
local len = redis.call('XLEN', key)
if len <= maxlen then return {0, 0, 0, 0} end
local excess = len - maxlen
local groups = {}
local floor = nil
for _, flat in ipairs(redis.call('XINFO', 'GROUPS', key)) do
  local g = as_map(flat)
  g['unread_from'] = id_after(g['last-delivered-id'])
  local need = g['unread_from']
  if tonumber(g['pending']) > 0 then
    local oldest = redis.call('XPENDING', key, g['name'])[2]
    if id_less(oldest, need) then need = oldest end
  end
  if floor == nil or id_less(need, floor) then floor = need end
  groups[#groups + 1] = g
end
if policy == 'safe' then
  if floor == nil then
    return {redis.call('XTRIM', key, 'MAXLEN', maxlen), 0, 0, 0}
  end
  local below = redis.call('XRANGE', key, '-', '(' .. floor, 'COUNT', excess)
  local removed = 0
  if #below >= excess then
    removed = redis.call('XTRIM', key, 'MAXLEN', maxlen)
  elseif #below > 0 then
    removed = redis.call('XTRIM', key, 'MINID', floor)
  end
  return {removed, excess - removed, 0, 0}
end
local head = redis.call('XRANGE', key, '-', '+', 'COUNT', excess)
local last = head[#head][1]
local unread = {}
local unacked = {}
for _, g in ipairs(groups) do
  if tonumber(g['pending']) > 0 then
    for _, p in ipairs(redis.call('XPENDING', key, g['name'], '-', last, excess)) do
      unacked[p[1]] = true
    end
  end
  for i = 1, #head do
    local id = head[i][1]
    if not id_less(id, g['unread_from']) then unread[id] = true end
  end
end
local n_unread, n_unacked = 0, 0
for i = 1, #head do
  local id = head[i][1]
  if unread[id] then n_unread = n_unread + 1 elseif unacked[id] then n_unacked = n_unacked + 1 end
end
return {redis.call('XTRIM', key, 'MAXLEN', maxlen), 0, n_unread, n_unacked}
"""
)

# Take one pending entry of consumer ARGV[2] in group ARGV[1] for (re)delivery:
# checks that the consumer still owns ARGV[3], bumps its delivery counter and
# returns it. {1, id, fields, delivery_count} when delivered, {0} when another
# consumer owns it now, {-1} when the stream entry is gone (trimmed or deleted;
# the dangling pending entry is acknowledged so it stops circulating).
CLAIM_ONE = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return {0} end
local e = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3])
if #e == 0 or not e[1] then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  return {-1}
end
return {1, e[1][1], e[1][2], p[1][4] + 1}
"""

# Set the idle time of the entries ARGV[4..] that consumer ARGV[2] of group ARGV[1]
# still owns to ARGV[3] ms, without counting a delivery. Idle 0 renews the lease of
# in-flight entries; a huge idle releases entries so the next reclaim by any live
# member takes them at once. Entries another consumer owns now are left alone.
# Returns {touched, ids_owned_by_another_consumer}.
TOUCH = """
local n = 0
local taken = {}
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p > 0 then
    if p[1][2] == ARGV[2] then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
      n = n + 1
    else
      taken[#taken + 1] = ARGV[i]
    end
  end
end
return {n, taken}
"""

# Release entries that consumer ARGV[2] of group ARGV[1] handed out but did not
# handle: ARGV[3] is the idle time to give them (huge: the next reclaim by any live
# member takes them at once), then (id, delivery_count) pairs. The release undoes
# the count of the delivery it gives back, so only deliveries that ended in an
# acknowledgement or in a crash count toward max_deliveries. Entries another
# consumer owns now are left alone. Returns how many were released.
RELEASE = """
local n = 0
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if #p > 0 and p[1][2] == ARGV[2] then
    local count = math.max(tonumber(ARGV[i + 1]) - 1, 0)
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'IDLE', ARGV[3], 'RETRYCOUNT', count, 'JUSTID')
    n = n + 1
  end
end
return n
"""

# Move up to ARGV[5] entries idle for ARGV[3] ms or more to consumer ARGV[2],
# scanning from cursor ARGV[4], without counting a delivery (CLAIM_ONE counts it
# when the entry is handed out). Returns {next_cursor, ids, deleted_ids}.
RECLAIM = """
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5], 'JUSTID')
return {r[1], r[2], r[3] or {}}
"""

# Up to ARGV[4] pending ids of consumer ARGV[2] in group ARGV[1] after ARGV[3]
# ("-" for the start), oldest first.
OWN_PENDING = """
local start = ARGV[3]
if start ~= '-' then start = '(' .. start end
local ids = {}
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], start, '+', ARGV[4], ARGV[2])) do
  ids[#ids + 1] = p[1]
end
return ids
"""

# Remove consumers of group ARGV[1] idle for ARGV[2] ms or more that own no pending
# entry, except ARGV[3] (the caller). The check and the removal are one atomic step,
# so a consumer that still owns entries is never removed. Returns the removed names.
FORGET_IDLE_CONSUMERS = (
    _IDS
    + """
local removed = {}
for _, flat in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local c = as_map(flat)
  if c['name'] ~= ARGV[3] and tonumber(c['pending']) == 0 and tonumber(c['idle']) >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], c['name'])
    removed[#removed + 1] = c['name']
  end
end
return removed
"""
)
