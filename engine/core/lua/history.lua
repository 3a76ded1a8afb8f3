-- A task's events after a position, in one atomic (read-only) step: first those kept beside
-- the task when its part of the log was archived and trimmed (hash K_KEPT, field = task
-- id, JSON [[id, [field, value, …]], …] in log order, PartitionKeys.kept), then the log after
-- them. One step, so an archive that keeps and trims meanwhile can neither hide nor reorder.
-- ARGV[5] = task id, ARGV[6] = after (exclusive), ARGV[7] = count.
-- Returns entries as XRANGE does; the log's part holds every task's entries (callers filter).
local after, count = ARGV[6], tonumber(ARGV[7])
local function parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local am, as = parts(after)
local out = {}
local blob = redis.call('HGET', K_KEPT, ARGV[5])
if blob then
  for _, e in ipairs(cjson.decode(blob)) do
    local m, s = parts(e[1])
    if #out < count and (m > am or (m == am and s > as)) then
      out[#out + 1] = e
      after = e[1]
    end
  end
end
if #out < count then
  local rest = redis.call('XRANGE', K_LOG, '(' .. after, '+', 'COUNT', count - #out)
  for _, e in ipairs(rest) do out[#out + 1] = e end
end
return out
