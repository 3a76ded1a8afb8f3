-- Shared prelude, prepended to every engine script.
-- KEYS (engine/keys.py PartitionKeys.script_keys): log, q:high, q:normal, q:low, delayed,
--   state, task, idem, dlq, done, cb (task id -> callback URL), kept (task id -> its events
--   kept once its part of the log was archived). Every key is built in Python.
-- ARGV[1..4] (every script): now_ms, consumer, max_deliveries, dlq_maxlen; then script args.
--
-- State word (hash `state`, field = task id): code|attempt|tenant|priority|ref|requested_id
--   code: Q queued, R running, D retry delayed, S succeeded, F failed, X dead-lettered,
--         C cancelled.  attempt: starts so far (the fencing token).
--   ref: the queue entry id the task owns (Q, R), the terminal event id (S F X C), '' (D).
if redis.replicate_commands then pcall(redis.replicate_commands) end

local K_LOG, K_DELAYED, K_STATE, K_TASK, K_IDEM, K_DLQ, K_DONE, K_CB, K_KEPT =
  KEYS[1], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local QUEUE = {high = KEYS[2], normal = KEYS[3], low = KEYS[4]}
local GROUP = 'workers'
local NOW = ARGV[1]
local CONSUMER = ARGV[2]
local MAX_DELIVERIES = tonumber(ARGV[3])
local DLQ_MAXLEN = ARGV[4]
local TERMINAL = {S = true, F = true, X = true, C = true}

local function parse_state(s)
  if not s then return nil end
  local code, attempt, tenant, prio, ref, rid =
    string.match(s, '^(%u)|(%d+)|([^|]*)|(%l*)|([^|]*)|([^|]*)$')
  if not code then return nil end
  return {code = code, attempt = tonumber(attempt), tenant = tenant, prio = prio, ref = ref,
          rid = rid}
end

local function fmt_state(st)
  return st.code .. '|' .. st.attempt .. '|' .. st.tenant .. '|' .. st.prio .. '|' .. st.ref
    .. '|' .. st.rid
end

local function emit(task_id, tenant, etype, data)
  return redis.call('XADD', K_LOG, '*', 'type', etype, 'task', task_id, 'tenant', tenant,
    'ts', NOW, 'v', '1', 'data', data)
end

local function to_dlq(task_id, tenant, reason, attempt, prio, err)
  redis.call('XADD', K_DLQ, 'MAXLEN', '~', DLQ_MAXLEN, '*', 'task', task_id, 'tenant', tenant,
    'reason', reason, 'attempt', attempt, 'priority', prio, 'error', err, 'ts', NOW)
end

-- Batched bookkeeping, flushed once per script call.
local state_cache, state_dirty = {}, {}
local loaded = {}
local function load_states(ids)
  -- only ids not seen yet: a state changed earlier in this call is not flushed until the end
  local want = {}
  for _, id in ipairs(ids) do
    if not loaded[id] then
      loaded[id] = true
      want[#want + 1] = id
    end
  end
  if #want == 0 then return end
  local raw = redis.call('HMGET', K_STATE, unpack(want))
  for i, id in ipairs(want) do state_cache[id] = parse_state(raw[i]) end
end
local function set_state(id, st)
  state_cache[id] = st
  state_dirty[id] = true
end
local acks = {high = {}, normal = {}, low = {}}
local function ack(prio, entry_id)
  local list = acks[prio]
  if list then list[#list + 1] = entry_id end
end
local done = {}
local function mark_done(id)
  done[#done + 1] = NOW
  done[#done + 1] = id
end
local function flush()
  local args = {}
  for id in pairs(state_dirty) do
    args[#args + 1] = id
    args[#args + 1] = fmt_state(state_cache[id])
  end
  if #args > 0 then redis.call('HSET', K_STATE, unpack(args)) end
  for prio, ids in pairs(acks) do
    if #ids > 0 then
      redis.call('XACK', QUEUE[prio], GROUP, unpack(ids))
      redis.call('XDEL', QUEUE[prio], unpack(ids))
    end
  end
  if #done > 0 then redis.call('ZADD', K_DONE, unpack(done)) end
end
