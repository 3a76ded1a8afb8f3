-- Read a breaker; claim the half-open probe when its open period is over (providers/breaker.py).
-- KEYS/ARGV built and the reply typed by providers/script_args.py build_breaker_acquire.
local h = redis.call('HMGET', KEYS[1], 'state', 'opened_at', 'failures')
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = h[1] or 'closed'
if state == 'closed' then return {'closed', '0', h[3] or '0'} end
local opened_at = tonumber(h[2]) or 0
-- 0.25 s of margin so the caller's own clock check cannot see the period end a moment later
if state == 'opened' and now < opened_at + ttl then
  return {'opened', tostring(math.max(opened_at, now - ttl + 0.25)), '0'}
end
if redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', ARGV[3]) then
  redis.call('HSET', KEYS[1], 'state', 'half-opened')
  return {'half-opened', '0', '0'}
end
local left = math.max(redis.call('PTTL', KEYS[2]), 0) / 1000
return {'opened', tostring(now - ttl + math.max(0.25, math.min(left, ttl))), '0'}
