-- wrk script for benches/flood/run.sh: random tokens, optionally random
-- client IPs (X-Forwarded-For, believed because the peer is trusted) or one
-- repeated bad token. Mode from env FLOOD_MODE: random | random_ip | repeat.
-- FLOOD_DELAY_MS (set by run.sh from FLOOD_RATE): each connection waits
-- about that long (uniform in [d/2, 3d/2]) after a response before its next
-- request, so N connections send at most N*1000/d req/s whatever keyward's
-- speed (wrk2 is not packaged on Debian; wrk's delay() is integer ms).
local mode = os.getenv("FLOOD_MODE") or "random"
local delay_ms = tonumber(os.getenv("FLOOD_DELAY_MS") or "0")
if delay_ms > 0 then
  function delay()
    return math.random(math.floor(delay_ms / 2), math.floor(delay_ms * 3 / 2))
  end
end
local path = os.getenv("FLOOD_PATH") or "/api/v1/workspaces/ws_1/flows"
local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 1000 + id)
  statuses = {}
end

local function rnd32() return math.random(0, 0x7fffffff) end

function request()
  local tok
  if mode == "repeat" then
    tok = "wvz_the_same_bad_token_every_time_0000"
  else
    tok = string.format("wvz_%08x%08x%08x%08x", rnd32(), rnd32(), rnd32(), rnd32())
  end
  local h = { ["Authorization"] = "Bearer " .. tok }
  if mode ~= "random" then
    h["X-Forwarded-For"] = string.format("10.%d.%d.%d", math.random(0, 255), math.random(0, 255), math.random(1, 254))
  end
  return wrk.format("GET", path, h)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for k, v in pairs(s) do total[k] = (total[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(total) do table.insert(parts, k .. "=" .. v) end
  table.sort(parts)
  io.write("statuses " .. table.concat(parts, " ") .. "\n")
end
