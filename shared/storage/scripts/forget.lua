-- forget.lua: the last step of a reap (manager/scheduler.py): the executor declared dead
-- (mark_dead.lua) leaves the registry of the partition, once reap.lua has taken back every run
-- of its reaping hash and its pending stream entries were given back.  DEAD -> GONE, or
-- LIVE and DEAD -> LIVE for an executor that registered again meanwhile: that one keeps its
-- registry entry, info, running set (its runs since) and control list; only its dead mark goes.
-- KEYS[1] executors zset   KEYS[2] dead-executors zset   KEYS[3] reaping hash of the executor
-- KEYS[4] info hash of the executor   KEYS[5] running set of the executor
-- KEYS[6] control list of the executor
-- ARGV[1] prefix  ARGV[2] executor id
-- Returns {'GONE'}  it left (its running set was empty: no claim is accepted from a DEAD
--            executor, and the mark moved what it held into the reaping hash)
--         {'LIVE'}  registered again: it stays
--         {'BUSY'}  runs still in its reaping hash (a new mark since the caller read it):
--            nothing changed, the next reap finishes
local eid = ARGV[2]
if redis.call('EXISTS', KEYS[3]) == 1 then return {'BUSY'} end
redis.call('ZREM', KEYS[2], eid)
if redis.call('ZSCORE', KEYS[1], eid) then return {'LIVE'} end
redis.call('DEL', KEYS[4], KEYS[5], KEYS[6], k_pushed(eid))  -- its pushed stream (offer.lua) too
return {'GONE'}
