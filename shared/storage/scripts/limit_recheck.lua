-- limit_recheck.lua: the manager found the run of a permit still RUNNING (permit_check.lua
-- answered LIVE): the permit is looked at again after LIMIT_PERMIT_CHECK more seconds, as
-- long as it is granted.  Runs in the key's partition.
-- KEYS[1] grants zset of the partition
-- ARGV[1] prefix  ARGV[2] grants member '<key>|<permit>'  ARGV[3] seconds until the next look
-- Returns {'OK'} | {'GONE'} (the permit was given back meanwhile)
local ts = now()
if redis.call('ZADD', KEYS[1], 'XX', 'CH', ts + tonumber(ARGV[3]), ARGV[2]) == 1 then return {'OK'} end
return {'GONE'}
