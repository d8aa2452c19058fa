-- spawn.lua: the manager's spawn role starts the children of a parent's children stage
-- (SPEC §3a), or fails the parent's run when they cannot be made (the role filled their
-- documents: templates are Python).  The parent stays WAITING; its join starts here.
--   (none) -> QUEUED | WAITING | IDLE for each child (children of the same ids from an earlier
--   start are replaced: cancelled first if still live), WAITING -> QUEUED | WAITING | FINISHED
--   for the parent when there are no children (a map over an empty list: result []),
--   WAITING -> FAILED for the parent (ARGV[8] set, or a child id taken by another task).
-- Fenced by the spawn entry: the parent's run must be WAITING at this stage under this job id,
-- and its entry in the spawns zset must still have the score the caller read (a later arrival
-- at this stage, after a retry from the first stage, has a score of its own); so of two
-- managers racing for an entry, one starts the children and the other gets STALE.  All checks
-- come before any write.
-- KEYS[1] parent task hash   KEYS[2] spawns zset   KEYS[3] join hash   KEYS[4] live children set
-- KEYS[5..] 6 per child, in child order: task hash, app stream of its priority, due zset,
--           apps set, attempts list, inbox list
-- ARGV[1] prefix  ARGV[2] parent id  ARGV[3] parent's member (app/id)  ARGV[4] job id
-- ARGV[5] stage  ARGV[6] score of the spawn entry  ARGV[7] on_failure ('fail'|'continue')
-- ARGV[8] error JSON {code, message}: fail the parent's run instead ('' = start the children)
-- ARGV[9..] 6 per child, in child order: id, app, due at (UNIX s; '' = now), enabled,
--           stream name (apps member), JSON array of the new hash's field, value strings
-- Returns {'SPAWNED', n} | {'FAILED', code} | {'STALE'}
local ptkey, pid, m = KEYS[1], ARGV[2], ARGV[3]
local score = redis.call('ZSCORE', KEYS[2], m)
if not score or tonumber(score) ~= tonumber(ARGV[6]) then return {'STALE'} end
local p = redis.call('HMGET', ptkey, 'status', 'app', 'job_id', 'stage', 'plan', 'spawns')
local s = tonumber(ARGV[5])
if p[1] ~= S.WAITING or p[3] ~= ARGV[4] or p[4] ~= ARGV[5] then
  redis.call('ZREM', KEYS[2], m)
  return {'STALE'}
end
local app, n = p[2], (#KEYS - 4) / 6
local ts = now()

local function fail_parent(code, message)
  redis.call('ZREM', KEYS[2], m)
  record_attempt(pid, {job_id = ARGV[4], stage = s, executor_id = cjson.null, started = ts, ended = ts,
    outcome = 'error', error = {code = code, stage = s, message = message}})
  fail(ptkey, pid, app, S.WAITING, ts, cjson.encode({code = code, stage = s, message = message}))
  return {S.FAILED, code}
end

if ARGV[8] ~= '' then
  local e = cjson.decode(ARGV[8])
  return fail_parent(e.code, e.message)
end
-- A child id held by a task that is not this parent's child is never taken over.
for i = 0, n - 1 do
  local c = redis.call('HMGET', KEYS[5 + i * 6], 'status', 'parent')
  if c[1] and c[2] ~= pid then
    return fail_parent('INVALID_PARAMS', 'child id ' .. ARGV[9 + i * 6] .. ' is taken by a task that is not a child of this one')
  end
end

redis.call('ZREM', KEYS[2], m)
local token = ARGV[4] .. '/' .. redis.call('HINCRBY', ptkey, 'spawns', 1)
redis.call('HSET', ptkey, 'spawn_token', token)
local ids = {}
for i = 0, n - 1 do ids[#ids + 1] = ARGV[9 + i * 6] end
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'token', token, 'stage', s, 'total', n, 'ended', 0, 'on_failure', ARGV[7],
  'ids', n > 0 and cjson.encode(ids) or '[]')
-- Children of an earlier start that are still live (the parent was restarted before the
-- cascade cancelled them): cancelled now, so the live set holds this start's children only;
-- their ends count nowhere (their token is not the join's any more).
for _, cid in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  local ck = k_task(cid)
  local c = redis.call('HMGET', ck, 'status', 'app', 'parent')
  if c[1] and not TERMINAL[c[1]] and c[3] == pid then
    cancel_task(ck, cid, c[2], c[1], ts, 'canceled: its parent started its children again')
  end
end
redis.call('DEL', KEYS[4])
for i = 0, n - 1 do
  local kk, aa = i * 6, 9 + i * 6
  local cid = ARGV[aa]
  redis.call('SADD', KEYS[4], cid)
  local code = store_new(
    {task = KEYS[kk + 5], stream = KEYS[kk + 6], due = KEYS[kk + 7], apps = KEYS[kk + 8],
     attempts = KEYS[kk + 9], inbox = KEYS[kk + 10]},
    {id = cid, app = ARGV[aa + 1], on_conflict = 'replace', due_at = ARGV[aa + 2],
     enabled = ARGV[aa + 3], stream_name = ARGV[aa + 4], fields = ARGV[aa + 5],
     extra = {'parent', pid, 'parent_job', ARGV[4], 'parent_stage', s, 'parent_token', token,
              'child_index', i}},
    ts)
end
if n == 0 then join(ptkey, pid, app, s, 0, p[5], ts) end
return {'SPAWNED', n}
