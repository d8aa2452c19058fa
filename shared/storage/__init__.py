"""Redis storage of the core, shared by both daemons (and by the transition tests).

connection  the client: one server, a Redis Cluster or a Sentinel service, decided once when
            connecting; its timeouts
scripts/    one Lua script per state transition, each opening with its KEYS, ARGV, returns
prelude     the Lua names generated from Python: keys, statuses, consumer group, buckets
runner      loads the scripts and runs calls, many in one round trip
calls       builds every script call (KEYS, ARGV) and decodes its reply, in one place
streams     the app streams of a partition; give-back of entries read but never claimed
"""
