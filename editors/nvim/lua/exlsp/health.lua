-- :checkhealth exlsp — server command found, server running with the model loaded, FIM available.
local config = require("exlsp.config")
local server = require("exlsp.server")

local M = {}

function M.check()
  local health = vim.health
  health.start("exlsp")
  local options = require("exlsp").options or config.defaults

  local cmd = server.resolve_cmd(options)
  if vim.fn.executable(cmd[1]) == 1 then
    health.ok("server command: " .. table.concat(cmd, " "))
  else
    health.error(
      "server command not found: " .. cmd[1],
      { "pip install exlsp into the active Python environment, or set cmd in setup()" }
    )
    return
  end
  if cmd[2] == "-m" then
    local probe = vim.system({ cmd[1], "-c", "import exlsp.cli" }, { text = true }):wait(10000)
    if probe.code ~= 0 then
      health.error(cmd[1] .. " cannot import exlsp", { "pip install exlsp into that environment" })
      return
    end
  end

  local client = server.client()
  if not client then
    health.warn("server not running: open a file to start it")
    return
  end
  health.ok("server running (client id " .. client.id .. ")")
  local response = server.request_sync(client, "exlsp/status", vim.empty_dict(), 5000)
  local status = response and response.result
  if not status then
    health.error("exlsp/status did not answer: " .. vim.inspect(response and response.err))
    return
  end
  if status.state == "ready" or status.state == "busy" then
    local model = status.model ~= vim.NIL and status.model or "the configured model"
    health.ok("model loaded: " .. tostring(model) .. " on " .. tostring(status.device))
  elseif status.state == "failed" or status.state == "error" then
    health.error("model failed to load: " .. tostring(status.error))
    return
  else
    health.warn("model state: " .. tostring(status.state) .. " (still loading?)")
  end
  local fim = status.fim
  if fim == true or (type(fim) == "string" and fim:find("^fill%-in%-the%-middle")) then
    health.ok(type(fim) == "string" and fim or "fill-in-the-middle tokens available")
  elseif fim == false or type(fim) == "string" then
    health.error(type(fim) == "string" and fim or "the model has no fill-in-the-middle tokens")
  else
    health.info("the server did not report FIM support")
  end
end

return M
