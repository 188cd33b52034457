-- Sets or removes one override of one account, in one step, so edits of
-- the account's other limits (from any replica) are never overwritten.
-- An account still in the old layout (a JSON list per account in KEYS[3])
-- moves to the new one first, unless another edit moved it already.
--
-- KEYS[1]  the account's overrides: a hash, limit -> JSON of one override
-- KEYS[2]  the accounts that have overrides: a set
-- KEYS[3]  the old layout: a hash, account -> JSON list of overrides
-- ARGV[1]  the account
-- ARGV[2]  the limit
-- ARGV[3]  the override's JSON to set, or '' to remove it
-- ARGV[4]  the account's old-layout value as read, or '' when none
-- ARGV[5..] that value's overrides as limit, JSON pairs
--
-- Returns 1 when the limit had an override before, else 0.

if ARGV[4] ~= '' and redis.call('HGET', KEYS[3], ARGV[1]) == ARGV[4] then
  for i = 5, #ARGV - 1, 2 do
    -- An override already in the new layout is newer.
    redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  redis.call('HDEL', KEYS[3], ARGV[1])
end

local had = redis.call('HEXISTS', KEYS[1], ARGV[2])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
else
  redis.call('HDEL', KEYS[1], ARGV[2])
end
if redis.call('HLEN', KEYS[1]) > 0 then
  redis.call('SADD', KEYS[2], ARGV[1])
else
  redis.call('SREM', KEYS[2], ARGV[1])
end
return had
