-- _lib.lua: helpers prepended to every script of this folder, after the generated prelude
-- (stagewise/storage/prelude.py: PREFIX, GROUP, S, TERMINAL, BUCKETS and the k_* key
-- functions, all made from their one definition in Python; see stagewise/storage/runner.py).
--
-- Conventions of every script:
--   ARGV[1] is the key prefix "{namespace:partition}"; every key a script touches carries it,
--   so all of them hash to one cluster slot.  Keys that depend on data read inside the script
--   (status and app indexes, the running set of the task's executor) come from the k_*
--   functions; statuses are S.<NAME>.
--   Times are the server's clock (TIME), in seconds with microseconds, so that hosts with
--   skewed clocks agree.
--   Every script validates first and writes after: a script that errors mid-way keeps its
--   earlier writes (Redis has no rollback), so nothing after the first write may fail.
-- One TIME per script: a script is one atomic step, so all it does happens at one instant
-- (claim.lua and commit.lua handle many runs per call and would otherwise ask once per run).
local NOW, NOW_TEXT
local function now()
  if not NOW then
    local t = redis.call('TIME')
    NOW = tonumber(t[1]) + tonumber(t[2]) / 1000000
    NOW_TEXT = string.format('%.6f', NOW)
  end
  return NOW
end

-- A time as the text the hashes and the sorted sets are given.  The script's instant is
-- formatted once: a batch of claims or commits writes it a few times per run (updated,
-- run_started, the index scores), and formatting a float is among the costliest things a
-- script does.  A number given to redis.call is formatted too (%.17g), so scores are passed
-- as this text.
local function fmt(x)
  if NOW and x == NOW then return NOW_TEXT end
  return string.format('%.6f', x)
end

-- stagewise.keys.stream_name: 'billing' for priority 0, 'billing:7' above (a test compares them)
local function stream_name(app, prio)
  if not prio or prio == '' or prio == '0' or prio == 0 then return app end
  return app .. ':' .. prio
end
local function k_stream(app, prio) return k_stream_of(stream_name(app, prio)) end

-- Member of the scheduling sorted sets (stagewise.keys.member).
local function member(app, id) return app .. '/' .. id end

-- Writes to shared keys (the indexes, the running sets, the deadlines zset, stream
-- acknowledgements, metric counters), gathered when B.on: a script that handles many runs in one
-- call (claim.lua, commit.lua) sets it, and its flush() sends one command per key and kind for
-- the whole batch (one ZADD to i:s:RUNNING for 64 claims, one HINCRBY per counter) instead of one
-- per run.  Same result: the ops on a key keep their order (only neighbours of one kind are
-- joined), and nothing in those scripts reads these keys after writing them.  Off (every other
-- script): each write is sent at once.
-- One or two arguments after the key (every write of this kind has at most two: a member, a
-- score and a member, the group and an entry id), so no table is made per call.
local B = {on = false, keys = {}, ops = {}, incr = {}, incr_keys = {}}
local function wr(cmd, key, a, b)
  if not B.on then
    if b == nil then return redis.call(cmd, key, a) end
    return redis.call(cmd, key, a, b)
  end
  local ops = B.ops[key]
  if not ops then
    ops = {}
    B.ops[key] = ops
    B.keys[#B.keys + 1] = key
  end
  local last = ops[#ops]
  if last and last[1] == cmd then
    -- XACK's first argument is the group, given once
    if cmd ~= 'XACK' then last[#last + 1] = a end
    if b ~= nil then last[#last + 1] = b end
  else
    ops[#ops + 1] = {cmd, key, a, b}  -- b nil: the list ends at a
  end
end

-- HINCRBY (n an integer) or HINCRBYFLOAT (a float: as text, or a number with `float` true):
-- summed per field while B.on.
local function hincr(key, field, n, float)
  if not B.on then
    if float then return redis.call('HINCRBYFLOAT', key, field, fmt(n)) end
    if type(n) == 'string' then return redis.call('HINCRBYFLOAT', key, field, n) end
    return redis.call('HINCRBY', key, field, n)
  end
  local h = B.incr[key]
  if not h then
    h = {fields = {}, n = {}}
    B.incr[key] = h
    B.incr_keys[#B.incr_keys + 1] = key
  end
  if h.n[field] == nil then h.fields[#h.fields + 1] = field end
  h.n[field] = (h.n[field] or 0) + tonumber(n)
  if float or type(n) == 'string' then h.float = h.float or {} h.float[field] = true end
end

-- Sends what B gathered (at most 1000 arguments per command, within Lua's unpack limit).
local function flush()
  for _, key in ipairs(B.keys) do
    for _, op in ipairs(B.ops[key]) do
      local head = (op[1] == 'XACK') and 3 or 2
      local i = head + 1
      while i <= #op do
        local j = math.min(#op, i + 999)
        if op[1] == 'ZADD' and (j - i) % 2 == 0 then j = j - 1 end  -- whole score/member pairs
        local args = {}
        for x = 2, head do args[#args + 1] = op[x] end
        for x = i, j do args[#args + 1] = op[x] end
        redis.call(op[1], unpack(args))
        i = j + 1
      end
    end
  end
  for _, key in ipairs(B.incr_keys) do
    local h = B.incr[key]
    for _, f in ipairs(h.fields) do
      if h.float and h.float[f] then
        redis.call('HINCRBYFLOAT', key, f, string.format('%.6f', h.n[f]))
      else
        redis.call('HINCRBY', key, f, h.n[f])
      end
    end
  end
  B.keys, B.ops, B.incr, B.incr_keys = {}, {}, {}, {}
end

-- A task's plan, decoded once per script and text: a batch of claims or commits of tasks made
-- from one template decodes it once.  advance() only reads it.
local PLANS = {}
local function decode_plan(text)
  local p = PLANS[text]
  if not p then
    p = cjson.decode(text)
    PLANS[text] = p
  end
  return p
end

-- Index maintenance: every task is in i:s:<status>, i:as:<app>:<status>, i:t:<tag> for each
-- tag, i:g:<group> and (a child) i:p:<parent>, each scored by `updated`, so every filter of
-- tasks.list starts from a range read (lists without a status filter merge the status indexes).
-- The statuses of UNINDEXED (RUNNING) have no status index: their tasks are the members of the
-- deadlines zset, which the manager reads instead (stagewise.status.UNINDEXED says why).
local function extra_indexes(tags, group, parent)
  local keys = {}
  if tags and tags ~= '' and tags ~= '[]' then
    for _, tag in ipairs(cjson.decode(tags)) do keys[#keys + 1] = k_idx_tag(tag) end
  end
  if group and group ~= '' then keys[#keys + 1] = k_idx_group(group) end
  if parent and parent ~= '' then keys[#keys + 1] = k_idx_parent(parent) end
  return keys
end

-- The status index keys, made once per script: a batch of claims or commits names the same
-- few keys for every run, and building a key string is a good part of a run's Lua work.
local IDX_S, IDX_AS = {}, {}
local function idx_status(status)
  local k = IDX_S[status]
  if not k then
    k = k_idx_status(status)
    IDX_S[status] = k
  end
  return k
end
local function idx_app_status(app, status)
  local by = IDX_AS[app]
  if not by then
    by = {}
    IDX_AS[app] = by
  end
  local k = by[status]
  if not k then
    k = k_idx_app_status(app, status)
    by[status] = k
  end
  return k
end

-- h: the task's tags, group, parent (HMGET) as read by the caller
local function reindex(id, app, old, new, ts, tags, group, parent)
  if old and old ~= '' and old ~= new and not UNINDEXED[old] then
    wr('ZREM', idx_status(old), id)
    wr('ZREM', idx_app_status(app, old), id)
  end
  local score = fmt(ts)
  if not UNINDEXED[new] then
    wr('ZADD', idx_status(new), score, id)
    wr('ZADD', idx_app_status(app, new), score, id)
  end
  if (tags and tags ~= '' and tags ~= '[]') or (group and group ~= '') or (parent and parent ~= '') then
    for _, k in ipairs(extra_indexes(tags, group, parent)) do wr('ZADD', k, score, id) end
  end
end

local function unindex(tkey, id, app, status)
  if not UNINDEXED[status] then
    redis.call('ZREM', k_idx_status(status), id)
    redis.call('ZREM', k_idx_app_status(app, status), id)
  end
  local h = redis.call('HMGET', tkey, 'tags', 'group', 'parent')
  for _, k in ipairs(extra_indexes(h[1], h[2], h[3])) do redis.call('ZREM', k, id) end
end

-- Writes to the script's task hash are gathered in W and sent as one HSET by set_status,
-- which every transition ends with: one command instead of one per helper.
local W = {}
local function put(...)
  local args = {...}
  for i = 1, #args do W[#W + 1] = args[i] end
end

-- The body of a script that takes many runs in one call (claim.lua, commit.lua): KEYS in groups
-- of `nkeys` per run, ARGV[1] shared and then groups of `nargs` (`shape`: the script's entry of
-- MANY, stagewise.storage.calls.MANY, which packs the calls); `one(K, A)` decides each run on
-- its own, with K and A laid out as for a call of one run.  A run that raises gets {err = ...}
-- and none of its pending hash writes (W); the writes to shared keys go out once, at the end.
local function many_runs(shape, one)
  local nkeys, nargs = shape[1], shape[2]
  B.on = true
  local out = {}
  for i = 0, (#ARGV - 1) / nargs - 1 do
    -- made by constructors (sized once) rather than grown element by element
    local K = {unpack(KEYS, i * nkeys + 1, (i + 1) * nkeys)}
    local A = {ARGV[1], unpack(ARGV, i * nargs + 2, (i + 1) * nargs + 1)}
    local ok, res = pcall(one, K, A)
    if not ok then
      W = {}
      res = {err = type(res) == 'table' and res.err or tostring(res)}
    end
    out[#out + 1] = res
  end
  flush()
  return out
end

-- The fields set_status needs, for scripts that have not read them already.
local STATUS_FIELDS = {'tags', 'group', 'notify', 'job_id', 'error', 'cron', 'next_task', 'parent',
  'spawn_token'}
local function prefetch(tkey, names)
  local vals = redis.call('HMGET', tkey, unpack(names))
  local t = {}
  for i, n in ipairs(names) do t[n] = vals[i] end
  return t
end

-- Appends name, value of each field of `names` that the hash holds to the reply list `out`.
local function append_fields(out, key, names)
  local vals = redis.call('HMGET', key, unpack(names))
  for i, n in ipairs(names) do
    if vals[i] then
      out[#out + 1] = n
      out[#out + 1] = vals[i]
    end
  end
  return out
end

-- What every task end means for fan-out (the fan-out section at the end defines it): a child's
-- end is counted in its parent's join, a parent's live children are handed to the cascade.
local fanout_ended

-- Every status change goes through here: the pending writes and status, indexes,
-- notifications (tasks with notify), and the `ended` zset through which the manager
-- reschedules cron tasks and starts next_task.  `t` holds STATUS_FIELDS when the caller
-- read them already (`t.error` is the error after this change).
local function set_status(tkey, id, app, old, new, ts, t)
  put('status', new, 'updated', fmt(ts))
  redis.call('HSET', tkey, unpack(W))
  W = {}
  t = t or prefetch(tkey, STATUS_FIELDS)
  -- nil: a caller's own prefetch without it (false: read, and the task has no parent).  A
  -- prefetch may leave out what only some changes need (claim.lua: error, cron, next_task).
  if t.parent == nil then t.parent = redis.call('HGET', tkey, 'parent') end
  if t.notify == '1' and t.error == nil then t.error = redis.call('HGET', tkey, 'error') end
  if (new == S.FINISHED or new == S.FAILED) and t.cron == nil then
    local h = redis.call('HMGET', tkey, 'cron', 'next_task')
    t.cron, t.next_task = h[1], h[2]
  end
  reindex(id, app, old, new, ts, t.tags, t.group, t.parent)
  if old == new then return end
  if old == S.IDLE then
    -- debounce (SPEC §2a): a task that leaves IDLE (queued, cancelled, ...) has started or
    -- ended, so its key takes no more replacements; the next create of the key makes a new
    -- task.  The key's mapping lives in this partition (keys.debounce_partition).
    local dk = redis.call('HGET', tkey, 'debounce')
    if dk and dk ~= '' and redis.call('HGET', k_debounce(), dk) == id then
      redis.call('HDEL', k_debounce(), dk)
    end
  end
  if TERMINAL[new] then
    hincr(k_metrics(app), 'e|' .. new, 1)  -- stagewise_tasks_ended_total
  end
  if t.notify == '1' then
    local nid = redis.call('XADD', k_notes(), 'MAXLEN', '~', 100000, '*', 'task_id', id,
      'job_id', t.job_id or '', 'status', new, 'error', t.error or '')
    local nk = k_task_notes(id)
    redis.call('RPUSH', nk, nid)
    redis.call('LTRIM', nk, -100, -1)
  end
  if (new == S.FINISHED or new == S.FAILED) and ((t.cron and t.cron ~= '') or (t.next_task and t.next_task ~= '')) then
    redis.call('ZADD', k_ended(), ts, member(app, id))
  end
  if TERMINAL[new] then fanout_ended(tkey, id, new, ts, t.parent, t.spawn_token) end
end

-- ===== flow control, task side (SPEC §2a; the design is in stagewise/storage/limits.py) =====
-- A dispatch hint {t: task id, j: job id}; a task with limits adds l (its limits, JSON
-- [[key, concurrency, rate, per], ...]) and o (its order among the tasks a key holds back:
-- priority, then creation time), so the executor asks for permits without reading the task.
local function xadd_hint(stream, tkey, id, job, t)
  local h = t and {t.limits, t.priority, t.created} or redis.call('HMGET', tkey, 'limits', 'priority', 'created')
  if h[1] and h[1] ~= '' then
    local order = (9 - (tonumber(h[2]) or 0)) * 1e10 + (tonumber(h[3]) or 0)
    return redis.call('XADD', stream, '*', 't', id, 'j', job, 'l', h[1], 'o', fmt(order))
  end
  return redis.call('XADD', stream, '*', 't', id, 'j', job)
end

-- A run of a task with limits left RUNNING (any path: commit to WAITING or FINISHED, fail,
-- hand-back, unlock, cancel, expire, reap, orphan): its permits live in the keys' partitions,
-- which this script may not touch, so the run is written to this partition's outbox, in the
-- same step as the transition; whoever drains the outbox (the executor at once, the manager
-- for what an executor left) gives the permits back, and only then removes the entry.
-- Member: '<app>/<id>|<lease>|<key>|<key>...' (neither app, id, lease nor key holds a '|').
local function limits_outbox(tkey, m, ts, t)
  local h
  if t and t.limits ~= nil and t.lease ~= nil then  -- read by the caller already
    h = {t.limits, t.lease}
  else
    h = redis.call('HMGET', tkey, 'limits', 'lease')
  end
  if not h[1] or h[1] == '' or not h[2] or h[2] == '' then return end
  local parts = {m, h[2]}
  for _, lim in ipairs(cjson.decode(h[1])) do parts[#parts + 1] = lim[1] end
  redis.call('ZADD', k_limit_outbox(), ts, table.concat(parts, '|'))
end

-- Puts a dispatch hint on the app stream of the task's priority.  The task hash stays the
-- source of truth: a hint whose task is no longer QUEUED with that job id is dropped by the
-- claim.  The hint's id is kept in the task's `entry` field (redeliver.lua and requeue_lost.lua
-- keep it up to date when they put a fresh hint), so that the manager can tell a QUEUED task
-- whose hint is gone (requeue_lost.lua).
-- `t`: the task's fields as a table (create: known before they are written), else read here.
local function enqueue(tkey, id, app, old, ts, t)
  local h = t and {t.job_id, t.priority} or redis.call('HMGET', tkey, 'job_id', 'priority')
  local entry = xadd_hint(k_stream(app, h[2]), tkey, id, h[1], t)
  put('entry', entry, 'queued_at', fmt(ts), 'next_run', '', 'wait_deadline', '')
  set_status(tkey, id, app, old, S.QUEUED, ts, t)
end

-- Ends the executor's hold on a RUNNING task: lease, running set, deadline; and banks the
-- RUNNING time of this stretch (max_exec_timeout counts RUNNING time only).  `t` may hold
-- executor_id, run_started and exec_used already.
local function release(tkey, id, app, ts, t)
  t = t or prefetch(tkey, {'executor_id', 'run_started', 'exec_used'})
  local m = member(app, id)
  limits_outbox(tkey, m, ts, t)
  if t.executor_id and t.executor_id ~= '' then
    wr('SREM', k_running(t.executor_id), m)
  end
  wr('ZREM', k_deadlines(), m)
  local used = tonumber(t.exec_used or '0') or 0
  local started = tonumber(t.run_started or '')
  if started then used = used + (ts - started) end
  put('executor_id', '', 'lease', '', 'run_started', '', 'exec_deadline', '', 'exec_used', fmt(used))
end

-- Tells the executor holding a run to cancel its call (tasks.cancel, tasks.unlock, the
-- execution deadline): a message on its control list, which it pops within a second.
local function tell_cancel(eid, id, job_id)
  if not eid or eid == '' then return end
  local ctl = k_control(eid)
  redis.call('RPUSH', ctl, cjson.encode({cancel = id, job_id = job_id}))
  redis.call('LTRIM', ctl, -1000, -1)
end

-- Write-time aggregates for GET /metrics, one hash per app (manager/metrics.py reads them;
-- BUCKETS comes from the prelude).  Counting here, in the transition that decides, keeps the
-- figures exact whichever process dies.

-- One stage attempt of `method` that took `dur` seconds and ended with `outcome`.
local BUCKET_BOUNDS  -- BUCKETS as numbers, made at the first observe of the script
local function observe(app, method, outcome, dur)
  if not method or method == '' then return end
  if not BUCKET_BOUNDS then
    BUCKET_BOUNDS = {}
    for i, b in ipairs(BUCKETS) do BUCKET_BOUNDS[i] = tonumber(b) end
  end
  local le = '+Inf'
  for i = 1, #BUCKET_BOUNDS do
    if dur <= BUCKET_BOUNDS[i] then le = BUCKETS[i] break end
  end
  local k = k_metrics(app)
  hincr(k, 'd|' .. le .. '|' .. outcome .. '|' .. method, 1)
  hincr(k, 's|' .. outcome .. '|' .. method, dur, true)
end

-- A JSON string: the text itself in quotes when nothing in it needs escaping (ids, outcomes),
-- which is cheaper than cjson.
local function json_string(v)
  if string.find(v, '[%c"\\/\128-\255]') then return cjson.encode(v) end
  return '"' .. v .. '"'
end

-- One attempt record (tasks.attempts; SPEC §7): {job_id, stage, executor_id, started, ended,
-- outcome, error}, built as text rather than through cjson.encode of a table (a third of the
-- cost, on every commit).  Times have microseconds (fmt); a value absent is null.  `stage` is a
-- number or its text; `error` is a table (encoded here) or cjson.null.
local function json_string_or_null(v)
  if type(v) == 'string' then return json_string(v) end
  return 'null'
end
local function json_time_or_null(v)
  if type(v) == 'number' then return fmt(v) end
  return 'null'
end
local function record_attempt(id, e)
  local err = 'null'
  if type(e.error) == 'table' and e.error ~= cjson.null then err = cjson.encode(e.error) end
  local text = '{"job_id":' .. json_string_or_null(e.job_id) .. ',"stage":' ..
    (e.stage and tostring(e.stage) or 'null') .. ',"executor_id":' .. json_string_or_null(e.executor_id) ..
    ',"started":' .. json_time_or_null(e.started) .. ',"ended":' .. json_time_or_null(e.ended) ..
    ',"outcome":' .. json_string_or_null(e.outcome) .. ',"error":' .. err .. '}'
  local k = k_attempts(id)
  if redis.call('RPUSH', k, text) > 1000 then redis.call('LTRIM', k, -1000, -1) end
end

-- Walks forward from stage s over the stages that need no executor: a message already in
-- the inbox is taken at once.  Leaves the task at the first stage that needs something:
--   'RUN'       plan[s] is a call: an executor must run it
--   S.WAITING   plan[s] is a timer or a message with an empty inbox (due entry set)
--   S.FINISHED  s == #plan
-- Puts stage, results of consumed messages and the wait fields; status is the caller's.
local function advance(tkey, id, app, s, plan, ts)
  local taken = {}
  while true do
    if s >= #plan then
      put('stage', s)
      return S.FINISHED, s, taken
    end
    local p = plan[s + 1]
    if p == 'c' then
      put('stage', s, 'stage_started', fmt(ts))
      return 'RUN', s, taken
    end
    local m = member(app, id)
    if p[1] == 'f' then
      -- a children stage: the manager's spawn role fills the children's documents (templates
      -- are Python) and starts them with spawn.lua, which removes this entry
      put('stage', s, 'wait_deadline', '')
      redis.call('ZADD', k_spawns(), ts, m)
      return S.WAITING, s, taken
    end
    if p[1] == 't' then
      local at = ts + p[2]
      put('stage', s, 'wait_deadline', fmt(at))
      redis.call('ZADD', k_due(), at, m)
      return S.WAITING, s, taken
    end
    local msg = redis.call('LPOP', k_inbox(id))
    if msg then
      put('r.' .. s, msg)
      taken[#taken + 1] = s
      taken[#taken + 1] = msg
      s = s + 1
    else
      if p[2] >= 0 then
        local at = ts + p[2]
        put('stage', s, 'wait_deadline', fmt(at))
        redis.call('ZADD', k_due(), at, m)
      else
        put('stage', s, 'wait_deadline', '')
      end
      return S.WAITING, s, taken
    end
  end
end

-- Tracing (stagewise.tracing), only when the caller asks for it: what the span of a wait that
-- ends now needs, read before the transition rewrites wait_deadline and updated.  A wait began
-- its timeout (or timer) before its deadline; a message wait without a timeout began when the
-- task went WAITING, the last change of `updated` while it waits at a message stage (a message
-- sent to it is delivered, never kept).  Returns the reply tail {kind, stage, started, job_id,
-- trace} that wait_reply completes.
local function wait_facts(tkey, s, p)
  local h = redis.call('HMGET', tkey, 'job_id', 'trace', 'wait_deadline', 'updated')
  local started = tonumber(h[4]) or 0
  local deadline = tonumber(h[3] or '')
  if deadline and p[2] >= 0 then started = deadline - p[2] end
  return {p[1] == 't' and 'timer' or 'message', s, fmt(started), h[1], h[2] or ''}
end

-- The reply of a script that ended a wait: {status, 'WAIT', kind, stage, started, ended,
-- job_id, trace, outcome} (stagewise.storage.calls.WaitEnd).
local function wait_reply(status, w, ts, outcome)
  return {status, 'WAIT', w[1], w[2], w[3], fmt(ts), w[4], w[5], outcome}
end

local function finish(tkey, id, app, old, ts, t)
  put('exit_code', '0', 'error', '', 'next_run', '', 'wait_deadline', '')
  if t then t.error = '' end
  set_status(tkey, id, app, old, S.FINISHED, ts, t)
end

local function fail(tkey, id, app, old, ts, err, t)
  local ok, e = pcall(cjson.decode, err)
  local code = ok and type(e) == 'table' and e.code or 'UNKNOWN'
  hincr(k_metrics(app), 'f|' .. tostring(code), 1)
  put('exit_code', 1, 'error', err, 'next_run', '', 'wait_deadline', '')
  if t then t.error = err end
  set_status(tkey, id, app, old, S.FAILED, ts, t)
end

-- Task is then WAITING/QUEUED/FINISHED according to advance()'s verdict; used when no
-- executor holds the task (timer due, message received, manager wake-ups).
local function settle(tkey, id, app, old, verdict, ts, t)
  if verdict == 'RUN' then
    enqueue(tkey, id, app, old, ts, t)
  elseif verdict == S.WAITING then
    set_status(tkey, id, app, old, S.WAITING, ts, t)
  else
    finish(tkey, id, app, old, ts, t)
  end
end

-- ===== a claim's writes: claim.lua's per-run body, and create.lua's push =====
-- claim.lua's reply for a run it claimed (`t` the task's fields as read or just written; A as
-- claim.lua's ARGV): what the executor runs the task with.
local function claim_reply(tkey, t, A)
  local out = {'OK', 'doc', t.doc, 'kws', t.kws or '', 'job_id', t.job_id, 'stage', t.stage,
    'stages', t.stages, 'retries', t.retries or '0', 'attempt', t.attempt,
    'exec_deadline', t.exec_deadline}
  local s = tonumber(t.stage) or 0
  local names = {}
  for i = 0, s - 1 do names[#names + 1] = 'r.' .. i end
  if A[8] == '1' then names[#names + 1] = 'trace' end
  -- flow control: the keys filled at create, against which a RetryLater's pause_key is checked
  if t.limits and t.limits ~= '' then out[#out + 1] = 'limits' out[#out + 1] = t.limits end
  if #names > 0 then append_fields(out, tkey, names) end
  return out
end

-- QUEUED -> RUNNING for executor A[5] under lease A[6], once the caller has validated the claim
-- (K and A laid out as claim.lua's KEYS and ARGV; `t` the task's fields).  Shared by claim.lua
-- and by create.lua's push delivery (push below), so that a pushed run is written exactly as a
-- claimed one.  Returns the claim's reply, or {'STALE'} for a stage that needs no executor.
local function claim_run(K, A, t, ts)
local tkey, id = K[1], A[2]
local app = t.app
local plan = decode_plan(t.plan)
local s = tonumber(t.stage) or 0
if plan[s + 1] ~= 'c' then
  settle(tkey, id, app, S.QUEUED, advance(tkey, id, app, s, plan, ts), ts)
  return {'STALE'}
end
local deadline = ts + tonumber(t.max_exec) - (tonumber(t.exec_used or '0') or 0)
t.attempt = tostring((tonumber(t.attempt or '0') or 0) + 1)
t.exec_deadline = fmt(deadline)
put('executor_id', A[5], 'lease', A[6], 'run_started', fmt(ts), 'stage_started', fmt(ts),
  'exec_deadline', t.exec_deadline, 'attempt', t.attempt)
if t.limits and t.limits ~= '' then put('blocked_by', '', 'woke', '') end
local m = member(app, id)
wr('SADD', K[4], m)
wr('ZADD', K[5], t.exec_deadline, m)
set_status(tkey, id, app, S.QUEUED, S.RUNNING, ts, t)
return claim_reply(tkey, t, A)
end

-- Acknowledges and deletes entries of an executor's pushed stream (offer.lua and withdraw.lua:
-- the ones it has started, and a run a withdrawal hands over): the stream only holds runs not
-- yet in hand.
local function ack_pushed(stream, ids)
  if #ids == 0 then return end
  redis.call('XACK', stream, GROUP, unpack(ids))
  redis.call('XDEL', stream, unpack(ids))
end

-- Push delivery (create.lua; the executor side is stagewise/executor/fetch.py): a new task due
-- now whose app has an executor with a run slot held free (an offer on Keys.idle, offer.lua) is
-- claimed here in that executor's name, under the lease it offered, and the claim's reply goes
-- to the executor's own stream (Keys.pushed) instead of a hint to the app stream: the executor
-- starts the run when its read returns, with no claim round trip.  The same checks as a claim
-- and the same writes (claim_run); what a claim would refuse is not pushed: a task with limits
-- (it must get permits first), an app paused.  An offer of an executor no longer registered
-- (declared dead) is dropped.  Returns true when the task was pushed (it is then RUNNING).
local function push(tkey, id, app, ts, t)
  if t.limits and t.limits ~= '' then return false end
  local idle = k_idle(app)
  local offer, eid, lease
  repeat
    offer = redis.call('LPOP', idle)
    if not offer then return false end
    eid, lease = string.match(offer, '^(%S+) (%S+)$')
  until eid and redis.call('ZSCORE', k_executors(), eid)
  if (tonumber(redis.call('HGET', k_paused_apps(), app) or '') or 0) > ts then
    redis.call('LPUSH', idle, offer)  -- the offer stands: the pause is the claim's refusal, not the executor's
    return false
  end
  -- QUEUED first, as for any new task due now (indexes, status notes), then the claim's step;
  -- no hint on the app stream: the run never waits there
  put('entry', '', 'queued_at', fmt(ts), 'next_run', '', 'wait_deadline', '')
  set_status(tkey, id, app, nil, S.QUEUED, ts, t)
  -- as claim.lua's ARGV; the trace field goes along when the task has one (the executor's
  -- tracing decides whether to use it)
  local A = {ARGV[1], id, '', t.job_id, eid, lease, '', (t.trace and t.trace ~= '') and '1' or ''}
  local out = claim_run({tkey, '', k_executors(), k_running(eid), k_deadlines()}, A, t, ts)
  out[1] = lease
  redis.call('XADD', k_pushed(eid), '*', 't', id, 'lease', unpack(out))
  return true
end

-- Stores one new task: create.lua, and create_many.lua for each task of a batch.
-- k: its keys {task, stream (of its priority), due, apps, attempts, inbox}
-- a: {id, app, on_conflict ('error'|'ignore'|'replace'), due_at (UNIX s; '' = now),
--     enabled ('1'|'0'), stream_name (apps member), fields (JSON array of field, value strings),
--     push (true: a task due now may be pushed to an idle executor, see push)}
-- A task due now is put on its app stream in this same step, not at the next manager tick, or
-- (a.push) claimed for an executor that offered a free slot.
-- Returns 'CREATED' | 'IGNORED' (it exists, on_conflict ignore) | 'EXISTS' |
--         'INVALID_TRANSITION', status (replace of a task that has not ended)
local function store_new(k, a, ts)
  local tkey, id, app = k.task, a.id, a.app
  local old = redis.call('HMGET', tkey, 'status', 'app')
  if old[1] then
    if a.on_conflict == 'ignore' then return 'IGNORED' end
    if a.on_conflict ~= 'replace' then return 'EXISTS' end
    if not TERMINAL[old[1]] then return 'INVALID_TRANSITION', old[1] end
    unindex(tkey, id, old[2], old[1])
    redis.call('ZREM', k.due, member(old[2], id))
    redis.call('DEL', tkey, k.attempts, k.inbox)
  end

  if redis.call('SADD', k.apps, a.stream_name) == 1 then
    -- The group exists before anything is queued and starts at 0: nothing put on the stream
    -- before the first executor of the app started can be skipped.
    redis.pcall('XGROUP', 'CREATE', k.stream, GROUP, '0', 'MKSTREAM')  -- BUSYGROUP is fine
  end

  local fields = cjson.decode(a.fields)
  for _, v in ipairs({'id', id, 'app', app, 'created', fmt(ts), 'stage', '0'}) do fields[#fields + 1] = v end
  for _, v in ipairs(a.extra or {}) do fields[#fields + 1] = v end  -- a child's link to its parent
  -- The new hash is written once, by set_status with the status (put): what the helpers on
  -- the way need of it (plan, job id, priority, limits, the STATUS_FIELDS) is read from the
  -- fields here instead of from Redis; a field not given is false, as HMGET has it.
  local t = {}
  for i = 1, #fields, 2 do t[fields[i]] = fields[i + 1] end
  for _, n in ipairs({'limits', 'priority', 'tags', 'group', 'notify', 'error', 'cron', 'next_task',
                      'parent', 'spawn_token', 'job_id', 'created'}) do
    if t[n] == nil then t[n] = false end
  end
  put(unpack(fields))

  hincr(k_metrics(app), 'created', 1)  -- stagewise_tasks_created_total
  local due_at = tonumber(a.due_at)
  if a.enabled ~= '1' then
    put('next_run', '')
    set_status(tkey, id, app, nil, S.IDLE, ts, t)
  elseif due_at and due_at > ts then
    put('next_run', fmt(due_at))
    redis.call('ZADD', k.due, due_at, member(app, id))
    set_status(tkey, id, app, nil, S.IDLE, ts, t)
  else
    local verdict = advance(tkey, id, app, 0, decode_plan(t.plan), ts)
    if not (verdict == 'RUN' and a.push and push(tkey, id, app, ts, t)) then
      settle(tkey, id, app, nil, verdict, ts, t)
    end
  end
  return 'CREATED'
end

-- ===== flow control, key side (SPEC §2a; stagewise/storage/limits.py) =====
-- The scripts of a limit key run in the key's own partition and touch only its keys there.
-- A key's state: its permits (runs holding a slot), its held tasks (in order), its woken
-- tasks (put back on their streams, each with a slot reserved until its claim comes), the
-- claims within its rate window, its pause.  LIMIT_WOKEN_GRACE (prelude) bounds how long a
-- reservation waits for its claim before its task is asked again.

-- Wakes as many held tasks as the key has room for (slots and rate, reservations counted),
-- in order; returns the refs to put back on their streams (unblock.lua) and the reservations
-- that lapsed (asked again: unblock is idempotent).  Sets when the manager must look at the
-- key again (limit_due): a rate window opening, a pause ending, a reservation lapsing; none
-- when nothing waits.  Reads the whole state of the key each time, so a call more or less
-- (two drainers of one run, the manager's pass) never wakes a task too many.
local function limit_pump(key, ts)
  local pk, hk, wk, rk = k_limit_permits(key), k_limit_held(key), k_limit_woken(key), k_limit_rate(key)
  local cfg = redis.call('HMGET', k_limit(key), 'c', 'r', 'per', 'paused')
  local woke = {}
  for _, ref in ipairs(redis.call('ZRANGEBYSCORE', wk, '-inf', ts - LIMIT_WOKEN_GRACE)) do
    redis.call('ZADD', wk, ts, ref)
    woke[#woke + 1] = ref
  end
  local look
  local function at(x) if not look or x < look then look = x end end
  local nw = redis.call('ZCARD', wk)
  if nw > 0 then at(tonumber(redis.call('ZRANGE', wk, 0, 0, 'WITHSCORES')[2]) + LIMIT_WOKEN_GRACE) end
  local nh = redis.call('ZCARD', hk)
  if nh > 0 then
    local paused = tonumber(cfg[4] or '')
    if paused and paused > ts then
      at(paused)
    else
      local room = nh
      local c, r = tonumber(cfg[1]) or 0, tonumber(cfg[2]) or 0
      if c > 0 then room = math.min(room, c - redis.call('ZCARD', pk) - nw) end
      if r > 0 then
        local per = tonumber(cfg[3]) or 1
        redis.call('ZREMRANGEBYSCORE', rk, '-inf', ts - per)
        local used = redis.call('ZCARD', rk)
        if r - used - nw < room then
          room = r - used - nw
          if used > 0 then at(tonumber(redis.call('ZRANGE', rk, 0, 0, 'WITHSCORES')[2]) + per) end
        end
      end
      if room > 0 then
        for _, ref in ipairs(redis.call('ZRANGE', hk, 0, room - 1)) do
          redis.call('ZREM', hk, ref)
          redis.call('ZADD', wk, ts, ref)
          woke[#woke + 1] = ref
        end
        at(ts + LIMIT_WOKEN_GRACE)
      end
    end
  end
  if look then
    redis.call('ZADD', k_limit_due(), look, key)
  else
    redis.call('ZREM', k_limit_due(), key)
  end
  return woke
end

-- Gives back the slot of a permit ('<partition>|<app>/<id>|<lease>'); true if it was held.
local function limit_unpermit(key, permit)
  redis.call('ZREM', k_limit_grants(), key .. '|' .. permit)
  return redis.call('ZREM', k_limit_permits(key), permit) == 1
end

-- ============================================================================ fan-out (SPEC §3a)
-- A child lives in its parent's partition (stagewise.keys.partition_of), so the script that
-- ends a child (whichever: commit, fail, cancel, expire, reap, wake, ...; they all end it
-- through set_status) also counts it in its parent's join, in the same atomic step: a crash can
-- neither lose a count nor double it.  The join (k_join) is fenced by a token fresh per start
-- of a children stage (the parent's job id and its count of starts, also on each child as
-- parent_token): a late end of a child of an earlier start, or of an earlier run, counts nowhere.
-- Each child's slot o.<index> is written once (HSETNX), so a child restarted by hand and ended
-- again is not counted twice.  O(1) per child end; the result list is put together once, by
-- the end that completes the join.

-- any non-terminal -> CANCELED: tasks.cancel (cancel.lua), and children whose parent no
-- longer waits for them (cancel_children.lua, spawn.lua).
local function cancel_task(tkey, id, app, status, ts, message)
  local h = redis.call('HMGET', tkey, 'stage', 'executor_id', 'job_id')
  if status == S.RUNNING then
    tell_cancel(h[2], id, h[3])
    release(tkey, id, app, ts)
  end
  redis.call('ZREM', k_due(), member(app, id))
  redis.call('HSET', tkey, 'exit_code', 130, 'next_run', '', 'wait_deadline', '', 'error',
    cjson.encode({code = 'CANCELED', stage = tonumber(h[1]), message = message}))
  set_status(tkey, id, app, status, S.CANCELED, ts)
end

-- The join is over (`closed`): later ends of its children are not counted, and the slots go
-- (the stage result holds them), so a parent does not keep its children's results twice.
local function close_join(jk, total, verdict)
  local names = {}
  for i = 0, total - 1 do names[#names + 1] = 'o.' .. i end
  local slots = {}
  if total > 0 then
    slots = redis.call('HMGET', jk, unpack(names))
    redis.call('HDEL', jk, unpack(names))
  end
  redis.call('HSET', jk, 'closed', verdict)
  return slots
end

-- The join is complete: the stage's result is the list of the slots in child order, and the
-- parent goes on at the next stage (WAITING -> QUEUED | WAITING | FINISHED).
local function join(ptkey, pid, app, s, total, plan, ts)
  local list = {}
  local slots = close_join(k_join(pid), total, 'joined')
  for i = 1, total do list[i] = slots[i] or 'null' end
  put('r.' .. s, '[' .. table.concat(list, ',') .. ']')
  settle(ptkey, pid, app, S.WAITING, advance(ptkey, pid, app, s + 1, decode_plan(plan), ts), ts)
end

-- A child ended with `status`: its slot in its parent's join, and the join's verdict.  The
-- slot is built as text from the stored JSON (the child's result and error), never decoded
-- and encoded again, so the values reach the parent unchanged.
local function count_child(tkey, id, status, ts, pid)
  redis.call('SREM', k_live_children(pid), id)
  local c = redis.call('HMGET', tkey, 'parent_token', 'child_index', 'stages', 'error')
  local jk = k_join(pid)
  local j = redis.call('HMGET', jk, 'token', 'total', 'on_failure', 'stage', 'closed')
  if not j[1] or j[1] ~= c[1] or j[5] then return end
  local result = 'null'
  if status == S.FINISHED then
    result = redis.call('HGET', tkey, 'r.' .. (tonumber(c[3]) - 1)) or 'null'
  end
  local err = c[4]
  if not err or err == '' then err = 'null' end
  local slot = '{"id":' .. cjson.encode(id) .. ',"status":"' .. status .. '","result":' .. result ..
    ',"error":' .. err .. '}'
  if redis.call('HSETNX', jk, 'o.' .. c[2], slot) == 0 then return end  -- counted before
  local ended = redis.call('HINCRBY', jk, 'ended', 1)
  local ptkey = k_task(pid)
  local p = redis.call('HMGET', ptkey, 'status', 'app', 'spawn_token', 'plan')
  if p[1] ~= S.WAITING or p[3] ~= j[1] then return end  -- the parent no longer waits (canceled)
  local s = tonumber(j[4])
  if status ~= S.FINISHED and j[3] == 'fail' then
    -- its remaining children are cancelled by the cascade (fanout_ended of the parent)
    close_join(jk, tonumber(j[2]), 'failed')
    fail(ptkey, pid, p[2], S.WAITING, ts, cjson.encode({code = 'CHILD_FAILED', stage = s, child = id,
      message = 'child ' .. id .. ' ended ' .. status}))
    return
  end
  if ended >= tonumber(j[2]) then join(ptkey, pid, p[2], s, tonumber(j[2]), p[4], ts) end
end

fanout_ended = function(tkey, id, status, ts, parent, spawned)
  if parent and parent ~= '' then count_child(tkey, id, status, ts, parent) end
  -- children still live when their parent ends: the manager's cascade role cancels them, a
  -- bounded batch per script (cancel_children.lua), however many and however nested.  Only a
  -- task that started children has any (spawn.lua sets spawn_token in the step that adds them
  -- to the live set), so the others skip the look (nil: the caller did not read the field).
  if spawned == nil then spawned = redis.call('HGET', tkey, 'spawn_token') end
  if spawned and spawned ~= '' and redis.call('SCARD', k_live_children(id)) > 0 then
    redis.call('ZADD', k_cascades(), ts, id)
  end
end
