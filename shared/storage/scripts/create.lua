-- create.lua: tasks.create.  (none) -> QUEUED | WAITING | IDLE, or replace a terminal task.
-- A task due now is put on its app stream in this same step, not at the next manager tick; or,
-- when an executor of its app offers a free run slot (offer.lua; _lib.lua push), it is claimed
-- for that executor in this same step (QUEUED -> RUNNING, as claim.lua writes it) and the run
-- goes to the executor's own stream instead.  Not pushed: a task with limits, of a paused app,
-- debounced, not due now or not enabled.
-- Debounce (SPEC §2a): a create whose debounce key holds an IDLE task replaces that task's
-- document instead (the id, `created` and the time of the key's first create stay) and moves
-- it to now + period, at most max_wait after the first create.  The key's mapping (Keys.debounce)
-- and every task it debounces live in this partition (keys.debounce_partition, models.place),
-- so finding and replacing the task is this one step.
-- KEYS[1] task hash        KEYS[2] app stream of the task's priority     KEYS[3] due zset
-- KEYS[4] apps set         KEYS[5] attempts list  KEYS[6] inbox list
-- ARGV[1] prefix  ARGV[2] id  ARGV[3] app  ARGV[4] on_conflict (error|ignore|replace)
-- ARGV[5] due at (UNIX s; '' = now)  ARGV[6] enabled ('1'|'0')  ARGV[7] stream name (apps member)
-- ARGV[8] JSON array of the new hash's field, value strings (doc, kws, plan, job_id, settings)
-- ARGV[9] debounce key ('' none)  ARGV[10] its period (s)  ARGV[11] its max_wait (s; '' none)
-- Returns {'CREATED', field, value, ...} the fields set here (status, times, stage, wait fields;
--         the rest is ARGV[8]; status RUNNING, with executor_id, lease and attempt, when pushed) | {'IGNORED', field, value, ...} the
--         existing one (on_conflict ignore) | {'DEBOUNCED', field, value, ...} the whole hash
--         of the key's task, replaced | {'EXISTS'} | {'INVALID_TRANSITION', from}
local dkey = ARGV[9]
local ts = now()
local due_at = ARGV[5]
local first = ts
if dkey ~= '' then
  local old = redis.call('HGET', k_debounce(), dkey)
  local okey = old and k_task(old)
  local h = old and redis.call('HMGET', okey, 'status', 'debounce', 'app', 'created', 'debounce_first')
  -- the mapping is dropped when its task leaves IDLE; the checks guard a hash Redis lost
  if h and h[1] == S.IDLE and h[2] == dkey then
    first = tonumber(h[5]) or ts
    local period, max_wait = tonumber(ARGV[10]), tonumber(ARGV[11])
    local at = ts + period
    if max_wait and first + max_wait < at then at = first + max_wait end
    local run_at = tonumber(due_at)
    if run_at and run_at > at then at = run_at end
    -- validated: writes from here on.  The old document goes whole (indexes of its app,
    -- tags and group, its due entry); the attempts and inbox stay (a message sent early is
    -- the task's, whatever its document).
    unindex(okey, old, h[3], S.IDLE)
    redis.call('ZREM', KEYS[3], member(h[3], old))
    redis.call('DEL', okey)
    local app = ARGV[3]
    if redis.call('SADD', KEYS[4], ARGV[7]) == 1 then
      redis.pcall('XGROUP', 'CREATE', KEYS[2], GROUP, '0', 'MKSTREAM')  -- BUSYGROUP is fine
    end
    local fields = cjson.decode(ARGV[8])
    for _, v in ipairs({'id', old, 'app', app, 'created', h[4], 'stage', '0',
                        'debounce_first', fmt(first)}) do fields[#fields + 1] = v end
    redis.call('HSET', okey, unpack(fields))
    if ARGV[6] ~= '1' then
      put('next_run', '')
      set_status(okey, old, app, S.IDLE, S.IDLE, ts)
    elseif at > ts then
      put('next_run', fmt(at))
      redis.call('ZADD', KEYS[3], at, member(app, old))
      set_status(okey, old, app, S.IDLE, S.IDLE, ts)
    else  -- max_wait is over: it runs now (set_status drops the mapping)
      local plan = cjson.decode(redis.call('HGET', okey, 'plan'))
      settle(okey, old, app, S.IDLE, advance(okey, old, app, 0, plan, ts), ts)
    end
    local out = redis.call('HGETALL', okey)
    table.insert(out, 1, 'DEBOUNCED')
    return out
  end
  -- the first create of the key (or its task started): a new task, due after the period
  local at = ts + tonumber(ARGV[10])
  if tonumber(ARGV[11]) and ts + tonumber(ARGV[11]) < at then at = ts + tonumber(ARGV[11]) end
  if not tonumber(due_at) or tonumber(due_at) < at then due_at = fmt(at) end
end
local code, from = store_new(
  {task = KEYS[1], stream = KEYS[2], due = KEYS[3], apps = KEYS[4], attempts = KEYS[5], inbox = KEYS[6]},
  {id = ARGV[2], app = ARGV[3], on_conflict = ARGV[4], due_at = due_at, enabled = ARGV[6],
   stream_name = ARGV[7], fields = ARGV[8], push = dkey == ''},
  ts)
if code == 'IGNORED' then
  local out = redis.call('HGETALL', KEYS[1])
  table.insert(out, 1, 'IGNORED')
  return out
end
if code ~= 'CREATED' then return {code, from} end
if dkey ~= '' then
  redis.call('HSET', KEYS[1], 'debounce_first', fmt(first))
  if redis.call('HGET', KEYS[1], 'status') == S.IDLE then
    redis.call('HSET', k_debounce(), dkey, ARGV[2])
  end
end
-- What this script set on top of ARGV[8] (the caller has the rest): no HGETALL of ~45 fields.
local SET_HERE = {'id', 'app', 'created', 'stage', 'stage_started', 'status', 'updated', 'next_run',
  'queued_at', 'entry', 'wait_deadline', 'exit_code', 'error', 'debounce_first',
  'executor_id', 'lease', 'run_started', 'exec_deadline', 'attempt'}
return append_fields({'CREATED'}, KEYS[1], SET_HERE)
