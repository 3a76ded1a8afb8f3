-- Count a failure; open the breaker at the threshold (providers/breaker.py).
-- KEYS/ARGV built by providers/script_args.py build_breaker_fail.
if (redis.call('HGET', KEYS[1], 'state') or 'closed') ~= 'closed' then return 0 end
local n = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if n >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'opened', 'opened_at', ARGV[1], 'failures', 0)
  return n
end
return 0
