-- Record an archived segment and trim the log below it (projections/archive.py).
-- KEYS/ARGV built by projections/script_args.py build_archive_record.
local cur = redis.call('HGET', KEYS[1], 'archived_to')
if cur then
  local cm, cs = string.match(cur, '^(%d+)-(%d+)$')
  local nm, ns = string.match(ARGV[1], '^(%d+)-(%d+)$')
  if tonumber(cm) > tonumber(nm) or (cm == nm and tonumber(cs) >= tonumber(ns)) then
    ARGV[1] = cur
  end
end
redis.call('HSET', KEYS[1], 'archived_to', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'events', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'segments', ARGV[3])
return redis.call('XTRIM', KEYS[2], 'MINID', ARGV[4])
