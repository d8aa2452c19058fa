-- mark_dead.lua: the manager declares an executor dead in one partition: the first step of a
-- reap (manager/scheduler.py), and the only one that decides.  An executor of a partition is
--   LIVE     in the executors zset (score: its last ping); claims and pings are accepted
--   DEAD     in the dead-executors zset instead: declared dead, its reap not finished.  Its
--            claims answer DEAD and its pings 0 (both need the executors zset), so it can take
--            nothing more; the runs it held at the mark are in its reaping hash (member ->
--            lease of the claim), for reap.lua to take back one by one
--   LIVE and DEAD   it registered again (ping.lua) before its reap was finished: claims are
--            accepted again and go to a fresh running set; the reap still covers exactly the
--            runs recorded at the mark
--   GONE     in neither: left the registry (forget.lua, or its own graceful stop)
-- The mark applies only while the last ping is at least `dead after` old, all in this one step:
-- a ping that landed since the manager read the zset wins, and the executor stays LIVE.
-- Marking also drops its offers of push delivery (offer.lua); a run pushed to it before the mark
-- is in its running set like any claimed run.
-- Marking moves the running set into the reaping hash, so a run the executor held is always in
-- one of the two, and an executor marked again (LIVE and DEAD, then silent) adds its new runs.
-- KEYS[1] executors zset   KEYS[2] dead-executors zset   KEYS[3] running set of the executor
-- KEYS[4] reaping hash of the executor   KEYS[5] info hash of the executor
-- ARGV[1] prefix  ARGV[2] executor id  ARGV[3] dead after (s): how old its last ping must be
-- Returns {'DEAD', app, live}  DEAD now (marked by this call or an earlier one): the caller
--            reaps what the reaping hash holds, gives back the entries still pending on the
--            executor unless it is LIVE again (live '1': it gives back its own), then forgets it;
--            app: its app, '' when its info is gone
--         {'ALIVE'}  a recent ping: nothing to do
--         {'GONE'}   nothing to do (another manager finished the reap)
local eid = ARGV[2]
local ts = now()
local last = tonumber(redis.call('ZSCORE', KEYS[1], eid))
if last and ts - last >= tonumber(ARGV[3]) then
  for _, m in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    local id = string.match(m, '^[^/]*/(.*)$')
    local h = redis.call('HMGET', k_task(id), 'status', 'executor_id', 'lease')
    if h[1] == S.RUNNING and h[2] == eid then redis.call('HSET', KEYS[4], m, h[3]) end
  end
  redis.call('DEL', KEYS[3])
  -- its offers of push delivery (offer.lua): no create may claim a run for it any more
  local app = redis.call('HGET', KEYS[5], 'app')
  if app then
    local prefix = eid .. ' '
    for _, o in ipairs(redis.call('LRANGE', k_idle(app), 0, -1)) do
      if string.sub(o, 1, #prefix) == prefix then redis.call('LREM', k_idle(app), 0, o) end
    end
  end
  redis.call('ZREM', KEYS[1], eid)
  redis.call('ZADD', KEYS[2], ts, eid)
  last = nil
end
if redis.call('ZSCORE', KEYS[2], eid) then
  local live = '0'
  if last then live = '1' end
  return {'DEAD', redis.call('HGET', KEYS[5], 'app') or '', live}
end
if last then return {'ALIVE'} end
return {'GONE'}
