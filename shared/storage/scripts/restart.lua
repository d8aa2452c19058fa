-- restart.lua: a fresh run of a task.  terminal -> IDLE (new job id, retries 0), then, if it
-- is due now, QUEUED in the same step.  Used by tasks.restart, by cron's next fire and by
-- next_task chaining.
--   from 'first'   stage 0, results cleared
--   from 'current' resume at the stage where the run stopped (results before it kept);
--                  a FINISHED task has no such stage and starts from the first
-- Chaining also starts a task that is IDLE (never queued); `chain_from` (the finishing run's
-- job id) makes a repeated chaining step a no-op.
-- KEYS[1] task hash   KEYS[2] due zset   KEYS[3] inbox   KEYS[4] ended zset
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] '1' dry run | '0' apply  ARGV[4] new job id
-- ARGV[5] from ('first'|'current')  ARGV[6] due at (UNIX s; '' = now)
-- ARGV[7] mode ('restart' | 'cron' | 'chain')  ARGV[8] chain_from job id (chain) or cron_at
-- Returns {'NOT_FOUND'} | {status after, changed '1'|'0', error ''|reason}
local tkey, id, mode = KEYS[1], ARGV[2], ARGV[7]
local h = redis.call('HMGET', tkey, 'status', 'app', 'stage', 'stages', 'cleaned', 'enabled',
  'plan', 'chained_from')
local status, app = h[1], h[2]
if not status then return {'NOT_FOUND'} end
local m = member(app, id)
if mode == 'chain' and h[8] == ARGV[8] then return {status, '0', 'already chained from this run'} end
if not TERMINAL[status] and not (mode == 'chain' and status == S.IDLE) then
  return {status, '0', 'INVALID_TRANSITION: ' .. status .. ' is not terminal'}
end
if h[5] == '1' then return {status, '0', 'cleaned: its kws and results are gone'} end
if mode == 'cron' then redis.call('ZREM', KEYS[4], m) end
local ts = now()
local due_at = tonumber(ARGV[6])
local queue_now = h[6] == '1' and not (due_at and due_at > ts)
if ARGV[3] == '1' then
  if queue_now then return {S.QUEUED, '1', ''} end
  return {S.IDLE, '1', ''}
end
local s = 0
if ARGV[5] == 'current' and status ~= S.FINISHED then s = tonumber(h[3]) end
for i = s, tonumber(h[4]) - 1 do redis.call('HDEL', tkey, 'r.' .. i) end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[2], m)
redis.call('HSET', tkey, 'job_id', ARGV[4], 'stage', s, 'attempt', 0, 'retries', 0,
  'interruptions', 0, 'int_stage', '', 'exec_used', 0, 'error', '', 'exit_code', '',
  'queued_at', '', 'wait_deadline', '', 'next_run', '')
if mode == 'chain' then redis.call('HSET', tkey, 'chained_from', ARGV[8]) end
if mode == 'cron' then redis.call('HSET', tkey, 'cron_at', ARGV[8]) end
set_status(tkey, id, app, status, S.IDLE, ts)
if queue_now then
  local verdict = advance(tkey, id, app, s, cjson.decode(h[7]), ts)
  settle(tkey, id, app, S.IDLE, verdict, ts)
elseif due_at and h[6] == '1' then
  redis.call('HSET', tkey, 'next_run', fmt(due_at))
  redis.call('ZADD', KEYS[2], due_at, m)
end
return {redis.call('HGET', tkey, 'status'), '1', ''}
