-- Read a cached result and mark it used (engine/admission/cache.py; arguments built by
-- engine/admission/script_args.py build_cache_get). KEYS: entry, its shard's LRU zset (members
-- are entry keys). ARGV: now (ms). Returns the entry or nil (then it leaves the LRU too).
local v = redis.call('GET', KEYS[1])
if v then
  redis.call('ZADD', KEYS[2], 'XX', ARGV[1], KEYS[1])
else
  redis.call('ZREM', KEYS[2], KEYS[1])
end
return v
