-- Retention: forget terminal tasks finished before a cutoff (state, record, idempotency key).
-- Their events stay in the log (trimmed separately, after archiving).
-- ARGV[5] = cutoff ms, ARGV[6] = limit. Returns the number of tasks forgotten.
local old = redis.call('ZRANGEBYSCORE', K_DONE, '-inf', ARGV[5], 'LIMIT', 0, tonumber(ARGV[6]))
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
if #idem > 0 then redis.call('HDEL', K_IDEM, unpack(idem)) end
redis.call('ZREM', K_DONE, unpack(old))
return #old
