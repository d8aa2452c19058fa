-- cancel.lua: tasks.cancel of one task.  any non-terminal -> CANCELED.
-- A RUNNING task's executor is told through its control list (it cancels the call within
-- a second); its later writes are rejected by the fence because the lease is gone.
-- KEYS[1] task hash   KEYS[2] due zset
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] '1' dry run | '0' apply
-- Returns {'NOT_FOUND'} | {status, changed '1'|'0', error ''|reason}
local tkey, id = KEYS[1], ARGV[2]
local h = redis.call('HMGET', tkey, 'status', 'app', 'stage', 'executor_id', 'job_id')
local status, app = h[1], h[2]
if not status then return {'NOT_FOUND'} end
if TERMINAL[status] then
  return {status, '0', 'INVALID_TRANSITION: ' .. status .. ' is terminal'}
end
if ARGV[3] == '1' then return {S.CANCELED, '1', ''} end
local ts = now()
if status == S.RUNNING then
  tell_cancel(h[4], id, h[5])
  release(tkey, id, app, ts)
end
redis.call('ZREM', KEYS[2], member(app, id))
redis.call('HSET', tkey, 'exit_code', 130, 'next_run', '', 'wait_deadline', '', 'error',
  cjson.encode({code = 'CANCELED', stage = tonumber(h[3]), message = 'canceled by tasks.cancel'}))
set_status(tkey, id, app, status, S.CANCELED, ts)
return {S.CANCELED, '1', ''}
