-- create.lua: tasks.create.  (none) -> QUEUED | WAITING | IDLE, or replace a terminal task.
-- A task due now is put on its app stream in this same step, not at the next manager tick.
-- KEYS[1] task hash        KEYS[2] app stream of the task's priority     KEYS[3] due zset
-- KEYS[4] apps set         KEYS[5] attempts list  KEYS[6] inbox list
-- ARGV[1] prefix  ARGV[2] id  ARGV[3] app  ARGV[4] on_conflict (error|ignore|replace)
-- ARGV[5] due at (UNIX s; '' = now)  ARGV[6] enabled ('1'|'0')  ARGV[7] stream name (apps member)
-- ARGV[8] JSON array of the new hash's field, value strings (doc, kws, plan, job_id, settings)
-- Returns {'CREATED', field, value, ...} the fields set here (status, times, stage, wait fields;
--         the rest is ARGV[8]) | {'IGNORED', field, value, ...} the
--         existing one (on_conflict ignore) | {'EXISTS'} | {'INVALID_TRANSITION', from}
local tkey, id, app = KEYS[1], ARGV[2], ARGV[3]
local ts = now()

local old = redis.call('HMGET', tkey, 'status', 'app')
if old[1] then
  if ARGV[4] == 'ignore' then
    local out = redis.call('HGETALL', tkey)
    table.insert(out, 1, 'IGNORED')
    return out
  end
  if ARGV[4] ~= 'replace' then return {'EXISTS'} end
  if not TERMINAL[old[1]] then return {'INVALID_TRANSITION', old[1]} end
  unindex(tkey, id, old[2], old[1])
  redis.call('ZREM', KEYS[3], old[2] .. '/' .. id)
  redis.call('DEL', tkey, KEYS[5], KEYS[6])
end

if redis.call('SADD', KEYS[4], ARGV[7]) == 1 then
  -- The group exists before anything is queued and starts at 0: nothing put on the stream
  -- before the first executor of the app started can be skipped.
  redis.pcall('XGROUP', 'CREATE', KEYS[2], GROUP, '0', 'MKSTREAM')  -- BUSYGROUP is fine
end

local fields = cjson.decode(ARGV[8])
for _, v in ipairs({'id', id, 'app', app, 'created', fmt(ts), 'stage', '0'}) do fields[#fields + 1] = v end
redis.call('HSET', tkey, unpack(fields))

local due_at = tonumber(ARGV[5])
if ARGV[6] ~= '1' then
  redis.call('HSET', tkey, 'next_run', '')
  set_status(tkey, id, app, nil, 'IDLE', ts)
elseif due_at and due_at > ts then
  redis.call('HSET', tkey, 'next_run', fmt(due_at))
  redis.call('ZADD', KEYS[3], due_at, app .. '/' .. id)
  set_status(tkey, id, app, nil, 'IDLE', ts)
else
  local plan = cjson.decode(redis.call('HGET', tkey, 'plan'))
  local verdict = advance(tkey, id, app, 0, plan, ts)
  settle(tkey, id, app, nil, verdict, ts)
end
-- What this script set on top of ARGV[8] (the caller has the rest): no HGETALL of ~45 fields.
local SET_HERE = {'id', 'app', 'created', 'stage', 'stage_started', 'status', 'updated', 'next_run', 'queued_at',
  'wait_deadline', 'exit_code', 'error'}
local vals = redis.call('HMGET', tkey, unpack(SET_HERE))
local out = {'CREATED'}
for i, f in ipairs(SET_HERE) do
  if vals[i] then
    out[#out + 1] = f
    out[#out + 1] = vals[i]
  end
end
return out
