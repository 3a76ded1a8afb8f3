-- Retention: forget terminal tasks finished before a cutoff, and the oldest beyond the
-- partition's cap of retained finished tasks (state, record, idempotency key, callback, and
-- the events kept beside the task once its part of the log was archived).
-- ARGV[5] = cutoff ms, ARGV[6] = limit, ARGV[7] = finished tasks this partition may retain.
-- Returns the number of tasks forgotten (== limit: call again).
local cutoff, limit = tonumber(ARGV[5]), tonumber(ARGV[6])
local excess = redis.call('ZCARD', K_DONE) - tonumber(ARGV[7])
local head = redis.call('ZRANGE', K_DONE, 0, limit - 1, 'WITHSCORES')
local old = {}
for i = 1, #head, 2 do
  if #old < excess or tonumber(head[i + 1]) <= cutoff then
    old[#old + 1] = head[i]
  else
    break
  end
end
if #old == 0 then return 0 end
local recs = redis.call('HMGET', K_TASK, unpack(old))
local idem = {}
for i, rec in ipairs(recs) do
  if rec then
    local ok, r = pcall(cjson.decode, rec)
    if ok and type(r) == 'table' and type(r.idem) == 'string' and r.idem ~= '' then
      idem[#idem + 1] = r.tenant .. '\31' .. r.idem
    end
  end
end
redis.call('HDEL', K_STATE, unpack(old))
redis.call('HDEL', K_TASK, unpack(old))
redis.call('HDEL', K_CB, unpack(old))  -- callbacks `aiis ops` never delivered
redis.call('HDEL', K_KEPT, unpack(old))
if #idem > 0 then redis.call('HDEL', K_IDEM, unpack(idem)) end
redis.call('ZREM', K_DONE, unpack(old))
return #old
