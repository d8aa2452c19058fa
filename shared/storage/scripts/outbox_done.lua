-- outbox_done.lua: the permits of a run that left RUNNING were given back in every key's
-- partition (limit_release.lua): its outbox entry goes.  Runs in the task's partition.
-- KEYS[1] the partition's limit outbox
-- ARGV[1] prefix  ARGV[2] the entry
-- Returns {'OK'} | {'GONE'} (another drainer removed it)
if redis.call('ZREM', KEYS[1], ARGV[2]) == 1 then return {'OK'} end
return {'GONE'}
