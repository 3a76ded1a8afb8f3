-- Reserve a task's estimated cost against its tenant's daily budget (engine/admission/budget.py;
-- arguments built by engine/admission/script_args.py build_budget_reserve).
-- KEYS: holds (task id -> 'held key|micro'), the day's spent and held counters (one hash tag).
-- ARGV: budget (micro-USD), estimate (micro-USD), task id, ttl (s).
-- Admits while spent + held < budget, so concurrent tasks can overshoot by at most one
-- estimate. Returns {1|0, spent, held} (1 = reserved, or already reserved by this task).
local holds, spent_key, held_key = KEYS[1], KEYS[2], KEYS[3]
local budget, estimate = tonumber(ARGV[1]), tonumber(ARGV[2])
local spent = tonumber(redis.call('GET', spent_key) or '0')
local held = tonumber(redis.call('GET', held_key) or '0')
if redis.call('HEXISTS', holds, ARGV[3]) == 1 then return {1, spent, held} end
if spent + held >= budget then return {0, spent, held} end
-- the held counter's name (built in Python) goes with the hold: a settle on a later day
-- gives the reservation back to the day it was taken from
redis.call('HSET', holds, ARGV[3], held_key .. '|' .. estimate)
redis.call('EXPIRE', holds, ARGV[4])
redis.call('INCRBY', held_key, estimate)
redis.call('EXPIRE', held_key, ARGV[4])
return {1, spent, held}
