-- permit_check.lua: the manager asks the task's partition whether the run of a permit it
-- found due (limit_grants) still holds the task.  LIVE: RUNNING under the permit's lease.
-- Otherwise the lease is revoked in the same step (claim.lua refuses a revoked lease), so a
-- claim that comes after this answer can never run on the slot the manager now gives back:
-- the permit is counted for exactly one run or none.  Revocations are kept an hour.
-- KEYS[1] task hash   KEYS[2] revoked leases zset of the partition
-- ARGV[1] prefix  ARGV[2] lease
-- Returns {'LIVE'} | {'GONE'}
local h = redis.call('HMGET', KEYS[1], 'status', 'lease')
if h[1] == S.RUNNING and h[2] == ARGV[2] then return {'LIVE'} end
local ts = now()
redis.call('ZADD', KEYS[2], ts, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ts - 3600)
return {'GONE'}
