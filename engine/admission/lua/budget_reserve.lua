-- Reserve a task's estimated cost against its tenant's daily budget (engine/budget.py).
-- KEYS[1] = <ns>:{budget:<tenant>}:holds (task id -> 'day|micro'); the day's counters share
-- its hash tag: <prefix>:<day>:spent, <prefix>:<day>:held.
-- ARGV: budget (micro-USD), estimate (micro-USD), task id, day (YYYYMMDD), ttl (s).
-- Admits while spent + held < budget, so concurrent tasks can overshoot by at most one
-- estimate. Returns {1|0, spent, held} (1 = reserved, or already reserved by this task).
local prefix = string.sub(KEYS[1], 1, -7)
local spent_key = prefix .. ':' .. ARGV[4] .. ':spent'
local held_key = prefix .. ':' .. ARGV[4] .. ':held'
local budget, estimate = tonumber(ARGV[1]), tonumber(ARGV[2])
local spent = tonumber(redis.call('GET', spent_key) or '0')
local held = tonumber(redis.call('GET', held_key) or '0')
if redis.call('HEXISTS', KEYS[1], ARGV[3]) == 1 then return {1, spent, held} end
if spent + held >= budget then return {0, spent, held} end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4] .. '|' .. estimate)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('INCRBY', held_key, estimate)
redis.call('EXPIRE', held_key, ARGV[5])
return {1, spent, held}
