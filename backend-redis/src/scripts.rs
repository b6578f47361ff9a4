//! Lua scripts for the locks and the versioned writes. Each runs atomically on the server and
//! touches two keys that share a hash tag (the lock and its fencing counter; a key and its
//! version key), so it stays in one Cluster slot.
//!
//! The lock value is `<token>:<holder>`: the token is digits, so the first `:` separates them.
//! Tokens travel as strings, so no Lua number formatting can mangle them.
//!
//! A token is the server's clock in microseconds since the Unix epoch, or one more than the
//! lock's last token when that is larger (the fence key remembers it): it grows for a lock name
//! on this server, and stays comparable with tokens PostgreSQL and the memory store issue the
//! same way. Microseconds stay exact in Lua's doubles until the year 2255.

use std::sync::LazyLock;

use redis::Script;

/// KEYS: lock, fence. ARGV: holder, ttl in ms.
/// Returns `{1, token}` when granted (new, or extended for the same holder) or
/// `{0, token, holder, pttl}` when another holder has it.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local current = redis.call('GET', KEYS[1])
if not current then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('GET', KEYS[2]) or '0')
  local token = string.format('%d', math.max(now, last + 1))
  redis.call('SET', KEYS[2], token)
  redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', ARGV[2])
  return {1, token}
end
local sep = string.find(current, ':', 1, true)
local token = string.sub(current, 1, sep - 1)
local holder = string.sub(current, sep + 1)
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, token}
end
return {0, token, holder, redis.call('PTTL', KEYS[1])}
",
    )
});

/// KEYS: lock. ARGV: holder, ttl in ms. Returns the token when `holder` holds the lock (and
/// its lease is reset to ttl), nil otherwise.
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local current = redis.call('GET', KEYS[1])
if not current then return false end
local sep = string.find(current, ':', 1, true)
if string.sub(current, sep + 1) ~= ARGV[1] then return false end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return string.sub(current, 1, sep - 1)
",
    )
});

/// KEYS: lock. ARGV: holder. Deletes the lock when `holder` holds it; returns 1 then, else 0.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local sep = string.find(current, ':', 1, true)
if string.sub(current, sep + 1) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
",
    )
});

/// KEYS: key, version key. ARGV: value, version, ttl in ms or empty, version key ttl in ms or
/// empty. Writes the value and its version, unconditionally.
pub(crate) static SET_VERSIONED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
end
return 1
",
    )
});

/// KEYS: key, version key. ARGV: version, tombstone ttl in ms. Deletes the key and leaves its
/// version as a tombstone; returns 1 when the key existed.
pub(crate) static DELETE_VERSIONED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local existed = redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return existed
",
    )
});

/// KEYS: key, version key. ARGV: version, tombstone ttl in ms, then `del`, or `set`, value,
/// ttl in ms or empty, version key ttl in ms or empty. Applies the write only when the stored
/// version is older or missing; returns 1 when it did, 0 when a newer write is there.
/// Versions are microseconds since 1970: exact in Lua's doubles until the year 2255.
pub(crate) static REPLAY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local stored = redis.call('GET', KEYS[2])
if stored and tonumber(stored) >= tonumber(ARGV[1]) then
  return 0
end
if ARGV[3] == 'del' then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
elseif ARGV[5] == '' then
  redis.call('SET', KEYS[1], ARGV[4])
  redis.call('SET', KEYS[2], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[6])
end
return 1
",
    )
});

/// KEYS: key, version key. ARGV: op (`incr`, `nx`, `cas`), version asked, tombstone ttl in ms,
/// unknown-key mode (`absent`, `ask`, `seed`), seed present (`1`/`0`), seed value, ttl in ms or
/// empty, delta or value, expected present (`1`/`0`), expected value.
///
/// A key with neither a value nor a version is unknown: under `ask` nothing changes and `{2}`
/// comes back; under `seed` the seed (if present) is stored first, with the call's TTL (the seed
/// stands for a key the server lost, whose TTL it lost too). A write is stamped with the
/// larger of the version asked and one more than the stored one. Returns `{status, has value,
/// value, version, pttl}` (status 1 written, 0 refused), or `{-1, message}` when the value is
/// not an integer or the sum overflows. INCRBY does the arithmetic, exactly, in 64 bits.
pub(crate) static ATOMIC: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local stored = redis.call('GET', KEYS[2])
local current = redis.call('GET', KEYS[1])
if not stored and not current then
  if ARGV[4] == 'ask' then
    return {2}
  end
  if ARGV[4] == 'seed' and ARGV[5] == '1' then
    if ARGV[7] == '' then
      redis.call('SET', KEYS[1], ARGV[6])
    else
      redis.call('SET', KEYS[1], ARGV[6], 'PX', ARGV[7])
    end
    current = ARGV[6]
  end
end
local version = tonumber(ARGV[2])
if stored and tonumber(stored) + 1 > version then
  version = tonumber(stored) + 1
end
local vs = string.format('%d', version)
local function version_ttl()
  local t = redis.call('PTTL', KEYS[1])
  if t > 0 then
    redis.call('SET', KEYS[2], vs, 'PX', t + tonumber(ARGV[3]))
  else
    redis.call('SET', KEYS[2], vs)
  end
  return t
end
local function refused()
  local t = redis.call('PTTL', KEYS[1])
  if current then
    return {0, 1, current, stored or '0', t}
  end
  return {0, 0, '', stored or '0', t}
end
local function store(value)
  if ARGV[7] == '' then
    redis.call('SET', KEYS[1], value)
  else
    redis.call('SET', KEYS[1], value, 'PX', ARGV[7])
  end
  return {1, 1, value, vs, version_ttl()}
end
if ARGV[1] == 'incr' then
  local n = redis.pcall('INCRBY', KEYS[1], ARGV[8])
  if type(n) == 'table' and n.err then
    return {-1, n.err}
  end
  if not current and ARGV[7] ~= '' then
    redis.call('PEXPIRE', KEYS[1], ARGV[7])
  end
  return {1, 1, redis.call('GET', KEYS[1]), vs, version_ttl()}
elseif ARGV[1] == 'nx' then
  if current then
    return refused()
  end
  return store(ARGV[8])
else
  local matches = (ARGV[9] == '0' and not current) or (ARGV[9] == '1' and current == ARGV[10])
  if not matches then
    return refused()
  end
  return store(ARGV[8])
end
",
    )
});
