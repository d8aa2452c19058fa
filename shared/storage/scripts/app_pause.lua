-- app_pause.lua: apps.pause / apps.resume in one partition (the manager calls it in each):
-- claim.lua of this partition answers PAUSED for the app's tasks until `until`, leaving the
-- entries where they were (the executor gives them back and waits); executors stay
-- registered.  A pause already past is cleared on sight.
-- KEYS[1] paused apps hash of the partition
-- ARGV[1] prefix  ARGV[2] app  ARGV[3] until (UNIX s; '' resume)
-- Returns {paused_until ('' none)}
local ts = now()
local u = tonumber(ARGV[3])
if u and u > ts then
  redis.call('HSET', KEYS[1], ARGV[2], fmt(u))
  return {fmt(u)}
end
redis.call('HDEL', KEYS[1], ARGV[2])
return {''}
