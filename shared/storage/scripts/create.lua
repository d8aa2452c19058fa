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
local code, from = store_new(
  {task = KEYS[1], stream = KEYS[2], due = KEYS[3], apps = KEYS[4], attempts = KEYS[5], inbox = KEYS[6]},
  {id = ARGV[2], app = ARGV[3], on_conflict = ARGV[4], due_at = ARGV[5], enabled = ARGV[6],
   stream_name = ARGV[7], fields = ARGV[8]},
  now())
if code == 'IGNORED' then
  local out = redis.call('HGETALL', KEYS[1])
  table.insert(out, 1, 'IGNORED')
  return out
end
if code ~= 'CREATED' then return {code, from} end
-- What this script set on top of ARGV[8] (the caller has the rest): no HGETALL of ~45 fields.
local SET_HERE = {'id', 'app', 'created', 'stage', 'stage_started', 'status', 'updated', 'next_run',
  'queued_at', 'entry', 'wait_deadline', 'exit_code', 'error'}
return append_fields({'CREATED'}, KEYS[1], SET_HERE)
