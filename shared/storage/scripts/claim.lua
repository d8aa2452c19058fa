-- claim.lua: an executor takes a task it read from its app stream.  QUEUED -> RUNNING.
-- The stream entry is acknowledged here, in the same step that records the claim, so an
-- entry is never acknowledged for work nobody holds.
-- One call claims one or more entries (of one partition): the layout below repeats, 5 KEYS
-- and 7 ARGV (after the shared ARGV[1]) per entry, and the reply is the list of the entries'
-- replies, in order.  Each claim is decided and written on its own, as if alone; only the
-- writes to shared keys (indexes, running set, deadlines, XACK) go out once per batch (B, in
-- _lib.lua), so 64 claims cost about 2 commands each instead of 13.  A claim that raises an
-- error (a bug) has {err = message} as its reply and the others stand.
-- The writes of a claim (claim_run) and its reply (claim_reply) are in _lib.lua: create.lua makes
-- the same claim for an executor that offered a free slot (push delivery, _lib.lua push).
-- KEYS[1] task hash   KEYS[2] app stream   KEYS[3] executors zset
-- KEYS[4] running set of this executor     KEYS[5] deadlines zset
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] stream entry id  ARGV[4] job id of the entry
-- ARGV[5] executor id  ARGV[6] lease token (fresh per claim; a replay with the same token
--   after a lost reply gets the same answer)
-- ARGV[7] '1' when the executor holds a permit under this lease for each of the task's limit
--   keys (limit_acquire.lua), '' otherwise
-- ARGV[8] '1': tracing is on: the reply has the task's `trace` field too, when it has one
--   (stagewise.tracing)
-- Returns, per entry:
--         {'OK', field, value, ...}   what the executor runs the task with: doc, kws, job_id,
--            stage, stages, retries, attempt, exec_deadline and the results r.<i> of the
--            stages before the current one (not the whole hash: a smaller reply to build and parse)
--         {'STALE'}  the entry no longer matches a QUEUED run at a call stage; entry
--            acknowledged, drop it (a run queued at a timer or message stage, as versions
--            before 0.2 did, is advanced here instead: an executor only ever runs calls)
--         {'DEAD'}   this executor is not registered (declared dead by mark_dead.lua, or its
--            registry lost with Redis's data): nothing written, the entry stays pending; the
--            executor gives it back (redeliver.lua), gives up its runs of this partition and
--            registers again.  The check comes first, so no claim is ever recorded for an
--            executor whose running set the manager has already swept
--         flow control (SPEC §2a; nothing written, the entry stays pending on the executor):
--         {'LIMITED', 'l', limits, 'o', order}  the task has limits and no permits were presented: the
--            executor asks for them (the entry's hint may predate them) and claims again
--         {'REVOKED'}  the manager took the permits of this lease back (their claim was late):
--            the executor asks again under a fresh lease
--         {'PAUSED', 'until', until}  the app is paused (apps.pause): the entry goes back on its stream
local live = {}    -- executor id -> registered (looked up once per call)
local paused = {}  -- app -> paused until (0: not paused)

local function claim_one(K, A)
local tkey, id = K[1], A[2]
if live[A[5]] == nil then live[A[5]] = redis.call('ZSCORE', K[3], A[5]) ~= false end
if not live[A[5]] then
  return {'DEAD'}
end
-- The fields as a table made by one constructor (a table filled field by field is rebuilt as
-- it grows: a microsecond per run).  Not read: error, cron, next_task (set_status reads them
-- itself in the rare case it needs them: a notify task, a stale entry that finishes).
local v = redis.call('HMGET', tkey, 'status', 'lease', 'job_id', 'app', 'max_exec', 'exec_used',
  'attempt', 'exec_deadline', 'stage', 'stages', 'retries', 'doc', 'kws', 'plan', 'tags', 'group',
  'notify', 'limits', 'priority', 'created', 'parent')
local t = {status = v[1], lease = v[2], job_id = v[3], app = v[4], max_exec = v[5], exec_used = v[6],
  attempt = v[7], exec_deadline = v[8], stage = v[9], stages = v[10], retries = v[11], doc = v[12],
  kws = v[13], plan = v[14], tags = v[15], group = v[16], notify = v[17], limits = v[18],
  priority = v[19], created = v[20], parent = v[21]}

if t.status == S.RUNNING and t.lease == A[6] then
  return claim_reply(tkey, t, A)  -- a replay of a claim whose reply was lost: same answer, nothing written twice
end
-- flow control: checked before anything is written (the entry stays pending on us)
local ts = now()
if t.status == S.QUEUED and t.job_id == A[4] then
  if paused[t.app] == nil then
    paused[t.app] = tonumber(redis.call('HGET', k_paused_apps(), t.app) or '') or 0
  end
  if paused[t.app] > ts then return {'PAUSED', 'until', fmt(paused[t.app])} end
  if t.limits and t.limits ~= '' then
    if A[7] ~= '1' then
      return {'LIMITED', 'l', t.limits, 'o', fmt((9 - (tonumber(t.priority) or 0)) * 1e10 + (tonumber(t.created) or 0))}
    end
    if redis.call('ZSCORE', k_revoked(), A[6]) then return {'REVOKED'} end
  end
end
wr('XACK', K[2], GROUP, A[3])
if t.status ~= S.QUEUED or t.job_id ~= A[4] then
  return {'STALE'}
end
return claim_run(K, A, t, ts)
end

return many_runs(MANY.claim, claim_one)
