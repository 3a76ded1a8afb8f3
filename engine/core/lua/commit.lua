-- Record what a worker did, fenced by the attempt number: an op applies only while the task's
-- state is still R|<attempt>, so a stalled worker whose task was reclaimed (or cancelled)
-- cannot write a second terminal event. Ops apply in order (progress before the terminal event).
-- ARGV[5] = n, then n × (op, task_id, attempt, priority, entry_id, data_json, extra)
--   op P progress (TaskProgress)        S succeeded (TaskSucceeded)   F failed (TaskFailed)
--      X dead-lettered (extra = reason) D retry (extra = due ms)      Q release to the queue
-- Returns n flags: 1 applied, 0 fenced out.
local EVENT = {P = 'TaskProgress', S = 'TaskSucceeded', F = 'TaskFailed', X = 'TaskDeadLettered',
  D = 'TaskRetryScheduled', Q = 'TaskRequeued'}
local n = tonumber(ARGV[5])
local ids = {}
for i = 0, n - 1 do ids[#ids + 1] = ARGV[7 + i * 7] end
load_states(ids)

local out = {}
local delayed = {}
for i = 0, n - 1 do
  local b = 6 + i * 7
  local op, tid, attempt, prio, eid, data, extra =
    ARGV[b], ARGV[b + 1], tonumber(ARGV[b + 2]), ARGV[b + 3], ARGV[b + 4], ARGV[b + 5],
    ARGV[b + 6]
  local st = state_cache[tid]
  if not st or st.code ~= 'R' or st.attempt ~= attempt or st.ref ~= eid then
    out[#out + 1] = 0
  else
    local evid = emit(tid, st.tenant, EVENT[op], data)
    if op ~= 'P' then
      ack(prio, eid)
      if op == 'D' then
        st.code, st.ref = 'D', ''
        delayed[#delayed + 1] = extra
        delayed[#delayed + 1] = tid
      elseif op == 'Q' then
        st.code = 'Q'
        st.ref = redis.call('XADD', QUEUE[st.prio], '*', 't', tid)
      else
        st.code, st.ref = op, evid
        mark_done(tid)
        if op == 'X' then to_dlq(tid, st.tenant, extra, attempt, st.prio, data) end
      end
      set_state(tid, st)
    end
    out[#out + 1] = 1
  end
end
if #delayed > 0 then redis.call('ZADD', K_DELAYED, unpack(delayed)) end
flush()
return out
