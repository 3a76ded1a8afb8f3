-- Lease renewal: reset the idle time of the entries this consumer still rightfully holds
-- (XCLAIM … JUSTID, min-idle 0), so a long provider call is never reclaimed; report the ones it
-- lost (reclaimed elsewhere, cancelled, finished) so the worker stops working on them.
-- ARGV[5] = n, then n × (task_id, attempt, priority, entry_id). Returns the 1-based lost indices.
local n = tonumber(ARGV[5])
local ids = {}
for i = 0, n - 1 do ids[#ids + 1] = ARGV[6 + i * 4] end
load_states(ids)
local keep = {high = {}, normal = {}, low = {}}
local lost = {}
for i = 0, n - 1 do
  local b = 6 + i * 4
  local tid, attempt, prio, eid = ARGV[b], tonumber(ARGV[b + 1]), ARGV[b + 2], ARGV[b + 3]
  local st = state_cache[tid]
  if st and st.code == 'R' and st.attempt == attempt and st.ref == eid then
    local list = keep[prio]
    list[#list + 1] = eid
  else
    lost[#lost + 1] = i + 1
  end
end
for prio, eids in pairs(keep) do
  if #eids > 0 then
    local args = {QUEUE[prio], GROUP, CONSUMER, 0}
    for _, eid in ipairs(eids) do args[#args + 1] = eid end
    args[#args + 1] = 'JUSTID'
    redis.call('XCLAIM', unpack(args))
  end
end
return lost
