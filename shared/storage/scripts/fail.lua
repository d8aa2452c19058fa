-- fail.lua: an attempt of the current stage failed.
-- RUNNING -> SUSPENDED (a retry: re-queued at next_run) | FAILED (no retry).
-- Fenced like commit.lua.  Whether the run is retried, and when, is the caller's decision
-- (stagewise.policy.retry_delay, from the retries and max_retries the claim handed out: the
-- lease fences them, so they cannot have changed since); this script applies it.
-- KEYS[1] task hash   KEYS[2] attempts list   KEYS[3] due zset
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] job id  ARGV[4] lease  ARGV[5] stage
-- ARGV[6] error (JSON {code, message, stage, type?})
-- ARGV[7] retry delay (s), or '' for no retry: the run fails
-- ARGV[8] outcome of the attempt ('error' | 'timeout')
-- ARGV[9] the stage's method, for the duration histogram (optional)
-- ARGV[10] '1': the handler raised RetryLater (SPEC §2a): re-queued at the same stage after the
--   delay, whatever the restart policy, not counted as a retry, the task's error unchanged
-- Returns {'RETRY', next_run} | {'FAILED'} | {'STALE'}
local tkey, id = KEYS[1], ARGV[2]
local h = redis.call('HMGET', tkey, 'status', 'job_id', 'lease', 'stage', 'app', 'retries',
  'restart_policy', 'stages', 'executor_id', 'stage_started')
if h[1] ~= S.RUNNING or h[2] ~= ARGV[3] or h[3] ~= ARGV[4] or h[4] ~= ARGV[5] then
  return {'STALE'}
end
local ts = now()
local app, s = h[5], tonumber(ARGV[5])
record_attempt(id, {job_id = ARGV[3], stage = s, executor_id = h[9],
  started = tonumber(h[10]), ended = ts, outcome = ARGV[8], error = cjson.decode(ARGV[6])})
observe(app, ARGV[9], ARGV[8], ts - (tonumber(h[10]) or ts))
release(tkey, id, app, ts)
local delay = tonumber(ARGV[7])
if delay then
  local at = ts + delay
  if ARGV[10] == '1' then
    redis.call('HSET', tkey, 'next_run', fmt(at))
    redis.call('ZADD', KEYS[3], at, member(app, id))
    set_status(tkey, id, app, S.RUNNING, S.SUSPENDED, ts)
    return {'RETRY', fmt(at)}
  end
  if h[7] == 'first' then
    -- "first" restarts the run from stage 0 with no results, so results[i] stays stage i's.
    for i = 0, tonumber(h[8]) - 1 do redis.call('HDEL', tkey, 'r.' .. i) end
    redis.call('HSET', tkey, 'stage', 0)
  end
  redis.call('HSET', tkey, 'retries', (tonumber(h[6]) or 0) + 1, 'next_run', fmt(at), 'error', ARGV[6])
  redis.call('ZADD', KEYS[3], at, member(app, id))
  redis.call('HINCRBY', k_metrics(app), 'retries', 1)
  set_status(tkey, id, app, S.RUNNING, S.SUSPENDED, ts)
  return {'RETRY', fmt(at)}
end
fail(tkey, id, app, S.RUNNING, ts, ARGV[6])
return {S.FAILED}
