-- Hold every worker off a provider until a time (a 429's Retry-After; providers/ratelimit.py).
-- KEYS/ARGV built by providers/script_args.py build_ratelimit_block.
local untilms = tonumber(ARGV[1])
if untilms <= tonumber(redis.call('GET', KEYS[1]) or '0') then return 0 end
redis.call('SET', KEYS[1], tostring(untilms), 'PX', math.floor(untilms - tonumber(ARGV[2])) + 1)
return 1
