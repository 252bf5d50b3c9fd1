-- The plugin's own inline-completion client for Neovim 0.10-0.11 (0.12+ has
-- vim.lsp.inline_completion): debounces typing, sends textDocument/inlineCompletion, cancels the
-- request in flight on every change and on InsertLeave, shows the answer as ghost text (hidden
-- while the popup menu is open) and accepts it whole, by word or by line.
local config = require("exlsp.config")
local ghost = require("exlsp.ghost")
local server = require("exlsp.server")
local text = require("exlsp.text")

local M = {}

local INVOKED = 1 -- InlineCompletionTriggerKind
local AUTOMATIC = 2
local REQUEST_CANCELLED = -32800

---@type exlsp.Options
local options = config.defaults

-- Counters the tests and :ExlspStatus read: requests sent, cancelled in flight, answered,
-- answers dropped as stale, suggestions shown, accepted.
M.stats = { requests = 0, cancelled = 0, responses = 0, stale = 0, shown = 0, accepted = 0 }

-- At most one request in flight: { client, id, seq }.
local inflight = nil
-- Bumped on every change; an answer for an older seq is stale.
local seq = 0
local timer = nil

-- What is on screen: the item list and the suggestion's position and remaining text.
---@class exlsp.Shown
---@field bufnr integer
---@field row integer 0-based
---@field col integer byte column of the cursor
---@field end_col integer byte column where the replaced text on the cursor line ends
---@field suffix string the text still to insert at col
---@field items table[]
---@field index integer
---@field client vim.lsp.Client
---@field command_sent boolean
---@field tick integer changedtick when drawn
local shown = nil

local enabled = true

local function cancel_inflight()
  if inflight then
    if server.cancel(inflight.client, inflight.id) then
      M.stats.cancelled = M.stats.cancelled + 1
    end
    inflight = nil
  end
end

local function stop_timer()
  if timer then
    timer:stop()
  end
end

function M.clear()
  stop_timer()
  cancel_inflight()
  seq = seq + 1
  if shown then
    ghost.clear(shown.bufnr)
  end
  shown = nil
end

local function cursor()
  local pos = vim.api.nvim_win_get_cursor(0)
  return pos[1] - 1, pos[2]
end

local function draw()
  if not shown then
    return
  end
  if vim.fn.pumvisible() == 1 then
    ghost.clear(shown.bufnr)
    return
  end
  ghost.show(shown.bufnr, shown.row, shown.col, shown.suffix)
  shown.tick = vim.api.nvim_buf_get_changedtick(shown.bufnr)
end

--- insertText of an item as plain text (a snippet's placeholders are left as written).
local function insert_text(item)
  local value = item.insertText
  if type(value) == "table" then
    value = value.value
  end
  return type(value) == "string" and value or ""
end

--- Fills `shown` from item `index` of `items` against the current line and cursor; false when
--- the item does not fit what is on screen.
local function select_item(bufnr, client, items, index)
  local row, col = cursor()
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
  local item = items[index]
  local start_col, end_col = col, col
  if item.range and item.range.start.line == row and item.range["end"].line == row then
    local encoding = client.offset_encoding or "utf-16"
    start_col = vim.str_byteindex(line, encoding, item.range.start.character, false)
    end_col = vim.str_byteindex(line, encoding, item.range["end"].character, false)
  end
  end_col = math.max(end_col, col)
  local suffix = text.visible_suffix(line, start_col, col, insert_text(item))
  if suffix == nil or suffix == "" then
    return false
  end
  -- Text after the cursor that the item rewrites identically (a closing bracket) is already on
  -- screen: show only what comes before it.
  local tail = line:sub(col + 1, end_col)
  if tail ~= "" and not suffix:find("\n", 1, true) and suffix:sub(-#tail) == tail then
    suffix = suffix:sub(1, #suffix - #tail)
    end_col = col
  end
  shown = {
    bufnr = bufnr,
    row = row,
    col = col,
    end_col = end_col,
    suffix = suffix,
    items = items,
    index = index,
    client = client,
    command_sent = false,
    tick = vim.api.nvim_buf_get_changedtick(bufnr),
  }
  return true
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
  local items = result and (result.items or result) or {}
  for index = 1, #items do
    if select_item(bufnr, client, items, index) then
      M.stats.shown = M.stats.shown + 1
      draw()
      return
    end
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
    inflight = { client = client, id = id, seq = my_seq }
  end
end

local function schedule_request()
  stop_timer()
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

--- Typing a character that the suggestion predicted keeps the rest on screen, as Copilot does.
---@return boolean kept
local function type_through()
  if not shown or vim.api.nvim_get_current_buf() ~= shown.bufnr then
    return false
  end
  local row, col = cursor()
  if row ~= shown.row or col <= shown.col then
    return false
  end
  local line = vim.api.nvim_buf_get_lines(shown.bufnr, row, row + 1, false)[1] or ""
  local typed = line:sub(shown.col + 1, col)
  if shown.suffix:sub(1, #typed) ~= typed or #typed >= #shown.suffix then
    return false
  end
  shown.suffix = shown.suffix:sub(#typed + 1)
  shown.end_col = shown.end_col + #typed
  shown.col = col
  draw()
  return true
end

local function on_change()
  if shown and vim.api.nvim_buf_get_changedtick(shown.bufnr) == shown.tick then
    local row, col = cursor()
    if row == shown.row and col == shown.col then
      return -- our own edit or a cursor event without a change
    end
  end
  cancel_inflight()
  seq = seq + 1
  if type_through() then
    return
  end
  if shown then
    ghost.clear(shown.bufnr)
    shown = nil
  end
  if options.auto_trigger then
    schedule_request()
  end
end

--- Inserts `piece` (a prefix of the suggestion) at the cursor, keeps the rest on screen and
--- runs the item's command once so the server counts the acceptance.
local function insert_piece(piece)
  local s = assert(shown)
  local lines = text.lines(piece)
  local rest = s.suffix:sub(#piece + 1)
  local replace_end = rest == "" and s.end_col or s.col
  vim.api.nvim_buf_set_text(s.bufnr, s.row, s.col, s.row, replace_end, lines)
  local row = s.row + #lines - 1
  local col = #lines == 1 and s.col + #piece or #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { row + 1, col })
  local item = s.items[s.index]
  if not s.command_sent and item.command then
    s.command_sent = true
    M.stats.accepted = M.stats.accepted + 1
    server.request(s.client, "workspace/executeCommand", {
      command = item.command.command,
      arguments = item.command.arguments,
    }, function() end, s.bufnr)
  end
  if rest == "" then
    ghost.clear(s.bufnr)
    shown = nil
    return
  end
  s.end_col = col + (s.end_col - s.col)
  s.row, s.col, s.suffix = row, col, rest
  draw()
end

--- Accepts the whole suggestion; false when none is shown.
function M.accept()
  if not shown then
    return false
  end
  insert_piece(shown.suffix)
  return true
end

function M.accept_word()
  if not shown then
    return false
  end
  insert_piece(text.next_word(shown.suffix))
  return true
end

function M.accept_line()
  if not shown then
    return false
  end
  insert_piece(text.next_line(shown.suffix))
  return true
end

--- Shows the next (step 1) or previous (step -1) item; without a suggestion, asks for one.
function M.cycle(step)
  if not shown then
    M.request(INVOKED)
    return true
  end
  local items, bufnr, client = shown.items, shown.bufnr, shown.client
  for offset = 1, #items do
    local index = (shown.index - 1 + offset * step) % #items + 1
    if select_item(bufnr, client, items, index) then
      draw()
      return true
    end
  end
  return true
end

function M.dismiss()
  local had = shown ~= nil
  M.clear()
  return had
end

--- The suggestion text on screen ("" when none).
function M.current()
  return shown and shown.suffix or ""
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
  vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
    group = group,
    callback = M.clear,
  })
  vim.api.nvim_create_autocmd("CompleteChanged", {
    group = group,
    callback = function()
      if shown then
        ghost.clear(shown.bufnr)
      end
    end,
  })
  vim.api.nvim_create_autocmd("CompleteDone", {
    group = group,
    callback = vim.schedule_wrap(draw),
  })
end

return M
