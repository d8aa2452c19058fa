-- delete.lua: tasks.delete of one task.  Removes a terminal task and everything of it
-- (hash, attempts, inbox, index entries).  `system` tasks are never removed.
-- KEYS[1] task hash   KEYS[2] attempts   KEYS[3] inbox   KEYS[4] due zset
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] '1' dry run | '0' apply
-- Returns {'NOT_FOUND'} | {status (the task's; 'DELETED' once applied), changed, error}
local tkey, id = KEYS[1], ARGV[2]
local h = redis.call('HMGET', tkey, 'status', 'app', 'system')
local status, app = h[1], h[2]
if not status then return {'NOT_FOUND'} end
if not TERMINAL[status] then return {status, '0', 'INVALID_TRANSITION: only terminal tasks are deleted'} end
if h[3] == '1' then return {status, '0', 'system task: never deleted'} end
if ARGV[3] == '1' then return {'DELETED', '1', ''} end
unindex(tkey, id, app, status)
redis.call('ZREM', KEYS[4], member(app, id))
redis.call('ZREM', k_ended(), member(app, id))
redis.call('DEL', tkey, KEYS[2], KEYS[3], k_task_notes(id))
return {'DELETED', '1', ''}
