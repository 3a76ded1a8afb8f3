-- Settle a task at its terminal event, exactly once (engine/admission/budget.py; arguments
-- built by engine/admission/script_args.py build_budget_settle): release its reservation and
-- add what it really cost to the spend of the event's day.
-- KEYS: holds, the event day's spent counter and settled set (one hash tag per tenant).
-- ARGV: task id (or event id), cost (micro-USD; -1 = unknown: charge the reservation, never
-- nothing), ttl (s), settle ('1': count the cost; '0': only release).
-- Returns {1|0, spent of the day} (0 = this task was settled before).
local holds, spent_key, seen_key = KEYS[1], KEYS[2], KEYS[3]
local charge = tonumber(ARGV[2])
if ARGV[4] == '1' then
  if redis.call('HSETNX', seen_key, ARGV[1], '1') == 0 then
    return {0, tonumber(redis.call('GET', spent_key) or '0')}
  end
  redis.call('EXPIRE', seen_key, ARGV[3])
end
local hold = redis.call('HGET', holds, ARGV[1])
if hold then
  -- 'held key|micro': the key was named in Python when the reservation was made (same tag)
  local held_key, micro = string.match(hold, '^(.+)|(%d+)$')
  redis.call('HDEL', holds, ARGV[1])
  if held_key then
    -- a hold written before the key was recorded ('YYYYMMDD|micro') names no key: its
    -- day's counter expires with its TTL instead
    if string.find(held_key, '{', 1, true) then redis.call('DECRBY', held_key, micro) end
    if charge < 0 then charge = tonumber(micro) end
  end
end
if ARGV[4] ~= '1' or charge <= 0 then
  return {1, tonumber(redis.call('GET', spent_key) or '0')}
end
local total = redis.call('INCRBY', spent_key, charge)
redis.call('EXPIRE', spent_key, ARGV[3])
return {1, total}
