-- Hand work to a consumer: gather queue entries, then start each one (fence bump + TaskStarted).
-- ARGV[5] = mode:
--   'read'    ARGV[6] free slots, ARGV[7] priority order ('high,normal,low'), ARGV[8] promote limit
--   'claim'   ARGV[6] priority, ARGV[7] cursor, ARGV[8] min idle ms, ARGV[9] count
--   'adopt'   ARGV[6] n, then n × (priority, entry_id, task_id): entries this consumer already
--             read with a blocking XREADGROUP
--   'promote' ARGV[6] limit: only move due retries back to their queues
-- Returns {cursor, n_started, started..., dropped, dead} with started = n × (priority, entry_id,
-- task_id, attempt, record_json).
local mode = ARGV[5]
local entries = {}   -- {prio, entry_id, task_id or false}
local cursor = '0-0'

local function promote(limit)
  local due = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', NOW, 'LIMIT', 0, limit)
  if #due == 0 then return end
  load_states(due)
  for _, id in ipairs(due) do
    local st = state_cache[id]
    if st and st.code == 'D' then
      st.code = 'Q'
      st.ref = redis.call('XADD', QUEUE[st.prio], '*', 't', id)
      set_state(id, st)
      emit(id, st.tenant, 'TaskRequeued',
        cjson.encode({attempt = st.attempt, reason = 'retry_due'}))
    end
  end
  redis.call('ZREM', K_DELAYED, unpack(due))
end

local function task_of(fields)
  for i = 1, #fields, 2 do
    if fields[i] == 't' then return fields[i + 1] end
  end
  return false
end

local function collect(prio, reply_entries)
  for _, e in ipairs(reply_entries) do
    entries[#entries + 1] = {prio, e[1], task_of(e[2]), e[2]}
  end
end

if mode == 'read' then
  promote(tonumber(ARGV[8]))
  local free = tonumber(ARGV[6])
  for prio in string.gmatch(ARGV[7], '[^,]+') do
    if free <= 0 then break end
    local r = redis.call('XREADGROUP', 'GROUP', GROUP, CONSUMER, 'COUNT', free,
      'STREAMS', QUEUE[prio], '>')
    -- Redis: nil or {{stream, entries}}; fakeredis: {} or {stream, entries}
    local got = r and r[1] and (type(r[1]) == 'string' and r[2] or r[1][2])
    if got then
      collect(prio, got)
      free = free - #got
    end
  end
elseif mode == 'claim' then
  local prio = ARGV[6]
  local r = redis.call('XAUTOCLAIM', QUEUE[prio], GROUP, CONSUMER, ARGV[8], ARGV[7],
    'COUNT', ARGV[9], 'JUSTID')
  cursor = r[1]
  for _, eid in ipairs(r[2]) do
    local found = redis.call('XRANGE', QUEUE[prio], eid, eid)
    if #found == 0 then
      -- deleted while pending: nothing to run, drop it from the PEL
      redis.call('XACK', QUEUE[prio], GROUP, eid)
    else
      entries[#entries + 1] = {prio, eid, task_of(found[1][2]), found[1][2]}
    end
  end
elseif mode == 'adopt' then
  local n = tonumber(ARGV[6])
  for i = 0, n - 1 do
    local b = 7 + i * 3
    local tid = ARGV[b + 2]
    if tid == '' then tid = false end
    entries[#entries + 1] = {ARGV[b], ARGV[b + 1], tid, {}}
  end
elseif mode == 'promote' then
  promote(tonumber(ARGV[6]))
end

local ids = {}
for _, e in ipairs(entries) do
  if e[3] then ids[#ids + 1] = e[3] end
end
load_states(ids)

local started, started_ids = {}, {}
local dropped, dead = 0, 0
for _, e in ipairs(entries) do
  local prio, eid, tid, fields = e[1], e[2], e[3], e[4]
  local st = tid and state_cache[tid]
  if not st then
    -- a foreign or corrupt entry: dead-letter it, never let it stop a worker
    to_dlq(tid or '', '', 'malformed', 0, prio,
      cjson.encode({entry = eid, fields = fields}))
    ack(prio, eid)
    dead = dead + 1
  elseif TERMINAL[st.code] or st.ref ~= eid then
    -- finished or cancelled meanwhile, or an entry the task no longer owns
    ack(prio, eid)
    dropped = dropped + 1
  elseif st.attempt + 1 > MAX_DELIVERIES then
    local evid = emit(tid, st.tenant, 'TaskDeadLettered',
      cjson.encode({attempt = st.attempt, reason = 'max_deliveries'}))
    to_dlq(tid, st.tenant, 'max_deliveries', st.attempt, prio, '')
    st.code, st.ref = 'X', evid
    set_state(tid, st)
    mark_done(tid)
    ack(prio, eid)
    dead = dead + 1
  else
    local reclaimed = st.code == 'R'
    st.code = 'R'
    st.attempt = st.attempt + 1
    set_state(tid, st)
    emit(tid, st.tenant, 'TaskStarted',
      cjson.encode({attempt = st.attempt, worker = CONSUMER, reclaimed = reclaimed}))
    started[#started + 1] = {prio, eid, tid, st.attempt}
    started_ids[#started_ids + 1] = tid
  end
end

local out = {cursor, #started}
if #started_ids > 0 then
  local recs = redis.call('HMGET', K_TASK, unpack(started_ids))
  for i, s in ipairs(started) do
    out[#out + 1] = s[1]
    out[#out + 1] = s[2]
    out[#out + 1] = s[3]
    out[#out + 1] = s[4]
    out[#out + 1] = recs[i] or ''
  end
end
out[#out + 1] = dropped
out[#out + 1] = dead
flush()
return out
