-- Adds one batch of usage rollups, once: a retried batch (the same marker)
-- adds nothing.
--
-- KEYS[1]: the batch's marker; then, per group, the period's account set and
-- the account's hash for that period.
-- ARGV[1]: the marker's time to live, ms; ARGV[2]: the number of groups;
-- then per group: the expiry (Unix seconds) of both keys, the account, the
-- number of fields n, and n pairs of field and increment.
-- Returns 1 when added, 0 when the batch was added before.
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return 0
end
local a = 3
for g = 1, tonumber(ARGV[2]) do
  local set, hash = KEYS[2 * g], KEYS[2 * g + 1]
  local at, account, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 3
  redis.call('SADD', set, account)
  redis.call('EXPIREAT', set, at)
  for _ = 1, n do
    redis.call('HINCRBY', hash, ARGV[a], ARGV[a + 1])
    a = a + 2
  end
  redis.call('EXPIREAT', hash, at)
end
return 1
