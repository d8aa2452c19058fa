-- redeliver.lua: a stream entry was delivered to an executor that died before claiming it
-- (it is still pending for that consumer).  Puts a fresh hint on the stream if the task is
-- still QUEUED for that run, records its id in the task's `entry` field (see enqueue in
-- _lib.lua), and acknowledges the old entry.  Status unchanged (QUEUED).
-- KEYS[1] task hash   KEYS[2] app stream
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] entry id  ARGV[4] job id of the entry
-- Returns {'REQUEUED'} | {'DROPPED'}
local h = redis.call('HMGET', KEYS[1], 'status', 'job_id')
local out = 'DROPPED'
if h[1] == S.QUEUED and h[2] == ARGV[4] then
  local entry = xadd_hint(KEYS[2], KEYS[1], ARGV[2], ARGV[4])
  redis.call('HSET', KEYS[1], 'entry', entry)
  out = 'REQUEUED'
end
redis.call('XACK', KEYS[2], GROUP, ARGV[3])
return {out}
