-- Store a result and evict the shard's least recently used entries beyond its share
-- (engine/admission/cache.py; arguments built by engine/admission/script_args.py
-- build_cache_put). KEYS: entry, its shard's LRU zset (members are entry keys, all named in
-- Python with the shard's hash tag). ARGV: value, ttl (ms), now (ms), entries per shard.
-- Returns how many entries were evicted.
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local now = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
redis.call('ZADD', KEYS[2], now, KEYS[1])
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if excess > 0 then
  local old = redis.call('ZPOPMIN', KEYS[2], excess)
  for i = 1, #old, 2 do
    -- members written before the LRU held entry keys are bare digests: those entries
    -- expire with their TTL
    if string.find(old[i], '{', 1, true) then redis.call('DEL', old[i]) end
  end
end
return excess
