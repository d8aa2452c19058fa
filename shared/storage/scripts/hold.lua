-- hold.lua: a limit key held back the task an executor read (limit_acquire.lua answered
-- HELD, and the task is in the key's held set).  QUEUED stays QUEUED: the entry is
-- acknowledged and the task parks with `blocked_by` until the key wakes it (unblock.lua puts
-- a fresh hint on its stream); nothing looks at it meanwhile (the reconcile role skips it).
-- If the key woke it already (unblock.lua came first and left `woke`), a fresh hint goes on
-- the stream at once instead.
-- KEYS[1] task hash   KEYS[2] app stream of the entry
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] entry id  ARGV[4] job id of the entry  ARGV[5] limit key
-- Returns {'HELD'} | {'REQUEUED'} (woken meanwhile) | {'STALE'} (no longer QUEUED for that run)
local tkey, id = KEYS[1], ARGV[2]
local h = redis.call('HMGET', tkey, 'status', 'job_id', 'woke', 'app', 'priority')
local out
if h[1] ~= S.QUEUED or h[2] ~= ARGV[4] then
  out = 'STALE'
elseif h[3] == '1' then
  redis.call('HSET', tkey, 'woke', '', 'blocked_by', '', 'entry', xadd_hint(k_stream(h[4], h[5]), tkey, id, h[2]))
  out = 'REQUEUED'
else
  redis.call('HSET', tkey, 'blocked_by', ARGV[5])
  out = 'HELD'
end
redis.call('XACK', KEYS[2], GROUP, ARGV[3])
return {out}
