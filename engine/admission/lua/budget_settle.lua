-- Settle a task at its terminal event, exactly once (engine/budget.py): release its
-- reservation and add what it really cost to the spend of the event's day.
-- KEYS[1] = <ns>:{budget:<tenant>}:holds; the day's counters share its hash tag.
-- ARGV: task id (or event id), day of the event, cost (micro-USD; -1 = unknown: charge the
-- reservation, never nothing), ttl (s), settle ('1': count the cost; '0': only release).
-- Returns {1|0, spent of the day} (0 = this task was settled before).
local prefix = string.sub(KEYS[1], 1, -7)
local spent_key = prefix .. ':' .. ARGV[2] .. ':spent'
local charge = tonumber(ARGV[3])
if ARGV[5] == '1' then
  local seen_key = prefix .. ':' .. ARGV[2] .. ':seen'
  if redis.call('HSETNX', seen_key, ARGV[1], '1') == 0 then
    return {0, tonumber(redis.call('GET', spent_key) or '0')}
  end
  redis.call('EXPIRE', seen_key, ARGV[4])
end
local hold = redis.call('HGET', KEYS[1], ARGV[1])
if hold then
  local day, micro = string.match(hold, '^(%d+)|(%d+)$')
  redis.call('HDEL', KEYS[1], ARGV[1])
  if day then
    redis.call('DECRBY', prefix .. ':' .. day .. ':held', micro)
    if charge < 0 then charge = tonumber(micro) end
  end
end
if ARGV[5] ~= '1' or charge <= 0 then
  return {1, tonumber(redis.call('GET', spent_key) or '0')}
end
local total = redis.call('INCRBY', spent_key, charge)
redis.call('EXPIRE', spent_key, ARGV[4])
return {1, total}
