-- A worker of examples/distributed.lua: squares numbers, a little slowly,
-- and says which machine (agent) and which attempt ran each task.
local tether = require "tether"

tether.serve(function(task, info)
  tether.sleep(20)
  return { n = task.n, square = task.n * task.n, host = os.getenv("AGENT_NAME"),
    task_id = info.task_id, attempt = info.attempt }
end)
