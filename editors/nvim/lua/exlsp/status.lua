-- :ExlspStatus and the statusline text: the server's `exlsp/status` answer, formatted, and the
-- model-loading progress the server reports with $/progress.
local server = require("exlsp.server")

local M = {}

-- Latest loading progress seen ("" when none or finished).
local loading = ""

--- Lines that :ExlspStatus shows for an `exlsp/status` answer.
---@param status table
---@return string[]
function M.format(status)
  -- Key names as issue 3 lists them, or as exlsp/status.py's counters spell them.
  local latency = status.latency or status.latencyMs
  latency = type(latency) == "table" and latency or {}
  local hit_rate = status.cacheHitRate
  if hit_rate == nil then
    hit_rate = status.prefixCacheHitRate
  end
  local function value(v, unit)
    if v == nil or v == vim.NIL then
      return "-"
    end
    if type(v) == "number" and unit == "%" then
      return ("%.0f%%"):format(v * 100)
    end
    return tostring(v) .. (unit or "")
  end
  return {
    "exlsp " .. value(status.state),
    "  model:      " .. value(status.model),
    "  device:     " .. value(status.device),
    "  backend:    " .. value(status.backend),
    "  cache hits: " .. value(hit_rate, "%"),
    "  latency:    p50 " .. value(latency.p50, " ms") .. ", p95 " .. value(latency.p95, " ms"),
    "  accepted:   " .. value(status.accepted) .. " of " .. value(status.shown) .. " shown",
  }
end

--- Asks the server for its status; `callback(err, status)`.
function M.fetch(callback)
  local client = server.client()
  if not client then
    callback("the exlsp server is not running", nil)
    return
  end
  server.request(client, "exlsp/status", vim.empty_dict(), function(err, result)
    callback(err and (err.message or tostring(err)) or nil, result)
  end, 0)
end

function M.show()
  M.fetch(function(err, status)
    if err then
      vim.notify("exlsp: " .. err, vim.log.levels.ERROR)
      return
    end
    vim.notify(table.concat(M.format(status or {}), "\n"), vim.log.levels.INFO)
  end)
end

--- Short text for a statusline: "exlsp: loading 40%", "exlsp", or "" when no server runs.
function M.statusline()
  if not server.client() then
    return ""
  end
  return loading ~= "" and ("exlsp: " .. loading) or "exlsp"
end

function M.setup()
  local group = vim.api.nvim_create_augroup("exlsp_status", { clear = true })
  vim.api.nvim_create_autocmd("LspProgress", {
    group = group,
    callback = function(args)
      local client = vim.lsp.get_client_by_id(args.data.client_id)
      local value = args.data.params.value
      if not client or client.name ~= server.name or type(value) ~= "table" then
        return
      end
      if value.kind == "end" then
        loading = ""
      elseif value.title or value.percentage then
        loading = (value.title or "")
          .. (value.percentage and (" " .. value.percentage .. "%") or "")
      end
    end,
  })
end

return M
