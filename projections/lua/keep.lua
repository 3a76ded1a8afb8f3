-- Before the archive trims the log: keep the events of every task the engine still retains
-- beside that task (hash `<tag>:kept`, field = task id, JSON [[id, [field, value, …]], …] in
-- log order; PartitionKeys.kept), so `get`, watch and subscriptions read a finished task whole
-- for its retention (DESIGN.md §3 invariant 10). The janitor deletes the field when it forgets
-- the task; a task already forgotten gets none. Re-running on the same entries (after a crash
-- before the trim) keeps nothing twice: only ids after the task's last kept one are added.
-- KEYS[1] = the partition's state hash, KEYS[2] = the kept hash (projections/script_args.py
-- build_keep builds KEYS and ARGV).
-- ARGV: per entry, task id, entry id, n, then n fields and values (flattened).
-- Returns the number of entries kept.
local function newer(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local by_task, order, i = {}, {}, 1
while i <= #ARGV do
  local task, id, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local fields = {}
  for j = 1, n do fields[j] = ARGV[i + 2 + j] end
  if not by_task[task] then
    by_task[task] = {}
    order[#order + 1] = task
  end
  table.insert(by_task[task], {id, fields})
  i = i + 3 + n
end
local kept = 0
for _, task in ipairs(order) do
  if redis.call('HEXISTS', KEYS[1], task) == 1 then
    local blob = redis.call('HGET', KEYS[2], task)
    local list = blob and cjson.decode(blob) or {}
    local last = list[#list] and list[#list][1]
    local added = 0
    for _, e in ipairs(by_task[task]) do
      if not last or newer(e[1], last) then
        list[#list + 1] = e
        last = e[1]
        added = added + 1
      end
    end
    if added > 0 then
      redis.call('HSET', KEYS[2], task, cjson.encode(list))
      kept = kept + added
    end
  end
end
return kept
