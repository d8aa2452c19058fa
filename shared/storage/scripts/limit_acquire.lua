-- limit_acquire.lua: an executor asks a limit key for a slot for the task it read, before it
-- claims the task (claim.lua, in the task's own partition).  Runs in the key's partition.
-- Granted when the key is not paused, has a slot free (concurrency: permits + reservations of
-- woken tasks < c) and room in its rate window (claims within `per` s + reservations < r),
-- and no task it holds comes first (a task woken for a slot has its reservation, so it is
-- granted in its turn).  Otherwise the task joins the key's held set in its order.
-- Either way the key is pumped (limit_pump in _lib.lua): the refs it returns are woken tasks
-- the caller puts back on their streams (unblock.lua).
-- KEYS[1] the key's hash (routing: all keys of the key live in its partition)
-- ARGV[1] prefix  ARGV[2] limit key  ARGV[3] ref '<partition>|<app>/<id>|<job id>'
-- ARGV[4] permit '<partition>|<app>/<id>|<lease>'  ARGV[5] concurrency (0 none)
-- ARGV[6] rate (0 none)  ARGV[7] per (s)  ARGV[8] order of the task (held set score)
-- ARGV[9] LIMIT_PERMIT_CHECK (s): when the manager first checks the permit against its run
-- Returns {'OK', ref, ...}    the permit is granted (a replay of a granted permit: the same)
--         {'HELD', ref, ...}  the task is held back: the caller parks it (hold.lua)
local key, ref, permit = ARGV[2], ARGV[3], ARGV[4]
local c, r, per = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local lk, pk, hk, wk, rk = k_limit(key), k_limit_permits(key), k_limit_held(key), k_limit_woken(key), k_limit_rate(key)
if redis.call('ZSCORE', pk, permit) then
  return {'OK'}
end
local ts = now()
local paused = tonumber(redis.call('HGET', lk, 'paused') or '')
local woken = redis.call('ZSCORE', wk, ref) ~= false
local nw = redis.call('ZCARD', wk) - (woken and 1 or 0)  -- the others' reservations
local ok = not (paused and paused > ts)
if ok and c > 0 and redis.call('ZCARD', pk) + nw >= c then ok = false end
if ok and r > 0 then
  redis.call('ZREMRANGEBYSCORE', rk, '-inf', ts - per)
  if redis.call('ZCARD', rk) + nw >= r then ok = false end
end
if ok and not woken and redis.call('ZCARD', hk) > 0 then
  local head = redis.call('ZRANGE', hk, 0, 0)[1]
  if head ~= ref then ok = false end  -- others wait before it: it waits its turn
end
-- writes
redis.call('HSET', lk, 'c', c, 'r', r, 'per', ARGV[7])  -- the numbers of the task that asked
-- the keys seen lately, for limits.list (the dashboard): bounded, whatever the keys ever used
local seen = k_limit_keys()
redis.call('ZADD', seen, ts, key)
if redis.call('ZCARD', seen) > LIMIT_KEYS_KEPT then redis.call('ZREMRANGEBYRANK', seen, 0, -LIMIT_KEYS_KEPT - 1) end
if woken then redis.call('ZREM', wk, ref) end
local out
if ok then
  redis.call('ZREM', hk, ref)
  redis.call('ZADD', pk, ts, permit)
  if r > 0 then redis.call('ZADD', rk, ts, permit) end
  redis.call('ZADD', k_limit_grants(), ts + tonumber(ARGV[9]), key .. '|' .. permit)
  out = {'OK'}
else
  redis.call('ZADD', hk, 'NX', ARGV[8], ref)
  out = {'HELD'}
end
for _, w in ipairs(limit_pump(key, ts)) do out[#out + 1] = w end
return out
