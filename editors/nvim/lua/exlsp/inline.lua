-- The plugin's own inline-completion client for Neovim 0.10-0.11 (0.12+ has
-- vim.lsp.inline_completion): debounces typing, sends textDocument/inlineCompletion, cancels the
-- request in flight on every change and on InsertLeave, and hands answers to exlsp.suggestion,
-- which shows them and inserts them whole, by word or by line.
local config = require("exlsp.config")
local server = require("exlsp.server")
local suggestion = require("exlsp.suggestion")
local text = require("exlsp.text")

local M = {}

local INVOKED = 1 -- InlineCompletionTriggerKind
local AUTOMATIC = 2
local REQUEST_CANCELLED = -32800

---@type exlsp.Options
local options = config.defaults

-- Counters the tests read: requests sent, cancelled in flight, answered, answers dropped as
-- stale, suggestions shown, items accepted (whole or in pieces).
M.stats = { requests = 0, cancelled = 0, responses = 0, stale = 0, shown = 0, accepted = 0 }

-- At most one request in flight: { client, id }.
local inflight = nil
-- Bumped on every change; an answer for an older seq is stale.
local seq = 0
local timer = nil
local enabled = true

local function cancel_inflight()
  if inflight then
    if server.cancel(inflight.client, inflight.id) then
      M.stats.cancelled = M.stats.cancelled + 1
    end
    inflight = nil
  end
end

function M.clear()
  if timer then
    timer:stop()
  end
  cancel_inflight()
  seq = seq + 1
  suggestion.clear()
end

local function on_result(bufnr, client, my_seq, err, result)
  if my_seq ~= seq then
    M.stats.stale = M.stats.stale + 1
    return
  end
  inflight = nil
  M.stats.responses = M.stats.responses + 1
  if err then
    if err.code ~= REQUEST_CANCELLED then
      vim.notify_once("exlsp: " .. tostring(err.message), vim.log.levels.WARN)
    end
    return
  end
  if vim.api.nvim_get_current_buf() ~= bufnr or not vim.fn.mode():match("^i") then
    return
  end
  if suggestion.show_first(bufnr, client, result and (result.items or result) or {}) then
    M.stats.shown = M.stats.shown + 1
  end
end

--- Sends a request now for the current buffer and cursor.
---@param trigger_kind integer|nil
function M.request(trigger_kind)
  local bufnr = vim.api.nvim_get_current_buf()
  local client = server.client(bufnr)
  if not client or not enabled or vim.b[bufnr].exlsp_enabled == false then
    return
  end
  if not config.enabled_for(options, vim.bo[bufnr].filetype) then
    return
  end
  cancel_inflight()
  seq = seq + 1
  local my_seq = seq
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding or "utf-16")
  params.context = { triggerKind = trigger_kind or AUTOMATIC }
  local ok, id = server.request(
    client,
    "textDocument/inlineCompletion",
    params,
    function(err, result)
      on_result(bufnr, client, my_seq, err, result)
    end,
    bufnr
  )
  if ok and id then
    M.stats.requests = M.stats.requests + 1
    inflight = { client = client, id = id }
  end
end

local function schedule_request()
  if timer then
    timer:stop()
  end
  timer = timer or vim.uv.new_timer()
  timer:start(
    options.debounce_ms,
    0,
    vim.schedule_wrap(function()
      if vim.fn.mode():match("^i") then
        M.request(AUTOMATIC)
      end
    end)
  )
end

local function on_change()
  if suggestion.unchanged() then
    return -- our own insert, or a cursor event that changed nothing
  end
  cancel_inflight()
  seq = seq + 1
  if suggestion.type_through() then
    return
  end
  suggestion.clear()
  if options.auto_trigger then
    schedule_request()
  end
end

local function accept(pick)
  local accepted, first = suggestion.accept(pick)
  if first then
    M.stats.accepted = M.stats.accepted + 1
  end
  return accepted
end

--- Accepts the whole suggestion; false when none is shown.
function M.accept()
  return accept(function(suffix)
    return suffix
  end)
end

function M.accept_word()
  return accept(text.next_word)
end

function M.accept_line()
  return accept(text.next_line)
end

--- Shows the next (step 1) or previous (step -1) item; without a suggestion, asks for one.
function M.cycle(step)
  if suggestion.exists() then
    suggestion.cycle(step)
  else
    M.request(INVOKED)
  end
  return true
end

function M.dismiss()
  local had = suggestion.exists()
  M.clear()
  return had
end

--- The suggestion text on screen ("" when none).
function M.current()
  return suggestion.text()
end

function M.set_enabled(value)
  enabled = value
  if not value then
    M.clear()
  end
end

function M.is_enabled()
  return enabled
end

---@param opts exlsp.Options
function M.setup(opts)
  options = opts
  local group = vim.api.nvim_create_augroup("exlsp_inline", { clear = true })
  local function attached(bufnr)
    return server.client(bufnr) ~= nil
  end
  vim.api.nvim_create_autocmd({ "TextChangedI", "CursorMovedI" }, {
    group = group,
    callback = function(args)
      if attached(args.buf) then
        on_change()
      end
    end,
  })
  vim.api.nvim_create_autocmd("InsertEnter", {
    group = group,
    callback = function(args)
      if attached(args.buf) and options.auto_trigger then
        schedule_request()
      end
    end,
  })
  vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, { group = group, callback = M.clear })
  -- The popup menu covers the line: hide the ghost text while it is open.
  vim.api.nvim_create_autocmd("CompleteChanged", { group = group, callback = suggestion.hide })
  vim.api.nvim_create_autocmd(
    "CompleteDone",
    { group = group, callback = vim.schedule_wrap(suggestion.draw) }
  )
end

return M
