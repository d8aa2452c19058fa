-- limit_pause.lua: limits.pause / limits.resume, and a handler's RetryLater with pause_key:
-- no task of the key is claimed until `until`.  A pause only ever moves later (a Retry-After
-- shorter than the pause in force does not shorten it); resume clears it.  Runs in the key's
-- partition; the key is pumped (a resume wakes what it holds).
-- KEYS[1] the key's hash
-- ARGV[1] prefix  ARGV[2] limit key  ARGV[3] until (UNIX s; '' resume)
-- ARGV[4] seconds from now instead of ARGV[3] ('' none): RetryLater's pause_key, on Redis's clock
-- Returns {paused_until ('' none), ref, ...}   refs: woken tasks, to put back (unblock.lua)
local key, lk = ARGV[2], KEYS[1]
local ts = now()
local old = tonumber(redis.call('HGET', lk, 'paused') or '')
local new = tonumber(ARGV[3])
if tonumber(ARGV[4]) then new = ts + tonumber(ARGV[4]) end
if new == nil then
  redis.call('HDEL', lk, 'paused')
elseif not old or old < new then
  redis.call('HSET', lk, 'paused', fmt(new))
end
local cur = tonumber(redis.call('HGET', lk, 'paused') or '')
local out = {(cur and cur > ts) and fmt(cur) or ''}
for _, w in ipairs(limit_pump(key, ts)) do out[#out + 1] = w end
return out
