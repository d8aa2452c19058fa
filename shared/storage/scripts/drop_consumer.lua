-- drop_consumer.lua: removes a consumer from an app stream's group, only if nothing is
-- pending on it any more, in one step.  XGROUP DELCONSUMER drops a consumer's pending entries
-- with it, and nothing would deliver them again: an entry read by the consumer between a look
-- at its pending entries and the delete would be lost.  Status of no task changes.
-- KEYS[1] app stream
-- ARGV[1] prefix  ARGV[2] consumer (executor id)
-- Returns {'DROPPED'} | {'PENDING'} (entries pending on it: give them back first, redeliver.lua)
--         | {'NONE'} (no such stream or group)
local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], GROUP, '-', '+', 1, ARGV[2])
if not ok then return {'NONE'} end
if #p > 0 then return {'PENDING'} end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], GROUP, ARGV[2])
return {'DROPPED'}
