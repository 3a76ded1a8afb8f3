-- Shared GCRA rate limit: decide a batch of calls in order (providers/ratelimit.py).
-- KEYS/ARGV built and the reply typed by providers/script_args.py build_ratelimit_acquire.
local now = tonumber(ARGV[1])
local rT, rtau = tonumber(ARGV[2]), tonumber(ARGV[3])
local tT, ttau = tonumber(ARGV[4]), tonumber(ARGV[5])
local debt = tonumber(ARGV[6])
local blocked = math.max(now, tonumber(redis.call('GET', KEYS[3]) or '0'))
local rtat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local ttat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
local rset, tset = false, false
if tT > 0 and debt > 0 then
  ttat = ttat + tT * debt
  tset = true
end
local out = {}
for i = 7, #ARGV, 2 do
  local tokens, max_wait = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  -- a call of weight w conforms at s when max(tat, s) + w*T - s <= tau + T; a call heavier
  -- than the whole burst goes when the bucket is empty (s = tat)
  local start = blocked
  if rT > 0 then start = math.max(start, rtat - rtau) end
  if tT > 0 and tokens > 0 then
    start = math.max(start, ttat + math.min(0, tT * tokens - ttau - tT))
  end
  local wait = start - now
  if wait > max_wait then
    out[#out + 1] = -math.floor(wait) - 1
  else
    if rT > 0 then
      rtat = math.max(rtat, start) + rT
      rset = true
    end
    if tT > 0 and tokens > 0 then
      ttat = math.max(ttat, start) + tT * tokens
      tset = true
    end
    out[#out + 1] = math.floor(wait)
  end
end
if rset then
  redis.call('SET', KEYS[1], tostring(rtat), 'PX', math.floor(rtat - now + rtau) + 1000)
end
if tset then
  redis.call('SET', KEYS[2], tostring(ttat), 'PX', math.floor(ttat - now + ttau) + 1000)
end
return out
