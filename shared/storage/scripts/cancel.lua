-- cancel.lua: tasks.cancel of one task.  any non-terminal -> CANCELED.
-- A RUNNING task's executor is told through its control list (it cancels the call within
-- a second); its later writes are rejected by the fence because the lease is gone.  A parent's
-- children still live are then cancelled too, by the manager's cascade role (SPEC §3a).
-- KEYS[1] task hash   KEYS[2] due zset
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] '1' dry run | '0' apply
-- Returns {'NOT_FOUND'} | {status, changed '1'|'0', error ''|reason}
local tkey, id = KEYS[1], ARGV[2]
local h = redis.call('HMGET', tkey, 'status', 'app')
local status, app = h[1], h[2]
if not status then return {'NOT_FOUND'} end
if TERMINAL[status] then
  return {status, '0', 'INVALID_TRANSITION: ' .. status .. ' is terminal'}
end
if ARGV[3] == '1' then return {S.CANCELED, '1', ''} end
-- KEYS[2] is the due zset cancel_task (_lib.lua, fan-out section) takes the task out of
cancel_task(tkey, id, app, status, now(), 'canceled by tasks.cancel')
return {S.CANCELED, '1', ''}
