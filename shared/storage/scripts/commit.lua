-- commit.lua: an executor commits the result of the stage it ran.
-- RUNNING -> RUNNING (next stage is a call) | WAITING (timer/message) | FINISHED.
-- Fenced: the write is applied only if the task is RUNNING under this job id, this lease
-- and this stage; so a result is committed exactly once and a stale run writes nothing.
-- One call commits one or more runs (of one partition): the layout below repeats, 2 KEYS and
-- 7 ARGV (after the shared ARGV[1]) per run, and the reply is the list of the runs' replies,
-- in order.  Each commit is decided and written on its own; the writes to shared keys
-- (indexes, running sets, deadlines, metric counters) go out once per batch (B, in _lib.lua).
-- A commit that raises an error (a bug) has {err = message} as its reply, the others stand.
-- KEYS[1] task hash   KEYS[2] attempts list
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] job id  ARGV[4] lease  ARGV[5] stage
-- ARGV[6] result (JSON)  ARGV[7] outcome of the attempt ('ok' | 'skipped')
-- ARGV[8] the stage's method, for the duration histogram (optional)
-- Returns, per run:
--         {'RUN', stage, taken_stage, taken_json, ...}   go on with `stage` (messages that
--            were waiting in the inbox became the results of the message stages passed)
--         {'WAITING', stage} | {'FINISHED', stage}   the executor lets go of the task
--         {'STALE'}  the run no longer holds the task: abandon it
--         {'REPLAY', stage}  this commit was applied before (its reply was lost): the run
--            still holds the task at `stage`; the executor hands it back (handback.lua)
local function commit_one(K, A)
local tkey, id = K[1], A[2]
-- One constructor, not a table filled field by field (see claim.lua).  `error` is not read:
-- finish() clears it, and set_status reads it for a task with notify.
local v = redis.call('HMGET', tkey, 'status', 'job_id', 'lease', 'stage', 'app', 'plan', 'executor_id',
  'stage_started', 'run_started', 'exec_used', 'tags', 'group', 'notify', 'cron', 'next_task',
  'parent', 'spawn_token', 'limits')
local t = {status = v[1], job_id = v[2], lease = v[3], stage = v[4], app = v[5], plan = v[6],
  executor_id = v[7], stage_started = v[8], run_started = v[9], exec_used = v[10], tags = v[11],
  group = v[12], notify = v[13], cron = v[14], next_task = v[15], parent = v[16],
  spawn_token = v[17], limits = v[18]}
if t.status ~= S.RUNNING or t.job_id ~= A[3] or t.lease ~= A[4] then
  return {'STALE'}
end
if t.stage ~= A[5] then
  -- Same run and lease, stage already past it: only this executor could have moved it, so
  -- this is the replay of a commit whose reply was lost.  Nothing is written twice.
  if tonumber(t.stage) > tonumber(A[5]) then return {'REPLAY', t.stage} end
  return {'STALE'}
end
local ts = now()
local app, s = t.app, tonumber(A[5])
local started = tonumber(t.stage_started)
put('r.' .. A[5], A[6])  -- A[5] is the stage as stored (checked above)
record_attempt(id, {job_id = A[3], stage = A[5], executor_id = t.executor_id,
  started = started, ended = ts, outcome = A[7], error = cjson.null})
observe(app, A[8], A[7], ts - (started or ts))
local verdict, stage, taken = advance(tkey, id, app, s + 1, decode_plan(t.plan), ts)
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
end

return many_runs(MANY.commit, commit_one)
