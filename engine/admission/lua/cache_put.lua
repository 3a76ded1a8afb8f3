redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
local now = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]))
redis.call('ZADD', KEYS[2], now, ARGV[1])
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if excess > 0 then
  local old = redis.call('ZPOPMIN', KEYS[2], excess)
  -- evicted entries share KEYS[1]'s hash tag (same slot), so they may be named here
  local prefix = string.sub(KEYS[1], 1, string.len(KEYS[1]) - string.len(ARGV[1]))
  for i = 1, #old, 2 do redis.call('DEL', prefix .. old[i]) end
end
return excess
