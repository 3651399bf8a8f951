"""The circuit breaker's atomic scripts (``services.breaker``): one Redis hash per provider,
fields ``state``, ``failures``, ``until`` and ``probe_until`` (ms on Redis' own clock)."""

#: KEYS[1]: the provider's hash. ARGV[1]: probe ms. Returns {code, n}: 0 allowed (n: failures
#: counted), 1 allowed as the probe, 2 refused (retry in n ms).
ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local st = redis.call('HMGET', KEYS[1], 'state', 'until', 'probe_until', 'failures')
local state = st[1] or 'closed'
if state == 'closed' then return {0, tonumber(st[4]) or 0} end
local open_until = tonumber(st[2]) or 0
if state == 'open' and now < open_until then return {2, open_until - now} end
local probe_until = tonumber(st[3]) or 0
if now < probe_until then return {2, probe_until - now} end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe_until', now + tonumber(ARGV[1]))
return {1, 0}
"""

#: KEYS[1]: the provider's hash. ARGV: outcome (ok, fail, neutral), probe (1/0), threshold,
#: open ms. Returns {state after, 1 when it changed}.
RECORD_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local st = redis.call('HMGET', KEYS[1], 'state', 'failures')
local state = st[1] or 'closed'
local outcome = ARGV[1]
if outcome == 'neutral' then
  if ARGV[2] == '1' and state == 'half_open' then redis.call('HSET', KEYS[1], 'probe_until', 0) end
  return {state, 0}
end
if outcome == 'ok' then
  if state ~= 'closed' then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'until', 0, 'probe_until', 0)
    return {'closed', 1}
  end
  if (tonumber(st[2]) or 0) > 0 then redis.call('HSET', KEYS[1], 'failures', 0) end
  return {'closed', 0}
end
if state == 'half_open' then
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + tonumber(ARGV[4]), 'probe_until', 0)
  return {'open', 1}
end
if state == 'open' then return {'open', 0} end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if failures >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + tonumber(ARGV[4]), 'probe_until', 0)
  return {'open', 1}
end
return {'closed', 0}
"""

#: KEYS: one hash per provider. Returns each one's state; an open breaker whose time is over
#: reads as half_open (its next call is the probe).
READ_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  local st = redis.call('HMGET', key, 'state', 'until')
  local state = st[1] or 'closed'
  if state == 'open' and now >= (tonumber(st[2]) or 0) then state = 'half_open' end
  out[i] = state
end
return out
"""
