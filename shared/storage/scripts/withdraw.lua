-- withdraw.lua: an executor takes back its offer (offer.lua): it wants the slot for a claim,
-- or it stops, or it is not sure the offer landed.  Also acknowledges (and deletes) pushed
-- entries already started, as offer.lua does.
-- KEYS[1] idle list of the app   KEYS[2] pushed stream of the executor
-- ARGV[1] prefix  ARGV[2] executor id  ARGV[3] lease of the offer  ARGV[4..] pushed entry ids
--   to acknowledge
-- Returns {'WITHDRAWN'}  it was still there: removed, the lease is never used, the slot is free
--         {'TAKEN', entry id, field, value, ...}  create.lua took it: the run, claimed under the
--            lease (the pushed entry, acknowledged and deleted here: the caller starts it or
--            hands it back)
--         {'GONE'}  neither: never landed, or dropped with the executor declared dead (create
--            drops the offers of an unregistered executor, mark_dead.lua all of its offers)
ack_pushed(KEYS[2], {unpack(ARGV, 4)})
if redis.call('LREM', KEYS[1], 1, ARGV[2] .. ' ' .. ARGV[3]) == 1 then return {'WITHDRAWN'} end
-- the stream holds only runs not yet in hand, one per outstanding offer: a short scan
for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+')) do
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == 'lease' and f[i + 1] == ARGV[3] then
      ack_pushed(KEYS[2], {e[1]})
      local out = {'TAKEN', e[1]}
      for j = 1, #f do out[#out + 1] = f[j] end
      return out
    end
  end
end
return {'GONE'}
