-- wrk script: GET /cache/directories/{path} over the tracked paths listed in $BENCH_WRK_PATHS
-- (one per line), each thread starting at a different place so that requests spread out.
local paths = {}
local i = 0

function init(args)
  local f = assert(io.open(os.getenv("BENCH_WRK_PATHS"), "r"))
  for line in f:lines() do paths[#paths + 1] = line end
  f:close()
  i = math.random(#paths)
end

function request()
  i = i % #paths + 1
  return wrk.format("GET", "/cache/directories/" .. paths[i])
end
