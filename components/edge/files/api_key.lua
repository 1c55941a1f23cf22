-- The ingress's API-key check, run by Envoy's Lua filter on every request before the body-based
-- router and the routes.
--
-- Whoever renders this filter defines, above this text: KEY_SALT and KEY_DIGESTS (the accepted keys'
-- SHA-256 digests of KEY_SALT .. key, lowercase hex: the configuration holds digests, never keys),
-- OPEN (no key asked), FRONT_DOOR (whether what this filter cannot settle goes on to the front
-- door, which checks it itself: keys it does not know, such as virtual keys and the UI's, keys in
-- other headers, CORS preflights), KNOWN_KEY_ROUTE (the route mark for a known key where one route
-- serves every model the ingress serves, or nil where the body-based router picks the route) and
-- BODY_ROUTER_MAX_BYTES (where the body-based router runs: the largest body it is given; what it
-- cannot read, with the client key too, is marked for the front door: anything but a JSON POST of
-- a known length up to that size, compressed bodies, protocol upgrades such as WebSockets),
-- PICKER_HEADERS (the request headers an inference pool's endpoint picker obeys) and
-- KEY_HOLDER_HEADER (set to the holder KEY_DIGESTS gives the admitted key: "stack" for the
-- stack's client key, a team's name for its key; a team's models are routed straight only on it).
--
-- Only the API (paths under /v1, whole segments, as the gateway's own rule matches them: /v1 and
-- /v1/..., not /v1beta) is checked; the UI and Grafana check their users themselves. The model
-- list (every name, hosted providers' too) is the front door's to answer, with any key it knows. Whatever the outcome, a request loses the headers only
-- this filter and the body-based router may set: a client must not pick a route its key or its
-- body does not earn, nor steer a pool's endpoint picker. A known key stays on the request: the model
-- servers check it again.
--
-- Envoy's Lua is LuaJIT, which has no SHA-256 of its own: the digest below is FIPS 180-4 written
-- out with LuaJIT's `bit` library (32-bit operations; sums are normalised with bit.tobit).

local bit = bit or require("bit")
local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local ror, rshift, lshift, tobit, tohex = bit.ror, bit.rshift, bit.lshift, bit.tobit, bit.tohex
local byte, char, rep, floor = string.byte, string.char, string.rep, math.floor

-- The first 32 bits of the fractional parts of the cube roots of the first 64 primes.
local K = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}
-- The first 32 bits of the fractional parts of the square roots of the first 8 primes.
local H0 = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 }

local function sha256_hex(msg)
  local n = #msg
  -- Pad to a whole number of 64-byte blocks: 0x80, zeros, then the length in bits as 8 bytes,
  -- most significant first.
  local length = {}
  local bits = n * 8
  for i = 8, 1, -1 do
    length[i] = char(bits % 256)
    bits = floor(bits / 256)
  end
  msg = msg .. "\128" .. rep("\0", (55 - n) % 64) .. table.concat(length)

  local h1, h2, h3, h4, h5, h6, h7, h8 = H0[1], H0[2], H0[3], H0[4], H0[5], H0[6], H0[7], H0[8]
  local w = {}
  for block = 1, #msg, 64 do
    for j = 0, 15 do
      local b1, b2, b3, b4 = byte(msg, block + 4 * j, block + 4 * j + 3)
      w[j] = bor(lshift(b1, 24), lshift(b2, 16), lshift(b3, 8), b4)
    end
    for j = 16, 63 do
      local x, y = w[j - 15], w[j - 2]
      local s0 = bxor(ror(x, 7), ror(x, 18), rshift(x, 3))
      local s1 = bxor(ror(y, 17), ror(y, 19), rshift(y, 10))
      w[j] = tobit(w[j - 16] + s0 + w[j - 7] + s1)
    end
    local a, b, c, d, e, f, g, h = h1, h2, h3, h4, h5, h6, h7, h8
    for j = 0, 63 do
      local S1 = bxor(ror(e, 6), ror(e, 11), ror(e, 25))
      local ch = bxor(band(e, f), band(bnot(e), g))
      local t1 = h + S1 + ch + K[j + 1] + w[j]
      local S0 = bxor(ror(a, 2), ror(a, 13), ror(a, 22))
      local maj = bxor(band(a, b), band(a, c), band(b, c))
      h, g, f, e = g, f, e, tobit(d + t1)
      d, c, b, a = c, b, a, tobit(t1 + S0 + maj)
    end
    h1, h2, h3, h4 = tobit(h1 + a), tobit(h2 + b), tobit(h3 + c), tobit(h4 + d)
    h5, h6, h7, h8 = tobit(h5 + e), tobit(h6 + f), tobit(h7 + g), tobit(h8 + h)
  end
  return tohex(h1, 8) .. tohex(h2, 8) .. tohex(h3, 8) .. tohex(h4, 8)
      .. tohex(h5, 8) .. tohex(h6, 8) .. tohex(h7, 8) .. tohex(h8, 8)
end

-- Keys this filter hashes are at most a few dozen characters; a longer one is never one of them.
local MAX_KEY_LENGTH = 256

local REFUSED = '{"error":{"message":"Invalid or missing API key.","type":"invalid_request_error",'
    .. '"param":null,"code":"invalid_api_key"}}'

-- Set by the body-based router from the body's "model"; the routes match it.
local MODEL_HEADER = "x-gateway-model-name"
-- Set here for a key the front door is to check; the first API route matches it.
local ROUTE_HEADER = "x-llm-platform-route"

local function json_response(handle, status, body, extra)
  local headers = {[":status"] = status, ["content-type"] = "application/json"}
  for k, v in pairs(extra or {}) do headers[k] = v end
  handle:respond(headers, body)
end

local function to_front_door(headers)
  headers:add(ROUTE_HEADER, "front-door")
end

-- Whether the body-based router can read this request's body: a JSON POST of a stated length up
-- to its limit, not compressed, not an upgrade (a WebSocket never ends its body).
local function router_reads(headers)
  if headers:get(":method") ~= "POST" or headers:get("upgrade") or headers:get("content-encoding") then
    return false
  end
  local content_type = (headers:get("content-type") or ""):lower()
  local length = tonumber(headers:get("content-length") or "")
  return content_type:find("^application/json") ~= nil and length ~= nil and length <= BODY_ROUTER_MAX_BYTES
end

function envoy_on_request(handle)
  local headers = handle:headers()
  headers:remove(MODEL_HEADER)
  headers:remove(ROUTE_HEADER)
  headers:remove(KEY_HOLDER_HEADER)
  for _, name in ipairs(PICKER_HEADERS) do
    headers:remove(name)
  end
  local path = headers:get(":path") or ""
  local after = path:sub(4, 4)
  if path:sub(1, 3) ~= "/v1" or (after ~= "" and after ~= "/" and after ~= "?") then
    return
  end
  if not OPEN then
    local auth = headers:get("authorization")
    local key = auth and auth:match("^[Bb][Ee][Aa][Rr][Ee][Rr] +([^ ]+) *$")
    local known = key and #key <= MAX_KEY_LENGTH and KEY_DIGESTS[sha256_hex(KEY_SALT .. key)]
    if not known then
      if FRONT_DOOR and (key or headers:get("x-api-key") or headers:get("api-key")
                         or headers:get(":method") == "OPTIONS") then
        to_front_door(headers)
        return
      end
      json_response(handle, "401", REFUSED, {["www-authenticate"] = "Bearer"})
      return
    end
    headers:add(KEY_HOLDER_HEADER, known)
  end
  local list = path == "/v1/models" or path:sub(1, 11) == "/v1/models?"
  if FRONT_DOOR and list then
    to_front_door(headers)
    return
  end
  if BODY_ROUTER_MAX_BYTES and FRONT_DOOR and not router_reads(headers) then
    to_front_door(headers)
    return
  end
  if KNOWN_KEY_ROUTE then
    headers:add(ROUTE_HEADER, KNOWN_KEY_ROUTE)
  end
end

-- A debugging header the endpoint picker adds to every response it sees: the client has no use
-- for it. (Responses pass the filters in reverse: this runs after the picker's.)
local PICKER_DEBUG_HEADER = "x-went-into-resp-headers"

function envoy_on_response(handle)
  handle:headers():remove(PICKER_DEBUG_HEADER)
end
