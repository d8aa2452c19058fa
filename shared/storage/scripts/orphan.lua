-- orphan.lua: the manager's reconcile role (manager/scheduler.py) takes back a RUNNING task that
-- no live executor runs.  After Redis lost writes (a restart from an older file, a failover to a
-- replica that lagged) a task can be RUNNING again in the name of an executor that has finished
-- it, or one that is no longer registered; nothing else would move it before its execution
-- deadline.  RUNNING -> SUSPENDED -> QUEUED at its current stage, in one step (like reap.lua),
-- when, all read in this step:
--   (a) 'unregistered': its executor is in neither the executors zset nor the dead-executors
--       zset, and has no reaping hash: no registered executor holds it and no reap will take
--       it back.  (Such an executor, if alive, is told so by its next ping, gives up its runs
--       of the partition and registers again; its later writes for this run answer STALE.)
--   (b) 'not_held': its executor is live (in the executors zset) and its last report (ping.lua:
--       `held`, the leases of the runs it holds in this partition; `settled`, the highest lease
--       counter whose claim reply it had fully processed; `lease_prefix`) was made after the
--       claim (reported > run_started, both Redis time) and does not hold the lease: the lease
--       has the executor's prefix, a counter <= settled, and is not in held.
-- Why (b) never takes a run a live executor is running: an executor starts a run only from a
-- claim reply, once per lease, and reports it in `held` from then until the run is over (its
-- end, or its hand-back, has landed); `settled` moves past a lease only once its claim reply
-- was processed.  So a lease <= settled missing from a report is a run the executor had let go
-- before that report, and will never run again.  A claim in flight (counter above settled),
-- a lease of another prefix, an executor that has not reported since the claim (or never does:
-- an older version) are left alone.  An executor declared dead (dead-executors zset, reaping
-- hash) is the reap's (reap.lua).  No cancel is sent: under (b) nothing runs, under (a) the
-- executor gives its runs up itself.
-- Not counted as an interruption: max_interruptions stops a stage that brings its executor
-- down again and again, and an orphan is made by Redis losing writes, not by the stage;
-- counting it would fail sound tasks with EXECUTOR_LOST after a few Redis incidents.  A run
-- orphaned again and again (an executor that neither ends nor hands back a run) still ends:
-- its RUNNING time is banked here (release) and counts towards its execution deadline.
-- Fenced by the lease the caller read.  Reads first, then writes.
-- KEYS[1] task hash   KEYS[2] executors zset   KEYS[3] dead-executors zset
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] the task's lease, as the caller read it
-- Returns {'QUEUED', 'unregistered' | 'not_held'}  taken back (an attempt with outcome lost)
--         {'SKIP'}        no longer RUNNING under that lease
--         {'REAPING'}     its executor is declared dead: the reap takes the run back
--         {'UNREPORTED'}  no report of its live executor since the claim
--         {'UNSETTLED'}   a claim in flight (counter above settled) or a lease of another prefix
--         {'HELD'}        its executor reported the lease as held
local tkey, id = KEYS[1], ARGV[2]
local t = prefetch(tkey, {'status', 'lease', 'executor_id', 'app', 'stage', 'job_id',
  'stage_started', 'run_started', 'exec_used'})
if t.status ~= S.RUNNING or t.lease ~= ARGV[3] then return {'SKIP'} end
local eid = t.executor_id or ''
local why
if not redis.call('ZSCORE', KEYS[2], eid) then
  if redis.call('ZSCORE', KEYS[3], eid) or redis.call('EXISTS', k_reaping(eid)) == 1 then
    return {'REAPING'}
  end
  why = 'unregistered'
else
  local r = redis.call('HMGET', k_executor(eid), 'lease_prefix', 'settled', 'held', 'reported')
  local settled, reported, started = tonumber(r[2]), tonumber(r[4]), tonumber(t.run_started)
  if not settled or not reported or not started or reported <= started then return {'UNREPORTED'} end
  local prefix, n = string.match(t.lease, '^(.*)%.(%d+)$')
  if not prefix or prefix ~= r[1] or tonumber(n) > settled then return {'UNSETTLED'} end
  local ok, held = pcall(cjson.decode, r[3] or '')
  if not ok or type(held) ~= 'table' then return {'UNREPORTED'} end
  for _, lease in ipairs(held) do
    if lease == t.lease then return {'HELD'} end
  end
  why = 'not_held'
end
local ts = now()
local app, s = t.app, tonumber(t.stage)
record_attempt(id, {job_id = t.job_id, stage = s, executor_id = eid, started = tonumber(t.stage_started),
  ended = ts, outcome = 'lost', error = cjson.null})
release(tkey, id, app, ts, t)
redis.call('HINCRBY', k_metrics(app), 'orphans', 1)
set_status(tkey, id, app, S.RUNNING, S.SUSPENDED, ts)
enqueue(tkey, id, app, S.SUSPENDED, ts)
return {S.QUEUED, why}
