-- unlock.lua: tasks.unlock of one task: force-releases a RUNNING task's lease.
-- RUNNING -> SUSPENDED -> QUEUED at the current stage, in one step.  The old executor is
-- told to drop the call, and its later writes are rejected (its lease is gone).
-- KEYS[1] task hash
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] '1' dry run | '0' apply
-- Returns {'NOT_FOUND'} | {status after, changed '1'|'0', error ''|reason}
local tkey, id = KEYS[1], ARGV[2]
local h = redis.call('HMGET', tkey, 'status', 'app', 'executor_id', 'job_id', 'stage', 'stage_started')
local status, app = h[1], h[2]
if not status then return {'NOT_FOUND'} end
if status ~= S.RUNNING then
  return {status, '0', 'INVALID_TRANSITION: only a RUNNING task holds a lease (' .. status .. ')'}
end
if ARGV[3] == '1' then return {S.QUEUED, '1', ''} end
local ts = now()
tell_cancel(h[3], id, h[4])
record_attempt(id, {job_id = h[4], stage = tonumber(h[5]), executor_id = h[3],
  started = tonumber(h[6]), ended = ts, outcome = 'unlocked', error = cjson.null})
release(tkey, id, app, ts)
set_status(tkey, id, app, S.RUNNING, S.SUSPENDED, ts)
enqueue(tkey, id, app, S.SUSPENDED, ts)
return {S.QUEUED, '1', ''}
