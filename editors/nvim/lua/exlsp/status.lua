-- :ExlspStatus and the statusline text: the server's `exlsp/status` answer, formatted, and the
-- model-loading progress the server reports with $/progress.
local server = require("exlsp.server")

local M = {}

-- Latest loading progress seen ("" when none or finished).
local loading = ""

--- The kernel backend in a word: the server reports one backend per op; one name when they agree.
---@param backend any
---@return string|nil
function M.backend_summary(backend)
  if type(backend) ~= "table" then
    return backend ~= nil and backend ~= vim.NIL and tostring(backend) or nil
  end
  local names = {}
  for _, name in pairs(backend) do
    names[tostring(name)] = (names[tostring(name)] or 0) + 1
  end
  local keys = vim.tbl_keys(names)
  table.sort(keys)
  if #keys == 1 then
    return keys[1]
  end
  local parts = {}
  for _, name in ipairs(keys) do
    parts[#parts + 1] = ("%s x%d"):format(name, names[name])
  end
  return table.concat(parts, ", ")
end

--- Lines that :ExlspStatus shows for an `exlsp/status` answer. Counters may sit at the top level
--- (issue 3's names: cacheHitRate, latency) or under `completions` (the server's: latencyMs,
--- prefixCacheHitRate).
---@param status table
---@return string[]
function M.format(status)
  local counters = type(status.completions) == "table" and status.completions or status
  local latency = counters.latency or counters.latencyMs
  latency = type(latency) == "table" and latency or {}
  local hit_rate = counters.cacheHitRate
  if hit_rate == nil then
    hit_rate = counters.prefixCacheHitRate
  end
  local function value(v, unit)
    if v == nil or v == vim.NIL then
      return "-"
    end
    if type(v) == "number" and unit == "%" then
      return ("%.0f%%"):format(v * 100)
    end
    if type(v) == "number" and v ~= math.floor(v) then
      return ("%.1f%s"):format(v, unit or "")
    end
    return tostring(v) .. (unit or "")
  end
  local lines = {
    "exlsp " .. value(status.state),
    "  model:      " .. value(status.model),
    "  device:     " .. value(status.device),
    "  backend:    " .. value(M.backend_summary(status.backend)),
    "  cache hits: " .. value(hit_rate, "%"),
    "  latency:    p50 " .. value(latency.p50, " ms") .. ", p95 " .. value(latency.p95, " ms"),
    "  accepted:   " .. value(counters.accepted) .. " of " .. value(counters.shown) .. " shown",
  }
  if type(status.fim) == "string" then
    lines[#lines + 1] = "  " .. status.fim
  end
  if type(status.error) == "string" then
    lines[#lines + 1] = "  error: " .. status.error
  end
  return lines
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

--- The statusline's loading text for a model-loading progress value ("loading 40%",
--- "loading 3s"), or nil for progress that is not model loading (a chat, say).
---@param value table a $/progress value; report and end values carry the begin title
---@return string|nil
function M.loading_text(value)
  if type(value.title) ~= "string" or not value.title:find("^exlsp: loading") then
    return nil
  end
  if value.kind == "end" then
    return ""
  end
  if type(value.percentage) == "number" then
    return ("loading %d%%"):format(value.percentage)
  end
  if type(value.message) == "string" and value.message ~= "" then
    return "loading " .. value.message
  end
  return "loading"
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
      loading = M.loading_text(value) or loading
      vim.cmd.redrawstatus()
    end,
  })
end

return M
