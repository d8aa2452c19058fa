-- commit.lua: an executor commits the result of the stage it ran.
-- RUNNING -> RUNNING (next stage is a call) | WAITING (timer/message) | FINISHED.
-- Fenced: the write is applied only if the task is RUNNING under this job id, this lease
-- and this stage; so a result is committed exactly once and a stale run writes nothing.
-- KEYS[1] task hash   KEYS[2] attempts list
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] job id  ARGV[4] lease  ARGV[5] stage
-- ARGV[6] result (JSON)  ARGV[7] outcome of the attempt ('ok' | 'skipped')
-- ARGV[8] the stage's method, for the duration histogram (optional)
-- Returns {'RUN', stage, taken_stage, taken_json, ...}   go on with `stage` (messages that
--            were waiting in the inbox became the results of the message stages passed)
--         {'WAITING', stage} | {'FINISHED', stage}   the executor lets go of the task
--         {'STALE'}  the run no longer holds the task: abandon it
--         {'REPLAY', stage}  this commit was applied before (its reply was lost): the run
--            still holds the task at `stage`; the executor hands it back (handback.lua)
local tkey, id = KEYS[1], ARGV[2]
local t = prefetch(tkey, {'status', 'job_id', 'lease', 'stage', 'app', 'plan', 'executor_id',
  'stage_started', 'run_started', 'exec_used', 'tags', 'group', 'notify', 'error', 'cron', 'next_task',
  'parent'})
if t.status ~= S.RUNNING or t.job_id ~= ARGV[3] or t.lease ~= ARGV[4] then
  return {'STALE'}
end
if t.stage ~= ARGV[5] then
  -- Same run and lease, stage already past it: only this executor could have moved it, so
  -- this is the replay of a commit whose reply was lost.  Nothing is written twice.
  if tonumber(t.stage) > tonumber(ARGV[5]) then return {'REPLAY', t.stage} end
  return {'STALE'}
end
local ts = now()
local app, s = t.app, tonumber(ARGV[5])
put('r.' .. s, ARGV[6])
record_attempt(id, {job_id = ARGV[3], stage = s, executor_id = t.executor_id,
  started = tonumber(t.stage_started), ended = ts, outcome = ARGV[7], error = cjson.null})
observe(app, ARGV[8], ARGV[7], ts - (tonumber(t.stage_started) or ts))
local verdict, stage, taken = advance(tkey, id, app, s + 1, cjson.decode(t.plan), ts)
if verdict == 'RUN' then
  set_status(tkey, id, app, S.RUNNING, S.RUNNING, ts, t)  -- `updated` and the index scores
  local out = {'RUN', stage}
  for i = 1, #taken do out[#out + 1] = taken[i] end
  return out
end
release(tkey, id, app, ts, t)
if verdict == S.WAITING then
  set_status(tkey, id, app, S.RUNNING, S.WAITING, ts, t)
else
  finish(tkey, id, app, S.RUNNING, ts, t)
end
return {verdict, stage}
