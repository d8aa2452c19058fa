-- delete.lua: tasks.delete of one task.  Removes a terminal task and everything of it
-- (hash, attempts, inbox, index entries, fan-out join).  `system` tasks are never removed, nor a
-- parent that still has children.
-- KEYS[1] task hash   KEYS[2] attempts   KEYS[3] inbox   KEYS[4] due zset
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] '1' dry run | '0' apply
-- Returns {'NOT_FOUND'} | {status (the task's; 'DELETED' once applied), changed, error}
local tkey, id = KEYS[1], ARGV[2]
local h = redis.call('HMGET', tkey, 'status', 'app', 'system')
local status, app = h[1], h[2]
if not status then return {'NOT_FOUND'} end
if not TERMINAL[status] then return {status, '0', 'INVALID_TRANSITION: only terminal tasks are deleted'} end
if h[3] == '1' then return {status, '0', 'system task: never deleted'} end
-- A parent goes after its children (tasks.delete with `parent`), so no child is left pointing
-- at a parent that is gone.
local children = redis.call('ZCARD', k_idx_parent(id))
if children > 0 then
  return {status, '0', 'has ' .. children .. ' children: delete them first (tasks.delete with parent)'}
end
if ARGV[3] == '1' then return {'DELETED', '1', ''} end
unindex(tkey, id, app, status)
redis.call('ZREM', KEYS[4], member(app, id))
redis.call('ZREM', k_ended(), member(app, id))
redis.call('DEL', tkey, KEYS[2], KEYS[3], k_task_notes(id), k_join(id), k_live_children(id))
return {'DELETED', '1', ''}
