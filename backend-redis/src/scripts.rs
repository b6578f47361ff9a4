//! Lua scripts for the locks, the replays and the atomic operations. Each runs atomically on
//! the server and stays in one Cluster slot: the lock scripts touch a lock and its fencing
//! counter, which share a hash tag; the others touch one key (its version is inside its value,
//! see `envelope.rs`).
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

/// KEYS: key. ARGV: version (16 hex digits), the encoded write (a value or a tombstone, see
/// `envelope.rs`), ttl in ms or empty. Applies the write only when the stored version is older
/// or missing; returns 1 when it did, 0 when a newer write is there. Reads only the stored
/// header (`GETRANGE`), never the value. Versions are compared as Lua numbers: exact below 2^53
/// (microseconds since 1970 until the year 2255).
pub(crate) static REPLAY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local head = redis.call('GETRANGE', KEYS[1], 0, 19)
local kind = string.sub(head, 4, 4)
if #head == 20 and string.sub(head, 1, 3) == '\0rs' and (kind == 'v' or kind == 't') then
  local stored = tonumber(string.sub(head, 5), 16)
  if stored and stored >= tonumber(ARGV[1], 16) then
    return 0
  end
end
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
",
    )
});

/// KEYS: key. ARGV: op (`incr`, `nx`, `cas`), version asked (16 hex digits), unknown-key mode
/// (`absent`, `ask`, `seed`), ttl in ms or empty, delta or value, then the seed (under `seed`;
/// empty otherwise, and only sent when something follows), then the expected value (`cas`
/// only, and only when one is expected). An increment sends five arguments: each one costs the
/// server about 75 ns.
///
/// The stored string is read as `envelope.rs` lays it out. A key with neither a value nor a
/// version is unknown: under `ask` nothing changes and `2` comes back; under `seed` the seed is
/// stored first, with the call's TTL and no version (the seed stands for a key the server lost,
/// whose TTL it lost too). A write is stamped with the larger of the version asked and one more
/// than the stored one. Returns one string, `<status>:<has value>:<version>:<pttl>:<value>`
/// (status 1 written, 0 refused; the version empty when it is the one asked; the value is the
/// rest, colons and all; numbers as `%d` formats them, since `..` would write a large one as
/// `1e+14`), or `-1:<message>` when the value is not an integer or the sum overflows: one bulk
/// string is cheaper to build, send and parse than an array of five.
/// Canonical integers under 10^15 are added in Lua (exact in its doubles: one `SET`); any other
/// value goes to INCRBY, exact in 64 bits and the judge of what is an integer: the script puts
/// the bare number back for it, then the header in front of the sum.
pub(crate) static ATOMIC: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
local stored, current = nil, nil
if cur then
  local kind = string.sub(cur, 4, 4)
  if #cur >= 20 and string.sub(cur, 1, 3) == '\0rs' and (kind == 'v' or kind == 't') then
    stored = tonumber(string.sub(cur, 5, 20), 16)
  end
  if not stored then
    current = cur
  elseif kind == 'v' then
    current = string.sub(cur, 21)
  end
end
local ttl, arg = ARGV[4], ARGV[5]
local function put(value)
  if ttl == '' then
    redis.call('SET', KEYS[1], value)
  else
    redis.call('SET', KEYS[1], value, 'PX', ttl)
  end
end
if not stored and not current then
  if ARGV[3] == 'ask' then
    return '2'
  end
  if ARGV[3] == 'seed' then
    put(ARGV[6])
    current = ARGV[6]
  end
end
local head, written = '\0rsv' .. ARGV[2], '1:1::'
if stored and stored >= tonumber(ARGV[2], 16) then
  head = '\0rsv' .. string.format('%016x', stored + 1)
  written = '1:1:' .. string.format('%d', stored + 1) .. ':'
end
if ARGV[1] == 'incr' then
  -- Both numbers canonical and under 10^15: the sum is exact in Lua's doubles, one SET.
  local base = current or '0'
  local b = string.match(base, '^-?([1-9]%d*)$')
  local d = string.match(arg, '^-?(%d+)$')
  if d and #d <= 15 and (base == '0' or (b and #b <= 15)) then
    local sum = string.format('%d', tonumber(base) + tonumber(arg))
    if current then
      redis.call('SET', KEYS[1], head .. sum, 'KEEPTTL')
    else
      put(head .. sum)
    end
    return written .. string.format('%d', redis.call('PTTL', KEYS[1])) .. ':' .. sum
  end
  -- Otherwise INCRBY decides, exactly in 64 bits: the bare number goes back for it.
  if current then
    redis.call('SET', KEYS[1], current, 'KEEPTTL')
  else
    redis.call('DEL', KEYS[1])
  end
  local n = redis.pcall('INCRBY', KEYS[1], arg)
  if type(n) == 'table' and n.err then
    if cur then
      redis.call('SET', KEYS[1], cur, 'KEEPTTL')
    end
    return '-1:' .. n.err
  end
  if not current and ttl ~= '' then
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
  local sum = redis.call('GET', KEYS[1])
  redis.call('SET', KEYS[1], head .. sum, 'KEEPTTL')
  return written .. string.format('%d', redis.call('PTTL', KEYS[1])) .. ':' .. sum
end
local matches
if ARGV[1] == 'nx' then
  matches = not current
elseif ARGV[7] then
  matches = current == ARGV[7]
else
  matches = not current
end
if not matches then
  local refused = '0:' .. (current and '1' or '0') .. ':' .. string.format('%d', stored or 0)
  return refused .. ':' .. string.format('%d', redis.call('PTTL', KEYS[1])) .. ':' .. (current or '')
end
put(head .. arg)
return written .. string.format('%d', redis.call('PTTL', KEYS[1])) .. ':' .. arg
",
    )
});
