-- A success while closed clears the failure count (providers/breaker.py).
-- KEYS built by providers/script_args.py build_breaker_reset.
if (redis.call('HGET', KEYS[1], 'state') or 'closed') == 'closed' then
  redis.call('HSET', KEYS[1], 'failures', 0)
end
return 1
