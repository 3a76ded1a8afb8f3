-- Accept a batch of tasks: TaskRequested event + work entry + state, atomically per task.
-- ARGV[5] = max queue depth per priority, ARGV[6] = n, then n × (task_id, tenant, priority,
-- idempotency_key or '', record_json, requested_data_json, pii_mapping_json or '',
-- pii_key or '', pii_ttl_s, callback_url or '', correlation_key or '', correlation_ttl_s) —
-- engine/core/script_args.py SubmitItem.
-- The PII mapping goes to its own key (keys.vault_key, in the task's slot), never into an event;
-- an intake task's correlation id indexes it: correlation_key (in this slot) -> task id, with
-- a TTL (keys.correlation_key; Client.find_correlation reads it).
-- An idempotency key that already names a task answers ('dup', that task) when the two requests
-- are the same (the records' `fp`, engine/core/task.py fingerprint, match, or either record
-- has none: written before fingerprints), and ('conflict', that task) when they differ.
-- Returns n × (status, value): ('new', task_id) | ('dup', task_id) | ('conflict', task_id) |
-- ('full', depth).
local max_depth = tonumber(ARGV[5])
local n = tonumber(ARGV[6])
-- a batch repeated after a lost reply finds its task ids already accepted
local batch_ids = {}
for i = 0, n - 1 do batch_ids[#batch_ids + 1] = ARGV[7 + i * 12] end
load_states(batch_ids)
local depth = {}
local out = {}
local records = {}
local batch_records = {}  -- task id -> record of the tasks this batch creates (HSET at the end)

local function fp_of(raw)
  if not raw then return nil end
  local ok, r = pcall(cjson.decode, raw)
  if ok and type(r) == 'table' and type(r.fp) == 'string' then return r.fp end
  return nil
end

for i = 0, n - 1 do
  local b = 7 + i * 12
  local id, tenant, prio, idem, rec, data =
    ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5]
  local pii, pii_key, pii_ttl, cb = ARGV[b + 6], ARGV[b + 7], ARGV[b + 8], ARGV[b + 9]
  local corr, corr_ttl = ARGV[b + 10], ARGV[b + 11]
  local existing = false
  local verdict = 'dup'
  if state_cache[id] then
    existing = id
  elseif idem ~= '' then
    existing = redis.call('HGET', K_IDEM, tenant .. '\31' .. idem)
    if existing then
      local old = fp_of(batch_records[existing] or redis.call('HGET', K_TASK, existing))
      local new = old and fp_of(rec)
      if new and old ~= new then verdict = 'conflict' end
    end
  end
  if existing then
    out[#out + 1] = verdict
    out[#out + 1] = existing
  else
    if depth[prio] == nil then depth[prio] = redis.call('XLEN', QUEUE[prio]) end
    if depth[prio] >= max_depth then
      out[#out + 1] = 'full'
      out[#out + 1] = tostring(depth[prio])
    else
      depth[prio] = depth[prio] + 1
      local rid = emit(id, tenant, 'TaskRequested', data)
      local qid = redis.call('XADD', QUEUE[prio], '*', 't', id)
      set_state(id, {code = 'Q', attempt = 0, tenant = tenant, prio = prio, ref = qid, rid = rid})
      records[#records + 1] = id
      records[#records + 1] = rec
      batch_records[id] = rec
      if idem ~= '' then redis.call('HSET', K_IDEM, tenant .. '\31' .. idem, id) end
      if pii ~= '' then redis.call('SET', pii_key, pii, 'EX', pii_ttl) end
      if cb ~= '' then redis.call('HSET', K_CB, id, cb) end
      if corr ~= '' then redis.call('SET', corr, id, 'EX', corr_ttl) end
      out[#out + 1] = 'new'
      out[#out + 1] = id
    end
  end
end
if #records > 0 then redis.call('HSET', K_TASK, unpack(records)) end
flush()
return out
