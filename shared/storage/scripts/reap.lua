-- reap.lua: the manager takes back one run of an executor declared dead (mark_dead.lua
-- recorded it, with the lease of its claim, in the executor's reaping hash).
-- RUNNING -> SUSPENDED -> QUEUED at the current stage, in one step; or
-- RUNNING -> FAILED (EXECUTOR_LOST) once the run lost its executor on the same stage more
-- than max_interruptions times, so a stage that crashes its process cannot loop forever.
-- Fenced by the recorded lease: a run the executor claimed after registering again has a
-- lease of its own and is never taken; a recorded run that ended or was handed back since is
-- skipped.  Either way the member leaves the reaping hash.
-- KEYS[1] task hash   KEYS[2] reaping hash of the dead executor
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] dead executor id  ARGV[4] max interruptions
-- ARGV[5] the task's member (app/id) in the reaping hash
-- Returns {'QUEUED'} | {'FAILED'} | {'SKIP'} (the task is no longer held under that lease)
local tkey, id = KEYS[1], ARGV[2]
local lease = redis.call('HGET', KEYS[2], ARGV[5])
redis.call('HDEL', KEYS[2], ARGV[5])
local h = redis.call('HMGET', tkey, 'status', 'executor_id', 'app', 'stage', 'interruptions',
  'int_stage', 'job_id', 'stage_started', 'lease')
if h[1] ~= S.RUNNING or h[2] ~= ARGV[3] or not lease or h[9] ~= lease then
  return {'SKIP'}
end
local ts = now()
local app, s = h[3], tonumber(h[4])
local n = 1
if h[6] == h[4] then n = (tonumber(h[5]) or 0) + 1 end
record_attempt(id, {job_id = h[7], stage = s, executor_id = ARGV[3], started = tonumber(h[8]),
  ended = ts, outcome = 'lost', error = cjson.null})
release(tkey, id, app, ts)
redis.call('HSET', tkey, 'interruptions', n, 'int_stage', s)
if n > tonumber(ARGV[4]) then
  fail(tkey, id, app, S.RUNNING, ts, cjson.encode({code = 'EXECUTOR_LOST', stage = s,
    message = 'executor lost ' .. n .. ' times on this stage'}))
  return {S.FAILED}
end
set_status(tkey, id, app, S.RUNNING, S.SUSPENDED, ts)
enqueue(tkey, id, app, S.SUSPENDED, ts)
return {S.QUEUED}
