-- Make rebuilt view shards live in one step (projections/storage.py).
-- KEYS built by projections/script_args.py build_view_swap.
for p = 0, #KEYS / 4 - 1 do
  local view, meta = KEYS[4 * p + 1], KEYS[4 * p + 2]
  local rview, rmeta = KEYS[4 * p + 3], KEYS[4 * p + 4]
  if redis.call('EXISTS', rmeta) == 0 then
    return redis.error_reply('no rebuilt shard ' .. rmeta)
  end
  redis.call('DEL', view, meta)
  if redis.call('EXISTS', rview) == 1 then redis.call('RENAME', rview, view) end
  redis.call('RENAME', rmeta, meta)
end
return 1
