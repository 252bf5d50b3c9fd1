-- Neovim 0.12+: the built-in vim.lsp.inline_completion requests, draws and accepts; this module
-- only maps the plugin's actions onto it. Accept word/line take a piece of the item through
-- get()'s on_accept hook. (Covered by hand on 0.12; CI runs 0.11, which uses exlsp.inline.)
local server = require("exlsp.server")
local text = require("exlsp.text")

local M = {}

M.stats = { requests = 0, cancelled = 0, responses = 0, stale = 0, shown = 0, accepted = 0 }

local ic = vim.lsp.inline_completion
local enabled = true

function M.accept()
  return ic.get() == true
end

--- Inserts `pick(rest)` of the item, where rest is its text after what is already typed, and
--- runs the item's command so the server counts it.
local function accept_piece(pick)
  return ic.get({
    on_accept = function(item)
      local value = item.insert_text
      if type(value) == "table" then
        value = value.value
      end
      local row, col = unpack(vim.api.nvim_win_get_cursor(0))
      local line = vim.api.nvim_get_current_line()
      local start_col = item.range and item.range.start and item.range.start.col or col
      local rest = text.visible_suffix(line, start_col, col, value or "") or ""
      local piece = pick(rest)
      local lines = text.lines(piece)
      vim.api.nvim_buf_set_text(0, row - 1, col, row - 1, col, lines)
      local end_col = #lines == 1 and col + #piece or #lines[#lines]
      vim.api.nvim_win_set_cursor(0, { row + #lines - 1, end_col })
      local client = item.client_id and vim.lsp.get_client_by_id(item.client_id)
      if client and item.command then
        server.request(client, "workspace/executeCommand", {
          command = item.command.command,
          arguments = item.command.arguments,
        }, function() end, 0)
      end
    end,
  }) == true
end

function M.accept_word()
  return accept_piece(text.next_word)
end

function M.accept_line()
  return accept_piece(text.next_line)
end

function M.cycle(step)
  ic.select({ count = step })
  return true
end

function M.dismiss()
  -- Leaving the suggestion is what the built-in client does on <Esc>; re-enabling redraws later.
  ic.enable(false, { bufnr = 0 })
  ic.enable(enabled, { bufnr = 0 })
  return true
end

function M.current()
  return ""
end

function M.set_enabled(value)
  enabled = value
  ic.enable(value)
end

function M.is_enabled()
  return enabled
end

function M.setup(_)
  ic.enable(enabled)
end

function M.clear() end

return M
