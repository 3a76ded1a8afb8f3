-- Settle the half-open probe: open again or close (providers/breaker.py).
-- KEYS/ARGV built by providers/script_args.py build_breaker_settle.
if redis.call('HGET', KEYS[1], 'state') ~= 'half-opened' then return 0 end
if ARGV[1] == 'opened' then
  redis.call('HSET', KEYS[1], 'state', 'opened', 'opened_at', ARGV[2], 'failures', 0)
else
  redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0)
end
redis.call('DEL', KEYS[2])
return 1
