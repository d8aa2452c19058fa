-- wake.lua: the manager acts on one due entry (any number of managers may race for it:
-- the entry is removed here, so exactly one of them acts).
--   IDLE -> QUEUED (run_at / cron fire)        SUSPENDED -> QUEUED (retry time)
--   WAITING -> QUEUED | WAITING | FINISHED (timer ended, message timeout "continue")
--   WAITING -> FAILED (message timeout "fail": MESSAGE_TIMEOUT)
-- A run that is due at a timer or message stage (IDLE or SUSPENDED at stage 0 with a timer
-- first, a retry from the first stage) is advanced here, like a WAITING one: it goes to
-- WAITING (or past messages already in the inbox) in this step, and is queued only when it
-- reaches a call, so an executor only ever claims a call stage.
-- KEYS[1] task hash   KEYS[2] due zset
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] due member (app/id)
-- ARGV[4] '1': tracing is on: a reply that ends a wait tells it (wait_reply)
-- Returns {'NOT_DUE'} | {'GONE'} | {'SKIP', status} | {new status}
--         | {new status, 'WAIT', ...} (ARGV[4] '1', a wait ended: see wait_reply in _lib.lua)
local tkey, id, m = KEYS[1], ARGV[2], ARGV[3]
local ts = now()
local score = tonumber(redis.call('ZSCORE', KEYS[2], m))
if not score or score > ts then return {'NOT_DUE'} end
redis.call('ZREM', KEYS[2], m)
local h = redis.call('HMGET', tkey, 'status', 'app', 'enabled', 'stage', 'plan')
local status, app = h[1], h[2]
if not status then return {'GONE'} end
local s = tonumber(h[4])
if status == S.IDLE or status == S.SUSPENDED then
  if status == S.IDLE and h[3] ~= '1' then return {'SKIP', status} end
  settle(tkey, id, app, status, advance(tkey, id, app, s, cjson.decode(h[5]), ts), ts)
elseif status == S.WAITING then
  local plan = cjson.decode(h[5])
  local p = plan[s + 1]
  if p[1] == 'f' then
    return {'SKIP', status}  -- a children stage ends by its join (_lib.lua, fan-out), never by time
  end
  local w = ARGV[4] == '1' and wait_facts(tkey, s, p)
  if p[1] == 'm' and p[3] == 'fail' then
    fail(tkey, id, app, status, ts, cjson.encode({code = 'MESSAGE_TIMEOUT', stage = s,
      message = 'no message within ' .. p[2] .. ' s'}))
  else
    redis.call('HSET', tkey, 'r.' .. s, 'null')
    settle(tkey, id, app, status, advance(tkey, id, app, s + 1, plan, ts), ts)
  end
  if w then
    return wait_reply(redis.call('HGET', tkey, 'status'), w, ts, p[1] == 't' and 'ok' or 'timeout')
  end
else
  return {'SKIP', status}
end
return {redis.call('HGET', tkey, 'status')}
