-- wrk script: POST the JSON bodies named after `--` in turn, and print the figures as one JSON line.
local bodies = {}
local counter = 0

function init(args)
  for i = 1, #args do
    local file = assert(io.open(args[i], "rb"))
    bodies[#bodies + 1] = file:read("*a")
    file:close()
  end
end

function request()
  counter = counter + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[(counter % #bodies) + 1])
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"non2xx":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, errors.status, errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
