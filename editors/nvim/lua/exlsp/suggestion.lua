-- The suggestion on screen (0.10-0.11 client): which item of an answer is shown where, its
-- drawing (through exlsp.ghost), typing through it, and inserting all or a piece of it. At most
-- one suggestion exists at a time, in the current window.
local ghost = require("exlsp.ghost")
local item_fit = require("exlsp.item")
local server = require("exlsp.server")
local text = require("exlsp.text")

local M = {}

---@class exlsp.Shown
---@field bufnr integer
---@field row integer 0-based
---@field col integer byte column of the cursor
---@field end_col integer byte column where the replaced text on the cursor line ends
---@field suffix string the text still to insert at col
---@field items table[] the answer's items
---@field index integer the one shown
---@field client vim.lsp.Client
---@field command_sent boolean the item's command (exlsp.accept) already ran
---@field tick integer changedtick when drawn
local shown = nil

local function cursor()
  local pos = vim.api.nvim_win_get_cursor(0)
  return pos[1] - 1, pos[2]
end

--- Draws the suggestion, or hides it while the popup menu is open.
function M.draw()
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

function M.hide()
  if shown then
    ghost.clear(shown.bufnr)
  end
end

function M.clear()
  M.hide()
  shown = nil
end

--- Shows item `index` of `items` at the cursor; false when it does not fit the line.
function M.select(bufnr, client, items, index)
  local row, col = cursor()
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
  local fit = item_fit.fit(line, row, col, items[index], client.offset_encoding or "utf-16")
  if not fit then
    return false
  end
  M.hide()
  shown = {
    bufnr = bufnr,
    row = row,
    col = col,
    end_col = fit.end_col,
    suffix = fit.suffix,
    items = items,
    index = index,
    client = client,
    command_sent = false,
    tick = vim.api.nvim_buf_get_changedtick(bufnr),
  }
  M.draw()
  return true
end

--- Shows the first item of `items` that fits; false when none does.
function M.show_first(bufnr, client, items)
  for index = 1, #items do
    if M.select(bufnr, client, items, index) then
      return true
    end
  end
  return false
end

--- Shows the next (step 1) or previous (step -1) item that fits.
function M.cycle(step)
  local s = assert(shown)
  for offset = 1, #s.items do
    local index = (s.index - 1 + offset * step) % #s.items + 1
    if M.select(s.bufnr, s.client, s.items, index) then
      return
    end
  end
end

--- True when the buffer and cursor are as the suggestion left them (an event that changed
--- nothing, or the plugin's own insert).
function M.unchanged()
  if not shown or vim.api.nvim_buf_get_changedtick(shown.bufnr) ~= shown.tick then
    return false
  end
  local row, col = cursor()
  return row == shown.row and col == shown.col
end

--- Typing a character that the suggestion predicted keeps the rest on screen, as Copilot does.
---@return boolean kept
function M.type_through()
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
  M.draw()
  return true
end

--- Inserts `piece` (a prefix of the suggestion) at the cursor, keeps the rest on screen and
--- runs the item's command once so the server counts the acceptance (an item counts once,
--- however many pieces it is taken in). Returns whether this call ran the command.
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
  local counted = false
  if not s.command_sent and item.command then
    s.command_sent = true
    counted = true
    server.request(s.client, "workspace/executeCommand", {
      command = item.command.command,
      arguments = item.command.arguments,
    }, function() end, s.bufnr)
  end
  if rest == "" then
    M.clear()
    return counted
  end
  s.end_col = col + (s.end_col - s.col)
  s.row, s.col, s.suffix = row, col, rest
  M.draw()
  return counted
end

--- Inserts `pick(suggestion)` of the suggestion. Returns whether one was shown, and whether this
--- was the item's first acceptance.
---@param pick fun(suffix: string): string
---@return boolean accepted, boolean first
function M.accept(pick)
  if not shown then
    return false, false
  end
  return true, insert_piece(pick(shown.suffix))
end

function M.exists()
  return shown ~= nil
end

--- The suggestion text on screen ("" when none).
function M.text()
  return shown and shown.suffix or ""
end

return M
