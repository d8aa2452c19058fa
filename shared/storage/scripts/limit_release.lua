-- limit_release.lua: slots of a limit key given back, and the key pumped.  Runs in the key's
-- partition.  Permits go when their run left RUNNING (the outbox of the task's partition,
-- drained by the executor or the manager), when a claim did not follow them (claim refused,
-- another key held the task back), or when the manager found their run gone
-- (permit_check.lua).  Woken refs go when their task is no longer held (unblock.lua answered
-- STALE: cancelled, deleted, run again).  With neither, it only pumps (the manager's pass
-- over due keys).  Idempotent: a permit or ref already gone is nothing to give back.
-- KEYS[1] the key's hash (routing)
-- ARGV[1] prefix  ARGV[2] limit key  ARGV[3] JSON list of permits  ARGV[4] JSON list of refs
-- Returns {ref, ...}   the woken tasks the caller puts back on their streams (unblock.lua)
local key = ARGV[2]
local ts = now()
for _, p in ipairs(cjson.decode(ARGV[3])) do limit_unpermit(key, p) end
for _, ref in ipairs(cjson.decode(ARGV[4])) do
  redis.call('ZREM', k_limit_woken(key), ref)
  redis.call('ZREM', k_limit_held(key), ref)
end
return limit_pump(key, ts)
