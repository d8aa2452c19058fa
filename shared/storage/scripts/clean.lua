-- clean.lua: tasks.clean of one task.  A terminal task last updated before the cut-off
-- loses its results and kws (a parent also its last join) and keeps its record, marked
-- `cleaned`.  `system` tasks never.
-- KEYS[1] task hash
-- ARGV[1] prefix  ARGV[2] task id  ARGV[3] '1' dry run | '0' apply  ARGV[4] cut-off (UNIX s)
-- Returns {'NOT_FOUND'} | {status, changed '1'|'0', error ''|reason}
local tkey, id = KEYS[1], ARGV[2]
local h = redis.call('HMGET', tkey, 'status', 'system', 'cleaned', 'updated', 'stages')
local status = h[1]
if not status then return {'NOT_FOUND'} end
if not TERMINAL[status] then return {status, '0', 'not terminal'} end
if h[2] == '1' then return {status, '0', 'system task: never cleaned'} end
if h[3] == '1' then return {status, '0', 'already cleaned'} end
if tonumber(h[4]) >= tonumber(ARGV[4]) then return {status, '0', 'updated after the cut-off'} end
if ARGV[3] == '1' then return {status, '1', ''} end
for i = 0, tonumber(h[5]) - 1 do redis.call('HDEL', tkey, 'r.' .. i) end
redis.call('HSET', tkey, 'kws', '', 'cleaned', 1)
redis.call('DEL', k_join(id))  -- a parent's join: its children's results (they keep their own)
return {status, '1', ''}
