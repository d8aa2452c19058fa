-- requeue_lost.lua: the manager's reconcile role (manager/scheduler.py) looks at a task QUEUED
-- for longer than the grace period.  If the dispatch hint its `entry` field names (enqueue in
-- _lib.lua) is gone, no executor will ever claim it: Redis lost writes (a restart from an
-- older file, a failover to a replica that lagged), or the entry was deleted or trimmed by
-- hand.  The lost delivery is then made good: QUEUED -> SUSPENDED -> QUEUED at the same stage
-- (SPEC §6, "lost delivery detected"), in one step, with a fresh hint on the stream (the
-- stream's group made again at 0 if it went with the stream, the stream in the apps set), and
-- counted in the app's metrics hash (lost_deliveries).
-- The hint is gone when
--   it is not in the stream (XRANGE id id is empty: deleted, trimmed, or the stream is gone), or
--   it was delivered (its id <= the group's last-delivered-id) and is pending on no consumer:
--     a claim acknowledges its entry in the step that takes the task out of QUEUED, and a
--     give-back (redeliver.lua) in the step that records a fresh hint, so a delivered entry
--     that is no longer pending while the task is still QUEUED with it was acknowledged in a
--     past Redis no longer has (or by hand).
-- It is not gone while it waits on the stream undelivered (its group gone too: the executors
-- make the group again at 0 and read it), nor while it is pending on a consumer (that claims
-- it or gives it back; a dead consumer's entries are given back by the reap).
-- A task queued by an older version has no `entry`: it gets a fresh hint and its id from then
-- on (if its old hint still exists, the claim of the second one answers STALE: harmless).
-- Fenced by job id and entry: the task must still be QUEUED for that run, with the hint the
-- caller looked at.  Reads first, then writes.
-- KEYS[1] task hash
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] job id  ARGV[4] entry id the caller read ('' none)
-- Returns {'REQUEUED'}     the hint was gone: a fresh one is on the stream
--         {'HINTED'}       no entry recorded (queued by an older version): a fresh hint, its id kept
--         {'UNDELIVERED'}  the hint is on the stream, not yet delivered: nothing to do
--         {'PENDING'}      delivered and pending on a consumer: nothing to do
--         {'SKIP'}         the task is no longer QUEUED with that job id and entry, or a limit
--                          key holds it back
local tkey, id = KEYS[1], ARGV[2]
local h = redis.call('HMGET', tkey, 'status', 'job_id', 'entry', 'app', 'priority', 'blocked_by')
local entry = h[3] or ''
if h[1] ~= S.QUEUED or h[2] ~= ARGV[3] or entry ~= ARGV[4] then return {'SKIP'} end
-- held back by a limit key (hold.lua): it has no hint on purpose, and the key's held set
-- (or its woken set, whose reservations lapse and ask again) brings it back
if h[6] and h[6] ~= '' then return {'SKIP'} end
local app, prio = h[4], h[5]
local stream = k_stream(app, prio)

-- a <= b for stream ids 'ms-seq'
local function not_after(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as <= bs)
end

if entry ~= '' and #redis.call('XRANGE', stream, entry, entry) > 0 then
  local last
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    if f['name'] == GROUP then last = f['last-delivered-id'] end
  end
  if not last or not not_after(entry, last) then return {'UNDELIVERED'} end
  if #redis.call('XPENDING', stream, GROUP, entry, entry, 1) > 0 then return {'PENDING'} end
end

redis.pcall('XGROUP', 'CREATE', stream, GROUP, '0', 'MKSTREAM')  -- BUSYGROUP (it exists) is fine
redis.call('SADD', k_apps(), stream_name(app, prio))
if entry == '' then
  redis.call('HSET', tkey, 'entry', xadd_hint(stream, tkey, id, h[2]))
  return {'HINTED'}
end
local ts = now()
redis.call('HINCRBY', k_metrics(app), 'lost_deliveries', 1)
set_status(tkey, id, app, S.QUEUED, S.SUSPENDED, ts)
enqueue(tkey, id, app, S.SUSPENDED, ts)
return {'REQUEUED'}
