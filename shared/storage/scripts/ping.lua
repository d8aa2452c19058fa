-- ping.lua: executor heartbeat.  Pings travel on their own keys, never on a work stream, so
-- a backlog of work cannot make a live executor look dead.
-- A ping only refreshes a registration: an executor that is not in the executors zset (DEAD,
-- declared dead by mark_dead.lua; or its registry lost with Redis's data) gets 0 and stays out.
-- It has lost the runs of this partition: it gives them up, then registers again (LIVE, or
-- LIVE and DEAD while the manager finishes the reap of what it held; see mark_dead.lua).
-- A ping (or registration) may carry a report of the executor's runs in this partition, kept in
-- its info hash with the time it landed (`reported`), for orphan.lua: `lease_prefix` (of every
-- lease it makes: '<prefix>.<counter>', counters in the order of its claims), `settled` (the
-- highest counter whose claim reply it had fully processed when it made the report) and `held`
-- (the leases of the runs it held in this partition then, hand-backs not yet landed included).
-- KEYS[1] executors zset   KEYS[2] this executor's info hash
-- ARGV[1] prefix  ARGV[2] executor id  ARGV[3] '1' register (start, or again after a 0) | '0' ping
-- ARGV[4] lease prefix, or '' for no report (ARGV[5], ARGV[6] are then ignored)
-- ARGV[5] settled   ARGV[6] held: JSON list of leases
-- ARGV[7..] info field, value pairs (register only)
-- Returns 1 | 0 (not registered: declared dead or forgotten; drop the partition's runs, register)
local ts = now()
if ARGV[3] == '1' then
  local info = {}
  for i = 7, #ARGV do info[#info + 1] = ARGV[i] end
  redis.call('HSET', KEYS[2], 'started', fmt(ts), unpack(info))
elseif not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], ts, ARGV[2])
redis.call('HSET', KEYS[2], 'last_ping', fmt(ts))
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[2], 'lease_prefix', ARGV[4], 'settled', ARGV[5], 'held', ARGV[6],
    'reported', fmt(ts))
end
return 1
