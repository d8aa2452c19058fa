-- cancel_children.lua: the manager's cascade role cancels, a bounded batch at a time, the
-- live children of a parent that no longer waits for them: it was cancelled, failed (a child
-- failed under on_failure "fail"), or restarted.  any non-terminal -> CANCELED for each;
-- their own live children are in turn put on the cascades zset (set_status), so a nested
-- family is cancelled level by level and no script does unbounded work.
-- The live set holds the children of one start only (spawn.lua empties it first), so the
-- first child met that its parent still waits for (parent WAITING under the child's token)
-- means the cascade is over.
-- KEYS[1] cascades zset   KEYS[2] the parent's live children set
-- ARGV[1] prefix  ARGV[2] parent id  ARGV[3] at most this many children per call
-- Returns {'DONE', n} (entry removed) | {'MORE', n}: n children cancelled by this call
local pid = ARGV[2]
local p = redis.call('HMGET', k_task(pid), 'status', 'spawn_token')
local ids = redis.call('SRANDMEMBER', KEYS[2], tonumber(ARGV[3]))
local ts = now()
local n = 0
for _, cid in ipairs(ids) do
  local ck = k_task(cid)
  local c = redis.call('HMGET', ck, 'status', 'app', 'parent', 'parent_token')
  if not c[1] or TERMINAL[c[1]] or c[3] ~= pid then
    redis.call('SREM', KEYS[2], cid)
  elseif p[1] == S.WAITING and p[2] == c[4] then
    redis.call('ZREM', KEYS[1], pid)
    return {'DONE', n}
  else
    cancel_task(ck, cid, c[2], c[1], ts, 'canceled: its parent no longer waits for it')
    n = n + 1
  end
end
if redis.call('SCARD', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], pid)
  return {'DONE', n}
end
return {'MORE', n}
