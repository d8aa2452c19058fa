-- wake.lua: the manager acts on one due entry (any number of managers may race for it:
-- the entry is removed here, so exactly one of them acts).
--   IDLE -> QUEUED (run_at / cron fire)        SUSPENDED -> QUEUED (retry time)
--   WAITING -> QUEUED | WAITING | FINISHED (timer ended, message timeout "continue")
--   WAITING -> FAILED (message timeout "fail": MESSAGE_TIMEOUT)
-- KEYS[1] task hash   KEYS[2] due zset   (the app stream is derived: it depends on priority)
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] due member (app/id)
-- Returns {'NOT_DUE'} | {'GONE'} | {'SKIP', status} | {new status}
local tkey, id, m = KEYS[1], ARGV[2], ARGV[3]
local ts = now()
local score = tonumber(redis.call('ZSCORE', KEYS[2], m))
if not score or score > ts then return {'NOT_DUE'} end
redis.call('ZREM', KEYS[2], m)
local h = redis.call('HMGET', tkey, 'status', 'app', 'enabled', 'stage', 'plan')
local status, app = h[1], h[2]
if not status then return {'GONE'} end
if status == 'IDLE' then
  if h[3] ~= '1' then return {'SKIP', status} end
  enqueue(tkey, id, app, status, ts)
elseif status == 'SUSPENDED' then
  enqueue(tkey, id, app, status, ts)
elseif status == 'WAITING' then
  local s = tonumber(h[4])
  local p = cjson.decode(h[5])[s + 1]
  if p[1] == 'm' and p[3] == 'fail' then
    fail(tkey, id, app, status, ts, cjson.encode({code = 'MESSAGE_TIMEOUT', stage = s,
      message = 'no message within ' .. p[2] .. ' s'}))
  else
    redis.call('HSET', tkey, 'r.' .. s, 'null')
    local verdict = advance(tkey, id, app, s + 1, cjson.decode(h[5]), ts)
    settle(tkey, id, app, status, verdict, ts)
  end
else
  return {'SKIP', status}
end
return {redis.call('HGET', tkey, 'status')}
