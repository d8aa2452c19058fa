-- unblock.lua: a limit key woke a task it held (limit_pump): a fresh hint on its stream, so
-- an executor claims it (its slot is reserved in the key until then).  A task not parked yet
-- (its hold.lua still to come) is marked `woke`, and hold.lua requeues it instead of parking.
-- Idempotent: a task already back on its stream is only marked.
-- KEYS[1] task hash
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] job id of the held run
-- Returns {'REQUEUED'} (back on its stream) | {'WOKE'} (marked) | {'STALE'} (not QUEUED for that
--   run: cancelled, deleted, run again; the caller drops the ref from the key)
local tkey, id = KEYS[1], ARGV[2]
local h = redis.call('HMGET', tkey, 'status', 'job_id', 'blocked_by', 'app', 'priority')
if h[1] ~= S.QUEUED or h[2] ~= ARGV[3] then return {'STALE'} end
if h[3] and h[3] ~= '' then
  redis.call('HSET', tkey, 'blocked_by', '', 'woke', '', 'entry', xadd_hint(k_stream(h[4], h[5]), tkey, id, h[2]))
  return {'REQUEUED'}
end
redis.call('HSET', tkey, 'woke', '1')
return {'WOKE'}
