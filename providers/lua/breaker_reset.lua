if (redis.call('HGET', KEYS[1], 'state') or 'closed') == 'closed' then
  redis.call('HSET', KEYS[1], 'failures', 0)
end
return 1
