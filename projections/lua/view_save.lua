-- Save changed view shards and their checkpoints atomically, unless another writer moved one
-- (projections/storage.py). KEYS/ARGV built and the reply typed by
-- projections/script_args.py build_view_save.
local n = tonumber(ARGV[1])
local plan, i = {}, 2
for p = 1, n do
  local nset, ndel = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
  plan[p] = {i, nset, ndel}
  i = i + 6 + nset * 2 + ndel
end
local stale = {}
for p = 1, n do
  local m = redis.call('HMGET', KEYS[2 * p], 'gen', 'ckpt')
  if ((m[1] or '') .. ' ' .. (m[2] or '0-0')) ~= ARGV[plan[p][1]] then
    stale[#stale + 1] = p
  end
end
if #stale > 0 then return stale end
for p = 1, n do
  local b, nset, ndel = plan[p][1], plan[p][2], plan[p][3]
  local view = KEYS[2 * p - 1]
  local j = b + 6
  while nset > 0 do
    local k = math.min(nset, 500)
    local args = {}
    for x = 0, 2 * k - 1 do args[#args + 1] = ARGV[j + x] end
    redis.call('HSET', view, unpack(args))
    j, nset = j + 2 * k, nset - k
  end
  while ndel > 0 do
    local k = math.min(ndel, 500)
    local args = {}
    for x = 0, k - 1 do args[#args + 1] = ARGV[j + x] end
    redis.call('HDEL', view, unpack(args))
    j, ndel = j + k, ndel - k
  end
  redis.call('HSET', KEYS[2 * p], 'ckpt', ARGV[b + 1], 'ts', ARGV[b + 3])
  redis.call('HINCRBY', KEYS[2 * p], 'events', ARGV[b + 2])
  redis.call('HDEL', KEYS[2 * p], 'halted')  -- left by versions that halted on a bad entry
end
return stale
