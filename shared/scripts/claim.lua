-- claim.lua: an executor takes a task it read from its app stream.  QUEUED -> RUNNING.
-- The stream entry is acknowledged here, in the same step that records the claim, so an
-- entry is never acknowledged for work nobody holds.
-- KEYS[1] task hash   KEYS[2] app stream   KEYS[3] executors zset
-- KEYS[4] running set of this executor     KEYS[5] deadlines zset
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] stream entry id  ARGV[4] job id of the entry
-- ARGV[5] executor id  ARGV[6] lease token (fresh per claim; a replay with the same token
--   after a lost reply gets the same answer)
-- Returns {'OK', field, value, ...}   the whole task hash after the claim
--         {'STALE'}  the entry no longer matches a QUEUED run; entry acknowledged, drop it
--         {'DEAD'}   this executor was declared dead; entry left pending for the manager
local tkey, id = KEYS[1], ARGV[2]
if not redis.call('ZSCORE', KEYS[3], ARGV[5]) then
  return {'DEAD'}
end
local h = redis.call('HMGET', tkey, 'status', 'job_id', 'app', 'max_exec', 'exec_used', 'attempt')
redis.call('XACK', KEYS[2], GROUP, ARGV[3])
if h[1] == 'RUNNING' and redis.call('HGET', tkey, 'lease') == ARGV[6] then
  -- a replay of a claim whose reply was lost: same answer, nothing written twice
  local out = redis.call('HGETALL', tkey)
  table.insert(out, 1, 'OK')
  return out
end
if h[1] ~= 'QUEUED' or h[2] ~= ARGV[4] then
  return {'STALE'}
end
local ts = now()
local app = h[3]
local deadline = ts + tonumber(h[4]) - (tonumber(h[5] or '0') or 0)
redis.call('HSET', tkey, 'executor_id', ARGV[5], 'lease', ARGV[6], 'run_started', fmt(ts),
  'stage_started', fmt(ts), 'exec_deadline', fmt(deadline),
  'attempt', (tonumber(h[6] or '0') or 0) + 1)
redis.call('SADD', KEYS[4], app .. '/' .. id)
redis.call('ZADD', KEYS[5], deadline, app .. '/' .. id)
set_status(tkey, id, app, 'QUEUED', 'RUNNING', ts)
local out = redis.call('HGETALL', tkey)
table.insert(out, 1, 'OK')
return out
