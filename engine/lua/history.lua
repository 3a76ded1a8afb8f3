-- A task's events after a position, in one atomic (read-only) step: first those kept beside
-- the task when its part of the log was archived and trimmed (key `<tag>:ev:<task id>`,
-- PartitionKeys.kept; same ids as the log), then the log after them. Read in one step so an
-- archive that copies and trims meanwhile can neither hide an event nor reorder two.
-- ARGV[5] = task id, ARGV[6] = after (exclusive), ARGV[7] = count.
-- Returns entries as XRANGE does; the log's part holds every task's entries (callers filter).
local after, count = ARGV[6], tonumber(ARGV[7])
local out = redis.call('XRANGE', K_TAG .. ':ev:' .. ARGV[5], '(' .. after, '+', 'COUNT', count)
if #out > 0 then after = out[#out][1] end
if #out < count then
  local rest = redis.call('XRANGE', K_LOG, '(' .. after, '+', 'COUNT', count - #out)
  for _, e in ipairs(rest) do out[#out + 1] = e end
end
return out
