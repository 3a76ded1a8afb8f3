-- Register a new version of a prompt template (engine/admission/templates.py; arguments built
-- by engine/admission/script_args.py build_template_register). KEYS: the template's hash.
-- ARGV: the body. Returns the new version number.
local v = redis.call('HINCRBY', KEYS[1], 'latest', 1)
redis.call('HSET', KEYS[1], tostring(v), ARGV[1])
return v
