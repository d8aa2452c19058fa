-- handback.lua: a stopping executor (SIGTERM, grace period over) gives back a run it did not
-- finish.  RUNNING -> SUSPENDED -> QUEUED at the current stage, in one step.  A graceful
-- hand-back does not count as an interruption.  Fenced by job id and lease.
-- KEYS[1] task hash
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] job id  ARGV[4] lease
-- Returns {'QUEUED'} | {'STALE'}
local tkey, id = KEYS[1], ARGV[2]
local h = redis.call('HMGET', tkey, 'status', 'job_id', 'lease', 'app', 'stage', 'executor_id',
  'stage_started')
if h[1] ~= S.RUNNING or h[2] ~= ARGV[3] or h[3] ~= ARGV[4] then return {'STALE'} end
local ts = now()
record_attempt(id, {job_id = h[2], stage = tonumber(h[5]), executor_id = h[6],
  started = tonumber(h[7]), ended = ts, outcome = 'handed_back', error = cjson.null})
release(tkey, id, h[4], ts)
set_status(tkey, id, h[4], S.RUNNING, S.SUSPENDED, ts)
enqueue(tkey, id, h[4], S.SUSPENDED, ts)
return {S.QUEUED}
