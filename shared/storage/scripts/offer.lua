-- offer.lua: an executor with a free run slot offers it for push delivery (create.lua takes
-- offers; _lib.lua push).  It holds the slot back until the offer is taken (the run arrives on
-- its pushed stream, already claimed under `lease`) or withdrawn (withdraw.lua).  The lease is
-- the next of the executor's lease sequence, so the heartbeat's `settled` stays below it while
-- the offer is outstanding and orphan.lua never takes a pushed run the executor has not read.
-- Also acknowledges (and deletes) the pushed entries the executor has started since its last
-- offer: the stream only holds runs not yet in hand.
-- KEYS[1] executors zset   KEYS[2] idle list of the app   KEYS[3] pushed stream of the executor
-- ARGV[1] prefix  ARGV[2] executor id  ARGV[3] lease  ARGV[4..] pushed entry ids to acknowledge
-- Returns {'OK'} offered | {'DEAD'} not registered (declared dead, or the registry lost): no
--         offer; the heartbeat finds out and the executor registers again
ack_pushed(KEYS[3], {unpack(ARGV, 4)})
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return {'DEAD'} end
-- the group exists before anything can be pushed: MKSTREAM, and BUSYGROUP is fine
redis.pcall('XGROUP', 'CREATE', KEYS[3], GROUP, '0', 'MKSTREAM')
redis.call('RPUSH', KEYS[2], ARGV[2] .. ' ' .. ARGV[3])
return {'OK'}
