-- send.lua: tasks.send.  A message for a task.
--   WAITING at a message stage -> the data is that stage's result; the task moves on
--   (QUEUED | WAITING | FINISHED).  A message stage further ahead in this run -> the data is
--   kept in the inbox, in order, and the next message stage takes it at once.
-- KEYS[1] task hash   KEYS[2] inbox list   KEYS[3] due zset
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] data (JSON)
-- ARGV[4] '1': tracing is on: DELIVERED tells the wait it ended (wait_reply in _lib.lua)
-- Returns {'DELIVERED', status} | {'DELIVERED', 'WAIT', ...} (ARGV[4] '1') | {'KEPT'}
--         | {'NOT_FOUND'} | {'NOT_WAITING', status}
local tkey, id = KEYS[1], ARGV[2]
local h = redis.call('HMGET', tkey, 'status', 'app', 'stage', 'plan')
local status, app = h[1], h[2]
if not status then return {'NOT_FOUND'} end
if TERMINAL[status] then return {'NOT_WAITING', status} end
local s = tonumber(h[3])
local plan = cjson.decode(h[4])
local ts = now()
if status == S.WAITING and plan[s + 1][1] == 'm' then
  local w = ARGV[4] == '1' and wait_facts(tkey, s, plan[s + 1])
  redis.call('ZREM', KEYS[3], member(app, id))
  redis.call('HSET', tkey, 'r.' .. s, ARGV[3])
  local verdict = advance(tkey, id, app, s + 1, plan, ts)
  settle(tkey, id, app, status, verdict, ts)
  if w then return wait_reply('DELIVERED', w, ts, 'ok') end
  return {'DELIVERED', redis.call('HGET', tkey, 'status')}
end
-- Keep it only if a message stage ahead will take it: count the message stages from the
-- current one (a WAITING timer's own stage is not a message stage) against the inbox.
local ahead = 0
for i = s + 1, #plan do
  if type(plan[i]) == 'table' and plan[i][1] == 'm' then ahead = ahead + 1 end
end
if ahead <= redis.call('LLEN', KEYS[2]) then return {'NOT_WAITING', status} end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('HSET', tkey, 'updated', fmt(ts))
set_status(tkey, id, app, status, status, ts)
return {'KEPT'}
