-- claim.lua: an executor takes a task it read from its app stream.  QUEUED -> RUNNING.
-- The stream entry is acknowledged here, in the same step that records the claim, so an
-- entry is never acknowledged for work nobody holds.
-- KEYS[1] task hash   KEYS[2] app stream   KEYS[3] executors zset
-- KEYS[4] running set of this executor     KEYS[5] deadlines zset
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] stream entry id  ARGV[4] job id of the entry
-- ARGV[5] executor id  ARGV[6] lease token (fresh per claim; a replay with the same token
--   after a lost reply gets the same answer)
-- Returns {'OK', field, value, ...}   the task hash after the claim (a field may appear twice:
--            the later value is the current one)
--         {'STALE'}  the entry no longer matches a QUEUED run; entry acknowledged, drop it
--         {'DEAD'}   this executor was declared dead; entry left pending for the manager
local tkey, id = KEYS[1], ARGV[2]
if not redis.call('ZSCORE', KEYS[3], ARGV[5]) then
  return {'DEAD'}
end
local flat = redis.call('HGETALL', tkey)
local t = {}
for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
table.insert(flat, 1, 'OK')
if t.status == 'RUNNING' and t.lease == ARGV[6] then
  return flat  -- a replay of a claim whose reply was lost: same answer, nothing written twice
end
redis.call('XACK', KEYS[2], GROUP, ARGV[3])
if t.status ~= 'QUEUED' or t.job_id ~= ARGV[4] then
  return {'STALE'}
end
local ts = now()
local app = t.app
local deadline = ts + tonumber(t.max_exec) - (tonumber(t.exec_used or '0') or 0)
local changes = {'executor_id', ARGV[5], 'lease', ARGV[6], 'run_started', fmt(ts),
  'stage_started', fmt(ts), 'exec_deadline', fmt(deadline),
  'attempt', tostring((tonumber(t.attempt or '0') or 0) + 1), 'status', 'RUNNING', 'updated', fmt(ts)}
put(unpack(changes))
redis.call('SADD', KEYS[4], app .. '/' .. id)
redis.call('ZADD', KEYS[5], deadline, app .. '/' .. id)
set_status(tkey, id, app, 'QUEUED', 'RUNNING', ts, t)
for i = 1, #changes do flat[#flat + 1] = changes[i] end
return flat
