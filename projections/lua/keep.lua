-- Before the archive trims the log: keep the events of every task the engine still retains
-- beside that task (a stream of the same ids, PartitionKeys.kept), so `get`, watch and
-- subscriptions read a finished task whole for its retention (DESIGN.md §3 invariant 10).
-- The janitor deletes the kept stream when it forgets the task; a task already forgotten
-- gets none. Re-running on the same entries (after a crash before the trim) keeps nothing twice.
-- KEYS[1] = the partition's state hash, KEYS[2..] = kept streams.
-- ARGV: per entry, index into KEYS, task id, entry id, field count n, then n fields and values
-- (flattened). Returns the number of entries kept.
local alive, kept, i = {}, 0, 1
while i <= #ARGV do
  local key, task, id, n = KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  if alive[task] == nil then alive[task] = redis.call('HEXISTS', KEYS[1], task) == 1 end
  if alive[task] then
    local args = {'XADD', key, id}
    for j = 1, n do args[#args + 1] = ARGV[i + 3 + j] end
    -- an id at or below the stream's top is already kept (a re-run): XADD refuses it
    if type(redis.pcall(unpack(args))) == 'string' then kept = kept + 1 end
  end
  i = i + 4 + n
end
return kept
