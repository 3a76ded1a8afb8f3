-- Give up the probe lock if this worker still holds it (providers/breaker.py).
-- KEYS/ARGV built by providers/script_args.py build_breaker_release.
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
