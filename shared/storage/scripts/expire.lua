-- expire.lua: a RUNNING task passed its execution deadline (max_exec_timeout counts RUNNING
-- time only).  RUNNING -> FAILED (EXEC_TIMEOUT); the executor holding it is told to cancel
-- the call through its control list, and its later writes are rejected by the fence.
-- KEYS[1] task hash   KEYS[2] deadlines zset
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] member (app/id)
-- Returns {'FAILED'} | {'NOT_DUE'} | {'SKIP'}
local tkey, id, m = KEYS[1], ARGV[2], ARGV[3]
local ts = now()
local score = tonumber(redis.call('ZSCORE', KEYS[2], m))
if not score or score > ts then return {'NOT_DUE'} end
local h = redis.call('HMGET', tkey, 'status', 'app', 'stage', 'executor_id', 'job_id', 'stage_started')
if h[1] ~= S.RUNNING then
  redis.call('ZREM', KEYS[2], m)
  return {'SKIP'}
end
local s = tonumber(h[3])
local err = cjson.encode({code = 'EXEC_TIMEOUT', stage = s, message = 'max_exec_timeout exceeded'})
record_attempt(id, {job_id = h[5], stage = s, executor_id = h[4], started = tonumber(h[6]),
  ended = ts, outcome = 'timeout', error = cjson.decode(err)})
tell_cancel(h[4], id, h[5])
release(tkey, id, h[2], ts)
fail(tkey, id, h[2], S.RUNNING, ts, err)
return {S.FAILED}
