-- Cancel a task that has not reached a terminal event. A queued or delayed task never starts;
-- a running one is fenced out (its worker sees the loss at its next lease renewal and stops the
-- call). ARGV[5] = task_id, ARGV[6] = tenant allowed ('' = any).
-- Returns {'cancelled', stage, event_id} | {'terminal', code} | {'missing'}.
local tid, tenant = ARGV[5], ARGV[6]
load_states({tid})
local st = state_cache[tid]
if not st or (tenant ~= '' and st.tenant ~= tenant) then return {'missing'} end
if TERMINAL[st.code] then return {'terminal', st.code} end
local stage = ({Q = 'queued', D = 'retry_scheduled', R = 'running'})[st.code]
if st.code == 'D' then
  redis.call('ZREM', K_DELAYED, tid)
else
  ack(st.prio, st.ref)
end
local evid = emit(tid, st.tenant, 'TaskCancelled',
  cjson.encode({attempt = st.attempt, stage = stage}))
st.code, st.ref = 'C', evid
set_state(tid, st)
mark_done(tid)
flush()
return {'cancelled', stage, evid}
