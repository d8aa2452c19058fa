-- create_many.lua: tasks.create_many, the tasks of one partition.  (none) -> QUEUED | WAITING |
-- IDLE for each, or replace terminal tasks.  Every task is checked before any is written, so
-- the batch is stored whole or not at all (within this partition: see Store.create_many).
-- KEYS  6 per task, in task order: task hash, app stream of its priority, due zset, apps set,
--       attempts list, inbox list
-- ARGV[1] prefix  ARGV[2] on_conflict (error|ignore|replace)
-- ARGV[3..] 6 per task, in task order: id, app, due at (UNIX s; '' = now), enabled ('1'|'0'),
--       stream name (apps member), JSON array of the new hash's field, value strings
-- Returns {'CREATED', n}  n tasks stored (the others existed: on_conflict ignore)
--         {'EXISTS', id} | {'INVALID_TRANSITION', id, from}  nothing written
local on_conflict, n = ARGV[2], #KEYS / 6
for i = 0, n - 1 do
  local status = redis.call('HGET', KEYS[i * 6 + 1], 'status')
  if status then
    local id = ARGV[3 + i * 6]
    if on_conflict == 'error' then return {'EXISTS', id} end
    if on_conflict == 'replace' and not TERMINAL[status] then return {'INVALID_TRANSITION', id, status} end
  end
end
local ts, stored = now(), 0
for i = 0, n - 1 do
  local kk, aa = i * 6, 3 + i * 6
  local code = store_new(
    {task = KEYS[kk + 1], stream = KEYS[kk + 2], due = KEYS[kk + 3], apps = KEYS[kk + 4],
     attempts = KEYS[kk + 5], inbox = KEYS[kk + 6]},
    {id = ARGV[aa], app = ARGV[aa + 1], on_conflict = on_conflict, due_at = ARGV[aa + 2],
     enabled = ARGV[aa + 3], stream_name = ARGV[aa + 4], fields = ARGV[aa + 5]},
    ts)
  if code == 'CREATED' then stored = stored + 1 end
end
return {'CREATED', stored}
